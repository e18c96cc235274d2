//! The running balancer: attach, write the configuration into the maps, prepare the interface,
//! then (in the foreground) expire flows and keep backends' neighbours resolved until shutdown.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use sshlb_common::Config as DataplaneConfig;

use crate::{
    config::{Config, HealthCheck},
    expiry,
    health::{self, Tracker},
    loader::{self, AttachMode, Attached, LoadOptions},
    plan::{self, Plan},
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

/// Writes `plan` and the NAT settings into the maps: backends first, then each service with its
/// ring (standby half, then the flip), so no packet ever sees a ring naming an unknown backend.
pub fn apply(
    attached: &mut Attached,
    plan: &Plan,
    nat: &DataplaneConfig,
) -> Result<(), crate::maps::MapsError> {
    let dp = &mut attached.dataplane;
    dp.set_config(nat)?;
    for (id, backend) in &plan.backends {
        dp.set_backend(*id, backend)?;
    }
    for service in &plan.services {
        dp.publish_service(&service.key, service.id, service.flags, &service.ring)?;
    }
    Ok(())
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

/// Attaches the data plane on `iface` and writes `config` into it. On failure after attaching,
/// detaches again: a failed start leaves nothing behind.
pub fn start(
    pin_root: &Path,
    iface: &str,
    mode: AttachMode,
    config: &Config,
) -> Result<Attached, StartError> {
    let plan = plan::plan(config)?;
    let nat = dataplane_config(config, iface)?;
    let options = LoadOptions { max_flows: config.agent.max_flows, pin_dir: None };
    let mut attached = loader::up(pin_root, iface, mode, &options).map_err(Box::new)?;
    if let Err(err) = apply(&mut attached, &plan, &nat) {
        // A fresh data plane that cannot be configured goes away again; an adopted one keeps
        // carrying its established flows with the state it had.
        let adopted = attached.adopted;
        drop(attached);
        if !adopted {
            let _ignored = loader::down(pin_root, iface);
        }
        return Err(err.into());
    }
    let ipv6 = config.services.iter().any(|s| s.vip.is_ipv6());
    for (key, value) in interface_sysctls(iface, ipv6) {
        match sys::set_sysctl(&key, value) {
            Ok(Some(old)) => eprintln!("sshlb-agent: set {key}={value} (was {old})"),
            Ok(None) => {}
            // IPv6 may be disabled on the host: that only matters for IPv6 services.
            Err(err) => eprintln!("sshlb-agent: warning: cannot set {key}={value}: {err}"),
        }
    }
    if let Some(warning) = port_range_overlap(config.agent.nat_ports, &read_local_port_range()) {
        eprintln!("sshlb-agent: warning: {warning}");
    }
    poke_backends(config);
    Ok(attached)
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

/// One health-check result for backend `backend` of service `service` (file indexes).
struct CheckResult {
    service: usize,
    backend: usize,
    outcome: Result<(), String>,
}

/// Checks one backend forever, every `interval`, sending each result to the map owner.
async fn checker(
    service: usize,
    backend: usize,
    addr: SocketAddr,
    check: HealthCheck,
    results: mpsc::Sender<CheckResult>,
) {
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let outcome =
            health::check(addr, check.timeout, &check.expect).await.map_err(|e| e.to_string());
        if results.send(CheckResult { service, backend, outcome }).await.is_err() {
            return;
        }
    }
}

/// Runs until `shutdown` resolves: health-checks every backend (a task each) and republishes
/// a service's ring when one of its backends goes down or comes back, sweeps expired flows,
/// keeps neighbours resolved, prints counters every `stats_interval` (0 = never). This loop
/// is the only writer of the maps.
pub async fn run(
    attached: &mut Attached,
    config: &Config,
    stats_interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let (tx, mut results) = mpsc::channel(1024);
    let mut trackers: Vec<Vec<Tracker>> =
        config.services.iter().map(|s| vec![Tracker::default(); s.backends.len()]).collect();
    let mut checkers = Vec::new();
    for (s, service) in config.services.iter().enumerate() {
        for (b, backend) in service.backends.iter().enumerate() {
            let addr = SocketAddr::new(backend.address, backend.port);
            checkers.push(tokio::spawn(checker(s, b, addr, service.health.clone(), tx.clone())));
        }
    }
    drop(tx);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut last_sweep, mut last_poke, mut last_stats) =
        (Instant::now(), Instant::now(), Instant::now());
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(result) = results.recv() => {
                on_check(attached, config, &mut trackers, &result);
                continue;
            }
            _ = tick.tick() => {}
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            let now = sys::monotonic_ns();
            match expiry::sweep(&mut attached.dataplane, now, &config.agent.timeouts) {
                Ok(s) if s.expired > 0 => {
                    eprintln!("sshlb-agent: expired {} of {} flows", s.expired, s.scanned);
                }
                Ok(_) => {}
                Err(err) => eprintln!("sshlb-agent: warning: flow expiry failed: {err}"),
            }
        }
        if last_poke.elapsed() >= POKE_EVERY {
            last_poke = Instant::now();
            poke_backends(config);
        }
        if !stats_interval.is_zero() && last_stats.elapsed() >= stats_interval {
            last_stats = Instant::now();
            if let Ok(counters) = stats::read(&attached.dataplane.stats()) {
                eprint!("--\n{}", stats::render(&counters, false));
            }
        }
    }
    for task in checkers {
        task.abort();
    }
}

/// Records a check result; on a health change, rebuilds and republishes that service's ring.
fn on_check(
    attached: &mut Attached,
    config: &Config,
    trackers: &mut [Vec<Tracker>],
    result: &CheckResult,
) {
    let service = &config.services[result.service];
    let backend = &service.backends[result.backend];
    let tracker = &mut trackers[result.service][result.backend];
    let was_usable = tracker.health().usable();
    let Some(health) =
        tracker.observe(result.outcome.is_ok(), service.health.rise, service.health.fall)
    else {
        return;
    };
    let why = result.outcome.as_ref().err().map_or(String::new(), |e| format!(" ({e})"));
    eprintln!(
        "sshlb-agent: {}/{} {}:{} is {}{why}",
        service.name,
        backend.name,
        backend.address,
        backend.port,
        health.as_str()
    );
    if health.usable() == was_usable {
        return;
    }
    let usable = |s: usize, b: usize| trackers[s][b].health().usable();
    match plan::plan_with(config, usable) {
        Ok(plan) => {
            let planned = &plan.services[result.service];
            if let Err(err) = attached.dataplane.publish_service(
                &planned.key,
                planned.id,
                planned.flags,
                &planned.ring,
            ) {
                eprintln!("sshlb-agent: error: republishing {}'s ring failed: {err}", service.name);
            }
        }
        Err(err) => {
            eprintln!("sshlb-agent: error: rebuilding {}'s ring failed: {err}", service.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_only_when_nat_ports_overlap_the_ephemeral_range() {
        assert_eq!(port_range_overlap((10_000, 32_767), "32768\t60999\n"), None);
        let warning = port_range_overlap((30_000, 40_000), "32768\t60999\n").expect("overlap");
        assert!(warning.contains("30000-40000") && warning.contains("32768-60999"), "{warning}");
        assert_eq!(port_range_overlap((30_000, 40_000), "garbage"), None);
    }

    #[test]
    fn nat_address_is_never_a_vip_and_prefers_a_subnet_address() {
        let a = |s: &str| s.parse::<IpAddr>().expect("address");
        // The kernel lists IPv6 addresses newest first: VIPs added after the subnet address.
        let addrs = [
            (a("fd00::101"), 128),
            (a("fd00::100"), 128),
            (a("fd00::2"), 64),
            (a("198.18.0.2"), 24),
        ];
        let vips = [a("fd00::100"), a("fd00::101")];
        assert_eq!(pick_nat_address(&addrs, &vips, true), Some(a("fd00::2")));
        assert_eq!(pick_nat_address(&addrs, &vips, false), Some(a("198.18.0.2")));
        // Only VIPs: nothing usable.
        assert_eq!(pick_nat_address(&addrs[..2], &vips, true), None);
        // A lone host address that is not a VIP is acceptable.
        assert_eq!(pick_nat_address(&[(a("fd00::9"), 128)], &vips, true), Some(a("fd00::9")));
    }
}
