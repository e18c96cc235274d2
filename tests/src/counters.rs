//! Counters the kernel keeps per network namespace, read around a measurement so a benchmark
//! can show where frames were lost: drops on every veth (`ip -s link`: TX drops on a veth are
//! frames its peer's receive ring refused) and TCP retransmissions (`RetransSegs` of
//! `/proc/net/snmp`).

use std::collections::BTreeMap;

use crate::{run, Netns};

/// The veth interfaces of `ns`.
pub fn veths(ns: &Netns) -> Vec<String> {
    links(ns).into_iter().map(|(name, _)| name).collect()
}

/// `ip -j -s link show type veth` in `ns`: (name, its JSON).
fn links(ns: &Netns) -> Vec<(String, serde_json::Value)> {
    let out = ns.ip(&["-j", "-s", "link", "show", "type", "veth"]);
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ip -j link in {}: {e}", ns.name));
    parsed
        .as_array()
        .map(|links| {
            links
                .iter()
                .filter_map(|l| Some((l["ifname"].as_str()?.to_owned(), l.clone())))
                .collect()
        })
        .unwrap_or_default()
}

/// TX and RX drops of one link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    /// Frames the link could not send (on a veth: the peer's ring was full).
    pub tx: u64,
    /// Frames the link received and dropped.
    pub rx: u64,
}

/// Drops and retransmissions of a set of namespaces at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `namespace/link` → drops.
    pub drops: BTreeMap<String, Drops>,
    /// Namespace → `RetransSegs`.
    pub retrans: BTreeMap<String, u64>,
}

impl Snapshot {
    /// Reads every veth's drops and the TCP retransmissions of each of `namespaces`, keyed by
    /// the role (the part of the namespace's name after its last `-`).
    pub fn take(namespaces: &[&Netns]) -> Self {
        let mut snapshot = Self::default();
        for ns in namespaces {
            let role = ns.name.rsplit('-').next().unwrap_or(&ns.name).to_owned();
            for (name, link) in links(ns) {
                let stat = |dir: &str| link["stats64"][dir]["dropped"].as_u64().unwrap_or(0);
                snapshot
                    .drops
                    .insert(format!("{role}/{name}"), Drops { tx: stat("tx"), rx: stat("rx") });
            }
            snapshot.retrans.insert(role, tcp_retrans_segs(ns));
        }
        snapshot
    }

    /// What changed from `before` to `self`: links whose drops grew, and every namespace's
    /// retransmissions.
    pub fn since(&self, before: &Self) -> Self {
        let drops = self
            .drops
            .iter()
            .filter_map(|(link, now)| {
                let was = before.drops.get(link).copied().unwrap_or_default();
                let delta =
                    Drops { tx: now.tx.saturating_sub(was.tx), rx: now.rx.saturating_sub(was.rx) };
                (delta != Drops::default()).then(|| (link.clone(), delta))
            })
            .collect();
        let retrans = self
            .retrans
            .iter()
            .map(|(ns, now)| {
                (ns.clone(), now.saturating_sub(*before.retrans.get(ns).unwrap_or(&0)))
            })
            .collect();
        Self { drops, retrans }
    }

    /// Summed TX and RX drops.
    pub fn total_drops(&self) -> Drops {
        self.drops
            .values()
            .fold(Drops::default(), |a, d| Drops { tx: a.tx + d.tx, rx: a.rx + d.rx })
    }
}

/// The kernel's non-zero TCP, IP and ICMP counters (`nstat`, which leaves zeros out) of each of
/// `namespaces`, one line per namespace, for a failure message: which end received, answered
/// or refused what a test sent.
pub fn tcp_ip_counters(namespaces: &[&Netns]) -> Vec<String> {
    namespaces
        .iter()
        .map(|ns| {
            let out = ns.command("nstat", &["-a", "-s"]).output().expect("nstat");
            let counters: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|line| {
                    let mut words = line.split_whitespace();
                    let (name, value) = (words.next()?, words.next()?);
                    let wanted = ["Tcp", "Ip", "Icmp"].iter().any(|p| name.starts_with(p));
                    wanted.then(|| format!("{name} {value}"))
                })
                .collect();
            format!("{}: {}", ns.name, counters.join(", "))
        })
        .collect()
}

/// `RetransSegs` of `/proc/net/snmp` in `ns` (TCP segments retransmitted since the namespace was
/// made).
pub fn tcp_retrans_segs(ns: &Netns) -> u64 {
    let out = run(&mut ns.command("cat", &["/proc/net/snmp"]));
    parse_retrans_segs(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|| panic!("no Tcp RetransSegs in /proc/net/snmp of {}", ns.name))
}

/// `RetransSegs` from the text of `/proc/net/snmp` (a `Tcp:` header line, then its values).
fn parse_retrans_segs(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let at = names.split_whitespace().position(|n| n == "RetransSegs")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_retrans_segs_from_the_tcp_lines() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin ActiveOpens RetransSegs InErrs\nTcp: 1 200 7 42 0\n";
        assert_eq!(parse_retrans_segs(snmp), Some(42));
        assert_eq!(parse_retrans_segs("Ip: a\nIp: 1\n"), None);
    }

    #[test]
    fn since_keeps_links_that_dropped_and_every_namespace() {
        let mut before = Snapshot::default();
        before.drops.insert("lb/x".into(), Drops { tx: 5, rx: 0 });
        before.drops.insert("sw/p".into(), Drops { tx: 1, rx: 1 });
        before.retrans.insert("cl".into(), 10);
        let mut after = before.clone();
        after.drops.insert("lb/x".into(), Drops { tx: 9, rx: 0 });
        after.retrans.insert("cl".into(), 13);
        let delta = after.since(&before);
        assert_eq!(delta.drops.len(), 1);
        assert_eq!(delta.total_drops(), Drops { tx: 4, rx: 0 });
        assert_eq!(delta.retrans["cl"], 3);
    }
}
