//! The running balancer: attach (or take over), write the configuration into the maps, prepare
//! the interface; then, in the foreground, health-check backends, reload on SIGHUP, expire flows
//! and keep backends' neighbours resolved until shutdown — applying only differences, always
//! from this one loop.
//!
//! - [`balancer`]: the map owner — configuration in force, plan, one record per backend
//!   ([`BackendRef`]), reloads and check results turned into map writes;
//! - [`announce`](mod@announce): VIP announcements to BIRD, maintenance;
//! - [`status`]: the `status` view of it;
//! - [`checks`]: the health-check and host-key tasks, reporting by message;
//! - [`host`]: host facts outside the maps (NAT addresses, sysctls, neighbours);
//! - [`run`](mod@run): the event loop.

pub mod announce;
pub mod balancer;
pub mod checks;
pub mod host;
pub mod run;
pub mod status;

pub use balancer::{start, BackendRef, Balancer, ReloadError, StartError};
pub use host::{dataplane_config, interface_sysctls, pick_nat_address, port_range_overlap};
pub use run::{run, RunOptions};

pub use crate::control::bind_control;

/// Reads, validates and applies the configuration at `path` (see [`Balancer::reload_from`]).
pub fn reload_from(balancer: &mut Balancer, path: &std::path::Path) -> Result<(), ReloadError> {
    balancer.reload_from(path)
}
