//! Rendering a scrape in the Prometheus text exposition format 0.0.4 (sans-IO), and the
//! health-check latency and configuration history only the metrics show.

use std::fmt::Write as _;

use crate::{
    control::{BackendStatus, ServiceStatus, Status},
    stats::Counter,
};

/// Upper bounds (seconds) of the health-check latency histogram buckets.
pub const CHECK_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Health-check latency histogram (cumulative on render).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckLatency {
    /// Observations per bucket (not cumulative), plus the +Inf overflow last.
    pub buckets: [u64; CHECK_BUCKETS.len() + 1],
    /// Sum of observed seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl CheckLatency {
    /// Records one check's duration.
    pub fn observe(&mut self, seconds: f64) {
        let i = CHECK_BUCKETS.iter().position(|&b| seconds <= b).unwrap_or(CHECK_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }
}

/// The configuration's history, for `sshlb_config_*`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConfigState {
    /// Increments on every applied change (reload or runtime command).
    pub generation: u64,
    /// Whether the last reload attempt succeeded (true until one fails).
    pub last_reload_ok: bool,
    /// Unix time of the last reload attempt (0 = none yet).
    pub last_reload_unix: u64,
}

/// The balancer's sizes and switches, for `sshlb_flow_table_capacity`, `sshlb_nat_ports` and
/// `sshlb_announce_enabled` (what the alert rules divide by and condition on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Connection-table entries (`agent.max-flows`).
    pub max_flows: u32,
    /// Full-NAT source ports in `agent.nat-ports` (one backend's full-NAT flows can use at most
    /// this many at once).
    pub nat_ports: u32,
    /// Whether VIPs are announced at all (`announce.mode` is not `none`).
    pub announce_enabled: bool,
}

/// Everything one scrape shows.
pub struct Snapshot<'a> {
    /// Sizes and switches of the configuration.
    pub limits: Limits,
    /// Services and backends.
    pub status: &'a Status,
    /// Global per-outcome counters.
    pub counters: &'a [Counter],
    /// Health-check latency.
    pub latency: &'a CheckLatency,
    /// Configuration history.
    pub config: ConfigState,
    /// Times a backend was found presenting mismatching host keys, by service name.
    pub host_key_mismatches: &'a std::collections::HashMap<String, u64>,
}

/// One per-service metric family: name, type, help, value.
type ServiceFamily = (&'static str, &'static str, &'static str, fn(&ServiceStatus) -> u64);
/// A per-backend state-set family: name, what it describes, the states, the current one.
type StateFamily =
    (&'static str, &'static str, &'static [&'static str], fn(&BackendStatus) -> &String);
/// One per-backend metric family: name, type, help, value.
type BackendFamily = (&'static str, &'static str, &'static str, fn(&BackendStatus) -> u64);

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders a scrape.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        name.to_owned()
    };
    let _ = family(
        "sshlb_packets_total",
        "counter",
        "Packets by data-plane outcome (every packet counts once; event_* are not packets).",
    );
    let mut body = String::new();
    for c in s.counters {
        let _ = writeln!(body, "sshlb_packets_total{{outcome=\"{}\"}} {}", c.name, c.value);
    }
    out.push_str(&body);

    let service_metrics: [ServiceFamily; 5] = [
        ("sshlb_service_active_flows", "gauge", "Live flows in the connection table.", |x| {
            x.active_flows
        }),
        ("sshlb_service_new_flows_total", "counter", "Flows started.", |x| x.new_flows),
        ("sshlb_service_packets_total", "counter", "Packets forwarded.", |x| x.packets),
        ("sshlb_service_bytes_total", "counter", "Bytes forwarded.", |x| x.bytes),
        ("sshlb_vip_announced", "gauge", "1 while the service's VIP is announced by BGP.", |x| {
            u64::from(x.announce.announced)
        }),
    ];
    for (name, kind, help, get) in service_metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for svc in &s.status.services {
            let _ = writeln!(out, "{name}{{service=\"{}\"}} {}", escape(&svc.name), get(svc));
        }
    }
    let _ = writeln!(
        out,
        "# HELP sshlb_maintenance 1 while maintenance is on (VIPs withdrawn).\n\
         # TYPE sshlb_maintenance gauge\nsshlb_maintenance {}\n\
         # HELP sshlb_announce_bird_ok 0 while BIRD refuses or cannot be told the announcements.\n\
         # TYPE sshlb_announce_bird_ok gauge\nsshlb_announce_bird_ok {}",
        u64::from(s.status.maintenance),
        u64::from(s.status.bird_error.is_none())
    );
    let _ = writeln!(
        out,
        "# HELP sshlb_service_info The service's VIP, port and mode (always 1).\n\
         # TYPE sshlb_service_info gauge"
    );
    for svc in &s.status.services {
        let _ = writeln!(
            out,
            "sshlb_service_info{{service=\"{}\",vip=\"{}\",port=\"{}\",mode=\"{}\"}} 1",
            escape(&svc.name),
            escape(&svc.vip),
            svc.port,
            escape(&svc.mode)
        );
    }
    let _ = writeln!(
        out,
        "# HELP sshlb_flow_table_capacity Connection-table entries (agent.max-flows).\n\
         # TYPE sshlb_flow_table_capacity gauge\nsshlb_flow_table_capacity {}\n\
         # HELP sshlb_flow_table_flows Flows in the connection table (RST-closed ones left out).\n\
         # TYPE sshlb_flow_table_flows gauge\nsshlb_flow_table_flows {}\n\
         # HELP sshlb_nat_ports Full-NAT source ports (agent.nat-ports) one backend can use.\n\
         # TYPE sshlb_nat_ports gauge\nsshlb_nat_ports {}\n\
         # HELP sshlb_announce_enabled 1 when VIPs are announced to routers (announce.mode).\n\
         # TYPE sshlb_announce_enabled gauge\nsshlb_announce_enabled {}",
        s.limits.max_flows,
        s.status.active_flows,
        s.limits.nat_ports,
        u8::from(s.limits.announce_enabled)
    );
    let backend_metrics: [BackendFamily; 8] = [
        ("sshlb_backend_health_changes_total", "counter", "Health state changes.", |b| {
            b.health_changes
        }),
        ("sshlb_backend_weight", "gauge", "Weight in force.", |b| u64::from(b.weight)),
        ("sshlb_backend_in_ring", "gauge", "1 when new flows can reach the backend.", |b| {
            u64::from(b.in_ring)
        }),
        ("sshlb_backend_live_sessions", "gauge", "Sessions with no FIN or RST seen yet.", |b| {
            b.live_sessions
        }),
        ("sshlb_backend_active_flows", "gauge", "Live flows in the connection table.", |b| {
            b.active_flows
        }),
        ("sshlb_backend_new_flows_total", "counter", "Flows started.", |b| b.new_flows),
        ("sshlb_backend_packets_total", "counter", "Packets forwarded.", |b| b.packets),
        ("sshlb_backend_bytes_total", "counter", "Bytes forwarded.", |b| b.bytes),
    ];
    for (name, kind, help, get) in backend_metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for svc in &s.status.services {
            for b in &svc.backends {
                let _ = writeln!(
                    out,
                    "{name}{{service=\"{}\",backend=\"{}\"}} {}",
                    escape(&svc.name),
                    escape(&b.name),
                    get(b)
                );
            }
        }
    }
    let state_sets: [StateFamily; 2] = [
        ("sshlb_backend_health", "health", &["up", "down", "unknown"], |b| &b.health),
        ("sshlb_backend_host_keys", "host-key", &["match", "mismatch", "unknown"], |b| {
            &b.host_key_check
        }),
    ];
    for (name, what, states, get) in state_sets {
        let _ = writeln!(
            out,
            "# HELP {name} 1 for the backend's current {what} state.\n# TYPE {name} gauge"
        );
        for svc in &s.status.services {
            for b in &svc.backends {
                for state in states {
                    let _ = writeln!(
                        out,
                        "{name}{{service=\"{}\",backend=\"{}\",state=\"{state}\"}} {}",
                        escape(&svc.name),
                        escape(&b.name),
                        u8::from(get(b) == state)
                    );
                }
            }
        }
    }
    let _ = writeln!(out, "# HELP sshlb_host_key_mismatches_total Times a backend was found presenting host keys that differ.\n# TYPE sshlb_host_key_mismatches_total counter");
    for svc in &s.status.services {
        let n = s.host_key_mismatches.get(&svc.name).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "sshlb_host_key_mismatches_total{{service=\"{}\"}} {n}",
            escape(&svc.name)
        );
    }
    let _ = writeln!(out, "# HELP sshlb_limited_prefix_refused SYNs refused per source prefix (the 10 most refused per service).\n# TYPE sshlb_limited_prefix_refused gauge");
    for svc in &s.status.services {
        for p in &svc.limited {
            let _ = writeln!(
                out,
                "sshlb_limited_prefix_refused{{service=\"{}\",prefix=\"{}\"}} {}",
                escape(&svc.name),
                escape(&p.prefix),
                p.refused
            );
        }
    }
    let name = "sshlb_health_check_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Health check duration (connect, banner, close).\n# TYPE {name} histogram"
    );
    let mut cumulative = 0;
    for (i, bound) in CHECK_BUCKETS.iter().enumerate() {
        cumulative += s.latency.buckets[i];
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    cumulative += s.latency.buckets[CHECK_BUCKETS.len()];
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", s.latency.sum, s.latency.count);
    let _ = writeln!(
        out,
        "# HELP sshlb_config_generation Applied configuration changes since start.\n# TYPE sshlb_config_generation counter\n\
         sshlb_config_generation {}\n\
         # HELP sshlb_config_last_reload_success 1 if the last reload succeeded.\n# TYPE sshlb_config_last_reload_success gauge\n\
         sshlb_config_last_reload_success {}\n\
         # HELP sshlb_config_last_reload_timestamp_seconds Unix time of the last reload attempt.\n# TYPE sshlb_config_last_reload_timestamp_seconds gauge\n\
         sshlb_config_last_reload_timestamp_seconds {}",
        s.config.generation,
        u8::from(s.config.last_reload_ok),
        s.config.last_reload_unix
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        Status {
            interface: "eth0".into(),
            services: vec![ServiceStatus {
                name: "git".into(),
                vip: "198.18.0.100".into(),
                port: 22,
                mode: "nat".into(),
                packets: 10,
                backends: vec![BackendStatus {
                    name: "b\"1".into(),
                    health: "down".into(),
                    weight: 7,
                    bytes: 99,
                    ..Default::default()
                }],
                limited: vec![crate::control::LimitedPrefix {
                    prefix: "198.18.8.0/24".into(),
                    refused: 12,
                }],
                announce: crate::control::AnnounceStatus {
                    announced: true,
                    reason: "3 usable backend(s)".into(),
                },
                ..Default::default()
            }],
            maintenance: true,
            active_flows: 6,
            ..Default::default()
        }
    }

    #[test]
    fn renders_families_labels_and_a_cumulative_histogram() {
        let mut latency = CheckLatency::default();
        for s in [0.0005, 0.003, 0.003, 2.0] {
            latency.observe(s);
        }
        let counters = [Counter { name: "fwd_nat", value: 5 }];
        let text = render(&Snapshot {
            limits: Limits { max_flows: 1024, nat_ports: 500, announce_enabled: true },
            status: &status(),
            counters: &counters,
            latency: &latency,
            config: ConfigState {
                generation: 3,
                last_reload_ok: false,
                last_reload_unix: 1_700_000_000,
            },
            host_key_mismatches: &[("git".to_owned(), 2)].into_iter().collect(),
        });
        for line in [
            "sshlb_packets_total{outcome=\"fwd_nat\"} 5",
            "sshlb_service_packets_total{service=\"git\"} 10",
            "sshlb_backend_weight{service=\"git\",backend=\"b\\\"1\"} 7",
            "sshlb_backend_bytes_total{service=\"git\",backend=\"b\\\"1\"} 99",
            "sshlb_backend_health{service=\"git\",backend=\"b\\\"1\",state=\"down\"} 1",
            "sshlb_backend_health{service=\"git\",backend=\"b\\\"1\",state=\"up\"} 0",
            "sshlb_health_check_duration_seconds_bucket{le=\"0.001\"} 1",
            "sshlb_health_check_duration_seconds_bucket{le=\"0.005\"} 3",
            "sshlb_health_check_duration_seconds_bucket{le=\"1\"} 3",
            "sshlb_health_check_duration_seconds_bucket{le=\"+Inf\"} 4",
            "sshlb_health_check_duration_seconds_count 4",
            "sshlb_host_key_mismatches_total{service=\"git\"} 2",
            "sshlb_backend_host_keys{service=\"git\",backend=\"b\\\"1\",state=\"unknown\"} 0",
            "sshlb_limited_prefix_refused{service=\"git\",prefix=\"198.18.8.0/24\"} 12",
            "sshlb_config_generation 3",
            "sshlb_config_last_reload_success 0",
            "sshlb_vip_announced{service=\"git\"} 1",
            "sshlb_maintenance 1",
            "sshlb_announce_bird_ok 1",
            "sshlb_service_info{service=\"git\",vip=\"198.18.0.100\",port=\"22\",mode=\"nat\"} 1",
            "sshlb_flow_table_capacity 1024",
            "sshlb_flow_table_flows 6",
            "sshlb_nat_ports 500",
            "sshlb_announce_enabled 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        // Every sample line belongs to a declared family.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {family} ")), "{name} has no TYPE");
        }
    }
}
