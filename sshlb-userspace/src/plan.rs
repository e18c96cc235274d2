//! From a validated [`Config`] to the exact contents of the data plane's maps (sans-IO).
//!
//! Ids are stable (see [`Ids`]). A backend is in its service's ring when it is `active` with a
//! weight above zero and healthy; `drain`/`disabled` backends, weight 0 and unhealthy ones keep
//! their `BACKENDS` entry (established flows still reach them) but get no ring slots. A backend
//! listed in several services has one id and one entry.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use sshlb_common::{family, proto, service_flags, v4_in_16, Backend, Limit, ServiceKey};

use crate::{
    config::{self, Affinity, BackendState, Config, Mode},
    maglev::{build_ring, RingError, RingMember},
    protect::AclEntry,
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
    /// Its allow/deny entries in `ACL`.
    pub acl: Vec<AclEntry>,
    /// Its `LIMITS` entry (all zero without a limit).
    pub limit: Limit,
}

/// Everything the maps should hold for a configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// `(id, backend)` for `BACKENDS`.
    pub backends: Vec<(u32, Backend)>,
    /// The services with their rings.
    pub services: Vec<PlannedService>,
}

/// A configuration that cannot be turned into map contents.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A service's ring cannot be built.
    #[error("service {service:?}: {source}")]
    Ring {
        /// Service name.
        service: String,
        /// Why.
        #[source]
        source: RingError,
    },
    /// Every id is taken (backend ids stay reserved while the agent runs).
    #[error("no free {what} id left; restart the agent to release the ids of removed {what}s")]
    OutOfIds {
        /// "service" or "backend".
        what: &'static str,
    },
}

/// An address in the maps' 16-byte layout, with its family tag.
pub fn addr16(addr: IpAddr) -> ([u8; 16], u8) {
    match addr {
        IpAddr::V4(a) => (v4_in_16(a.octets()), family::V4),
        IpAddr::V6(a) => (a.octets(), family::V6),
    }
}

/// The address a map key holds in the 16-byte layout (the inverse of [`addr16`]).
pub fn ip_of(fam: u8, addr: &[u8; 16]) -> IpAddr {
    if fam == family::V4 {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(*addr)
    }
}

/// Id assignments that must survive reloads and restarts: a flow in the connection table names
/// its backend by id, so an id may never come to mean another backend while flows may use it.
///
/// Seeded from the maps at start ([`crate::maps`]), carried from plan to plan: a service keeps
/// its id while its (VIP, port) exists, a backend keeps its id for as long as the agent runs
/// (re-adding a removed backend gives it its old id back); new ones take the lowest free id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    /// Service key → service id.
    pub services: BTreeMap<ServiceKeyOrd, u32>,
    /// (family, address, port in network order) → backend id.
    pub backends: BTreeMap<(u8, [u8; 16], u16), u32>,
}

/// [`ServiceKey`] with an order, for maps.
pub type ServiceKeyOrd = ([u8; 16], u16, u8, u8);

fn ord(key: &ServiceKey) -> ServiceKeyOrd {
    (key.addr, key.port_be, key.proto, key.family)
}

impl Ids {
    /// Records an existing service.
    pub fn insert_service(&mut self, key: &ServiceKey, id: u32) {
        self.services.insert(ord(key), id);
    }

    /// Records an existing backend.
    pub fn insert_backend(&mut self, backend: &Backend, id: u32) {
        self.backends.insert((backend.family, backend.addr, backend.port_be), id);
    }
}

/// Lowest id in `0..limit` not in `used`.
fn lowest_free(used: &BTreeSet<u32>, limit: u32) -> Option<u32> {
    (0..limit).find(|id| !used.contains(id))
}

/// The map contents for `config`, every backend considered healthy, fresh ids.
pub fn plan(config: &Config) -> Result<Plan, PlanError> {
    plan_with(config, |_, _| true, &Ids::default()).map(|(plan, _)| plan)
}

/// The map contents for `config`; `usable(service, backend)` (indexes in the file) says which
/// backends may take new flows (health); ids come from `previous` where they exist. Returns the
/// plan and the ids to carry into the next one.
pub fn plan_with(
    config: &Config,
    usable: impl Fn(usize, usize) -> bool,
    previous: &Ids,
) -> Result<(Plan, Ids), PlanError> {
    let mut ids = Ids { services: BTreeMap::new(), backends: previous.backends.clone() };
    let mut used_backend_ids: BTreeSet<u32> = ids.backends.values().copied().collect();
    let keys: Vec<ServiceKey> = config.services.iter().map(service_key).collect();
    // Services keep their id while their (VIP, port) exists; ids of removed services are free.
    let mut used_service_ids: BTreeSet<u32> =
        keys.iter().filter_map(|k| previous.services.get(&ord(k)).copied()).collect();
    let mut backends = Vec::new();
    let mut services = Vec::with_capacity(config.services.len());
    for (s, (service, key)) in config.services.iter().zip(&keys).enumerate() {
        let id = match previous.services.get(&ord(key)) {
            Some(&id) => id,
            None => {
                let id = lowest_free(&used_service_ids, sshlb_common::MAX_SERVICES)
                    .ok_or(PlanError::OutOfIds { what: "service" })?;
                used_service_ids.insert(id);
                id
            }
        };
        ids.services.insert(ord(key), id);
        let mut flags = 0;
        if service.mode == Mode::Dsr {
            flags |= service_flags::DSR;
        }
        if service.affinity == Affinity::Source {
            flags |= service_flags::SOURCE_AFFINITY;
        }
        if !service.acl.is_empty() {
            flags |= service_flags::ACL;
            if !service.acl.allow.is_empty() {
                flags |= service_flags::ACL_DEFAULT_DENY;
            }
        }
        let limit = service.limit.map(|l| l.to_limit()).unwrap_or_default();
        if service.limit.is_some() {
            flags |= service_flags::RATE_LIMIT;
        }
        let ring_keys: Vec<String> =
            service.backends.iter().map(config::Backend::ring_key).collect();
        let mut members = Vec::new();
        for (j, (b, key_str)) in service.backends.iter().zip(&ring_keys).enumerate() {
            let (addr, fam) = addr16(b.address);
            let entry = Backend { addr, port_be: b.port.to_be(), family: fam, flags: 0 };
            let ident = (fam, addr, entry.port_be);
            let backend_id = match ids.backends.get(&ident) {
                Some(&id) => id,
                None => {
                    let id = lowest_free(&used_backend_ids, sshlb_common::MAX_BACKENDS)
                        .ok_or(PlanError::OutOfIds { what: "backend" })?;
                    used_backend_ids.insert(id);
                    ids.backends.insert(ident, id);
                    id
                }
            };
            if !backends.iter().any(|(id, _)| *id == backend_id) {
                backends.push((backend_id, entry));
            }
            if b.state == BackendState::Active && b.weight > 0 && usable(s, j) {
                members.push(RingMember { id: backend_id, key: key_str, weight: b.weight });
            }
        }
        let ring = build_ring(&members, service.ring_size)
            .map_err(|source| PlanError::Ring { service: service.name.clone(), source })?;
        let acl = service.acl.entries(id);
        services.push(PlannedService { key: *key, id, flags, ring, acl, limit });
    }
    Ok((Plan { backends, services }, ids))
}

/// The `SERVICES` key of a configured service.
pub fn service_key(service: &config::Service) -> ServiceKey {
    match service.vip {
        IpAddr::V4(a) => ServiceKey::v4(a.octets(), service.port, proto::TCP),
        IpAddr::V6(a) => ServiceKey::v6(a.octets(), service.port, proto::TCP),
    }
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
        let (plan, _) =
            plan_with(&cfg, |s, b| !(s == 0 && b == 0), &Ids::default()).expect("plannable");
        assert_eq!(plan.backends.len(), 4, "b1 keeps its BACKENDS entry");
        assert!(plan.services[0].ring.iter().all(|&id| id == 1), "only b2 remains in git's ring");
    }

    #[test]
    fn ids_survive_reordering_insertion_and_removal() {
        let cfg = parse("t.toml", CFG).expect("valid");
        let (_, ids) = plan_with(&cfg, |_, _| true, &Ids::default()).expect("plannable");
        let id_of = |ids: &Ids, last: u8| {
            ids.backends
                .iter()
                .find(|(k, _)| k.1[3] == last && k.0 == family::V4)
                .map(|(_, &id)| id)
        };
        // A new backend inserted first, b1 removed, services swapped: nobody's id changes.
        let edited = CFG.replacen(
            "[[service.backend]]\nname = \"b1\"\naddress = \"198.18.0.11\"\n",
            "[[service.backend]]\nname = \"b0\"\naddress = \"198.18.0.10\"\n",
            1,
        );
        let cfg2 = parse("t.toml", &edited).expect("valid");
        let (plan2, ids2) = plan_with(&cfg2, |_, _| true, &ids).expect("plannable");
        assert_eq!(id_of(&ids2, 12), id_of(&ids, 12), "b2 keeps its id");
        assert_eq!(id_of(&ids2, 13), id_of(&ids, 13), "b3 keeps its id");
        assert_eq!(id_of(&ids2, 11), id_of(&ids, 11), "removed b1's id stays reserved");
        let b0 = id_of(&ids2, 10).expect("b0 has an id");
        assert!(!ids.backends.values().any(|&id| id == b0), "b0 took a fresh id, not b1's");
        assert_eq!(plan2.services[0].id, 0, "service keeps its id");
        // b1 comes back: same id as before.
        let (_, ids3) = plan_with(&cfg, |_, _| true, &ids2).expect("plannable");
        assert_eq!(id_of(&ids3, 11), id_of(&ids, 11));
    }

    #[test]
    fn same_config_same_rings() {
        let a = plan(&parse("t.toml", CFG).expect("valid")).expect("plannable");
        let b = plan(&parse("t.toml", CFG).expect("valid")).expect("plannable");
        assert_eq!(a, b);
    }
}
