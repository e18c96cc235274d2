//! The foreground loop: the one place that reacts to events — check results, host-key scans,
//! SIGHUP, control requests, scrapes, the once-a-second housekeeping — each by a named method
//! of [`Runner`], all on the map owner's task.

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::{
    control::{self, Reply, Request},
    expiry, kill, metrics, stats, sys,
};

use super::{
    balancer::{Balancer, ReloadError},
    checks::{self, CheckResult, HostKeyResult, Reports},
    host,
};

/// How often flows are swept for expiry.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often backends' neighbours are re-resolved.
const POKE_EVERY: Duration = Duration::from_secs(10);

/// How [`run`] runs.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// The configuration file, re-read on SIGHUP and `reload`.
    pub config_path: Option<PathBuf>,
    /// Print counters this often (zero: never).
    pub stats_interval: Duration,
    /// The bound control socket ([`control::bind_control`]).
    pub control: Option<std::os::unix::net::UnixListener>,
}

/// The loop's state besides the balancer: the checkers of the configuration in force and when
/// the periodic chores last ran.
struct Runner<'a> {
    balancer: &'a mut Balancer,
    config_path: Option<PathBuf>,
    stats_interval: Duration,
    reports: Reports,
    generation: u64,
    checkers: Vec<JoinHandle<()>>,
    last_sweep: Instant,
    last_poke: Instant,
    last_stats: Instant,
}

/// Runs until `shutdown` resolves. This loop is the only writer of the maps: it health-checks
/// every backend (a task each) and republishes a service's ring when a backend goes down or
/// comes back; on SIGHUP it re-reads `config_path` and applies only the difference (a bad file
/// is refused and the running state is left exactly as it was); it sweeps expired flows, keeps
/// neighbours resolved, and prints counters every `stats_interval` (0 = never).
pub async fn run(balancer: &mut Balancer, options: RunOptions, shutdown: impl Future<Output = ()>) {
    let RunOptions { config_path, stats_interval, control } = options;
    tokio::pin!(shutdown);
    let (checks_tx, mut results) = mpsc::channel(1024);
    let (host_keys_tx, mut host_key_results) = mpsc::channel(64);
    let reports = Reports { checks: checks_tx, host_keys: host_keys_tx };
    let (request_tx, mut requests) = mpsc::channel::<(Request, oneshot::Sender<Reply>)>(64);
    let (scrape_tx, mut scrapes) = mpsc::channel::<oneshot::Sender<String>>(16);
    let metrics_server = match tokio::net::TcpListener::bind(&balancer.config.agent.metrics).await {
        Ok(listener) => Some(tokio::spawn(metrics::server::serve(listener, scrape_tx))),
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
        Some(Ok(listener)) => Some(tokio::spawn(control::server::serve(listener, request_tx))),
        Some(Err(err)) => {
            tracing::warn!("control socket unusable: {err}");
            None
        }
        None => None,
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let resetter = spawn_resetter(balancer);
    let checkers = checks::spawn(&balancer.config, &balancer.iface, 0, &reports);
    let now = Instant::now();
    let mut runner = Runner {
        balancer,
        config_path,
        stats_interval,
        reports,
        generation: 0,
        checkers,
        last_sweep: now,
        last_poke: now,
        last_stats: now,
    };
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(result) = results.recv() => runner.on_check(&result),
            Some(result) = host_key_results.recv() => runner.on_host_keys(result),
            Some(()) = sighup(hangup.as_mut()) => runner.on_hangup(),
            Some(reply) = scrapes.recv() => {
                let _ignored = reply.send(runner.balancer.metrics());
            }
            Some((request, reply)) = requests.recv() => {
                let _ignored = reply.send(runner.on_request(request));
            }
            _ = tick.tick() => runner.chores(),
        }
        runner.balancer.announce(false);
    }
    runner.balancer.announce(true);
    for task in runner.checkers.drain(..) {
        task.abort();
    }
    for task in [server, metrics_server, resetter].into_iter().flatten() {
        task.abort();
    }
    if let Some(path) = socket_path {
        let _ignored = std::fs::remove_file(path);
    }
}

/// The task that resets the clients of killed flows ([`kill::serve_resets`]).
fn spawn_resetter(balancer: &mut Balancer) -> Option<JoinHandle<()>> {
    let ring = balancer.attached.dataplane.take_resets()?;
    match kill::RawSender::open() {
        Ok(sender) => Some(tokio::spawn(kill::serve_resets(ring, sender))),
        Err(err) => {
            tracing::warn!("--kill-established will not reset clients: no raw socket ({err})");
            None
        }
    }
}

/// The next SIGHUP (never, when the handler could not be installed).
async fn sighup(hangup: Option<&mut tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    }
}

impl Runner<'_> {
    /// A health-check result (stale generations are ignored).
    fn on_check(&mut self, result: &CheckResult) {
        if result.generation != self.generation {
            return;
        }
        self.balancer.latency.observe(result.seconds);
        let why = result.outcome.as_ref().err().map(String::as_str);
        self.balancer.on_check(&result.backend, result.outcome.is_ok(), why);
    }

    /// A host-key scan.
    fn on_host_keys(&mut self, result: HostKeyResult) {
        self.balancer.on_host_keys(&result.backend, result.outcome);
    }

    /// SIGHUP: reload, keeping everything as it was when the new file is refused.
    fn on_hangup(&mut self) {
        if let Err(err) = self.reload_and_recheck() {
            tracing::warn!("reload refused, nothing changed: {err}");
        }
    }

    /// One control request; returns the reply.
    fn on_request(&mut self, request: Request) -> Reply {
        match request {
            Request::Status => Reply { status: Some(self.balancer.status()), ..Reply::done() },
            Request::Maintenance { on } => self.balancer.set_maintenance(on),
            Request::Reload { kill_established } => match self.reload_and_recheck() {
                Ok(()) if kill_established => {
                    let killed = self.balancer.kill_denied_flows();
                    tracing::info!(
                        "--kill-established: ended {killed} flow(s) the lists now refuse"
                    );
                    Reply {
                        note: Some(format!(
                            "ended {killed} established flow(s) the lists now refuse"
                        )),
                        ..Reply::done()
                    }
                }
                Ok(()) => Reply::done(),
                Err(err) => Reply::failed(format!("reload refused, nothing changed: {err}")),
            },
            edit_request => {
                let mut config = self.balancer.config.clone();
                let applied = control::edit(&mut config, &edit_request)
                    .map_err(|e| e.to_string())
                    .and_then(|()| self.balancer.reload(config).map_err(|e| e.to_string()));
                match applied {
                    Ok(()) => {
                        tracing::info!("applied {edit_request:?}");
                        Reply::done()
                    }
                    Err(err) => Reply::failed(err),
                }
            }
        }
    }

    /// Reloads from the configuration file and restarts the checkers for the new backend set.
    fn reload_and_recheck(&mut self) -> Result<(), ReloadError> {
        let path = self.config_path.clone().ok_or(ReloadError::NoConfigFile)?;
        self.balancer.reload_from(&path)?;
        for task in self.checkers.drain(..) {
            task.abort();
        }
        self.generation += 1;
        let balancer = &*self.balancer;
        self.checkers =
            checks::spawn(&balancer.config, &balancer.iface, self.generation, &self.reports);
        tracing::info!("reloaded {}", path.display());
        Ok(())
    }

    /// The periodic work, each at its own pace: expire flows, re-resolve neighbours, print
    /// counters.
    fn chores(&mut self) {
        if self.last_sweep.elapsed() >= SWEEP_EVERY {
            self.last_sweep = Instant::now();
            let now = sys::monotonic_ns();
            let timeouts = self.balancer.config.agent.timeouts;
            match expiry::sweep(&mut self.balancer.attached.dataplane, now, &timeouts) {
                Ok(s) if s.expired > 0 => {
                    tracing::info!("expired {} of {} flows", s.expired, s.scanned);
                }
                Ok(_) => {}
                Err(err) => tracing::warn!("flow expiry failed: {err}"),
            }
        }
        if self.last_poke.elapsed() >= POKE_EVERY {
            self.last_poke = Instant::now();
            host::poke_backends(&self.balancer.config);
        }
        if !self.stats_interval.is_zero() && self.last_stats.elapsed() >= self.stats_interval {
            self.last_stats = Instant::now();
            if let Ok(counters) = stats::read(&self.balancer.attached.dataplane.stats()) {
                eprint!("--\n{}", stats::render(&counters, false));
            }
        }
    }
}
