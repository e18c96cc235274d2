//! The map owner: the attached data plane, the configuration in force, and one runtime record
//! per backend. It decides (plan, diff) and has the executor write; nothing else writes maps.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::Path,
};

use sshlb_common::flow_flags;

use crate::{
    config::{self, Config, HostKeyPolicy},
    health::Tracker,
    hostkeys::{self, HostKey, Verdict},
    kill,
    loader::{self, AttachMode, Attached, LoadOptions},
    maps::MapsError,
    metrics,
    plan::{self, Ids, MapOp, Plan},
    protection, stats, sys,
};

use super::host::{self, NoNatAddress};

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
    Maps(#[from] MapsError),
    /// A service needs a NAT address the interface does not have.
    #[error(transparent)]
    NoNatAddress(#[from] NoNatAddress),
}

/// Why a new configuration (a reload or a runtime edit) was refused; the previous one stays in
/// force. The messages are what `reload` and the control commands print.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// `agent.max-flows` sizes the connection table at attach.
    #[error(
        "agent.max-flows cannot change while running (the table is sized at attach); \
         restart with `down` + `up` to resize it"
    )]
    MaxFlowsChanged,
    /// The configuration cannot be turned into rings.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// A full-NAT service has no source address.
    #[error(transparent)]
    NoNatAddress(#[from] NoNatAddress),
    /// The data plane refused a write.
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// The agent has no configuration file to re-read.
    #[error("the agent was started without --config")]
    NoConfigFile,
    /// The configuration file cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// One backend, as every part of the agent names it: its service's name and its address and
/// port. This is the identity that survives reloads — a backend renamed at the same address
/// keeps its health and host-key state, one moved to another address is a new backend — and
/// the one the Maglev ring hashes (`address:port`). Addresses are unique within a service and
/// service names are unique, so the pair names exactly one configured backend; file positions
/// are not used because editing the file moves them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendRef {
    /// The service's name.
    pub service: String,
    /// The backend's address and port.
    pub address: SocketAddr,
}

impl BackendRef {
    /// The reference of `backend` in `service`.
    pub fn of(service: &config::Service, backend: &config::Backend) -> Self {
        Self {
            service: service.name.clone(),
            address: SocketAddr::new(backend.address, backend.port),
        }
    }
}

/// What the agent knows about one backend's host keys.
#[derive(Clone, Debug)]
pub(super) struct HostKeyState {
    /// Keys from the last successful scan.
    pub keys: Option<Vec<HostKey>>,
    /// Why the last scan failed (cleared by a successful one).
    pub error: Option<String>,
    /// The last judgement.
    pub verdict: Verdict,
}

impl Default for HostKeyState {
    fn default() -> Self {
        Self { keys: None, error: None, verdict: Verdict::Unknown }
    }
}

/// Everything the agent tracks about one backend at run time.
#[derive(Clone, Debug, Default)]
pub(super) struct BackendRuntime {
    /// Health-check state (and how often it changed).
    pub health: Tracker,
    /// Host-key scan state.
    pub host_keys: HostKeyState,
    /// Its id in `BACKENDS` (and the per-backend traffic counters), once planned.
    pub map_id: Option<u32>,
}

/// The running balancer: the attached data plane and everything the map owner must remember
/// to apply only differences (ids, the plan in force, each backend's runtime record).
pub struct Balancer {
    /// The data plane.
    pub attached: Attached,
    /// The configuration in force.
    pub config: Config,
    pub(super) iface: String,
    ids: Ids,
    pub(super) plan: Plan,
    /// One record per backend. Records of removed backends stay (a backend put back finds
    /// its last host-key verdict, its health starts over), as they always have.
    pub(super) backends: BTreeMap<BackendRef, BackendRuntime>,
    /// Times a backend was found with mismatching host keys, per service name.
    pub(super) host_key_mismatches: HashMap<String, u64>,
    pub(super) latency: metrics::CheckLatency,
    pub(super) config_state: metrics::ConfigState,
    /// VIP announcements to BIRD and the maintenance switch.
    pub(super) announcer: super::announce::Announcer,
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
    let nat = host::dataplane_config(config, iface)?;
    let options = LoadOptions { max_flows: config.agent.max_flows, pin_dir: None };
    let mut attached = loader::up(pin_root, iface, mode, &options).map_err(Box::new)?;
    // Ids already in the maps (a takeover) stay what they are: flows name backends by id.
    let previous = attached.dataplane.existing_ids();
    let applied = plan::plan_with(config, |_, _| true, &previous)
        .map_err(StartError::from)
        .and_then(|(plan, ids)| {
            let present = attached.dataplane.acl_entries();
            let mut ops = vec![MapOp::SetConfig(nat)];
            ops.extend(plan::initial(&plan, &present));
            attached.dataplane.execute(&ops)?;
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
    host::prepare(config, iface);
    let mut balancer = Balancer {
        attached,
        config: config.clone(),
        iface: iface.to_owned(),
        ids,
        plan,
        backends: BTreeMap::new(),
        host_key_mismatches: HashMap::new(),
        latency: metrics::CheckLatency::default(),
        config_state: metrics::ConfigState {
            generation: 0,
            last_reload_ok: true,
            last_reload_unix: 0,
        },
        announcer: super::announce::Announcer::default(),
    };
    balancer.adopt_records(None);
    Ok(balancer)
}

impl Balancer {
    /// The configured backends, in file order, with their references.
    pub(super) fn configured(
        &self,
    ) -> impl Iterator<Item = (&config::Service, &config::Backend, BackendRef)> {
        self.config.services.iter().flat_map(|service| {
            service.backends.iter().map(move |b| (service, b, BackendRef::of(service, b)))
        })
    }

    /// Gives every configured backend a record: kept when it was configured in `old` too
    /// (`None`: everything is new), with fresh health otherwise; then records map ids.
    fn adopt_records(&mut self, old: Option<&Config>) {
        let refs: Vec<BackendRef> = self.configured().map(|(_, _, r)| r).collect();
        for r in refs {
            let carried = old.is_some_and(|old| {
                old.services
                    .iter()
                    .filter(|s| s.name == r.service)
                    .any(|s| s.backends.iter().any(|b| BackendRef::of(s, b).address == r.address))
            });
            let record = self.backends.entry(r).or_default();
            if !carried {
                record.health = Tracker::default();
            }
        }
        self.record_map_ids();
    }

    /// Copies each configured backend's map id from the ids in force into its record.
    fn record_map_ids(&mut self) {
        for (r, record) in &mut self.backends {
            let service_id = self
                .config
                .services
                .iter()
                .position(|s| s.name == r.service)
                .and_then(|s| self.plan.services.get(s))
                .map(|p| p.id);
            record.map_id = service_id
                .and_then(|id| self.ids.backends.get(&plan::backend_ident(id, r.address)).copied());
        }
    }

    /// The record of `backend`, if it has one.
    pub(super) fn record(&self, backend: &BackendRef) -> Option<&BackendRuntime> {
        self.backends.get(backend)
    }

    /// Whether `backend` may take new flows as far as the agent's checks go: not down, and
    /// admitted by its host keys.
    pub(super) fn usable(&self, service: &config::Service, backend: &BackendRef) -> bool {
        let healthy = self.record(backend).is_none_or(|r| r.health.health().usable());
        healthy && self.host_keys_admit(service, backend)
    }

    /// Whether `backend` may take new flows as far as its host keys go: always under `warn`;
    /// under `enforce` only once a scan found the configured keys.
    pub(super) fn host_keys_admit(&self, service: &config::Service, backend: &BackendRef) -> bool {
        service.host_key_policy != HostKeyPolicy::Enforce
            || self.record(backend).is_some_and(|r| r.host_keys.verdict == Verdict::Match)
    }

    /// Re-plans with current health and applies the difference.
    pub(super) fn replan(&mut self) -> Result<(), ReloadError> {
        let config = &self.config;
        let usable = |s: usize, b: usize| {
            let service = &config.services[s];
            self.usable(service, &BackendRef::of(service, &service.backends[b]))
        };
        let (plan, ids) = plan::plan_with(config, usable, &self.ids)?;
        let nat = host::dataplane_config(config, &self.iface)?;
        let mut ops = vec![MapOp::SetConfig(nat)];
        ops.extend(plan::diff(&self.plan, &plan));
        self.attached.dataplane.execute(&ops)?;
        self.plan = plan;
        self.ids = ids;
        self.record_map_ids();
        Ok(())
    }

    /// Switches to `config` (already validated), applying only the difference. On error the
    /// previous configuration stays in force.
    pub fn reload(&mut self, config: Config) -> Result<(), ReloadError> {
        if config.agent.max_flows != self.config.agent.max_flows {
            return Err(ReloadError::MaxFlowsChanged);
        }
        let old_records = self.backends.clone();
        let old_config = std::mem::replace(&mut self.config, config);
        self.adopt_records(Some(&old_config));
        if let Err(err) = self.replan() {
            self.config = old_config;
            self.backends = old_records;
            return Err(err);
        }
        self.config_state.generation += 1;
        Ok(())
    }

    /// Reads, validates and applies the configuration at `path`.
    pub fn reload_from(&mut self, path: &Path) -> Result<(), ReloadError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ReloadError::Read { path: shown.clone(), source })?;
        let config = config::parse(&shown, &text)?;
        self.reload(config)
    }

    /// Ends established flows whose client the allow/deny lists now refuse (`reload
    /// --kill-established`), at both ends ([`kill`]); returns how many.
    pub fn kill_denied_flows(&mut self) -> u64 {
        let acls: Vec<(u32, protection::Acl)> = self
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
        let targets = kill::mark(&mut self.attached.dataplane, sys::monotonic_ns(), |key, flow| {
            flow.flags & flow_flags::KILL == 0
                && acls.iter().any(|(id, acl)| {
                    *id == flow.service_id
                        && !acl.allows(sshlb_common::addr::from16(key.family, &key.src))
                })
        });
        match kill::RawSender::open() {
            Ok(sender) => {
                // Any number far from the endpoints' windows does: the probe's sequence number
                // is half the sequence space away from it.
                let near = sys::monotonic_ns() as u32;
                kill::probe(&sender, &targets, near);
                if let (false, Ok(runtime)) =
                    (targets.is_empty(), tokio::runtime::Handle::try_current())
                {
                    runtime.spawn(kill::reprobe(sender, targets.clone(), near));
                }
            }
            Err(err) => tracing::warn!(
                "--kill-established: no raw socket ({err}); the flows end on their next segment"
            ),
        }
        targets.len() as u64
    }

    /// A Prometheus scrape of the running balancer.
    pub fn metrics(&mut self) -> String {
        let status = self.status();
        let counters = stats::read(&self.attached.dataplane.stats()).unwrap_or_default();
        let (first, last) = self.config.agent.nat_ports;
        let limits = metrics::Limits {
            max_flows: self.config.agent.max_flows,
            nat_ports: u32::from(last) - u32::from(first) + 1,
            announce_enabled: self.config.announce.mode != crate::config::AnnounceMode::None,
        };
        metrics::render(&metrics::Snapshot {
            limits,
            status: &status,
            counters: &counters,
            latency: &self.latency,
            config: self.config_state,
            host_key_mismatches: &self.host_key_mismatches,
        })
    }

    /// Records a check result for `backend`; on a change of usability, re-plans (only that
    /// ring changes).
    pub(super) fn on_check(&mut self, backend: &BackendRef, passed: bool, why: Option<&str>) {
        let Some((service, b)) = self.find(backend) else { return };
        let (rise, fall) = (service.health.rise, service.health.fall);
        let label = format!("{}/{} {}:{}", service.name, b.name, b.address, b.port);
        let record = self.backends.entry(backend.clone()).or_default();
        let was_usable = record.health.health().usable();
        let Some(health) = record.health.observe(passed, rise, fall) else {
            return;
        };
        let why = why.map_or(String::new(), |e| format!(" ({e})"));
        tracing::info!("{label} is {}{why}", health.as_str());
        if health.usable() != was_usable {
            if let Err(err) = self.replan() {
                tracing::error!("applying a health change failed: {err}");
            }
        }
    }

    /// The configured service and backend `backend` names.
    fn find(&self, backend: &BackendRef) -> Option<(&config::Service, &config::Backend)> {
        let service = self.config.services.iter().find(|s| s.name == backend.service)?;
        let b = service.backends.iter().find(|b| BackendRef::of(service, b) == *backend)?;
        Some((service, b))
    }

    /// Records a host-key scan of `backend`, re-judges its service, logs and counts what
    /// changed; under `enforce`, a backend whose admission changed makes the ring change.
    pub(super) fn on_host_keys(
        &mut self,
        backend: &BackendRef,
        outcome: Result<Vec<HostKey>, String>,
    ) {
        let Some((service, b)) = self.find(backend) else { return };
        let service = service.clone();
        let name = b.name.clone();
        let refs: Vec<BackendRef> =
            service.backends.iter().map(|b| BackendRef::of(&service, b)).collect();
        let admitted = |me: &Self| -> Vec<bool> {
            refs.iter().map(|r| me.host_keys_admit(&service, r)).collect()
        };
        let before = admitted(self);
        let entry = &mut self.backends.entry(backend.clone()).or_default().host_keys;
        match outcome {
            Ok(keys) => {
                entry.keys = Some(keys);
                entry.error = None;
            }
            Err(err) => {
                if entry.error.as_ref() != Some(&err) {
                    tracing::warn!("{}/{name}: host-key scan failed: {err}", service.name);
                }
                // Keep the last keys seen: a failed scan says nothing new about them.
                entry.error = Some(err);
            }
        }
        let scanned: Vec<Option<Vec<HostKey>>> = refs
            .iter()
            .map(|r| self.record(r).and_then(|rec| rec.host_keys.keys.clone()))
            .collect();
        let views: Vec<Option<&[HostKey]>> = scanned.iter().map(Option::as_deref).collect();
        let verdicts = hostkeys::judge(&service.host_keys, &views);
        for ((b, r), verdict) in service.backends.iter().zip(&refs).zip(verdicts) {
            let Some(state) = self.backends.get_mut(r).map(|rec| &mut rec.host_keys) else {
                continue;
            };
            if state.verdict == verdict {
                continue;
            }
            match &verdict {
                Verdict::Mismatch(why) => {
                    *self.host_key_mismatches.entry(service.name.clone()).or_default() += 1;
                    let consequence = match service.host_key_policy {
                        HostKeyPolicy::Enforce => {
                            "kept out of the ring (host-key-policy = enforce)"
                        }
                        HostKeyPolicy::Warn => {
                            "clients landing on it will see REMOTE HOST IDENTIFICATION HAS CHANGED"
                        }
                    };
                    tracing::warn!(
                        "{}/{} {}: host keys differ: {why}; {consequence}",
                        service.name,
                        b.name,
                        b.ring_key()
                    );
                }
                Verdict::Match if state.verdict != Verdict::Unknown => {
                    tracing::info!("{}/{}: host keys match again", service.name, b.name);
                }
                _ => {}
            }
            state.verdict = verdict;
        }
        if before != admitted(self) {
            if let Err(err) = self.replan() {
                tracing::error!("applying a host-key change failed: {err}");
            }
        }
    }
}
