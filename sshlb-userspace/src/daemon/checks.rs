//! The background checks: one banner health-check task and (for SSH services) one host-key
//! scanner per backend. They only observe; each result goes to the map owner as a message.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    config::{Config, Encap, HealthCheck, Mode, Service},
    health,
    hostkeys::{self, HostKey},
    tunnel_check::{self, TunnelCheck},
};

use super::{balancer::BackendRef, host};

/// One health-check result for `backend`, from the checkers of configuration generation
/// `generation` (results of an older generation are stale and ignored).
#[derive(Debug)]
pub struct CheckResult {
    /// The checkers' generation.
    pub generation: u64,
    /// The backend checked.
    pub backend: BackendRef,
    /// Passed, or why not.
    pub outcome: Result<(), String>,
    /// How long the check took.
    pub seconds: f64,
}

/// One host-key scan of `backend`.
#[derive(Debug)]
pub struct HostKeyResult {
    /// The backend scanned.
    pub backend: BackendRef,
    /// The keys it presented, or why the scan failed.
    pub outcome: Result<Vec<HostKey>, String>,
}

/// Where the agent's background tasks report.
#[derive(Clone, Debug)]
pub struct Reports {
    /// Health-check results.
    pub checks: mpsc::Sender<CheckResult>,
    /// Host-key scans.
    pub host_keys: mpsc::Sender<HostKeyResult>,
}

/// The pause before a backend's first host-key scan: backends of one service start 200 ms
/// apart (wrapping after 50) so a fleet's scans do not all start at once.
pub fn scan_stagger(position: usize) -> Duration {
    Duration::from_millis(200) * u32::try_from(position % 50).unwrap_or(0)
}

/// The time one host-key scan may take: a key exchange needs more than a banner, so at least
/// 5 s however short the banner check's timeout.
pub fn scan_timeout(check: &HealthCheck) -> Duration {
    check.timeout.max(Duration::from_secs(5))
}

/// Checks one backend forever, every `interval`, sending each result to the map owner.
/// Tunnel-mode backends pass only when the probe through the tunnel passes too
/// ([`crate::tunnel_check`]).
async fn checker(
    generation: u64,
    backend: BackendRef,
    (source, tunnel): (Option<IpAddr>, Option<TunnelCheck>),
    check: HealthCheck,
    results: mpsc::Sender<CheckResult>,
) {
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let mut outcome = health::check(backend.address, check.timeout, &check.expect, source)
            .await
            .map_err(|e| e.to_string());
        if let (Ok(()), Some(tunnel)) = (&outcome, &tunnel) {
            let (tunnel, timeout) = (tunnel.clone(), check.timeout);
            outcome = tokio::task::spawn_blocking(move || tunnel_check::probe(&tunnel, timeout))
                .await
                .map_err(|e| e.to_string())
                .and_then(|probed| probed.map_err(|e| e.to_string()));
        }
        let seconds = started.elapsed().as_secs_f64();
        let result = CheckResult { generation, backend: backend.clone(), outcome, seconds };
        if results.send(result).await.is_err() {
            return;
        }
    }
}

/// Scans one backend's host keys forever, every `interval`, the first after `stagger`.
async fn host_key_scanner(
    backend: BackendRef,
    source: Option<IpAddr>,
    (interval, timeout, stagger): (Duration, Duration, Duration),
    results: mpsc::Sender<HostKeyResult>,
) {
    tokio::time::sleep(stagger).await;
    let addr: SocketAddr = backend.address;
    loop {
        let outcome = hostkeys::scan(addr, source, timeout).await.map_err(|e| e.to_string());
        let result = HostKeyResult { backend: backend.clone(), outcome };
        if results.send(result).await.is_err() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

/// The probe through the tunnel for a tunnel-mode service's backend (`None` for the other modes,
/// or without a source address of the family).
fn tunnel_probe(
    config: &Config,
    service: &Service,
    backend: &BackendRef,
    source: Option<IpAddr>,
) -> Option<TunnelCheck> {
    (service.mode == Mode::Tunnel).then_some(())?;
    Some(TunnelCheck {
        vip: SocketAddr::new(service.vip, service.port),
        backend: backend.address.ip(),
        source: source?,
        gue_port: (service.encap == Encap::Gue).then_some(config.agent.gue_port),
    })
}

/// Starts the checks of every backend of `config` on `iface` (generation `generation`).
pub fn spawn(
    config: &Config,
    iface: &str,
    generation: u64,
    reports: &Reports,
) -> Vec<JoinHandle<()>> {
    // Checks leave from the balancer's own (NAT) address, never from a VIP.
    let nat = host::dataplane_config(config, iface).ok();
    let mut tasks = Vec::new();
    for service in &config.services {
        for (position, backend) in service.backends.iter().enumerate() {
            let backend = BackendRef::of(service, backend);
            let source = host::check_source(nat.as_ref(), backend.address.is_ipv6());
            let check = service.health.clone();
            let results = reports.checks.clone();
            let tunnel = tunnel_probe(config, service, &backend, source);
            let task = checker(generation, backend.clone(), (source, tunnel), check, results);
            tasks.push(tokio::spawn(task));
            let interval = service.health.host_key_interval;
            if !interval.is_zero() {
                let timing = (interval, scan_timeout(&service.health), scan_stagger(position));
                let results = reports.host_keys.clone();
                tasks.push(tokio::spawn(host_key_scanner(backend, source, timing, results)));
            }
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_are_staggered_and_given_time_for_a_key_exchange() {
        assert_eq!(scan_stagger(0), Duration::ZERO);
        assert_eq!(scan_stagger(3), Duration::from_millis(600));
        assert_eq!(scan_stagger(53), Duration::from_millis(600), "wraps after 50");
        let check = HealthCheck::default();
        assert_eq!(scan_timeout(&check), Duration::from_secs(5));
        let slow = HealthCheck { timeout: Duration::from_secs(8), ..HealthCheck::default() };
        assert_eq!(scan_timeout(&slow), Duration::from_secs(8));
    }
}
