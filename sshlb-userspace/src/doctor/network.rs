//! The checks of how the host's network meets the configuration (sans-IO, over gathered facts):
//! the sysctls `up` sets, the reverse-path filter against where the balancer's own source
//! addresses live, whether each VIP's packets reach this host, each backend's banner from the
//! NAT address, and whether the backends of a service present the same host keys.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use super::checks::{AddrFacts, Check, Level, Route};
use crate::{
    config::{AnnounceMode, Config, HostKeyPolicy, Mode},
    hostkeys::{self, HostKey, Verdict},
};

fn check(name: &str, level: Level, found: String, fix: Option<String>) -> Check {
    Check::new(name, level, found, fix)
}

/// The sysctls `up` sets on `iface` (the IPv6 ones with IPv6 services), against their values
/// now (`sysctls`, as `probe` read them). `up` sets them, so a different value only says what it
/// will change; one that cannot be read (IPv6 disabled) warns, as `up` will fail to set it.
pub fn sysctl_check(iface: &str, ipv6: bool, sysctls: &BTreeMap<String, String>) -> Check {
    let (mut changes, mut missing, mut already) = (Vec::new(), Vec::new(), 0usize);
    for (key, want) in crate::daemon::interface_sysctls(iface, ipv6) {
        match sysctls.get(&key) {
            None => missing.push(key),
            Some(now) if now == want => already += 1,
            Some(now) => changes.push(format!("{key}={want} (now {now})")),
        }
    }
    if !missing.is_empty() {
        return check(
            "sysctls",
            Level::Warn,
            format!("cannot read {}: `up` cannot set it", missing.join(", ")),
            Some(format!(
                "enable IPv6 on {iface} (net.ipv6.conf.{iface}.disable_ipv6=0) or remove the \
                 IPv6 services"
            )),
        );
    }
    let found = if changes.is_empty() {
        format!("the {already} sysctl(s) `up` needs are already set")
    } else {
        format!("`up` sets {} ({already} already set)", changes.join(", "))
    };
    check("sysctls", Level::Pass, found, None)
}

/// The interface an address's packets are tied to for the reverse-path check: the one holding
/// it, else the device its route leaves by (`None`: no route).
fn device(facts: &AddrFacts) -> Option<&str> {
    facts.owner.as_deref().or_else(|| facts.route.as_ref().and_then(|r| r.dev.as_deref()))
}

/// The reverse-path filter (IPv4; the kernel applies the larger of `all` and the interface's)
/// against the balancer's own source addresses (`sources`: full-NAT VIPs and NAT addresses,
/// each with a label).
///
/// Frames the data plane sends itself (XDP_TX) never meet it. But a frame it has rewritten and
/// cannot send yet — the next hop's neighbour entry is not resolved — is handed to the kernel
/// (XDP_PASS) with one of the balancer's own addresses as source: a NAT address towards a
/// backend or a tunnel backend, the VIP in a full-NAT reply towards a client. With
/// `accept_local=1` (which `up` sets) the kernel accepts its own address as source, but strict
/// mode (1) also requires that address to live on the interface the frame came in by: a VIP on
/// `lo` (or a NAT address on another interface) fails it and the frame is dropped. Loose mode
/// (2) and off (0) accept it.
pub fn rp_filter_check(
    iface: &str,
    sysctls: &BTreeMap<String, String>,
    sources: &[(String, AddrFacts)],
) -> Check {
    let read = |scope: &str| {
        sysctls.get(&format!("net.ipv4.conf.{scope}.rp_filter")).and_then(|v| v.parse::<u8>().ok())
    };
    let (all, dev) = (read("all"), read(iface));
    let Some(effective) = all.max(dev) else {
        return check(
            "rp_filter",
            Level::Pass,
            "no IPv4 reverse-path filter here".to_owned(),
            None,
        );
    };
    let values = format!(
        "rp_filter {effective} (all {}, {iface} {})",
        all.map_or("?".to_owned(), |v| v.to_string()),
        dev.map_or("?".to_owned(), |v| v.to_string())
    );
    if effective != 1 {
        let mode = if effective == 0 { "off" } else { "loose" };
        return check("rp_filter", Level::Pass, format!("{values}: {mode}"), None);
    }
    let elsewhere: Vec<String> = sources
        .iter()
        .filter(|(_, f)| f.addr.is_ipv4() && device(f) != Some(iface))
        .map(|(label, f)| match device(f) {
            Some(dev) => format!("{label} {} is on {dev}", f.addr),
            None => format!("{label} {} has no route", f.addr),
        })
        .collect();
    if elsewhere.is_empty() {
        let found = if sources.is_empty() {
            format!("{values}: strict; no full-NAT VIP or NAT address to check against")
        } else {
            format!("{values}: strict, and every full-NAT VIP and NAT address is on {iface}")
        };
        return check("rp_filter", Level::Pass, found, None);
    }
    check(
        "rp_filter",
        Level::Warn,
        format!(
            "{values}: strict, and {}, not {iface}: a rewritten frame the data plane hands to \
             the kernel while a next hop is unresolved has that address as source and fails \
             the strict reverse-path check (dropped)",
            elsewhere.join(", ")
        ),
        Some(format!(
            "`sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{iface}.rp_filter=2` \
             (loose), or put the address on {iface}"
        )),
    )
}

/// Whether each VIP's packets reach this host (`vips`: one per distinct VIP of `config`).
///
/// They do when it is an address of `iface` (ARP/ND answered there), of another interface while
/// `iface` still answers ARP for it (IPv4 with `arp_ignore` 0; IPv6 neighbour discovery answers
/// only for the interface's own addresses), when a local route takes it (`ip route add local
/// PREFIX dev lo`), or when `[announce]` announces it by BGP (the routers then send it here
/// and the data plane takes it before the kernel looks). Otherwise nothing sends it here.
pub fn vip_checks(
    iface: &str,
    config: &Config,
    vips: &[AddrFacts],
    sysctls: &BTreeMap<String, String>,
) -> Vec<Check> {
    let bgp = config.announce.mode == AnnounceMode::Bgp;
    let arp_ignore = ["all", iface]
        .iter()
        .filter_map(|s| sysctls.get(&format!("net.ipv4.conf.{s}.arp_ignore")))
        .filter_map(|v| v.parse::<u8>().ok())
        .max()
        .unwrap_or(0);
    vips.iter()
        .map(|facts| {
            let vip = facts.addr;
            let services: Vec<&str> =
                config.services.iter().filter(|s| s.vip == vip).map(|s| s.name.as_str()).collect();
            let name = format!("vip {vip}");
            let what = format!("{vip} ({})", services.join(", "));
            let prefix = if vip.is_ipv4() { 32 } else { 128 };
            let fix = Some(format!(
                "`ip addr add {vip}/{prefix} dev {iface}` (ARP/ND then answer for it here), or \
                 route it to this host on the upstream router, or announce it \
                 (`[announce] mode = \"bgp\"`); on a VRRP standby this is expected until it \
                 takes over"
            ));
            match (&facts.owner, &facts.route) {
                (Some(owner), _) if owner == iface => {
                    check(&name, Level::Pass, format!("{what} is an address of {iface}"), None)
                }
                (Some(owner), _) if vip.is_ipv4() && arp_ignore == 0 => check(
                    &name,
                    Level::Pass,
                    format!("{what} is an address of {owner}; {iface} answers ARP for it"),
                    None,
                ),
                (Some(owner), _) if bgp => check(
                    &name,
                    Level::Pass,
                    format!("{what} is an address of {owner} and announced by BGP"),
                    None,
                ),
                (Some(owner), _) => {
                    let why = if vip.is_ipv4() {
                        format!("arp_ignore {arp_ignore}: {iface} answers ARP only for its own")
                    } else {
                        format!("neighbour discovery answers only for {iface}'s own addresses")
                    };
                    check(
                        &name,
                        Level::Warn,
                        format!(
                            "{what} is an address of {owner}, not {iface} ({why}), and not \
                             announced: nothing sends its packets here unless a router routes \
                             it to this host"
                        ),
                        fix,
                    )
                }
                (None, Some(route)) if route.kind == "local" => check(
                    &name,
                    Level::Pass,
                    format!("{what} is routed here ({})", route.describe()),
                    None,
                ),
                (None, _) if bgp => check(
                    &name,
                    Level::Pass,
                    format!("{what} is not an address here; announced by BGP"),
                    None,
                ),
                (None, route) => check(
                    &name,
                    Level::Warn,
                    format!(
                        "{what} is neither an address here nor routed here (route: {}) and \
                         not announced: unless the upstream router routes it to this host (not \
                         visible from here), nothing sends its packets here",
                        route.as_ref().map_or_else(|| "none".to_owned(), Route::describe)
                    ),
                    fix,
                ),
            }
        })
        .collect()
}

/// The distinct VIPs of `config`, in file order.
pub fn vips(config: &Config) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for s in &config.services {
        if !out.contains(&s.vip) {
            out.push(s.vip);
        }
    }
    out
}

/// The balancer's own source addresses the reverse-path check meets, labelled: the VIPs of
/// full-NAT services (replies to clients), and the NAT addresses of the families full NAT and
/// tunnels use (`nat`: `dataplane_config`'s).
pub fn own_sources(config: &Config, nat: &[IpAddr]) -> Vec<(String, IpAddr)> {
    let mut out: Vec<(String, IpAddr)> = Vec::new();
    for s in config.services.iter().filter(|s| s.mode == Mode::Nat) {
        if !out.iter().any(|(_, a)| *a == s.vip) {
            out.push(("VIP".to_owned(), s.vip));
        }
    }
    for &addr in nat {
        let used = config
            .services
            .iter()
            .any(|s| s.mode != Mode::Dsr && s.vip.is_ipv4() == addr.is_ipv4());
        if used && !out.iter().any(|(_, a)| *a == addr) {
            out.push(("NAT address".to_owned(), addr));
        }
    }
    out
}

/// Why a backend's banner check failed, by what the operator does about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BannerProblem {
    /// The connection was refused or could not be made (nothing listens, no route, firewall).
    Unreachable(String),
    /// Something answered, but not with the expected identification line.
    NotSsh(String),
    /// No answer in time.
    Silent(String),
}

/// What the doctor found out about one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendFacts {
    /// Service name.
    pub service: String,
    /// Backend name.
    pub backend: String,
    /// Where it was checked.
    pub addr: SocketAddr,
    /// The source address used (the NAT address; `None`: the kernel picked).
    pub source: Option<IpAddr>,
    /// The prefix its identification line must start with (empty: TCP connect only).
    pub expect: String,
    /// How long the banner check took, or why it failed.
    pub banner: Result<Duration, BannerProblem>,
    /// Its host keys (`None`: not scanned — not an SSH service, or the banner check failed).
    pub keys: Option<Result<Vec<HostKey>, String>>,
}

/// One check per backend: it answers from the NAT address with the expected banner.
pub fn backend_checks(backends: &[BackendFacts]) -> Vec<Check> {
    backends
        .iter()
        .map(|b| {
            let name = format!("backend {}/{}", b.service, b.backend);
            let from = b.source.map_or_else(|| "the kernel's pick".to_owned(), |s| s.to_string());
            let what = format!("{} at {}", b.backend, b.addr);
            let try_it = match b.source {
                Some(src) => format!("`ssh -b {src} -p {} {}`", b.addr.port(), b.addr.ip()),
                None => format!("`ssh -p {} {}`", b.addr.port(), b.addr.ip()),
            };
            match &b.banner {
                Ok(took) => {
                    let answer = if b.expect.is_empty() {
                        "accepts TCP".to_owned()
                    } else {
                        format!("answers {}…", b.expect)
                    };
                    check(
                        &name,
                        Level::Pass,
                        format!("{what} {answer} from {from} in {} ms", took.as_millis()),
                        None,
                    )
                }
                Err(BannerProblem::Unreachable(why)) => check(
                    &name,
                    Level::Warn,
                    format!("{what} is not reachable from {from}: {why}"),
                    Some(format!(
                        "start sshd on it or open the port to {from}, and try {try_it}; the \
                         health check keeps it out of the ring until it answers"
                    )),
                ),
                Err(BannerProblem::NotSsh(why)) => check(
                    &name,
                    Level::Warn,
                    format!("{what} answers from {from}, but not as sshd ({:?}): {why}", b.expect),
                    Some(format!(
                        "point the backend at sshd's port (another server listens on {}), or \
                         set the service's [service.health] expect",
                        b.addr.port()
                    )),
                ),
                Err(BannerProblem::Silent(why)) => check(
                    &name,
                    Level::Warn,
                    format!("{what} from {from}: {why}"),
                    Some(format!(
                        "a firewall dropping the balancer's packets, or a server that never \
                         speaks first: try {try_it}"
                    )),
                ),
            }
        })
        .collect()
}

/// One check per SSH service with scanned backends: they present the same host keys (or the
/// configured `host-keys`), judged as the agent judges them ([`hostkeys::judge`]).
pub fn host_key_checks(config: &Config, backends: &[BackendFacts]) -> Vec<Check> {
    let mut out = Vec::new();
    for service in &config.services {
        let mine: Vec<&BackendFacts> =
            backends.iter().filter(|b| b.service == service.name).collect();
        let scanned: Vec<Option<&[HostKey]>> = mine
            .iter()
            .map(|b| match &b.keys {
                Some(Ok(keys)) => Some(keys.as_slice()),
                _ => None,
            })
            .collect();
        let failed: Vec<String> = mine
            .iter()
            .filter_map(|b| match &b.keys {
                Some(Err(why)) => Some(format!("{}: {why}", b.backend)),
                _ => None,
            })
            .collect();
        let name = format!("host-keys {}", service.name);
        let known = scanned.iter().flatten().count();
        if known == 0 {
            if !failed.is_empty() {
                out.push(check(
                    &name,
                    Level::Warn,
                    format!("no backend's host keys could be scanned ({})", failed.join("; ")),
                    Some("check that the backends run sshd (`ssh-keyscan` them)".to_owned()),
                ));
            }
            continue;
        }
        let verdicts = hostkeys::judge(&service.host_keys, &scanned);
        let odd: Vec<String> = mine
            .iter()
            .zip(&verdicts)
            .filter_map(|(b, v)| match v {
                Verdict::Mismatch(why) => Some(format!("{}: {why}", b.backend)),
                _ => None,
            })
            .collect();
        let not_scanned = if failed.is_empty() {
            String::new()
        } else {
            format!(" (not scanned: {})", failed.join("; "))
        };
        if odd.is_empty() {
            let keys = scanned.iter().flatten().next().map_or_else(String::new, |keys| {
                keys.iter()
                    .map(|k| format!("{} {}", k.kind, k.fingerprint))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            let against = if service.host_keys.is_empty() { "the same" } else { "the configured" };
            let found = if known == 1 {
                format!("the one backend scanned presents {keys}{not_scanned}")
            } else {
                format!("{known} backends present {against} host keys: {keys}{not_scanned}")
            };
            out.push(check(&name, Level::Pass, found, None));
        } else {
            let enforce = if service.host_key_policy == HostKeyPolicy::Enforce {
                "; host-key-policy = \"enforce\" keeps them out of the ring"
            } else {
                ""
            };
            out.push(check(
                &name,
                Level::Warn,
                format!(
                    "backends of {} present different host keys, so clients see \"REMOTE HOST \
                     IDENTIFICATION HAS CHANGED\": {}{not_scanned}{enforce}",
                    service.name,
                    odd.join("; ")
                ),
                Some(
                    "give every backend the same host keys (copy /etc/ssh/ssh_host_*_key from \
                     one to the others, restart sshd), or set host-keys to the right \
                     fingerprints"
                        .to_owned(),
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctls(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn owned(addr: &str, owner: &str) -> AddrFacts {
        AddrFacts { addr: addr.parse().expect("ip"), owner: Some(owner.into()), route: None }
    }

    fn routed(addr: &str, kind: &str, dev: Option<&str>) -> AddrFacts {
        let route = Route {
            kind: kind.into(),
            dev: dev.map(str::to_owned),
            via: Some("198.18.0.254".into()).filter(|_| kind == "unicast"),
            error: None,
        };
        AddrFacts { addr: addr.parse().expect("ip"), owner: None, route: Some(route) }
    }

    fn config(text: &str) -> Config {
        crate::config::parse("t.toml", text).expect("valid")
    }

    const TWO_SERVICES: &str = "[[service]]\nname = \"git\"\nvip = \"198.18.0.100\"\nport = 22\n\
        [[service.backend]]\nname = \"b1\"\naddress = \"198.18.0.11\"\n\
        [[service]]\nname = \"dsr\"\nvip = \"198.18.0.101\"\nport = 22\nmode = \"dsr\"\n\
        [[service.backend]]\nname = \"b1\"\naddress = \"198.18.0.11\"\n";

    #[test]
    fn sysctls_say_what_up_changes_and_warn_when_one_cannot_be_set() {
        let now = sysctls(&[
            ("net.ipv4.conf.eth0.forwarding", "0"),
            ("net.ipv4.conf.eth0.accept_local", "1"),
            ("net.ipv4.conf.eth0.send_redirects", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
        ]);
        let c = sysctl_check("eth0", false, &now);
        assert_eq!(c.level, Level::Pass);
        assert_eq!(
            c.found,
            "`up` sets net.ipv4.conf.eth0.forwarding=1 (now 0), \
             net.ipv4.conf.eth0.send_redirects=0 (now 1) (2 already set)"
        );
        // IPv6 services but IPv6 is off on the interface: its sysctls do not exist.
        let c = sysctl_check("eth0", true, &now);
        assert_eq!(c.level, Level::Warn);
        assert!(c.found.contains("net.ipv6.conf.eth0.accept_ra"), "{c:?}");
        assert!(c.fix.as_deref().is_some_and(|f| f.contains("disable_ipv6=0")));
    }

    #[test]
    fn strict_rp_filter_warns_only_when_an_own_source_lives_off_the_interface() {
        let strict =
            sysctls(&[("net.ipv4.conf.all.rp_filter", "1"), ("net.ipv4.conf.eth0.rp_filter", "0")]);
        let loose =
            sysctls(&[("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.eth0.rp_filter", "2")]);
        let on_iface = [
            ("VIP".to_owned(), owned("198.18.0.100", "eth0")),
            ("NAT address".to_owned(), owned("198.18.0.2", "eth0")),
        ];
        let on_lo = [
            ("VIP".to_owned(), owned("198.18.0.100", "lo")),
            ("NAT address".to_owned(), owned("198.18.0.2", "eth0")),
        ];
        let c = rp_filter_check("eth0", &strict, &on_iface);
        assert_eq!(c.level, Level::Pass, "{c:?}");
        assert!(c.found.starts_with("rp_filter 1 (all 1, eth0 0): strict"), "{c:?}");
        let c = rp_filter_check("eth0", &strict, &on_lo);
        assert_eq!(c.level, Level::Warn, "{c:?}");
        assert!(c.found.contains("VIP 198.18.0.100 is on lo, not eth0"), "{c:?}");
        assert_eq!(
            c.fix.as_deref(),
            Some(
                "`sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.eth0.rp_filter=2` \
                 (loose), or put the address on eth0"
            )
        );
        // Not held anywhere and routed out of another interface, or not routed at all.
        let away = [("VIP".to_owned(), routed("198.18.9.1", "unicast", Some("eth1")))];
        assert_eq!(rp_filter_check("eth0", &strict, &away).level, Level::Warn);
        let routed_back = [("VIP".to_owned(), routed("198.18.9.1", "unicast", Some("eth0")))];
        assert_eq!(rp_filter_check("eth0", &strict, &routed_back).level, Level::Pass);
        // Loose (the larger value wins: 2) and off take anything; IPv6 has no rp_filter.
        assert_eq!(rp_filter_check("eth0", &loose, &on_lo).level, Level::Pass);
        let v6 = [("VIP".to_owned(), owned("fd00::100", "lo"))];
        assert_eq!(rp_filter_check("eth0", &strict, &v6).level, Level::Pass);
    }

    #[test]
    fn own_sources_are_full_nat_vips_and_the_nat_addresses_in_use() {
        let cfg = config(TWO_SERVICES);
        let nat = ["198.18.0.2".parse().expect("ip"), "fd00::2".parse().expect("ip")];
        let sources = own_sources(&cfg, &nat);
        let addrs: Vec<String> = sources.iter().map(|(l, a)| format!("{l} {a}")).collect();
        // The DSR VIP is not a source (DSR rewrites MACs only); no IPv6 service: no v6 NAT.
        assert_eq!(addrs, ["VIP 198.18.0.100", "NAT address 198.18.0.2"]);
    }

    #[test]
    fn a_vip_reaches_this_host_when_owned_routed_here_or_announced() {
        let cfg = config(TWO_SERVICES);
        let none = BTreeMap::new();
        let ignore = sysctls(&[("net.ipv4.conf.all.arp_ignore", "1")]);
        let level = |facts: AddrFacts, sysctls: &BTreeMap<String, String>, cfg: &Config| {
            let checks = vip_checks("eth0", cfg, &[facts], sysctls);
            assert_eq!(checks.len(), 1);
            checks[0].clone()
        };
        assert_eq!(level(owned("198.18.0.100", "eth0"), &none, &cfg).level, Level::Pass);
        assert_eq!(level(owned("198.18.0.100", "lo"), &none, &cfg).level, Level::Pass);
        let c = level(owned("198.18.0.100", "lo"), &ignore, &cfg);
        assert_eq!(c.level, Level::Warn, "arp_ignore 1: lo's address not answered on eth0");
        assert!(c.found.contains("arp_ignore 1"), "{c:?}");
        let c = level(routed("198.18.0.100", "local", Some("lo")), &none, &cfg);
        assert_eq!(
            (c.level, c.found.as_str()),
            (Level::Pass, "198.18.0.100 (git) is routed here (local dev lo)")
        );
        let c = level(routed("198.18.0.100", "unicast", Some("eth0")), &none, &cfg);
        assert_eq!(c.level, Level::Warn, "{c:?}");
        assert!(c.found.contains("route: unicast via 198.18.0.254 dev eth0"), "{c:?}");
        assert!(c
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("ip addr add 198.18.0.100/32 dev eth0")));
        // Announced by BGP: the routers send it here whether or not it is an address here.
        let bgp = config(&format!("{TWO_SERVICES}[announce]\nmode = \"bgp\"\nlocal-as = 65001\n"));
        assert_eq!(
            level(routed("198.18.0.100", "unicast", Some("eth0")), &none, &bgp).level,
            Level::Pass
        );
        assert_eq!(vips(&cfg).len(), 2);
    }

    fn backend(name: &str, banner: Result<Duration, BannerProblem>) -> BackendFacts {
        BackendFacts {
            service: "git".into(),
            backend: name.into(),
            addr: "198.18.0.11:22".parse().expect("addr"),
            source: Some("198.18.0.2".parse().expect("ip")),
            expect: "SSH-2.0-".into(),
            banner,
            keys: None,
        }
    }

    #[test]
    fn each_backend_is_reported_with_what_to_do() {
        let checks = backend_checks(&[
            backend("b1", Ok(Duration::from_millis(4))),
            backend("b2", Err(BannerProblem::Unreachable("connect: Connection refused".into()))),
            backend("b3", Err(BannerProblem::NotSsh("closed … (it sent \"HTTP/1.0\")".into()))),
            backend("b4", Err(BannerProblem::Silent("no identification line within 2s".into()))),
        ]);
        let levels: Vec<Level> = checks.iter().map(|c| c.level).collect();
        assert_eq!(levels, [Level::Pass, Level::Warn, Level::Warn, Level::Warn]);
        assert_eq!(checks[0].name, "backend git/b1");
        assert_eq!(
            checks[0].found,
            "b1 at 198.18.0.11:22 answers SSH-2.0-… from 198.18.0.2 in 4 ms"
        );
        assert!(checks[1]
            .found
            .contains("not reachable from 198.18.0.2: connect: Connection refused"));
        assert!(checks[1]
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("ssh -b 198.18.0.2 -p 22 198.18.0.11")));
        assert!(checks[2].found.contains("not as sshd") && checks[2].found.contains("HTTP/1.0"));
        assert!(checks[2].fix.as_deref().is_some_and(|f| f.contains("sshd's port")));
        assert!(checks[3].fix.as_deref().is_some_and(|f| f.contains("firewall")));
    }

    #[test]
    fn backends_presenting_different_host_keys_are_named() {
        let key = |fp: &str| {
            vec![HostKey { kind: "ssh-ed25519".into(), fingerprint: format!("SHA256:{fp}") }]
        };
        let cfg = config(
            "[[service]]\nname = \"git\"\nvip = \"198.18.0.100\"\nport = 22\n\
             [[service.backend]]\nname = \"b1\"\naddress = \"198.18.0.11\"\n\
             [[service.backend]]\nname = \"b2\"\naddress = \"198.18.0.12\"\n\
             [[service.backend]]\nname = \"b3\"\naddress = \"198.18.0.13\"\n",
        );
        let with = |name: &str, keys: Option<Result<Vec<HostKey>, String>>| BackendFacts {
            keys,
            ..backend(name, Ok(Duration::ZERO))
        };
        let same =
            [with("b1", Some(Ok(key("A")))), with("b2", Some(Ok(key("A")))), with("b3", None)];
        let checks = host_key_checks(&cfg, &same);
        assert_eq!((checks.len(), checks[0].level), (1, Level::Pass), "{checks:?}");
        assert_eq!(checks[0].found, "2 backends present the same host keys: ssh-ed25519 SHA256:A");
        let odd = [
            with("b1", Some(Ok(key("A")))),
            with("b2", Some(Ok(key("B")))),
            with("b3", Some(Ok(key("A")))),
        ];
        let checks = host_key_checks(&cfg, &odd);
        assert_eq!(checks[0].level, Level::Warn);
        assert!(
            checks[0]
                .found
                .contains("b2: its ssh-ed25519 key is SHA256:B, the other backends' is SHA256:A"),
            "{checks:?}"
        );
        assert!(!checks[0].found.contains("b1:"), "{checks:?}");
        assert!(checks[0].fix.as_deref().is_some_and(|f| f.contains("ssh_host_*_key")));
        // Nothing scanned, and why.
        let failed = [with("b1", Some(Err("connect: refused".into())))];
        let checks = host_key_checks(&cfg, &failed);
        assert_eq!(checks[0].level, Level::Warn);
        assert!(checks[0].found.contains("b1: connect: refused"));
        assert!(host_key_checks(&cfg, &[with("b1", None)]).is_empty(), "not scanned: no check");
    }
}
