//! The announcer: keeps BIRD's view of this balancer's VIPs in step with [`announce::decide`]
//! — after every health change, reload and maintenance switch, once a second (so a BIRD that
//! was down or refused the file is retried), and with everything withdrawn on a clean stop.
//! A BIRD fault is logged once per distinct error, shown in `status` and counted; balancing
//! never waits on it.

use crate::{
    announce::{self, Announcement, BalancerState, Bird, ServiceView},
    config::AnnounceMode,
};

use super::{balancer::Balancer, BackendRef};

/// What the announcer remembers between rounds.
#[derive(Debug, Default)]
pub struct Announcer {
    /// `maintenance on`.
    pub maintenance: bool,
    /// The last decision per service, in file order.
    pub decisions: Vec<(String, Announcement)>,
    /// BIRD's last refusal (or `None` once it took the file).
    pub bird_error: Option<String>,
    /// Times BIRD could not be told (not running, refused the file).
    pub bird_failures: u64,
    bird: Option<Bird>,
}

impl Balancer {
    /// Each service as the announcement decision sees it: its VIP and usable backends.
    fn announce_views(&self) -> Vec<ServiceView> {
        self.config
            .services
            .iter()
            .map(|service| ServiceView {
                name: service.name.clone(),
                vip: service.vip,
                usable: service
                    .backends
                    .iter()
                    .filter(|b| {
                        crate::plan::in_ring(b, self.usable(service, &BackendRef::of(service, b)))
                    })
                    .count(),
            })
            .collect()
    }

    /// `maintenance on|off`: withdraw (or announce again) at once; the reply says how many
    /// flows are still in the table (they keep being forwarded while they arrive).
    pub(super) fn set_maintenance(&mut self, on: bool) -> crate::control::Reply {
        self.announcer.maintenance = on;
        self.announce(false);
        tracing::info!("maintenance {}", if on { "on" } else { "off" });
        let flows: u64 = self.attached.dataplane.active_flows().per_service.iter().sum();
        let note = if on {
            format!("maintenance on: VIPs withdrawn; {flows} flow(s) remain and are forwarded")
        } else {
            "maintenance off: VIPs announced again where healthy".to_owned()
        };
        crate::control::Reply { note: Some(note), ..crate::control::Reply::done() }
    }

    /// Decides again and, with `mode = "bgp"`, tells BIRD when the announced set changed (or
    /// its last attempt failed). `stopping`: withdraw everything (a clean stop).
    pub fn announce(&mut self, stopping: bool) {
        let state =
            BalancerState { attached: true, maintenance: self.announcer.maintenance, stopping };
        let views = self.announce_views();
        let decisions = announce::decide(&self.config.announce, state, &views);
        let vips = announce::announced_vips(&views, &decisions);
        for ((name, new), old) in decisions
            .iter()
            .zip(self.announcer.decisions.iter().map(Some).chain(std::iter::repeat(None)))
        {
            if old.is_none_or(|(n, o)| n != name || o.announced != new.announced) {
                let verb = if new.announced { "announcing" } else { "withdrawing" };
                tracing::info!("{verb} service {name}: {}", new.reason);
            }
        }
        self.announcer.decisions = decisions;
        let announce = &self.config.announce;
        if announce.mode != AnnounceMode::Bgp {
            return;
        }
        let text = announce::render_bird(announce, &vips);
        if self.announcer.bird.as_ref().is_some_and(|b| !b.is_for(announce)) {
            self.announcer.bird = None;
        }
        let bird = self.announcer.bird.get_or_insert_with(|| Bird::new(announce));
        match bird.apply(&text) {
            Ok(_) => {
                if self.announcer.bird_error.take().is_some() {
                    tracing::info!("BIRD took the announcements");
                }
            }
            Err(err) => {
                self.announcer.bird_failures += 1;
                let err = err.to_string();
                if self.announcer.bird_error.as_deref() != Some(err.as_str()) {
                    tracing::warn!(
                        "VIP announcements not handed to BIRD (balancing goes on): {err}"
                    );
                }
                self.announcer.bird_error = Some(err);
            }
        }
    }
}
