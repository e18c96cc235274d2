//! The status view: what `status` and the metrics show, read from the balancer's records and
//! the data plane's counters. Modes, states and policies are spelled by the configuration's own
//! table (`as_str()` on [`crate::config`]'s enums), the same words the config file takes.

use sshlb_common::{Bucket, SourceKey};

use crate::{
    control::{AnnounceStatus, BackendStatus, LimitStatus, LimitedPrefix, ServiceStatus, Status},
    hostkeys::Verdict,
    plan,
    protection::RateLimit,
};

use super::balancer::Balancer;

impl Balancer {
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
            for backend in &service.backends {
                let r = super::BackendRef::of(service, backend);
                let record = self.record(&r);
                let health = record.map(|rec| rec.health).unwrap_or_default();
                let hk = record.map(|rec| &rec.host_keys);
                let backend_id = record.and_then(|rec| rec.map_id);
                let t = backend_id
                    .and_then(|id| self.attached.dataplane.backend_traffic(id).ok())
                    .unwrap_or_default();
                let per = |counts: &[u64]| {
                    backend_id.and_then(|id| counts.get(id as usize).copied()).unwrap_or(0)
                };
                backends.push(BackendStatus {
                    name: backend.name.clone(),
                    address: backend.address.to_string(),
                    port: backend.port,
                    health: health.health().as_str().to_owned(),
                    state: backend.state.as_str().to_owned(),
                    weight: backend.weight,
                    group: backend.group.clone(),
                    health_changes: health.changes(),
                    in_ring: plan::in_ring(backend, self.usable(service, &r)),
                    active_flows: per(&active.per_backend),
                    live_sessions: per(&active.live_per_backend),
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
                limit: service.limit.as_ref().map(limit_status),
                limited: top_limited(&limited, id, service.limit.as_ref(), 10),
                host_key_policy: service.host_key_policy.as_str().to_owned(),
                announce: self
                    .announcer
                    .decisions
                    .get(s)
                    .map(|(_, a)| AnnounceStatus {
                        announced: a.announced,
                        reason: a.reason.to_string(),
                    })
                    .unwrap_or_default(),
            });
        }
        Status {
            interface: self.iface.clone(),
            services,
            maintenance: self.announcer.maintenance,
            active_flows: active.per_service.iter().sum(),
            bird_error: self.announcer.bird_error.clone(),
        }
    }
}

/// A rate limit as `status` shows it.
fn limit_status(l: &RateLimit) -> LimitStatus {
    LimitStatus {
        per_second: 1.0 / l.interval.as_secs_f64(),
        burst: l.burst,
        ipv4_prefix: l.ipv4_prefix,
        ipv6_prefix: l.ipv6_prefix,
    }
}

/// The `n` most-refused prefixes of service `id` in the limiter's buckets.
fn top_limited(
    buckets: &[(SourceKey, Bucket)],
    id: u32,
    limit: Option<&RateLimit>,
    n: usize,
) -> Vec<LimitedPrefix> {
    let Some(limit) = limit else { return Vec::new() };
    let mut mine: Vec<_> = buckets.iter().filter(|(k, _)| u32::from(k.service_id) == id).collect();
    mine.sort_by_key(|(_, b)| std::cmp::Reverse(b.refused));
    mine.into_iter()
        .take(n)
        .map(|(k, b)| LimitedPrefix {
            prefix: limit.prefix_of(plan::source_addr(k)).to_string(),
            refused: b.refused,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_most_refused_prefixes_of_one_service_come_first() {
        let limit = RateLimit {
            interval: Duration::from_secs(1),
            burst: 1,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
        };
        let bucket = |refused| Bucket { refused, ..Default::default() };
        let key = |service, last: u8| plan::source_key(service, [198, 18, 8, last].into());
        let buckets = [(key(0, 1), bucket(3)), (key(1, 2), bucket(99)), (key(0, 3), bucket(7))];
        let top = top_limited(&buckets, 0, Some(&limit), 10);
        assert_eq!(top.iter().map(|p| p.refused).collect::<Vec<_>>(), [7, 3]);
        assert_eq!(top[0].prefix, "198.18.8.0/24");
        assert_eq!(top_limited(&buckets, 0, Some(&limit), 1).len(), 1);
        assert!(top_limited(&buckets, 0, None, 10).is_empty(), "no limit, nothing limited");
    }

    #[test]
    fn a_limit_is_shown_as_its_sustained_rate() {
        let limit = RateLimit {
            interval: Duration::from_millis(250),
            burst: 5,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
        };
        assert!((limit_status(&limit).per_second - 4.0).abs() < 1e-9);
    }
}
