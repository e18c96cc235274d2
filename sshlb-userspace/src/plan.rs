//! From a validated [`Config`] to the exact contents of the data plane's maps (sans-IO).
//!
//! Service ids are the services' positions in the file; backend ids are assigned in file order
//! across services. A backend is in its service's ring when it is `active` with a weight above
//! zero; `drain`/`disabled` backends and weight 0 keep their `BACKENDS` entry (established flows
//! still reach them) but get no ring slots.

use std::net::IpAddr;

use sshlb_common::{family, proto, service_flags, v4_in_16, Backend, ServiceKey};

use crate::{
    config::{self, Affinity, BackendState, Config, Mode},
    maglev::{build_ring, RingError, RingMember},
};

/// One service as written to the maps.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedService {
    /// Its `SERVICES` key.
    pub key: ServiceKey,
    /// Dense id.
    pub id: u32,
    /// `service_flags::*`.
    pub flags: u32,
    /// Backend id per ring slot.
    pub ring: Vec<u32>,
}

/// Everything the maps should hold for a configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// `(id, backend)` for `BACKENDS`.
    pub backends: Vec<(u32, Backend)>,
    /// The services with their rings.
    pub services: Vec<PlannedService>,
}

/// A ring that cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("service {service:?}: {source}")]
pub struct PlanError {
    /// Service name.
    pub service: String,
    /// Why its ring cannot be built.
    #[source]
    pub source: RingError,
}

fn addr16(addr: IpAddr) -> ([u8; 16], u8) {
    match addr {
        IpAddr::V4(a) => (v4_in_16(a.octets()), family::V4),
        IpAddr::V6(a) => (a.octets(), family::V6),
    }
}

/// The map contents for `config`, every backend considered healthy.
pub fn plan(config: &Config) -> Result<Plan, PlanError> {
    plan_with(config, |_, _| true)
}

/// The map contents for `config`; `usable(service, backend)` (indexes in the file) says which
/// backends may take new flows (health). Unusable backends keep their `BACKENDS` entry.
pub fn plan_with(
    config: &Config,
    usable: impl Fn(usize, usize) -> bool,
) -> Result<Plan, PlanError> {
    let mut backends = Vec::new();
    let mut services = Vec::with_capacity(config.services.len());
    let mut next_backend = 0u32;
    for (s, (id, service)) in (0u32..).zip(&config.services).enumerate() {
        let (vip, _) = addr16(service.vip);
        let key = match service.vip {
            IpAddr::V4(a) => ServiceKey::v4(a.octets(), service.port, proto::TCP),
            IpAddr::V6(_) => ServiceKey::v6(vip, service.port, proto::TCP),
        };
        let mut flags = 0;
        if service.mode == Mode::Dsr {
            flags |= service_flags::DSR;
        }
        if service.affinity == Affinity::Source {
            flags |= service_flags::SOURCE_AFFINITY;
        }
        let keys: Vec<String> = service.backends.iter().map(config::Backend::ring_key).collect();
        let mut members = Vec::new();
        for (j, (b, key_str)) in service.backends.iter().zip(&keys).enumerate() {
            let backend_id = next_backend;
            next_backend += 1;
            let (addr, fam) = addr16(b.address);
            backends.push((
                backend_id,
                Backend { addr, port_be: b.port.to_be(), family: fam, flags: 0 },
            ));
            if b.state == BackendState::Active && b.weight > 0 && usable(s, j) {
                members.push(RingMember { id: backend_id, key: key_str, weight: b.weight });
            }
        }
        let ring = build_ring(&members, service.ring_size)
            .map_err(|source| PlanError { service: service.name.clone(), source })?;
        services.push(PlannedService { key, id, flags, ring });
    }
    Ok(Plan { backends, services })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const CFG: &str = r#"
[[service]]
name = "git"
vip = "198.18.0.100"
port = 22
ring-size = 251
[[service.backend]]
name = "b1"
address = "198.18.0.11"
[[service.backend]]
name = "b2"
address = "198.18.0.12"
weight = 200
[[service.backend]]
name = "b3"
address = "198.18.0.13"
state = "drain"

[[service]]
name = "bastion"
vip = "fd00:1::100"
port = 2222
mode = "dsr"
affinity = "source"
ring-size = 251
[[service.backend]]
name = "j1"
address = "fd00:1::21"
port = 2222
"#;

    #[test]
    fn plans_ids_flags_and_weighted_rings() {
        let plan = plan(&parse("t.toml", CFG).expect("valid")).expect("plannable");
        assert_eq!(plan.backends.len(), 4);
        assert_eq!(plan.backends[3].1.family, family::V6);
        assert_eq!(plan.backends[3].1.port_be, 2222u16.to_be());
        let git = &plan.services[0];
        assert_eq!((git.id, git.flags), (0, 0));
        let count = |id| git.ring.iter().filter(|&&b| b == id).count();
        // b2 weighs twice b1; drained b3 owns nothing but keeps its BACKENDS entry (id 2).
        assert_eq!(count(2), 0);
        let (b1, b2) = (count(0) as f64, count(1) as f64);
        assert!((b2 / b1 - 2.0).abs() < 0.1, "b1 {b1}, b2 {b2}");
        let bastion = &plan.services[1];
        assert_eq!(bastion.flags, service_flags::DSR | service_flags::SOURCE_AFFINITY);
        assert!(bastion.ring.iter().all(|&b| b == 3));
    }

    #[test]
    fn unusable_backends_leave_the_ring_but_keep_their_entry() {
        let cfg = parse("t.toml", CFG).expect("valid");
        let plan = plan_with(&cfg, |s, b| !(s == 0 && b == 0)).expect("plannable");
        assert_eq!(plan.backends.len(), 4, "b1 keeps its BACKENDS entry");
        assert!(plan.services[0].ring.iter().all(|&id| id == 1), "only b2 remains in git's ring");
    }

    #[test]
    fn same_config_same_rings() {
        let a = plan(&parse("t.toml", CFG).expect("valid")).expect("plannable");
        let b = plan(&parse("t.toml", CFG).expect("valid")).expect("plannable");
        assert_eq!(a, b);
    }
}
