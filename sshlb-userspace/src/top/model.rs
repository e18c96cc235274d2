//! What `top` shows, computed from two samples (sans-IO): the rows of services and backends
//! with their rates, the totals of the data plane's outcome counters, and the drops by reason.
//! Rates are the difference of two samples over the time between them; a counter that went
//! backwards (the pins were re-created) or a row the earlier sample lacks has no rate (`None`,
//! shown as `-`), never a made-up one.

use std::time::Duration;

use crate::{
    control::{BackendStatus, Status},
    stats::Counter,
};

/// One reading of the running agent and the data plane.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Monotonic time the sample was taken.
    pub taken: Duration,
    /// The agent's status: this sample's answer, or the last one when the agent did not answer
    /// (then `fresh` is false and `agent_error` says why).
    pub status: Status,
    /// Whether `status` is this sample's own answer.
    pub fresh: bool,
    /// Why the agent did not answer.
    pub agent_error: Option<String>,
    /// The data plane's global counters (empty when they could not be read).
    pub counters: Vec<Counter>,
    /// Why the counters could not be read.
    pub counters_error: Option<String>,
}

/// How backends are ordered within their service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    /// As in the configuration file.
    #[default]
    File,
    /// Most live sessions first.
    Live,
    /// Most packets per second first.
    Packets,
}

impl Sort {
    /// The next order (the `s` key cycles through them).
    pub fn next(self) -> Self {
        match self {
            Self::File => Self::Live,
            Self::Live => Self::Packets,
            Self::Packets => Self::File,
        }
    }

    /// The word the screen shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Live => "live",
            Self::Packets => "pkts/s",
        }
    }
}

/// What the operator chose to see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViewOptions {
    /// Backend order.
    pub sort: Sort,
    /// Also list drop reasons never seen since the data plane was attached.
    pub all_drops: bool,
}

/// Everything one screen shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dashboard {
    /// The data plane's interface.
    pub interface: String,
    /// Time between the two samples the rates come from (`None` for the first screen).
    pub elapsed: Option<Duration>,
    /// Flows in the connection table.
    pub active_flows: u64,
    /// `maintenance on`.
    pub maintenance: bool,
    /// Packets per second by outcome, from the global counters.
    pub totals: Totals,
    /// Services in file order, each with its backends.
    pub services: Vec<ServiceRow>,
    /// Drop reasons (`drop_*` counters): those seen since attach, or all with
    /// [`ViewOptions::all_drops`]; fastest first, then most counted.
    pub drops: Vec<DropRow>,
    /// What is wrong with the data shown (the agent not answering, counters unreadable).
    pub problems: Vec<String>,
}

/// Packets per second by outcome (every packet counts exactly one `pass_*`, `fwd_*` or
/// `drop_*` counter).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// All packets the program saw.
    pub packets: Option<f64>,
    /// Forwarded to a backend or back to a client (`fwd_*`).
    pub forwarded: Option<f64>,
    /// Passed to the kernel (`pass_*`).
    pub passed: Option<f64>,
    /// Dropped (`drop_*`).
    pub dropped: Option<f64>,
}

/// One service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceRow {
    /// Name.
    pub name: String,
    /// `VIP:port` (`[VIP]:port` for IPv6).
    pub address: String,
    /// `nat`, `dsr` or `tunnel`.
    pub mode: String,
    /// Its live sessions (over its backends), flows and rates.
    pub figures: Figures,
    /// Its backends, in the chosen order.
    pub backends: Vec<BackendRow>,
}

/// One backend.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendRow {
    /// Name.
    pub name: String,
    /// `address:port`.
    pub address: String,
    /// `up`, `down` or `unknown`.
    pub health: String,
    /// `active`, `drain` or `disabled`.
    pub state: String,
    /// Weight in force.
    pub weight: u32,
    /// Whether new flows reach it now.
    pub in_ring: bool,
    /// Its live sessions (what `drain --wait` waits for), flows and rates.
    pub figures: Figures,
}

/// The figures a service row and a backend row both show.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    /// Sessions still open.
    pub live_sessions: u64,
    /// Flows in the table.
    pub active_flows: u64,
    /// New flows per second.
    pub new_flows: Option<f64>,
    /// Packets per second.
    pub packets: Option<f64>,
    /// Bytes per second.
    pub bytes: Option<f64>,
}

impl Figures {
    /// `live_sessions` and `active_flows` as they are, and the rates of the agent's cumulative
    /// `[new flows, packets, bytes]` against the earlier sample's `old` over `seconds`.
    fn new(
        (live_sessions, active_flows): (u64, u64),
        now: [u64; 3],
        old: Option<[u64; 3]>,
        seconds: Option<f64>,
    ) -> Self {
        let [new_flows, packets, bytes] = std::array::from_fn(|i| rate(old?[i], now[i], seconds?));
        Self { live_sessions, active_flows, new_flows, packets, bytes }
    }
}

/// One drop reason.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DropRow {
    /// The counter's stable name (`drop_acl_denied`, ...).
    pub reason: &'static str,
    /// Drops per second.
    pub per_second: Option<f64>,
    /// Drops since the data plane was attached.
    pub total: u64,
}

/// `(now - before) / seconds`; `None` when the counter went backwards or no time passed.
pub fn rate(before: u64, now: u64, seconds: f64) -> Option<f64> {
    (now >= before && seconds > 0.0).then(|| (now - before) as f64 / seconds)
}

/// `VIP:port`, bracketed for IPv6.
fn host_port(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

fn sum_by(counters: &[Counter], prefix: &str) -> u64 {
    counters.iter().filter(|c| c.name.starts_with(prefix)).map(|c| c.value).sum()
}

impl Dashboard {
    /// The screen for sample `now`, with rates against `before` (the previous sample, if any).
    pub fn build(before: Option<&Sample>, now: &Sample, options: ViewOptions) -> Self {
        let seconds = before.map(|b| now.taken.saturating_sub(b.taken).as_secs_f64());
        // Rates of the agent's counters only between two real answers.
        let agent_seconds = seconds.filter(|_| now.fresh && before.is_some_and(|b| b.fresh));
        let counter_seconds = seconds
            .filter(|_| !now.counters.is_empty() && before.is_some_and(|b| !b.counters.is_empty()));
        let per = |old: Option<u64>, new: u64, secs: Option<f64>| rate(old?, new, secs?);

        let totals = {
            let total = |prefix: &str| {
                let old = before.map(|b| sum_by(&b.counters, prefix));
                per(old, sum_by(&now.counters, prefix), counter_seconds)
            };
            let (forwarded, passed, dropped) = (total("fwd_"), total("pass_"), total("drop_"));
            let packets = match (forwarded, passed, dropped) {
                (Some(f), Some(p), Some(d)) => Some(f + p + d),
                _ => None,
            };
            Totals { packets, forwarded, passed, dropped }
        };

        let old_service =
            |name: &str| before.and_then(|b| b.status.services.iter().find(|s| s.name == name));
        let services = now
            .status
            .services
            .iter()
            .map(|s| {
                let old = old_service(&s.name);
                let old_backend =
                    |name: &str| old.and_then(|o| o.backends.iter().find(|b| b.name == name));
                let mut backends: Vec<BackendRow> = s
                    .backends
                    .iter()
                    .map(|b| backend_row(b, old_backend(&b.name), agent_seconds))
                    .collect();
                sort_backends(&mut backends, options.sort);
                ServiceRow {
                    name: s.name.clone(),
                    address: host_port(&s.vip, s.port),
                    mode: s.mode.clone(),
                    figures: Figures::new(
                        (s.backends.iter().map(|b| b.live_sessions).sum(), s.active_flows),
                        [s.new_flows, s.packets, s.bytes],
                        old.map(|o| [o.new_flows, o.packets, o.bytes]),
                        agent_seconds,
                    ),
                    backends,
                }
            })
            .collect();

        let mut drops: Vec<DropRow> = now
            .counters
            .iter()
            .filter(|c| c.name.starts_with("drop_"))
            .map(|c| {
                let old = before
                    .and_then(|b| b.counters.iter().find(|o| o.name == c.name))
                    .map(|o| o.value);
                DropRow {
                    reason: c.name,
                    per_second: per(old, c.value, counter_seconds),
                    total: c.value,
                }
            })
            .filter(|d| options.all_drops || d.total > 0)
            .collect();
        drops.sort_by(|a, b| {
            let fast = b.per_second.unwrap_or(0.0).total_cmp(&a.per_second.unwrap_or(0.0));
            fast.then(b.total.cmp(&a.total))
        });

        let mut problems = Vec::new();
        if let Some(why) = &now.agent_error {
            problems.push(format!("agent not answering, showing its last answer: {why}"));
        }
        if let Some(why) = &now.counters_error {
            problems.push(format!("data-plane counters unreadable: {why}"));
        }
        Self {
            interface: now.status.interface.clone(),
            elapsed: before.map(|b| now.taken.saturating_sub(b.taken)),
            active_flows: now.status.active_flows,
            maintenance: now.status.maintenance,
            totals,
            services,
            drops,
            problems,
        }
    }
}

fn backend_row(b: &BackendStatus, old: Option<&BackendStatus>, seconds: Option<f64>) -> BackendRow {
    BackendRow {
        name: b.name.clone(),
        address: host_port(&b.address, b.port),
        health: b.health.clone(),
        state: b.state.clone(),
        weight: b.weight,
        in_ring: b.in_ring,
        figures: Figures::new(
            (b.live_sessions, b.active_flows),
            [b.new_flows, b.packets, b.bytes],
            old.map(|o| [o.new_flows, o.packets, o.bytes]),
            seconds,
        ),
    }
}

/// Stable sort: ties keep the file's order.
fn sort_backends(rows: &mut [BackendRow], sort: Sort) {
    match sort {
        Sort::File => {}
        Sort::Live => rows.sort_by_key(|b| std::cmp::Reverse(b.figures.live_sessions)),
        Sort::Packets => rows.sort_by(|a, b| {
            let packets = |r: &BackendRow| r.figures.packets.unwrap_or(0.0);
            packets(b).total_cmp(&packets(a))
        }),
    }
}

/// A count for a narrow column: exact up to 99,999, then `123.4k`, `12.3M`, `1.2G`.
pub fn count(n: u64) -> String {
    if n < 100_000 {
        n.to_string()
    } else {
        si(n as f64)
    }
}

/// A rate for a narrow column: `-` when unknown, `0` when nothing moved, one decimal under 10,
/// whole numbers up to 99,999, then `123.4k`, `12.3M`, `1.2G`.
pub fn per_second(r: Option<f64>) -> String {
    match r {
        None => "-".to_owned(),
        Some(r) if r <= 0.0 => "0".to_owned(),
        Some(r) if r < 10.0 => format!("{r:.1}"),
        Some(r) if r < 100_000.0 => format!("{r:.0}"),
        Some(r) => si(r),
    }
}

fn si(v: f64) -> String {
    let (value, unit) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else {
        (v / 1e3, "k")
    };
    format!("{value:.1}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ServiceStatus;

    fn backend(name: &str, live: u64, packets: u64, new_flows: u64) -> BackendStatus {
        BackendStatus {
            name: name.into(),
            address: "198.18.0.11".into(),
            port: 22,
            health: "up".into(),
            state: "active".into(),
            weight: 100,
            in_ring: true,
            live_sessions: live,
            active_flows: live,
            new_flows,
            packets,
            bytes: packets * 100,
            ..BackendStatus::default()
        }
    }

    fn sample(
        at_ms: u64,
        backends: Vec<BackendStatus>,
        counters: &[(&'static str, u64)],
    ) -> Sample {
        let service = ServiceStatus {
            name: "git".into(),
            vip: "198.18.0.100".into(),
            port: 22,
            mode: "nat".into(),
            new_flows: backends.iter().map(|b| b.new_flows).sum(),
            packets: backends.iter().map(|b| b.packets).sum(),
            bytes: backends.iter().map(|b| b.bytes).sum(),
            backends,
            ..ServiceStatus::default()
        };
        Sample {
            taken: Duration::from_millis(at_ms),
            status: Status {
                interface: "eth0".into(),
                services: vec![service],
                ..Status::default()
            },
            fresh: true,
            agent_error: None,
            counters: counters.iter().map(|&(name, value)| Counter { name, value }).collect(),
            counters_error: None,
        }
    }

    #[test]
    fn rates_are_deltas_over_the_time_between_samples() {
        let before = sample(
            1_000,
            vec![backend("b1", 3, 1_000, 10), backend("b2", 0, 50, 1)],
            &[("fwd_nat", 100), ("pass_not_ip", 10), ("drop_acl_denied", 4), ("event_x", 9)],
        );
        let now = sample(
            3_000,
            vec![backend("b1", 5, 3_000, 14), backend("b2", 0, 50, 1)],
            &[("fwd_nat", 500), ("pass_not_ip", 12), ("drop_acl_denied", 10), ("event_x", 99)],
        );
        let d = Dashboard::build(Some(&before), &now, ViewOptions::default());
        assert_eq!(d.elapsed, Some(Duration::from_secs(2)));
        let s = &d.services[0];
        assert_eq!((s.address.as_str(), s.figures.live_sessions), ("198.18.0.100:22", 5));
        assert_eq!((s.figures.packets, s.figures.new_flows), (Some(1_000.0), Some(2.0)));
        let b1 = &s.backends[0];
        assert_eq!((b1.name.as_str(), b1.figures.live_sessions), ("b1", 5));
        assert_eq!(
            (b1.figures.packets, b1.figures.bytes, b1.figures.new_flows),
            (Some(1_000.0), Some(100_000.0), Some(2.0))
        );
        let b2 = &s.backends[1];
        assert_eq!(
            (b2.figures.packets, b2.figures.new_flows, b2.figures.live_sessions),
            (Some(0.0), Some(0.0), 0)
        );
        // Events are not outcomes: packets/s = forwarded + passed + dropped.
        assert_eq!(
            d.totals,
            Totals {
                packets: Some(204.0),
                forwarded: Some(200.0),
                passed: Some(1.0),
                dropped: Some(3.0)
            }
        );
        assert_eq!(
            d.drops,
            [DropRow { reason: "drop_acl_denied", per_second: Some(3.0), total: 10 }]
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
    }

    #[test]
    fn the_first_screen_and_reset_counters_have_no_rates() {
        let first = sample(0, vec![backend("b1", 1, 500, 5)], &[("fwd_nat", 100)]);
        let d = Dashboard::build(None, &first, ViewOptions::default());
        let b1 = &d.services[0].backends[0];
        assert_eq!(
            (b1.figures.live_sessions, b1.figures.packets, b1.figures.new_flows),
            (1, None, None)
        );
        assert_eq!(d.totals, Totals::default());
        // The pins were re-created: counters start again from 0.
        let later = sample(1_000, vec![backend("b1", 1, 20, 1)], &[("fwd_nat", 7)]);
        let d = Dashboard::build(Some(&first), &later, ViewOptions::default());
        assert_eq!(d.services[0].backends[0].figures.packets, None);
        assert_eq!(d.totals.forwarded, None);
        // A backend added meanwhile (reload) has no rate yet; no time passed: no rate.
        let added = sample(2_000, vec![backend("b1", 1, 40, 1), backend("b9", 0, 0, 0)], &[]);
        let d = Dashboard::build(Some(&later), &added, ViewOptions::default());
        assert_eq!(d.services[0].backends[0].figures.packets, Some(20.0));
        assert_eq!(d.services[0].backends[1].figures.packets, None);
        assert_eq!(rate(1, 2, 0.0), None);
    }

    #[test]
    fn a_silent_agent_keeps_its_last_answer_without_rates_and_says_so() {
        let before = sample(0, vec![backend("b1", 2, 100, 1)], &[("fwd_nat", 1)]);
        let mut now = sample(1_000, vec![backend("b1", 2, 100, 1)], &[("fwd_nat", 11)]);
        now.fresh = false;
        now.agent_error = Some("connection refused".into());
        let d = Dashboard::build(Some(&before), &now, ViewOptions::default());
        let b1 = &d.services[0].backends[0];
        assert_eq!((b1.figures.live_sessions, b1.figures.packets), (2, None));
        assert_eq!(d.totals.forwarded, Some(10.0), "the pinned counters still count");
        assert_eq!(d.problems.len(), 1);
        assert!(d.problems[0].contains("connection refused"), "{:?}", d.problems);
    }

    #[test]
    fn sorts_backends_and_hides_unseen_drop_reasons_unless_asked() {
        let before = sample(
            0,
            vec![backend("b1", 1, 0, 0), backend("b2", 9, 0, 0), backend("b3", 4, 0, 0)],
            &[("drop_no_route", 5), ("drop_acl_denied", 0), ("drop_ttl_zero", 0)],
        );
        let now = sample(
            1_000,
            vec![backend("b1", 1, 900, 0), backend("b2", 9, 100, 0), backend("b3", 4, 500, 0)],
            &[("drop_no_route", 5), ("drop_acl_denied", 2), ("drop_ttl_zero", 0)],
        );
        let names = |sort, all_drops| {
            let d = Dashboard::build(Some(&before), &now, ViewOptions { sort, all_drops });
            let b: Vec<String> = d.services[0].backends.iter().map(|b| b.name.clone()).collect();
            let r: Vec<&str> = d.drops.iter().map(|d| d.reason).collect();
            (b.join(","), r.join(","))
        };
        assert_eq!(
            names(Sort::File, false),
            ("b1,b2,b3".into(), "drop_acl_denied,drop_no_route".into())
        );
        assert_eq!(names(Sort::Live, false).0, "b2,b3,b1");
        assert_eq!(names(Sort::Packets, false).0, "b1,b3,b2");
        assert_eq!(names(Sort::File, true).1, "drop_acl_denied,drop_no_route,drop_ttl_zero");
        assert_eq!(Sort::File.next().next().next(), Sort::File);
    }

    #[test]
    fn numbers_fit_narrow_columns() {
        assert_eq!(count(99_999), "99999");
        assert_eq!(count(123_456), "123.5k");
        assert_eq!(count(12_300_000), "12.3M");
        assert_eq!(per_second(None), "-");
        assert_eq!(per_second(Some(0.0)), "0");
        assert_eq!(per_second(Some(0.24)), "0.2");
        assert_eq!(per_second(Some(42.4)), "42");
        assert_eq!(per_second(Some(2.5e9)), "2.5G");
        assert_eq!(host_port("fd00:10::11", 22), "[fd00:10::11]:22");
    }
}
