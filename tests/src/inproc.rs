//! The balancer started in-process inside a topology's lb namespace (no health checks, no
//! control socket): what the namespace tests of the data plane itself drive.

use std::path::PathBuf;

use sshlb::{config, daemon, loader::AttachMode};

use crate::{prepare_bridge, topo::Topo, Detach, PIN_ROOT};

/// The attached balancer; detached (and unpinned) on drop. A test that fails while it lives
/// prints the data plane's counters.
pub struct Balancer {
    attached: Option<daemon::Balancer>,
    /// Dropped after `attached`: detaches the balancer and the pass program.
    _detach: Detach,
}

impl Balancer {
    /// Attaches the balancer (native XDP) to the topology's lb interface with `config`.
    pub fn start(topo: &Topo, config: &config::Config) -> Self {
        // veth gotcha 2 (docs/toolchain.md): XDP_TX in native mode needs an XDP program on the
        // peer.
        let detach = prepare_bridge(topo, Vec::new());
        let iface = topo.lb_if.clone();
        let cfg = config.clone();
        let attached = topo.lb.run(move || {
            daemon::start(&PathBuf::from(PIN_ROOT), &iface, AttachMode::Native, &cfg)
                .unwrap_or_else(|e| panic!("starting the balancer: {e}"))
        });
        Self { attached: Some(attached), _detach: detach }
    }

    /// The data plane's maps.
    pub fn dataplane(&mut self) -> &mut sshlb::loader::Dataplane {
        &mut self.attached.as_mut().expect("attached until dropped").attached.dataplane
    }

    /// The global counters, summed over CPUs, by name.
    pub fn counter(&self, name: &str) -> u64 {
        let attached = self.attached.as_ref().expect("attached until dropped");
        let counters = sshlb::stats::read(&attached.attached.dataplane.stats()).expect("STATS");
        counters.iter().find(|c| c.name == name).map_or(0, |c| c.value)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // A failing test shows what the data plane did with its packets.
        if std::thread::panicking() {
            if let Some(attached) = &self.attached {
                if let Ok(counters) = sshlb::stats::read(&attached.attached.dataplane.stats()) {
                    eprintln!("data plane counters:\n{}", sshlb::stats::render(&counters, false));
                }
            }
        }
        drop(self.attached.take());
    }
}
