//! `sshlb-agent flows`: the live flows of the connection table as an operator reads them —
//! sans-IO. The CLI walks the pinned `FLOWS` map itself ([`crate::flows::walk`], batched) and
//! reads the pinned `BACKENDS` table, so the command works while the agent is down; the names
//! come from the running agent's `status` when it answers, else from the configuration file.
//!
//! One join rule, whatever gave the names: a flow's service is the configured service at its
//! VIP and port (the flow key's destination), its backend the backend of that service at the
//! address and port the data plane's `BACKENDS[backend_id]` holds. A flow nothing names (the
//! file was edited since the last reload, say) keeps its addresses and shows no name.
//!
//! Age and idle time come from the entry's `started_s` and `last_seen_ns` (CLOCK_MONOTONIC;
//! idle lags by up to 2 s, `LAST_SEEN_MAX_LAG_NS`). A recovered flow's age counts from the
//! packet that recovered it; an entry made by a data plane older than `started_s` has no age.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};
use sshlb_common::{addr, flow_flags, flow_state, Backend, Flow, FlowKey, MAX_BACKENDS};

use crate::{config::Config, control::Status, protection::Cidr};

/// One configured service's names: where it listens and its backends' addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceNames {
    /// Service name.
    pub name: String,
    /// VIP and port.
    pub vip: SocketAddr,
    /// (backend name, address and port), in configuration order.
    pub backends: Vec<(String, SocketAddr)>,
}

/// Every configured service's names, and where they came from (for the operator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The services.
    pub services: Vec<ServiceNames>,
    /// "the running agent" or the configuration file's path.
    pub source: String,
}

impl Names {
    /// The names of a parsed configuration file.
    pub fn from_config(config: &Config, source: impl Into<String>) -> Self {
        let services = config
            .services
            .iter()
            .map(|s| ServiceNames {
                name: s.name.clone(),
                vip: SocketAddr::new(s.vip, s.port),
                backends: s
                    .backends
                    .iter()
                    .map(|b| (b.name.clone(), SocketAddr::new(b.address, b.port)))
                    .collect(),
            })
            .collect();
        Self { services, source: source.into() }
    }

    /// The names in the running agent's status (entries whose addresses do not parse are left
    /// out: the agent writes them from parsed addresses, so none are).
    pub fn from_status(status: &Status) -> Self {
        let services = status
            .services
            .iter()
            .filter_map(|s| {
                let vip: IpAddr = s.vip.parse().ok()?;
                let backends = s
                    .backends
                    .iter()
                    .filter_map(|b| {
                        let a: IpAddr = b.address.parse().ok()?;
                        Some((b.name.clone(), SocketAddr::new(a, b.port)))
                    })
                    .collect();
                Some(ServiceNames {
                    name: s.name.clone(),
                    vip: SocketAddr::new(vip, s.port),
                    backends,
                })
            })
            .collect();
        Self { services, source: "the running agent".to_owned() }
    }
}

/// A filter the command line gave that cannot be applied.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// `--client` is not an address or prefix.
    #[error("--client {0}")]
    Client(String),
    /// `--service` names no configured service.
    #[error("--service {name:?}: no such service (configured: {known})")]
    NoService {
        /// What was asked for.
        name: String,
        /// The configured services, comma-separated.
        known: String,
    },
    /// `--backend` names no backend (of the `--service`, if given).
    #[error("--backend {name:?}: no such backend{within} (configured: {known})")]
    NoBackend {
        /// What was asked for.
        name: String,
        /// `" in service \"x\""` or empty.
        within: String,
        /// The backends it could be, comma-separated.
        known: String,
    },
    /// A name filter, but no names to match it against.
    #[error(
        "--service/--backend need the names: the agent does not answer and no configuration \
         file could be read ({0}); filter with --client, or pass --config"
    )]
    NoNames(String),
}

/// What `flows` shows: every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Service name.
    pub service: Option<String>,
    /// Backend name.
    pub backend: Option<String>,
    /// Client prefix.
    pub client: Option<Cidr>,
}

impl Filter {
    /// Checks the command line's filters against the configured names (`names_err`: why there
    /// are none, when `names` is `None`).
    pub fn new(
        service: Option<String>,
        backend: Option<String>,
        client: Option<&str>,
        names: Result<&Names, &str>,
    ) -> Result<Self, FilterError> {
        let client = client.map(|c| c.parse::<Cidr>().map_err(FilterError::Client)).transpose()?;
        if service.is_some() || backend.is_some() {
            let names = names.map_err(|why| FilterError::NoNames(why.to_owned()))?;
            let list = |items: Vec<&str>| {
                if items.is_empty() {
                    "none".to_owned()
                } else {
                    items.join(", ")
                }
            };
            let within: Vec<&ServiceNames> = match &service {
                Some(name) => {
                    let found = names.services.iter().find(|s| &s.name == name);
                    vec![found.ok_or_else(|| FilterError::NoService {
                        name: name.clone(),
                        known: list(names.services.iter().map(|s| s.name.as_str()).collect()),
                    })?]
                }
                None => names.services.iter().collect(),
            };
            if let Some(name) = &backend {
                let mut known: Vec<&str> =
                    within.iter().flat_map(|s| &s.backends).map(|(b, _)| b.as_str()).collect();
                known.sort_unstable();
                known.dedup();
                if !known.contains(&name.as_str()) {
                    return Err(FilterError::NoBackend {
                        name: name.clone(),
                        within: service
                            .as_ref()
                            .map_or(String::new(), |s| format!(" in service {s:?}")),
                        known: list(known),
                    });
                }
            }
        }
        Ok(Self { service, backend, client })
    }
}

/// One live flow, as `flows --json` prints it (a stable schema: fields are only ever added).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRow {
    /// Client address.
    pub client: String,
    /// Client port (the client's own source port).
    pub client_port: u16,
    /// Service name (`None`: no configured service listens at the VIP and port).
    pub service: Option<String>,
    /// The VIP the client connected to.
    pub vip: String,
    /// The service port.
    pub port: u16,
    /// Backend name (`None`: unnamed, see the module doc).
    pub backend: Option<String>,
    /// Backend address (`None`: the backend id has no entry in the data plane any more).
    pub backend_address: Option<String>,
    /// Backend port.
    pub backend_port: Option<u16>,
    /// `"syn"`, `"established"`, `"fin"` or `"closed"` (RST seen).
    pub state: String,
    /// Seconds since the entry was made (`None`: made by an older data plane).
    pub age_seconds: Option<u64>,
    /// Seconds since the flow last carried a packet (1 s granularity).
    pub idle_seconds: u64,
    /// Full NAT: the balancer's source port towards the backend; `None` for DSR.
    pub nat_port: Option<u16>,
    /// Picked up mid-flow (after a restart or failover), not from its SYN.
    pub recovered: bool,
    /// Being ended (`reload --kill-established`).
    pub killing: bool,
}

/// `flows --json`: the interface and its flows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flows {
    /// Interface whose connection table was read.
    pub interface: String,
    /// Where the names came from (`None`: nowhere, only addresses are shown).
    pub names_from: Option<String>,
    /// The flows that pass the filters, sorted by service, backend, client.
    pub flows: Vec<FlowRow>,
}

/// The spelling of a `flow_state` value.
pub fn state_name(state: u8) -> &'static str {
    match state {
        flow_state::SYN => "syn",
        flow_state::ESTABLISHED => "established",
        flow_state::FIN => "fin",
        flow_state::CLOSED => "closed",
        _ => "unknown",
    }
}

/// Turns walked entries into [`FlowRow`]s: resolves every backend id once, applies the filter
/// on each entry before building its row.
pub struct Collector<'n> {
    names: Option<&'n Names>,
    filter: Filter,
    /// Backend id → its address and port (`None`: an unused slot).
    slots: Vec<Option<SocketAddr>>,
    now_ns: u64,
    /// Per service (in `names` order): its rank by name, and its backends' ranks by name —
    /// so rows sort on integers, not by comparing their strings a million times.
    ranks: Vec<(u32, Vec<u32>)>,
    /// Each row with its sort key (service rank, backend rank, 0 = unnamed; client address and
    /// port).
    rows: Vec<(SortKey, FlowRow)>,
}

/// How rows sort: service name, backend name (unnamed first), client address, client port.
type SortKey = (u32, u32, IpAddr, u16);

/// 1-based ranks of `names` in sorted order (equal names share one).
fn ranks_of<'a>(names: impl Iterator<Item = &'a str> + Clone) -> impl Fn(&str) -> u32 {
    let mut sorted: Vec<&str> = names.collect();
    sorted.sort_unstable();
    sorted.dedup();
    let sorted: Vec<String> = sorted.into_iter().map(str::to_owned).collect();
    move |name| sorted.binary_search_by(|n| n.as_str().cmp(name)).map_or(0, |i| i as u32 + 1)
}

impl<'n> Collector<'n> {
    /// For the data plane's `backends` table (indexed by backend id), at `now_ns`
    /// (CLOCK_MONOTONIC, the clock of `Flow::last_seen_ns`).
    pub fn new(
        backends: &[Backend],
        names: Option<&'n Names>,
        filter: Filter,
        now_ns: u64,
    ) -> Self {
        let slots = backends
            .iter()
            .take(MAX_BACKENDS as usize)
            .map(|b| {
                (b.family != 0).then(|| {
                    SocketAddr::new(addr::from16(b.family, &b.addr), u16::from_be(b.port_be))
                })
            })
            .collect();
        let services = names.map_or(&[][..], |n| n.services.as_slice());
        let service_rank = ranks_of(services.iter().map(|s| s.name.as_str()));
        let backend_rank =
            ranks_of(services.iter().flat_map(|s| &s.backends).map(|(n, _)| n.as_str()));
        let ranks = services
            .iter()
            .map(|s| {
                (service_rank(&s.name), s.backends.iter().map(|(n, _)| backend_rank(n)).collect())
            })
            .collect();
        Self { names, filter, slots, now_ns, ranks, rows: Vec::new() }
    }

    /// Looks at one entry of the connection table.
    pub fn visit(&mut self, key: &FlowKey, flow: &Flow) {
        let client = addr::from16(key.family, &key.src);
        if self.filter.client.is_some_and(|c| !c.contains(client)) {
            return;
        }
        let vip = SocketAddr::new(addr::from16(key.family, &key.dst), u16::from_be(key.dport_be));
        let at = self.names.and_then(|n| n.services.iter().position(|s| s.vip == vip));
        let service = at.and_then(|i| self.names.map(|n| &n.services[i]));
        if let Some(want) = &self.filter.service {
            if service.is_none_or(|s| &s.name != want) {
                return;
            }
        }
        let address = self.slots.get(flow.backend_id as usize).copied().flatten();
        let backend_at = service.and_then(|s| {
            let address = address?;
            s.backends.iter().position(|(_, a)| *a == address)
        });
        let backend = service.zip(backend_at).map(|(s, b)| s.backends[b].0.clone());
        if let Some(want) = &self.filter.backend {
            if backend.as_ref() != Some(want) {
                return;
            }
        }
        let nat = flow.flags & flow_flags::NAT != 0 || flow.nat_port_be != 0;
        let rank = at.and_then(|s| self.ranks.get(s));
        let sort_key = (
            rank.map_or(0, |(r, _)| *r),
            rank.zip(backend_at).and_then(|((_, b), i)| b.get(i).copied()).unwrap_or(0),
            client,
            u16::from_be(key.sport_be),
        );
        self.rows.push((
            sort_key,
            FlowRow {
                client: client.to_string(),
                client_port: u16::from_be(key.sport_be),
                service: service.map(|s| s.name.clone()),
                vip: vip.ip().to_string(),
                port: vip.port(),
                backend,
                backend_address: address.map(|a| a.ip().to_string()),
                backend_port: address.map(|a| a.port()),
                state: state_name(flow.state).to_owned(),
                age_seconds: (flow.started_s != 0).then(|| {
                    (self.now_ns / 1_000_000_000).saturating_sub(u64::from(flow.started_s))
                }),
                idle_seconds: self.now_ns.saturating_sub(flow.last_seen_ns) / 1_000_000_000,
                nat_port: nat.then(|| u16::from_be(flow.nat_port_be)),
                recovered: flow.flags & flow_flags::RECOVERED != 0,
                killing: flow.flags & flow_flags::KILL != 0,
            },
        ));
    }

    /// The rows, sorted by service, backend, client address and port.
    pub fn finish(self, interface: &str) -> Flows {
        let mut rows = self.rows;
        rows.sort_unstable_by_key(|(key, _)| *key);
        Flows {
            interface: interface.to_owned(),
            names_from: self.names.map(|n| n.source.clone()),
            flows: rows.into_iter().map(|(_, row)| row).collect(),
        }
    }
}

/// `3s`, `4m05s`, `2h07m`, `5d03h` (idle times and ages).
pub fn format_idle(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3600..86_400 => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{:02}h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

/// `addr:port`, IPv6 in brackets.
fn endpoint(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// The table for people: one header line, one line per flow, columns aligned; a last line
/// counts them.
pub fn render(flows: &Flows) -> String {
    const HEADER: [&str; 8] =
        ["CLIENT", "SERVICE", "VIP", "BACKEND", "STATE", "AGE", "IDLE", "NAT-PORT"];
    let cells: Vec<[String; 8]> = flows
        .flows
        .iter()
        .map(|r| {
            let backend = match (&r.backend, &r.backend_address, r.backend_port) {
                (name, Some(a), Some(p)) => {
                    format!("{} {}", name.as_deref().unwrap_or("-"), endpoint(a, p))
                }
                _ => "-".to_owned(),
            };
            let mut state = r.state.clone();
            if r.recovered {
                state.push_str(",recovered");
            }
            if r.killing {
                state.push_str(",killing");
            }
            [
                endpoint(&r.client, r.client_port),
                r.service.clone().unwrap_or_else(|| "-".to_owned()),
                endpoint(&r.vip, r.port),
                backend,
                state,
                r.age_seconds.map_or_else(|| "-".to_owned(), format_idle),
                format_idle(r.idle_seconds),
                r.nat_port.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::with_capacity((cells.len() + 2) * 100);
    // Padded by hand (push_str, not `{:<w$}`): a million rows of seven cells each.
    let mut line = |row: &[&str]| {
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let pad = w.saturating_sub(cell.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    line(&HEADER);
    for row in &cells {
        line(&row.each_ref().map(String::as_str));
    }
    let _ = writeln!(
        out,
        "{} flow(s) on {}{}",
        flows.flows.len(),
        flows.interface,
        flows.names_from.as_ref().map_or_else(
            || " (no names: the agent does not answer and no configuration was read)".to_owned(),
            |s| format!(", names from {s}")
        )
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use sshlb_common::proto;
    use sshlb_tests::config::{BackendBuilder, ConfigBuilder, ServiceBuilder};

    const SECOND: u64 = 1_000_000_000;

    /// git (b1, b2) on IPv4 and bastion (b2, b3) on IPv6: one backend name in both.
    fn names() -> Names {
        let service = |name: &str, vip: &str, backends: [(&str, &str); 2]| {
            let service = ServiceBuilder::new(name, vip, 22);
            backends.iter().fold(service, |s, (b, a)| s.backend(BackendBuilder::new(b, a)))
        };
        let config = ConfigBuilder::new()
            .service(service("git", "198.18.0.100", [("b1", "198.18.1.11"), ("b2", "198.18.1.12")]))
            .service(
                service(
                    "bastion",
                    "fd00:18::100",
                    [("b2", "fd00:18:1::12"), ("b3", "fd00:18:1::13")],
                )
                .mode("dsr"),
            );
        Names::from_config(&parse("t.toml", &config.to_toml()).expect("valid"), "t.toml")
    }

    fn backend(ip: &str, port: u16) -> Backend {
        let (addr, family) = addr::to16(ip.parse().expect("ip"));
        Backend { addr, port_be: port.to_be(), family, service_id: 0 }
    }

    /// Backend ids: 0 = git/b1, 1 = git/b2, 2 = bastion/b2, 3 = bastion/b3, 4 = gone.
    fn table() -> Vec<Backend> {
        let mut t = vec![Backend::default(); MAX_BACKENDS as usize];
        t[0] = backend("198.18.1.11", 22);
        t[1] = backend("198.18.1.12", 22);
        t[2] = backend("fd00:18:1::12", 22);
        t[3] = backend("fd00:18:1::13", 22);
        t
    }

    fn entry(client: &str, sport: u16, vip: &str, dport: u16, backend_id: u32) -> (FlowKey, Flow) {
        let (src, family) = addr::to16(client.parse().expect("client"));
        let (dst, _) = addr::to16(vip.parse().expect("vip"));
        let key = FlowKey::new(src, dst, sport.to_be(), dport.to_be(), proto::TCP, family);
        let nat = vip.contains('.');
        let flow = Flow {
            last_seen_ns: 200 * SECOND,
            backend_id,
            service_id: 0,
            nat_port_be: if nat { (10_000 + sport).to_be() } else { 0 },
            state: flow_state::ESTABLISHED,
            flags: if nat { flow_flags::NAT } else { 0 },
            started_s: 40,
        };
        (key, flow)
    }

    fn entries() -> Vec<(FlowKey, Flow)> {
        let mut e = vec![
            entry("198.18.8.2", 40002, "198.18.0.100", 22, 1),
            entry("198.18.8.1", 40001, "198.18.0.100", 22, 0),
            entry("fd00:8::1", 50001, "fd00:18::100", 22, 3),
            entry("198.18.9.1", 40003, "198.18.0.100", 22, 4),
        ];
        e[2].1.state = flow_state::FIN;
        e[2].1.flags |= flow_flags::RECOVERED;
        e[2].1.last_seen_ns = 75 * SECOND;
        e[2].1.started_s = 0;
        e
    }

    fn collect(filter: Filter, names: Option<&Names>) -> Flows {
        let mut c = Collector::new(&table(), names, filter, 300 * SECOND);
        for (k, f) in entries() {
            c.visit(&k, &f);
        }
        c.finish("eth0")
    }

    #[test]
    fn rows_join_names_by_vip_and_backend_address() {
        let names = names();
        let flows = collect(Filter::default(), Some(&names));
        let got: Vec<_> = flows
            .flows
            .iter()
            .map(|r| {
                (
                    r.client.as_str(),
                    r.client_port,
                    r.service.as_deref(),
                    r.backend.as_deref(),
                    r.backend_address.as_deref(),
                    r.nat_port,
                )
            })
            .collect();
        // Sorted by service name (bastion < git), backend (None first), client.
        assert_eq!(
            got,
            [
                ("fd00:8::1", 50001, Some("bastion"), Some("b3"), Some("fd00:18:1::13"), None),
                ("198.18.9.1", 40003, Some("git"), None, None, Some(50003)),
                ("198.18.8.1", 40001, Some("git"), Some("b1"), Some("198.18.1.11"), Some(50001)),
                ("198.18.8.2", 40002, Some("git"), Some("b2"), Some("198.18.1.12"), Some(50002)),
            ]
        );
        let fin = &flows.flows[0];
        assert_eq!(
            (fin.state.as_str(), fin.recovered, fin.age_seconds, fin.idle_seconds),
            ("fin", true, None, 225)
        );
        assert_eq!((flows.flows[2].age_seconds, flows.flows[2].idle_seconds), (Some(260), 100));
        assert_eq!(flows.names_from.as_deref(), Some("t.toml"));
    }

    #[test]
    fn without_names_rows_keep_their_addresses() {
        let flows = collect(Filter::default(), None);
        assert_eq!(flows.flows.len(), 4);
        assert!(flows.flows.iter().all(|r| r.service.is_none() && r.backend.is_none()));
        let b1 = flows.flows.iter().find(|r| r.client_port == 40001).expect("row");
        assert_eq!(
            (b1.backend_address.as_deref(), b1.backend_port),
            (Some("198.18.1.11"), Some(22))
        );
        assert!(render(&flows).contains("no names"), "{}", render(&flows));
    }

    #[test]
    fn filters_select_by_service_backend_and_client() {
        let names = names();
        let ok = Ok(&names);
        let ports = |filter: Filter| -> Vec<u16> {
            collect(filter, Some(&names)).flows.iter().map(|r| r.client_port).collect()
        };
        let f = |s: Option<&str>, b: Option<&str>, c: Option<&str>| {
            Filter::new(s.map(Into::into), b.map(Into::into), c, ok).expect("valid filter")
        };
        assert_eq!(ports(f(Some("git"), None, None)), [40003, 40001, 40002]);
        assert_eq!(ports(f(Some("bastion"), None, None)), [50001]);
        // b2 is a name in both services: without --service it matches in either.
        assert_eq!(ports(f(None, Some("b2"), None)), [40002]);
        assert_eq!(ports(f(Some("git"), Some("b1"), None)), [40001]);
        assert_eq!(ports(f(None, None, Some("198.18.8.0/24"))), [40001, 40002]);
        assert_eq!(ports(f(None, None, Some("198.18.8.2"))), [40002]);
        assert_eq!(ports(f(None, None, Some("fd00:8::/32"))), [50001]);
        assert_eq!(ports(f(Some("git"), None, Some("fd00::/8"))), Vec::<u16>::new());
        assert_eq!(ports(f(None, None, Some("0.0.0.0/0"))), [40003, 40001, 40002]);
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        let names = names();
        let err = |s: Option<&str>, b: Option<&str>, c: Option<&str>| {
            Filter::new(s.map(Into::into), b.map(Into::into), c, Ok(&names))
                .expect_err("bad filter")
                .to_string()
        };
        assert_eq!(
            err(None, None, Some("300.1.2.3/8")),
            "--client \"300.1.2.3/8\" is not an address or ADDRESS/PREFIX-LENGTH"
        );
        assert!(err(None, None, Some("198.18.0.0/33")).contains("prefix length must be 0-32"));
        assert!(err(None, None, Some("198.18.8.1/24")).contains("did you mean \"198.18.8.0/24\""));
        assert_eq!(
            err(Some("svn"), None, None),
            "--service \"svn\": no such service (configured: git, bastion)"
        );
        assert_eq!(
            err(Some("git"), Some("b3"), None),
            "--backend \"b3\": no such backend in service \"git\" (configured: b1, b2)"
        );
        assert_eq!(
            err(None, Some("b9"), None),
            "--backend \"b9\": no such backend (configured: b1, b2, b3)"
        );
        let none = Filter::new(Some("git".into()), None, None, Err("/etc/sshlb/sshlb.toml: gone"))
            .expect_err("no names")
            .to_string();
        assert!(
            none.contains("/etc/sshlb/sshlb.toml: gone") && none.contains("--client"),
            "{none}"
        );
        // A client filter needs no names.
        Filter::new(None, None, Some("198.18.0.0/15"), Err("none")).expect("client only");
    }

    #[test]
    fn the_table_is_aligned_and_counted() {
        let names = names();
        let text = render(&collect(Filter::default(), Some(&names)));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        for column in ["SERVICE", "VIP", "BACKEND", "STATE", "AGE", "IDLE", "NAT-PORT"] {
            let at = lines[0].find(column).expect("header");
            for row in &lines[1..5] {
                let before = &row[..at];
                assert!(
                    before.ends_with("  ") && !row[at..].starts_with(' '),
                    "column {column} not aligned at {at}:\n{text}"
                );
            }
        }
        assert!(lines[1].starts_with("[fd00:8::1]:50001  bastion  [fd00:18::100]:22"), "{text}");
        assert!(lines[1].contains("b3 [fd00:18:1::13]:22") && lines[1].contains("fin,recovered"));
        assert!(lines[2].contains("  git ") && lines[2].contains("  -  "), "{text}");
        assert!(lines[3].contains("b1 198.18.1.11:22") && lines[3].ends_with("50001"), "{text}");
        assert!(lines[3].contains("  4m20s  1m40s  "), "age then idle: {text}");
        assert!(lines[1].contains("fin,recovered  -      3m45s"), "no age: {text}");
        assert_eq!(lines[5], "4 flow(s) on eth0, names from t.toml");
    }

    #[test]
    fn json_is_the_documented_schema() {
        let names = names();
        let flows = collect(Filter::default(), Some(&names));
        let value = serde_json::to_value(&flows).expect("json");
        let row = &value["flows"][2];
        assert_eq!(
            row,
            &serde_json::json!({
                "client": "198.18.8.1", "client_port": 40001, "service": "git",
                "vip": "198.18.0.100", "port": 22, "backend": "b1",
                "backend_address": "198.18.1.11", "backend_port": 22, "state": "established",
                "age_seconds": 260, "idle_seconds": 100, "nat_port": 50001, "recovered": false, "killing": false,
            })
        );
        assert_eq!(value["interface"], "eth0");
        let back: Flows = serde_json::from_value(value).expect("reads back");
        assert_eq!(back, flows);
    }

    #[test]
    fn idle_times_read_in_the_largest_units() {
        let cases = [(0, "0s"), (59, "59s"), (60, "1m00s"), (245, "4m05s"), (7620, "2h07m")];
        for (s, text) in cases {
            assert_eq!(format_idle(s), text);
        }
        assert_eq!(format_idle(5 * 86_400 + 3 * 3600 + 59), "5d03h");
    }

    #[test]
    fn names_from_a_status_match_names_from_the_file() {
        let names = names();
        let status = Status {
            interface: "eth0".into(),
            services: names
                .services
                .iter()
                .map(|s| crate::control::ServiceStatus {
                    name: s.name.clone(),
                    vip: s.vip.ip().to_string(),
                    port: s.vip.port(),
                    backends: s
                        .backends
                        .iter()
                        .map(|(n, a)| crate::control::BackendStatus {
                            name: n.clone(),
                            address: a.ip().to_string(),
                            port: a.port(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Status::default()
        };
        let from_status = Names::from_status(&status);
        assert_eq!(from_status.services, names.services);
        assert_eq!(from_status.source, "the running agent");
    }
}
