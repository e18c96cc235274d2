//! The running balancer: attach (or take over), write the configuration into the maps, prepare
//! the interface; then, in the foreground, health-check backends, reload on SIGHUP, expire flows
//! and keep backends' neighbours resolved until shutdown — applying only differences, always
//! from this one loop.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

use sshlb_common::Config as DataplaneConfig;

use crate::{
    config::{BackendState, Config, HealthCheck, HostKeyPolicy},
    control::{
        self, BackendStatus, LimitStatus, LimitedPrefix, Reply, Request, ServiceStatus, Status,
    },
    expiry,
    health::{self, Tracker},
    hostkeys::{self, HostKey, Verdict},
    loader::{self, AttachMode, Attached, LoadOptions},
    metrics,
    plan::{self, Ids, Plan},
    protect::AclEntry,
    stats, sys,
};

/// Errors starting the balancer.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Loading/attaching failed.
    #[error(transparent)]
    Loader(#[from] Box<loader::LoaderError>),
    /// The configuration cannot be turned into rings.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// Writing the maps failed (the data plane was detached again).
    #[error("writing the configuration into the data plane failed")]
    Maps(#[from] crate::maps::MapsError),
    /// A service needs a NAT address the interface does not have.
    #[error(
        "service {service:?} uses full NAT over {family} but {iface} has no {family} address; \
         add one or set agent.nat-{family_key} in the configuration"
    )]
    NoNatAddress {
        /// Service name.
        service: String,
        /// "IPv4"/"IPv6".
        family: &'static str,
        /// "v4"/"v6".
        family_key: &'static str,
        /// Interface.
        iface: String,
    },
}

/// How often flows are swept for expiry.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often backends' neighbours are re-resolved.
const POKE_EVERY: Duration = Duration::from_secs(10);

/// The interface address full NAT should use as source for one family: never a VIP (a backend
/// that owns the VIP for DSR would take its own address for the source), preferably a subnet
/// address over a host route (`/32`, `/128` are how VIPs are usually added).
pub fn pick_nat_address(addrs: &[(IpAddr, u8)], vips: &[IpAddr], v6: bool) -> Option<IpAddr> {
    let full = if v6 { 128 } else { 32 };
    let candidates: Vec<_> =
        addrs.iter().filter(|(a, _)| a.is_ipv6() == v6 && !vips.contains(a)).collect();
    candidates
        .iter()
        .find(|(_, prefix)| *prefix < full)
        .or_else(|| candidates.first())
        .map(|(a, _)| *a)
}

/// The balancer's NAT settings for `config` on `iface`: configured addresses, else the
/// interface's own (see [`pick_nat_address`]).
pub fn dataplane_config(config: &Config, iface: &str) -> Result<DataplaneConfig, StartError> {
    let addrs = sys::interface_addrs(iface);
    let vips: Vec<IpAddr> = config.services.iter().map(|s| s.vip).collect();
    let v4 = config.agent.nat_v4.or_else(|| match pick_nat_address(&addrs, &vips, false) {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    });
    let v6 = config.agent.nat_v6.or_else(|| match pick_nat_address(&addrs, &vips, true) {
        Some(IpAddr::V6(a)) => Some(a),
        _ => None,
    });
    for service in config.services.iter().filter(|s| s.mode == crate::config::Mode::Nat) {
        let missing = match service.vip {
            IpAddr::V4(_) if v4.is_none() => Some(("IPv4", "v4")),
            IpAddr::V6(_) if v6.is_none() => Some(("IPv6", "v6")),
            _ => None,
        };
        if let Some((family, family_key)) = missing {
            return Err(StartError::NoNatAddress {
                service: service.name.clone(),
                family,
                family_key,
                iface: iface.to_owned(),
            });
        }
    }
    Ok(DataplaneConfig {
        nat_v4: v4.map_or([0; 4], |a| a.octets()),
        nat_v6: v6.map_or([0; 16], |a| a.octets()),
        nat_port_min: config.agent.nat_ports.0,
        nat_port_max: config.agent.nat_ports.1,
    })
}

/// Interface settings the data plane depends on, as `(sysctl, value)`:
/// - forwarding on the interface: `bpf_fib_lookup` answers "forwarding disabled" otherwise;
/// - `accept_local`: a frame the program rewrote but could not send (neighbour unresolved) goes
///   to the kernel with the balancer's own address as source, which is otherwise a martian;
/// - no ICMP redirects: in a one-armed setup every such frame leaves by the interface it came in;
/// - with IPv6 services, IPv6 forwarding host-wide (the kernel's IPv6 forward path checks the
///   global switch) and `accept_ra = 2` so the interface keeps taking router advertisements.
pub fn interface_sysctls(iface: &str, ipv6: bool) -> Vec<(String, &'static str)> {
    let mut sysctls = vec![
        (format!("net.ipv4.conf.{iface}.forwarding"), "1"),
        (format!("net.ipv4.conf.{iface}.accept_local"), "1"),
        (format!("net.ipv4.conf.{iface}.send_redirects"), "0"),
        ("net.ipv4.conf.all.send_redirects".to_owned(), "0"),
    ];
    if ipv6 {
        sysctls.extend([
            (format!("net.ipv6.conf.{iface}.accept_ra"), "2"),
            (format!("net.ipv6.conf.{iface}.forwarding"), "1"),
            ("net.ipv6.conf.all.forwarding".to_owned(), "1"),
        ]);
    }
    sysctls
}

/// The running balancer: the attached data plane and everything the map owner must remember
/// to apply only differences (ids, what each service's ring is, each backend's health).
pub struct Balancer {
    /// The data plane.
    pub attached: Attached,
    /// The configuration in force.
    pub config: Config,
    iface: String,
    ids: Ids,
    plan: Plan,
    trackers: Vec<Vec<Tracker>>,
    /// Host-key scan state by (service name, backend "address:port"): survives reloads.
    host_keys: std::collections::HashMap<(String, String), HostKeyState>,
    /// Times a backend was found with mismatching host keys, per service name.
    host_key_mismatches: std::collections::HashMap<String, u64>,
    latency: metrics::CheckLatency,
    config_state: metrics::ConfigState,
}

/// What the agent knows about one backend's host keys.
#[derive(Clone, Debug)]
struct HostKeyState {
    /// Keys from the last successful scan.
    keys: Option<Vec<HostKey>>,
    /// Why the last scan failed (cleared by a successful one).
    error: Option<String>,
    /// The last judgement.
    verdict: Verdict,
}

/// Attaches (or takes over) the data plane on `iface` and writes `config` into it. On failure
/// after a fresh attach, detaches again: a failed start leaves nothing behind.
pub fn start(
    pin_root: &Path,
    iface: &str,
    mode: AttachMode,
    config: &Config,
) -> Result<Balancer, StartError> {
    plan::plan(config)?;
    let nat = dataplane_config(config, iface)?;
    let options = LoadOptions { max_flows: config.agent.max_flows, pin_dir: None };
    let mut attached = loader::up(pin_root, iface, mode, &options).map_err(Box::new)?;
    // Ids already in the maps (a takeover) stay what they are: flows name backends by id.
    let previous = attached.dataplane.existing_ids();
    let trackers = new_trackers(config, None);
    let applied = plan::plan_with(config, |_, _| true, &previous)
        .map_err(StartError::from)
        .and_then(|(plan, ids)| {
            apply(&mut attached, &plan, None, &nat)?;
            Ok((plan, ids))
        });
    let (plan, ids) = match applied {
        Ok(done) => done,
        Err(err) => {
            // A fresh data plane that cannot be configured goes away again; an adopted one
            // keeps carrying its established flows with the state it had.
            let adopted = attached.adopted;
            drop(attached);
            if !adopted {
                let _ignored = loader::down(pin_root, iface);
            }
            return Err(err);
        }
    };
    let ipv6 = config.services.iter().any(|s| s.vip.is_ipv6());
    for (key, value) in interface_sysctls(iface, ipv6) {
        match sys::set_sysctl(&key, value) {
            Ok(Some(old)) => tracing::info!("set {key}={value} (was {old})"),
            Ok(None) => {}
            // IPv6 may be disabled on the host: that only matters for IPv6 services.
            Err(err) => tracing::warn!("cannot set {key}={value}: {err}"),
        }
    }
    if let Some(warning) = port_range_overlap(config.agent.nat_ports, &read_local_port_range()) {
        tracing::warn!("{warning}");
    }
    poke_backends(config);
    Ok(Balancer {
        attached,
        config: config.clone(),
        iface: iface.to_owned(),
        ids,
        plan,
        trackers,
        host_keys: std::collections::HashMap::new(),
        host_key_mismatches: std::collections::HashMap::new(),
        latency: metrics::CheckLatency::default(),
        config_state: metrics::ConfigState {
            generation: 0,
            last_reload_ok: true,
            last_reload_unix: 0,
        },
    })
}

/// Writes `plan` into the maps, touching only what differs from `old` (all of it when `None`):
/// NAT settings and backends first, then each changed service's ring (standby half, then the
/// flip), then services that are gone. No packet ever sees a ring naming an unknown backend.
fn apply(
    attached: &mut Attached,
    plan: &Plan,
    old: Option<&Plan>,
    nat: &DataplaneConfig,
) -> Result<(), crate::maps::MapsError> {
    let dp = &mut attached.dataplane;
    dp.set_config(nat)?;
    for (id, backend) in &plan.backends {
        dp.set_backend(*id, backend)?;
    }
    // Allow/deny entries: new ones before the service flags that use them, stale ones after.
    let wanted: Vec<AclEntry> = plan.services.iter().flat_map(|s| s.acl.iter().copied()).collect();
    let present: Vec<AclEntry> = match old {
        Some(old) => old.services.iter().flat_map(|s| s.acl.iter().copied()).collect(),
        None => dp.acl_entries(),
    };
    for entry in wanted.iter().filter(|e| !present.contains(e)) {
        dp.set_acl_entry(entry)?;
    }
    for service in &plan.services {
        let before = old.and_then(|old| old.services.iter().find(|o| o.id == service.id));
        if before.is_none_or(|b| b.limit != service.limit) {
            dp.set_limit(service.id, &service.limit)?;
        }
        if before.is_none_or(|b| b != service) {
            dp.publish_service(&service.key, service.id, service.flags, &service.ring)?;
        }
    }
    for gone in old.iter().flat_map(|old| &old.services) {
        if !plan.services.iter().any(|s| s.key == gone.key) {
            dp.remove_service(&gone.key)?;
        }
    }
    let same_key = |a: &AclEntry, b: &AclEntry| a.prefix_len == b.prefix_len && a.key == b.key;
    for entry in present.iter().filter(|e| !wanted.iter().any(|w| same_key(w, e))) {
        dp.remove_acl_entry(entry)?;
    }
    Ok(())
}

/// Fresh trackers for `config`, carrying the state of backends that were already checked
/// (same service name, same address and port) from `previous`.
fn new_trackers(
    config: &Config,
    previous: Option<(&Config, &[Vec<Tracker>])>,
) -> Vec<Vec<Tracker>> {
    config
        .services
        .iter()
        .map(|service| {
            service
                .backends
                .iter()
                .map(|backend| {
                    previous
                        .and_then(|(old, trackers)| {
                            let s = old.services.iter().position(|o| o.name == service.name)?;
                            let b = old.services[s]
                                .backends
                                .iter()
                                .position(|o| o.ring_key() == backend.ring_key())?;
                            Some(trackers[s][b])
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect()
}

impl Balancer {
    /// Re-plans with current health and applies the difference.
    fn replan(&mut self) -> Result<(), String> {
        let trackers = &self.trackers;
        let usable =
            |s: usize, b: usize| trackers[s][b].health().usable() && self.host_keys_admit(s, b);
        let (plan, ids) =
            plan::plan_with(&self.config, usable, &self.ids).map_err(|e| e.to_string())?;
        let nat = dataplane_config(&self.config, &self.iface).map_err(|e| e.to_string())?;
        apply(&mut self.attached, &plan, Some(&self.plan), &nat).map_err(|e| e.to_string())?;
        self.plan = plan;
        self.ids = ids;
        Ok(())
    }

    /// Whether backend `b` of service `s` may take new flows as far as its host keys go: always
    /// under `warn`; under `enforce` only once a scan found the configured keys.
    fn host_keys_admit(&self, s: usize, b: usize) -> bool {
        let service = &self.config.services[s];
        service.host_key_policy != HostKeyPolicy::Enforce
            || self.host_key_state(s, b).is_some_and(|st| st.verdict == Verdict::Match)
    }

    fn host_key_state(&self, s: usize, b: usize) -> Option<&HostKeyState> {
        let service = &self.config.services[s];
        let key = (service.name.clone(), service.backends[b].ring_key());
        self.host_keys.get(&key)
    }

    /// The backend id of backend `b` of service `s`.
    fn backend_id(&self, s: usize, b: usize) -> Option<u32> {
        let backend = &self.config.services.get(s)?.backends.get(b)?;
        let (addr, fam) = plan::addr16(backend.address);
        self.ids.backends.get(&(fam, addr, backend.port.to_be())).copied()
    }

    /// Everything `status` shows.
    pub fn status(&mut self) -> Status {
        let active = self.attached.dataplane.active_flows();
        let limited = if self.config.services.iter().any(|s| s.limit.is_some()) {
            self.attached.dataplane.limited_sources()
        } else {
            Vec::new()
        };
        let mut services = Vec::new();
        for (s, service) in self.config.services.iter().enumerate() {
            let id = self.plan.services.get(s).map_or(0, |p| p.id);
            let traffic = self.attached.dataplane.service_traffic(id).unwrap_or_default();
            let mut backends = Vec::new();
            for (b, backend) in service.backends.iter().enumerate() {
                let health = self.trackers[s][b].health();
                let hk = self.host_key_state(s, b);
                let backend_id = self.backend_id(s, b);
                let t = backend_id
                    .and_then(|id| self.attached.dataplane.backend_traffic(id).ok())
                    .unwrap_or_default();
                backends.push(BackendStatus {
                    name: backend.name.clone(),
                    address: backend.address.to_string(),
                    port: backend.port,
                    health: health.as_str().to_owned(),
                    state: backend.state.as_str().to_owned(),
                    weight: backend.weight,
                    group: backend.group.clone(),
                    health_changes: self.trackers[s][b].changes(),
                    in_ring: backend.state == BackendState::Active
                        && backend.weight > 0
                        && health.usable()
                        && self.host_keys_admit(s, b),
                    active_flows: backend_id
                        .and_then(|id| active.per_backend.get(id as usize).copied())
                        .unwrap_or(0),
                    live_sessions: backend_id
                        .and_then(|id| active.live_per_backend.get(id as usize).copied())
                        .unwrap_or(0),
                    new_flows: t.new_flows,
                    packets: t.packets,
                    bytes: t.bytes,
                    host_keys: hk.and_then(|h| h.keys.clone()).unwrap_or_default(),
                    host_key_check: hk
                        .map_or(Verdict::Unknown.as_str(), |h| h.verdict.as_str())
                        .to_owned(),
                    host_key_problem: hk.and_then(|h| match &h.verdict {
                        Verdict::Mismatch(why) => Some(why.clone()),
                        _ => h.error.clone(),
                    }),
                });
            }
            services.push(ServiceStatus {
                name: service.name.clone(),
                vip: service.vip.to_string(),
                port: service.port,
                mode: service.mode.as_str().to_owned(),
                affinity: service.affinity.as_str().to_owned(),
                active_flows: active.per_service.get(id as usize).copied().unwrap_or(0),
                new_flows: traffic.new_flows,
                packets: traffic.packets,
                bytes: traffic.bytes,
                host_key_mismatches: backends
                    .iter()
                    .filter(|b| b.host_key_check == "mismatch")
                    .count() as u64,
                backends,
                allow: service.acl.allow.iter().map(ToString::to_string).collect(),
                deny: service.acl.deny.iter().map(ToString::to_string).collect(),
                limit: service.limit.map(|l| LimitStatus {
                    per_second: 1.0 / l.interval.as_secs_f64(),
                    burst: l.burst,
                    ipv4_prefix: l.ipv4_prefix,
                    ipv6_prefix: l.ipv6_prefix,
                }),
                limited: top_limited(&limited, id, service.limit.as_ref(), 10),
                host_key_policy: service.host_key_policy.as_str().to_owned(),
            });
        }
        Status { interface: self.iface.clone(), services }
    }

    /// Switches to `config` (already validated), applying only the difference. On error the
    /// previous configuration stays in force.
    pub fn reload(&mut self, config: Config) -> Result<(), String> {
        if config.agent.max_flows != self.config.agent.max_flows {
            return Err("agent.max-flows cannot change while running (the table is sized at \
                        attach); restart with `down` + `up` to resize it"
                .to_owned());
        }
        let trackers = new_trackers(&config, Some((&self.config, &self.trackers)));
        let old_config = std::mem::replace(&mut self.config, config);
        let old_trackers = std::mem::replace(&mut self.trackers, trackers);
        if let Err(err) = self.replan() {
            self.config = old_config;
            self.trackers = old_trackers;
            return Err(err);
        }
        self.config_state.generation += 1;
        Ok(())
    }

    /// Ends established flows whose client the allow/deny lists now refuse (`reload
    /// --kill-established`); returns how many.
    pub fn kill_denied_flows(&mut self) -> u64 {
        let acls: Vec<(u32, crate::protect::Acl)> = self
            .config
            .services
            .iter()
            .zip(&self.plan.services)
            .filter(|(s, _)| !s.acl.is_empty())
            .map(|(s, p)| (p.id, s.acl.clone()))
            .collect();
        if acls.is_empty() {
            return 0;
        }
        expiry::remove_where(&mut self.attached.dataplane, |key, flow| {
            acls.iter().any(|(id, acl)| {
                *id == flow.service_id && !acl.allows(plan::ip_of(key.family, &key.src))
            })
        })
    }

    /// A Prometheus scrape of the running balancer.
    pub fn metrics(&mut self) -> String {
        let status = self.status();
        let counters = stats::read(&self.attached.dataplane.stats()).unwrap_or_default();
        metrics::render(&metrics::Snapshot {
            status: &status,
            counters: &counters,
            latency: &self.latency,
            config: self.config_state,
            host_key_mismatches: &self.host_key_mismatches,
        })
    }
}

/// The `n` most-refused prefixes of service `id` in the limiter's buckets.
fn top_limited(
    buckets: &[(sshlb_common::SourceKey, sshlb_common::Bucket)],
    id: u32,
    limit: Option<&crate::protect::RateLimit>,
    n: usize,
) -> Vec<LimitedPrefix> {
    let Some(limit) = limit else { return Vec::new() };
    let mut mine: Vec<_> = buckets.iter().filter(|(k, _)| u32::from(k.service_id) == id).collect();
    mine.sort_by_key(|(_, b)| std::cmp::Reverse(b.refused));
    mine.into_iter()
        .take(n)
        .map(|(k, b)| LimitedPrefix {
            prefix: limit.prefix_of(crate::protect::source_addr(k)).to_string(),
            refused: b.refused,
        })
        .collect()
}

fn read_local_port_range() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default()
}

/// A warning when the full-NAT port range overlaps the kernel's ephemeral range (`range_text`
/// as `/proc/sys/net/ipv4/ip_local_port_range` prints it): a host connection to a backend
/// (a health check, an operator's ssh) could then share a tuple with a balanced flow.
pub fn port_range_overlap(nat: (u16, u16), range_text: &str) -> Option<String> {
    let mut parts = range_text.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
    let (lo, hi) = (parts.next()?, parts.next()?);
    (nat.0 <= hi && lo <= nat.1).then(|| {
        format!(
            "agent.nat-ports {}-{} overlaps net.ipv4.ip_local_port_range {lo}-{hi}; \
             move one of them so the host's own connections never collide with balanced flows",
            nat.0, nat.1
        )
    })
}

fn poke_backends(config: &Config) {
    for backend in config.services.iter().flat_map(|s| &s.backends) {
        sys::poke_neighbour(backend.address);
    }
}

/// One health-check result for backend `backend` of service `service` (file indexes of the
/// configuration generation `generation`).
struct CheckResult {
    generation: u64,
    service: usize,
    backend: usize,
    outcome: Result<(), String>,
    seconds: f64,
}

/// Checks one backend forever, every `interval`, sending each result to the map owner.
async fn checker(
    generation: u64,
    (service, backend): (usize, usize),
    (addr, source): (SocketAddr, Option<IpAddr>),
    check: HealthCheck,
    results: mpsc::Sender<CheckResult>,
) {
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let outcome = health::check(addr, check.timeout, &check.expect, source)
            .await
            .map_err(|e| e.to_string());
        let seconds = started.elapsed().as_secs_f64();
        let result = CheckResult { generation, service, backend, outcome, seconds };
        if results.send(result).await.is_err() {
            return;
        }
    }
}

/// One host-key scan of backend `backend` ("address:port") of service `service` (by name).
struct HostKeyResult {
    service: String,
    backend: String,
    outcome: Result<Vec<HostKey>, String>,
}

/// Where the agent's background tasks report.
struct Reports {
    checks: mpsc::Sender<CheckResult>,
    host_keys: mpsc::Sender<HostKeyResult>,
}

/// Scans one backend's host keys forever, every `interval`; the first scan waits `stagger` so
/// a fleet's scans do not all start at once.
async fn host_key_scanner(
    (service, backend): (String, String),
    (addr, source): (SocketAddr, Option<IpAddr>),
    (interval, timeout, stagger): (Duration, Duration, Duration),
    results: mpsc::Sender<HostKeyResult>,
) {
    tokio::time::sleep(stagger).await;
    loop {
        let outcome = hostkeys::scan(addr, source, timeout).await.map_err(|e| e.to_string());
        let result = HostKeyResult { service: service.clone(), backend: backend.clone(), outcome };
        if results.send(result).await.is_err() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

fn spawn_checkers(
    balancer: &Balancer,
    generation: u64,
    reports: &Reports,
) -> Vec<tokio::task::JoinHandle<()>> {
    // Checks leave from the balancer's own (NAT) address, never from a VIP.
    let nat = dataplane_config(&balancer.config, &balancer.iface).ok();
    let source = |v6: bool| -> Option<IpAddr> {
        let nat = nat.as_ref()?;
        if v6 {
            (nat.nat_v6 != [0; 16]).then(|| IpAddr::from(nat.nat_v6))
        } else {
            (nat.nat_v4 != [0; 4]).then(|| IpAddr::from(nat.nat_v4))
        }
    };
    let mut tasks = Vec::new();
    for (s, service) in balancer.config.services.iter().enumerate() {
        for (b, backend) in service.backends.iter().enumerate() {
            let addr = SocketAddr::new(backend.address, backend.port);
            let target = (addr, source(addr.is_ipv6()));
            let check = service.health.clone();
            let results = reports.checks.clone();
            tasks.push(tokio::spawn(checker(generation, (s, b), target, check, results)));
            let interval = service.health.host_key_interval;
            if !interval.is_zero() {
                // A key exchange needs more than a banner: at least 5 s however short the
                // banner check's timeout.
                let timeout = service.health.timeout.max(Duration::from_secs(5));
                let stagger = Duration::from_millis(200) * u32::try_from(b % 50).unwrap_or(0);
                let who = (service.name.clone(), backend.ring_key());
                let results = reports.host_keys.clone();
                let timing = (interval, timeout, stagger);
                tasks.push(tokio::spawn(host_key_scanner(who, target, timing, results)));
            }
        }
    }
    tasks
}

/// Runs until `shutdown` resolves. This loop is the only writer of the maps: it health-checks
/// every backend (a task each) and republishes a service's ring when a backend goes down or
/// comes back; on SIGHUP it re-reads `config_path` and applies only the difference (a bad file
/// is refused and the running state is left exactly as it was); it sweeps expired flows, keeps
/// neighbours resolved, and prints counters every `stats_interval` (0 = never).
pub async fn run(balancer: &mut Balancer, options: RunOptions, shutdown: impl Future<Output = ()>) {
    let RunOptions { config_path, stats_interval, control } = options;
    let config_path = config_path.as_deref();
    tokio::pin!(shutdown);
    let (checks_tx, mut results) = mpsc::channel(1024);
    let (host_keys_tx, mut host_key_results) = mpsc::channel(64);
    let tx = Reports { checks: checks_tx, host_keys: host_keys_tx };
    let mut generation = 0u64;
    let mut checkers = spawn_checkers(balancer, generation, &tx);
    let (request_tx, mut requests) = mpsc::channel::<(Request, oneshot::Sender<Reply>)>(64);
    let (scrape_tx, mut scrapes) = mpsc::channel::<oneshot::Sender<String>>(16);
    let metrics_server = match tokio::net::TcpListener::bind(&balancer.config.agent.metrics).await {
        Ok(listener) => Some(tokio::spawn(serve_metrics(listener, scrape_tx))),
        Err(err) => {
            tracing::warn!(
                "metrics not served, cannot bind {}: {err}",
                balancer.config.agent.metrics
            );
            None
        }
    };
    let socket_path = control
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    let server = match control.map(tokio::net::UnixListener::from_std) {
        Some(Ok(listener)) => Some(tokio::spawn(serve_control(listener, request_tx))),
        Some(Err(err)) => {
            tracing::warn!("control socket unusable: {err}");
            None
        }
        None => None,
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut last_sweep, mut last_poke, mut last_stats) =
        (Instant::now(), Instant::now(), Instant::now());
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(result) = results.recv() => {
                if result.generation == generation {
                    on_check(balancer, &result);
                }
                continue;
            }
            Some(result) = host_key_results.recv() => {
                on_host_keys(balancer, result);
                continue;
            }
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                if let Err(err) = reload_and_recheck(balancer, config_path, &mut checkers, &mut generation, &tx) {
                    tracing::warn!("reload refused, nothing changed: {err}");
                }
                continue;
            }
            Some(reply) = scrapes.recv() => {
                let _ignored = reply.send(balancer.metrics());
                continue;
            }
            Some((request, reply)) = requests.recv() => {
                let answer = match request {
                    Request::Status => Reply { status: Some(balancer.status()), ..Reply::done() },
                    Request::Reload { kill_established } => {
                        match reload_and_recheck(balancer, config_path, &mut checkers, &mut generation, &tx) {
                            Ok(()) if kill_established => {
                                let killed = balancer.kill_denied_flows();
                                tracing::info!("--kill-established: ended {killed} flow(s) the lists now refuse");
                                Reply { note: Some(format!("ended {killed} established flow(s) the lists now refuse")), ..Reply::done() }
                            }
                            Ok(()) => Reply::done(),
                            Err(err) => Reply::failed(format!("reload refused, nothing changed: {err}")),
                        }
                    }
                    edit_request => {
                        let mut config = balancer.config.clone();
                        match control::edit(&mut config, &edit_request).and_then(|()| balancer.reload(config)) {
                            Ok(()) => {
                                tracing::info!("applied {edit_request:?}");
                                Reply::done()
                            }
                            Err(err) => Reply::failed(err),
                        }
                    }
                };
                let _ignored = reply.send(answer);
                continue;
            }
            _ = tick.tick() => {}
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            let now = sys::monotonic_ns();
            let timeouts = balancer.config.agent.timeouts;
            match expiry::sweep(&mut balancer.attached.dataplane, now, &timeouts) {
                Ok(s) if s.expired > 0 => {
                    tracing::info!("expired {} of {} flows", s.expired, s.scanned);
                }
                Ok(_) => {}
                Err(err) => tracing::warn!("flow expiry failed: {err}"),
            }
        }
        if last_poke.elapsed() >= POKE_EVERY {
            last_poke = Instant::now();
            poke_backends(&balancer.config);
        }
        if !stats_interval.is_zero() && last_stats.elapsed() >= stats_interval {
            last_stats = Instant::now();
            if let Ok(counters) = stats::read(&balancer.attached.dataplane.stats()) {
                eprint!("--\n{}", stats::render(&counters, false));
            }
        }
    }
    for task in checkers {
        task.abort();
    }
    for task in [server, metrics_server].into_iter().flatten() {
        task.abort();
    }
    if let Some(path) = socket_path {
        let _ignored = std::fs::remove_file(path);
    }
}

/// How [`run`] runs.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// The configuration file, re-read on SIGHUP and `reload`.
    pub config_path: Option<std::path::PathBuf>,
    /// Print counters this often (zero: never).
    pub stats_interval: Duration,
    /// The bound control socket ([`bind_control`]).
    pub control: Option<std::os::unix::net::UnixListener>,
}

/// Reloads from `path` and restarts the checkers for the new backend set.
fn reload_and_recheck(
    balancer: &mut Balancer,
    config_path: Option<&Path>,
    checkers: &mut Vec<tokio::task::JoinHandle<()>>,
    generation: &mut u64,
    results: &Reports,
) -> Result<(), String> {
    let path = config_path.ok_or("the agent was started without --config")?;
    reload_from(balancer, path)?;
    for task in checkers.drain(..) {
        task.abort();
    }
    *generation += 1;
    *checkers = spawn_checkers(balancer, *generation, results);
    tracing::info!("reloaded {}", path.display());
    Ok(())
}

/// Binds the control socket at `path` (mode 0600 in a 0700 directory). Refuses when another
/// agent answers there — two agents writing one data plane's maps would fight — and replaces a
/// stale socket left by a crashed one.
pub fn bind_control(path: &Path) -> Result<std::os::unix::net::UnixListener, String> {
    use std::os::unix::fs::PermissionsExt as _;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "another sshlb-agent is running (its control socket {} answers)",
            path.display()
        ));
    }
    let _ignored = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let _ignored = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("binding {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    listener.set_nonblocking(true).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(listener)
}

/// Accepts control connections; each gets one request line and one reply line.
async fn serve_control(
    listener: tokio::net::UnixListener,
    requests: mpsc::Sender<(Request, oneshot::Sender<Reply>)>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let requests = requests.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
            let (read, mut write) = stream.into_split();
            let mut lines =
                tokio::io::BufReader::new(read.take(control::MAX_REQUEST as u64)).lines();
            let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await;
            let reply = match line {
                Ok(Ok(Some(line))) => match serde_json::from_str::<Request>(&line) {
                    Ok(request) => {
                        let (tx, rx) = oneshot::channel();
                        if requests.send((request, tx)).await.is_err() {
                            Reply::failed("the agent is shutting down")
                        } else {
                            rx.await.unwrap_or_else(|_| Reply::failed("the agent is shutting down"))
                        }
                    }
                    Err(err) => Reply::failed(format!("not a valid request: {err}")),
                },
                _ => Reply::failed("expected one JSON request line"),
            };
            if let Ok(mut text) = serde_json::to_string(&reply) {
                text.push('\n');
                let _ignored = write.write_all(text.as_bytes()).await;
            }
        });
    }
}

/// Serves `GET /metrics`: each scrape asks the map owner for a snapshot.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    scrapes: mpsc::Sender<oneshot::Sender<String>>,
) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let scrapes = scrapes.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut head = Vec::with_capacity(512);
            let mut buf = [0u8; 512];
            let read = tokio::time::timeout(Duration::from_secs(2), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let (tx, rx) = oneshot::channel();
            let body = if scrapes.send(tx).await.is_ok() {
                rx.await.unwrap_or_default()
            } else {
                String::new()
            };
            let response = metrics::respond(&String::from_utf8_lossy(&head), || body);
            let _ignored = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// Reads, validates and applies the configuration at `path`.
pub fn reload_from(balancer: &mut Balancer, path: &Path) -> Result<(), String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let config =
        crate::config::parse(&path.display().to_string(), &text).map_err(|e| e.to_string())?;
    balancer.reload(config)
}

/// Records a check result; on a change of usability, re-plans (only that ring changes).
fn on_check(balancer: &mut Balancer, result: &CheckResult) {
    balancer.latency.observe(result.seconds);
    let service = &balancer.config.services[result.service];
    let backend = &service.backends[result.backend];
    let (rise, fall) = (service.health.rise, service.health.fall);
    let tracker = &mut balancer.trackers[result.service][result.backend];
    let was_usable = tracker.health().usable();
    let Some(health) = tracker.observe(result.outcome.is_ok(), rise, fall) else {
        return;
    };
    let why = result.outcome.as_ref().err().map_or(String::new(), |e| format!(" ({e})"));
    tracing::info!(
        "{}/{} {}:{} is {}{why}",
        service.name,
        backend.name,
        backend.address,
        backend.port,
        health.as_str()
    );
    if health.usable() != was_usable {
        if let Err(err) = balancer.replan() {
            tracing::error!("applying a health change failed: {err}");
        }
    }
}

/// Records a host-key scan, re-judges the backend's service, logs and counts what changed; under
/// `enforce`, a backend whose admission changed makes the ring change.
fn on_host_keys(balancer: &mut Balancer, result: HostKeyResult) {
    let Some(s) = balancer.config.services.iter().position(|s| s.name == result.service) else {
        return;
    };
    let service = &balancer.config.services[s];
    let Some(b) = service.backends.iter().position(|b| b.ring_key() == result.backend) else {
        return;
    };
    let before: Vec<bool> =
        (0..service.backends.len()).map(|b| balancer.host_keys_admit(s, b)).collect();
    let key = (result.service.clone(), result.backend.clone());
    let entry = balancer.host_keys.entry(key).or_insert(HostKeyState {
        keys: None,
        error: None,
        verdict: Verdict::Unknown,
    });
    match result.outcome {
        Ok(keys) => {
            entry.keys = Some(keys);
            entry.error = None;
        }
        Err(err) => {
            if entry.error.as_ref() != Some(&err) {
                tracing::warn!(
                    "{}/{}: host-key scan failed: {err}",
                    service.name,
                    service.backends[b].name
                );
            }
            // Keep the last keys seen: a failed scan says nothing new about them.
            entry.error = Some(err);
        }
    }
    let service = &balancer.config.services[s];
    let scanned: Vec<Option<Vec<HostKey>>> = service
        .backends
        .iter()
        .map(|backend| {
            let key = (service.name.clone(), backend.ring_key());
            balancer.host_keys.get(&key).and_then(|st| st.keys.clone())
        })
        .collect();
    let views: Vec<Option<&[HostKey]>> = scanned.iter().map(Option::as_deref).collect();
    let verdicts = hostkeys::judge(&service.host_keys, &views);
    for (backend, verdict) in service.backends.iter().zip(verdicts) {
        let key = (service.name.clone(), backend.ring_key());
        let Some(state) = balancer.host_keys.get_mut(&key) else { continue };
        if state.verdict == verdict {
            continue;
        }
        match &verdict {
            Verdict::Mismatch(why) => {
                *balancer.host_key_mismatches.entry(service.name.clone()).or_default() += 1;
                let consequence = match service.host_key_policy {
                    HostKeyPolicy::Enforce => "kept out of the ring (host-key-policy = enforce)",
                    HostKeyPolicy::Warn => {
                        "clients landing on it will see REMOTE HOST IDENTIFICATION HAS CHANGED"
                    }
                };
                tracing::warn!(
                    "{}/{} {}: host keys differ: {why}; {consequence}",
                    service.name,
                    backend.name,
                    backend.ring_key()
                );
            }
            Verdict::Match if state.verdict != Verdict::Unknown => {
                tracing::info!("{}/{}: host keys match again", service.name, backend.name);
            }
            _ => {}
        }
        state.verdict = verdict;
    }
    let after: Vec<bool> =
        (0..service.backends.len()).map(|b| balancer.host_keys_admit(s, b)).collect();
    if before != after {
        if let Err(err) = balancer.replan() {
            tracing::error!("applying a host-key change failed: {err}");
        }
    }
}
