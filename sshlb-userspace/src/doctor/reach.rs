//! Probing the backends for the doctor, all at once under one deadline: each backend's banner
//! from the NAT address (the health check's own code, [`health::check`]), then, for SSH
//! services, its host keys (the agent's scan, [`hostkeys::scan`]). Nothing here decides; the
//! results become [`BackendFacts`] for [`super::network`].

use std::time::Duration;

use tokio::{task::JoinSet, time::Instant};

use super::network::{BackendFacts, BannerProblem};
use crate::{
    config::Config,
    daemon::host,
    health::{self, CheckError},
    hostkeys,
};

/// How long the doctor waits for all backends together.
pub const DEADLINE: Duration = Duration::from_secs(3);

/// Probes every backend of `config` as the agent on `iface` would (from its NAT address), all
/// in parallel, each bounded by its service's check timeout and all by `deadline`.
pub fn probe(config: &Config, iface: &str, deadline: Duration) -> Vec<BackendFacts> {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return Vec::new();
    };
    let nat = host::dataplane_config(config, iface).ok();
    runtime.block_on(async {
        let end = Instant::now() + deadline;
        let mut tasks = JoinSet::new();
        for (index, (service, backend)) in
            config.services.iter().flat_map(|s| s.backends.iter().map(move |b| (s, b))).enumerate()
        {
            let facts = BackendFacts {
                service: service.name.clone(),
                backend: backend.name.clone(),
                addr: std::net::SocketAddr::new(backend.address, backend.port),
                source: host::check_source(nat.as_ref(), backend.address.is_ipv6()),
                expect: service.health.expect.clone(),
                banner: Err(BannerProblem::Silent(format!(
                    "no answer within the doctor's {deadline:?}"
                ))),
                keys: None,
            };
            let timeout = service.health.timeout;
            tasks.spawn(async move { (index, probe_one(facts, timeout, end).await) });
        }
        let mut done: Vec<(usize, BackendFacts)> = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            if let Ok(result) = joined {
                done.push(result);
            }
        }
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, f)| f).collect()
    })
}

/// One backend: banner, then keys; whatever is unfinished at `end` keeps its "no answer".
async fn probe_one(mut facts: BackendFacts, timeout: Duration, end: Instant) -> BackendFacts {
    let left = || end.saturating_duration_since(Instant::now());
    let started = Instant::now();
    let banner = health::check(facts.addr, timeout.min(left()), &facts.expect, facts.source).await;
    facts.banner = match banner {
        Ok(()) => Ok(started.elapsed()),
        Err(e @ CheckError::Connect(_)) => Err(BannerProblem::Unreachable(e.to_string())),
        Err(e @ (CheckError::Mismatch(_) | CheckError::Closed(_) | CheckError::TooLong(_))) => {
            Err(BannerProblem::NotSsh(e.to_string()))
        }
        Err(e @ (CheckError::Timeout(_) | CheckError::Io(_))) => {
            Err(BannerProblem::Silent(e.to_string()))
        }
    };
    if facts.banner.is_ok() && facts.expect.starts_with("SSH-") {
        let scan = tokio::time::timeout(left(), hostkeys::scan(facts.addr, facts.source, left()));
        facts.keys = Some(match scan.await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("the scan did not finish within the doctor's {DEADLINE:?}")),
        });
    }
    facts
}
