//! From a validated [`Config`] to the exact contents of the data plane's maps, and from two such
//! contents to the ordered writes that turn one into the other ([`diff`]) — all sans-IO.
//!
//! Ids are stable (see [`Ids`]). A backend is in its service's ring when [`in_ring`] says so
//! (`active`, weight above zero, usable); `drain`/`disabled` backends, weight 0 and unhealthy
//! ones keep their `BACKENDS` entry (established flows still reach them) but get no ring slots.
//! A backend id names a (service, backend) pair: a backend address listed in several services
//! has one id and one entry per service, so its flows, packets and bytes are counted per pair.
//!
//! The map encoders of the protection policy live here too ([`acl_entries`], [`limit_entry`]):
//! the policy itself ([`crate::protect`]) knows nothing of maps.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use sshlb_common::{
    acl, addr, proto, service_flags, Backend, Config as DataplaneConfig, Limit, ServiceKey,
    SourceKey, ACL_PREFIX_BASE,
};

use crate::{
    config::{self, Affinity, BackendState, Config, Encap, Mode},
    maglev::{build_ring, RingError, RingMember},
    protection::{mask128, mask32, Acl, RateLimit},
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

/// Whether `backend` takes new flows: its operator state is `active`, its weight is above
/// zero, and it is `usable` (health and host keys allow it). The one rule for ring membership:
/// the plan builds rings with it and `status` reports `in_ring` with it.
pub fn in_ring(backend: &config::Backend, usable: bool) -> bool {
    backend.state == BackendState::Active && backend.weight > 0 && usable
}

/// One `ACL` trie entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclEntry {
    /// Trie prefix length: [`ACL_PREFIX_BASE`] + the CIDR's.
    pub prefix_len: u32,
    /// Service, family, network address.
    pub key: SourceKey,
    /// `acl::ALLOW` or `acl::DENY`.
    pub action: u32,
}

impl AclEntry {
    /// Whether both entries sit at the same trie node (their actions may differ).
    pub fn same_key(&self, other: &Self) -> bool {
        self.prefix_len == other.prefix_len && self.key == other.key
    }
}

/// Service `service_id`'s `ACL` trie entries for `acl`: (prefix length, key data, `acl::*`),
/// sorted.
pub fn acl_entries(list: &Acl, service_id: u32) -> Vec<AclEntry> {
    let mut out: Vec<AclEntry> = list
        .allow
        .iter()
        .map(|c| (c, acl::ALLOW))
        .chain(list.deny.iter().map(|c| (c, acl::DENY)))
        .map(|(c, action)| AclEntry {
            prefix_len: ACL_PREFIX_BASE + u32::from(c.len),
            key: source_key(service_id, c.addr),
            action,
        })
        .collect();
    out.sort_by_key(|e| (e.key.service_id, e.key.family, e.key.addr, e.prefix_len));
    out
}

/// The `SourceKey` of `addr` in service `service_id`.
pub fn source_key(service_id: u32, addr: IpAddr) -> SourceKey {
    let (addr, fam) = addr::to16(addr);
    SourceKey { service_id: service_id as u16, family: fam, pad: 0, addr }
}

/// The address (prefix) a `SourceKey` holds.
pub fn source_addr(key: &SourceKey) -> IpAddr {
    addr::from16(key.family, &key.addr)
}

/// The data plane's `LIMITS` entry for `limit` (GCRA parameters, network-order masks).
pub fn limit_entry(limit: &RateLimit) -> Limit {
    let interval_ns = u64::try_from(limit.interval.as_nanos()).unwrap_or(u64::MAX).max(1);
    let v6 = mask128(limit.ipv6_prefix).to_be_bytes();
    let word = |i: usize| u32::from_ne_bytes([v6[i], v6[i + 1], v6[i + 2], v6[i + 3]]);
    Limit {
        interval_ns,
        tau_ns: interval_ns.saturating_mul(u64::from(limit.burst.saturating_sub(1))),
        mask_v4: u32::from_ne_bytes(mask32(limit.ipv4_prefix).to_be_bytes()),
        pad: 0,
        mask_v6: [word(0), word(4), word(8), word(12)],
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
    /// (service id, family, address, port in network order) → backend id.
    pub backends: BTreeMap<BackendIdent, u32>,
}

/// What one backend id stands for: (service id, family, address, port in network order).
pub type BackendIdent = (u32, u8, [u8; 16], u16);

/// The [`BackendIdent`] of `address` in service `service_id`.
pub fn backend_ident(service_id: u32, address: std::net::SocketAddr) -> BackendIdent {
    let (addr, fam) = addr::to16(address.ip());
    (service_id, fam, addr, address.port().to_be())
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

    /// Records an existing backend (its entry names its service).
    pub fn insert_backend(&mut self, backend: &Backend, id: u32) {
        let ident = (u32::from(backend.service_id), backend.family, backend.addr, backend.port_be);
        self.backends.insert(ident, id);
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
        let id = if let Some(&id) = previous.services.get(&ord(key)) {
            id
        } else {
            let id = lowest_free(&used_service_ids, sshlb_common::MAX_SERVICES)
                .ok_or(PlanError::OutOfIds { what: "service" })?;
            used_service_ids.insert(id);
            id
        };
        ids.services.insert(ord(key), id);
        let mut flags = 0;
        match (service.mode, service.encap) {
            (Mode::Nat, _) => {}
            (Mode::Dsr, _) => flags |= service_flags::DSR,
            (Mode::Tunnel, Encap::Ipip) => flags |= service_flags::TUNNEL,
            (Mode::Tunnel, Encap::Gue) => flags |= service_flags::TUNNEL | service_flags::GUE,
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
        let limit = service.limit.as_ref().map(limit_entry).unwrap_or_default();
        if service.limit.is_some() {
            flags |= service_flags::RATE_LIMIT;
        }
        let ring_keys: Vec<String> =
            service.backends.iter().map(config::Backend::ring_key).collect();
        let mut members = Vec::new();
        for (j, (b, key_str)) in service.backends.iter().zip(&ring_keys).enumerate() {
            let (addr, fam) = addr::to16(b.address);
            // Service ids are below MAX_SERVICES, which fits a u8 (asserted in sshlb-common).
            let entry =
                Backend { addr, port_be: b.port.to_be(), family: fam, service_id: id as u8 };
            let ident = (id, fam, addr, entry.port_be);
            let backend_id = if let Some(&id) = ids.backends.get(&ident) {
                id
            } else {
                let id = lowest_free(&used_backend_ids, sshlb_common::MAX_BACKENDS)
                    .ok_or(PlanError::OutOfIds { what: "backend" })?;
                used_backend_ids.insert(id);
                ids.backends.insert(ident, id);
                id
            };
            if !backends.iter().any(|(id, _)| *id == backend_id) {
                backends.push((backend_id, entry));
            }
            if in_ring(b, usable(s, j)) {
                members.push(RingMember { id: backend_id, key: key_str, weight: b.weight });
            }
        }
        let ring = build_ring(&members, service.ring_size)
            .map_err(|source| PlanError::Ring { service: service.name.clone(), source })?;
        let acl = acl_entries(&service.acl, id);
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

/// One concrete write to the data plane's maps: what [`diff`] returns and
/// [`crate::maps`]' executor carries out, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum MapOp {
    /// Write the NAT addresses and port range (`CONFIG`).
    SetConfig(DataplaneConfig),
    /// Define or redefine backend `id` (`BACKENDS`).
    SetBackend {
        /// Backend id.
        id: u32,
        /// Its entry.
        backend: Backend,
    },
    /// Add or replace an allow/deny entry (`ACL`).
    SetAcl(AclEntry),
    /// Set service `id`'s per-source limit (`LIMITS`; all zero: none).
    SetLimit {
        /// Service id.
        id: u32,
        /// The entry.
        limit: Limit,
    },
    /// Write `ring` into the standby half of service `id`'s `RINGS` slots (the half the service
    /// entry under `key` does not point at); only slots that differ are written.
    WriteStandbyRing {
        /// The service's `SERVICES` key.
        key: ServiceKey,
        /// Service id.
        id: u32,
        /// Backend id per slot.
        ring: Vec<u32>,
    },
    /// Replace the `SERVICES` entry under `key` in one update that points it at the standby
    /// half just written: packets see the whole old ring or the whole new one.
    FlipService {
        /// The service's `SERVICES` key.
        key: ServiceKey,
        /// Service id.
        id: u32,
        /// `service_flags::*`.
        flags: u32,
        /// Ring size (slots).
        ring_size: u32,
    },
    /// Remove a service (`SERVICES`).
    RemoveService(ServiceKey),
    /// Remove an allow/deny entry (`ACL`; absent is fine).
    RemoveAcl(AclEntry),
}

/// The writes that turn the maps from `old` into `new`, ordered so that no packet sees a
/// half-made state:
/// 1. new or changed backends, so every ring slot written later names a defined backend;
/// 2. new allow/deny entries and changed limits, before any service flag turns them on;
/// 3. per changed service, its standby ring, then the flip of its entry to that ring;
/// 4. then what is stale: removed services, then allow/deny entries no service wants.
///
/// Backends that left the configuration keep their entry: established flows still name them by
/// id (see [`Ids`]). A service is the same service when its id is (ids follow `SERVICES` keys).
pub fn diff(old: &Plan, new: &Plan) -> Vec<MapOp> {
    let present: Vec<AclEntry> = old.services.iter().flat_map(|s| s.acl.iter().copied()).collect();
    let mut ops = diff_keeping_acl(old, new, &present);
    ops.extend(stale_acl(&present, new));
    ops
}

/// [`diff`] from empty maps that may still hold allow/deny entries `present` (a takeover: the
/// previous agent's entries are replaced, those no service wants any more removed last).
pub fn initial(new: &Plan, present: &[AclEntry]) -> Vec<MapOp> {
    let empty = Plan { backends: Vec::new(), services: Vec::new() };
    let mut ops = diff_keeping_acl(&empty, new, present);
    ops.extend(stale_acl(present, new));
    ops
}

/// Steps 1–3 and the service removals of [`diff`], with the `ACL` holding `present`.
fn diff_keeping_acl(old: &Plan, new: &Plan, present: &[AclEntry]) -> Vec<MapOp> {
    let mut ops = Vec::new();
    for (id, backend) in &new.backends {
        if !old.backends.iter().any(|(o, b)| o == id && b == backend) {
            ops.push(MapOp::SetBackend { id: *id, backend: *backend });
        }
    }
    for entry in new.services.iter().flat_map(|s| &s.acl) {
        if !present.contains(entry) {
            ops.push(MapOp::SetAcl(*entry));
        }
    }
    let before = |service: &PlannedService| old.services.iter().find(|o| o.id == service.id);
    for service in &new.services {
        if before(service).is_none_or(|b| b.limit != service.limit) {
            ops.push(MapOp::SetLimit { id: service.id, limit: service.limit });
        }
    }
    for service in &new.services {
        let unchanged = before(service).is_some_and(|b| {
            b.key == service.key && b.flags == service.flags && b.ring == service.ring
        });
        if !unchanged {
            ops.push(MapOp::WriteStandbyRing {
                key: service.key,
                id: service.id,
                ring: service.ring.clone(),
            });
            ops.push(MapOp::FlipService {
                key: service.key,
                id: service.id,
                flags: service.flags,
                ring_size: service.ring.len() as u32,
            });
        }
    }
    for gone in &old.services {
        if !new.services.iter().any(|s| s.key == gone.key) {
            ops.push(MapOp::RemoveService(gone.key));
        }
    }
    ops
}

/// Removals of the entries in `present` that no service of `new` has at their trie node.
fn stale_acl(present: &[AclEntry], new: &Plan) -> Vec<MapOp> {
    let wanted: Vec<&AclEntry> = new.services.iter().flat_map(|s| &s.acl).collect();
    present
        .iter()
        .filter(|e| !wanted.iter().any(|w| w.same_key(e)))
        .map(|e| MapOp::RemoveAcl(*e))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use sshlb_common::family;
    use sshlb_tests::config::{BackendBuilder, ConfigBuilder, ServiceBuilder};

    /// git's backends: b1, b2 weighing twice as much, b3 draining.
    fn git_backends() -> Vec<BackendBuilder> {
        vec![
            BackendBuilder::new("b1", "198.18.0.11"),
            BackendBuilder::new("b2", "198.18.0.12").weight(200),
            BackendBuilder::new("b3", "198.18.0.13").state("drain"),
        ]
    }

    /// Service 0: full NAT on IPv4 over `backends`.
    fn git(backends: Vec<BackendBuilder>) -> ServiceBuilder {
        let git = ServiceBuilder::new("git", "198.18.0.100", 22).ring_size(251);
        backends.into_iter().fold(git, ServiceBuilder::backend)
    }

    /// Service 1: DSR on IPv6 with source affinity, one backend.
    fn bastion() -> ServiceBuilder {
        ServiceBuilder::new("bastion", "fd00:1::100", 2222)
            .mode("dsr")
            .raw("affinity = \"source\"")
            .ring_size(251)
            .backend(BackendBuilder::new("j1", "fd00:1::21").port(2222))
    }

    /// git with `backends`, then bastion.
    fn config_with(backends: Vec<BackendBuilder>) -> Config {
        parsed(&ConfigBuilder::new().service(git(backends)).service(bastion()))
    }

    /// The agent's reading of a built configuration.
    fn parsed(config: &ConfigBuilder) -> Config {
        let text = config.to_toml();
        parse("t.toml", &text).unwrap_or_else(|e| panic!("refused: {e}\n{text}"))
    }

    /// The plain configuration: git (b1, b2, b3) and bastion.
    fn config() -> Config {
        config_with(git_backends())
    }

    #[test]
    fn plans_ids_flags_and_weighted_rings() {
        let plan = plan(&config()).expect("plannable");
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
    fn a_backend_shared_by_two_services_has_one_id_per_service() {
        let cfg = parsed(
            &ConfigBuilder::new().service(git(git_backends())).service(bastion()).service(
                ServiceBuilder::new("git-dsr", "198.18.0.101", 22)
                    .mode("dsr")
                    .ring_size(251)
                    .backend(BackendBuilder::new("b2", "198.18.0.12")),
            ),
        );
        let (plan, ids) = plan_with(&cfg, |_, _| true, &Ids::default()).expect("plannable");
        assert_eq!(plan.backends.len(), 5, "198.18.0.12 has an entry per service");
        let git_b2 = ids.backends[&backend_ident(0, "198.18.0.12:22".parse().unwrap())];
        let dsr_b2 = ids.backends[&backend_ident(2, "198.18.0.12:22".parse().unwrap())];
        assert_ne!(git_b2, dsr_b2, "each (service, backend) pair counts on its own id");
        assert!(plan.services[2].ring.iter().all(|&b| b == dsr_b2));
        assert!(!plan.services[0].ring.contains(&dsr_b2));
        let entry = |id| plan.backends.iter().find(|(i, _)| *i == id).unwrap().1;
        assert_eq!((entry(git_b2).service_id, entry(dsr_b2).service_id), (0, 2));
        // After a restart the ids are read back from the entries: the same pairs, the same ids.
        let mut seeded = Ids::default();
        for (id, backend) in &plan.backends {
            seeded.insert_backend(backend, *id);
        }
        let (_, again) = plan_with(&cfg, |_, _| true, &seeded).expect("plannable");
        assert_eq!(again.backends, ids.backends);
    }

    #[test]
    fn unusable_backends_leave_the_ring_but_keep_their_entry() {
        let cfg = config();
        let (plan, _) =
            plan_with(&cfg, |s, b| !(s == 0 && b == 0), &Ids::default()).expect("plannable");
        assert_eq!(plan.backends.len(), 4, "b1 keeps its BACKENDS entry");
        assert!(plan.services[0].ring.iter().all(|&id| id == 1), "only b2 remains in git's ring");
    }

    #[test]
    fn ids_survive_reordering_insertion_and_removal() {
        let cfg = config();
        let (_, ids) = plan_with(&cfg, |_, _| true, &Ids::default()).expect("plannable");
        let id_of = |ids: &Ids, last: u8| {
            ids.backends
                .iter()
                .find(|(k, _)| k.2[3] == last && k.1 == family::V4)
                .map(|(_, &id)| id)
        };
        // A new backend inserted first, b1 removed, services swapped: nobody's id changes.
        let mut backends = git_backends();
        backends[0] = BackendBuilder::new("b0", "198.18.0.10");
        let cfg2 = config_with(backends);
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
        let a = plan(&config()).expect("plannable");
        let b = plan(&config()).expect("plannable");
        assert_eq!(a, b);
    }

    fn cidr(s: &str) -> crate::protection::Cidr {
        s.parse().expect("valid cidr")
    }

    #[test]
    fn trie_entries_carry_service_family_and_prefix() {
        let list = Acl { allow: vec![cidr("fd00:8::/64")], deny: vec![cidr("198.18.8.0/24")] };
        let entries = acl_entries(&list, 3);
        assert_eq!(entries.len(), 2);
        let v4 = entries.iter().find(|e| e.key.family == family::V4).expect("v4");
        assert_eq!((v4.prefix_len, v4.action, v4.key.service_id), (56, acl::DENY, 3));
        assert_eq!(&v4.key.addr[..4], &[198, 18, 8, 0]);
        let v6 = entries.iter().find(|e| e.key.family == family::V6).expect("v6");
        assert_eq!((v6.prefix_len, v6.action), (96, acl::ALLOW));
        assert_eq!(source_addr(&v6.key), "fd00:8::".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn limits_become_gcra_parameters_and_network_order_masks() {
        let limit = RateLimit {
            interval: crate::protection::parse_rate("10/s").expect("rate"),
            burst: 5,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
        };
        let l = limit_entry(&limit);
        assert_eq!(l.interval_ns, 100_000_000);
        assert_eq!(l.tau_ns, 400_000_000, "burst 5: four intervals of tolerance");
        assert_eq!(l.mask_v4.to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(l.mask_v6[0].to_ne_bytes(), [255; 4]);
        assert_eq!(l.mask_v6[1].to_ne_bytes(), [255; 4]);
        assert_eq!(l.mask_v6[2], 0);
    }

    /// Position of the first op matching `pred` (panics when none does).
    fn at(ops: &[MapOp], what: &str, pred: impl Fn(&MapOp) -> bool) -> usize {
        ops.iter().position(pred).unwrap_or_else(|| panic!("no {what} in {ops:#?}"))
    }

    /// A deny list and a rate limit, for git.
    const PROTECTED: &str = "deny = [\"198.18.8.0/24\"]\n[service.limit]\nrate = \"10/s\"";

    #[test]
    fn a_fresh_start_defines_everything_before_a_service_points_at_it() {
        let cfg = parsed(
            &ConfigBuilder::new().service(git(git_backends()).raw(PROTECTED)).service(bastion()),
        );
        let new = plan(&cfg).expect("plannable");
        let ops = initial(&new, &[]);
        let last_backend = ops.iter().rposition(|o| matches!(o, MapOp::SetBackend { .. }));
        let first_flip = at(&ops, "flip", |o| matches!(o, MapOp::FlipService { .. }));
        assert!(last_backend.expect("backends") < first_flip);
        let acl = at(&ops, "acl", |o| matches!(o, MapOp::SetAcl(_)));
        let limit = at(&ops, "limit", |o| matches!(o, MapOp::SetLimit { id: 0, .. }));
        let git_ring = at(&ops, "ring", |o| matches!(o, MapOp::WriteStandbyRing { id: 0, .. }));
        let git_flip = at(&ops, "flip", |o| matches!(o, MapOp::FlipService { id: 0, .. }));
        assert!(acl < git_flip && limit < git_flip, "protection before the flag turns it on");
        assert_eq!(git_ring + 1, git_flip, "standby ring, then the flip");
        assert!(!ops.iter().any(|o| matches!(o, MapOp::RemoveService(_) | MapOp::RemoveAcl(_))));
        assert_eq!(diff(&new, &new), Vec::new(), "no change, no write");
    }

    #[test]
    fn a_takeover_removes_entries_no_service_wants_last() {
        let new = plan(&config()).expect("plannable");
        let leftover = acl_entries(&Acl { allow: vec![], deny: vec![cidr("198.18.9.0/24")] }, 0);
        let ops = initial(&new, &leftover);
        assert_eq!(ops.last(), Some(&MapOp::RemoveAcl(leftover[0])));
    }

    #[test]
    fn changes_add_before_the_flip_and_remove_after_it() {
        let (old, ids) = plan_with(&config(), |_, _| true, &Ids::default()).expect("plannable");
        // git gains a deny list and b4, bastion goes away.
        let mut backends = git_backends();
        backends.push(BackendBuilder::new("b4", "198.18.0.14"));
        let edited = ConfigBuilder::new().service(git(backends).raw(PROTECTED));
        let (new, _) = plan_with(&parsed(&edited), |_, _| true, &ids).expect("plannable");
        let ops = diff(&old, &new);
        let b4 = at(
            &ops,
            "b4",
            |o| matches!(o, MapOp::SetBackend { backend, .. } if backend.addr[3] == 14),
        );
        let acl = at(&ops, "acl", |o| matches!(o, MapOp::SetAcl(_)));
        let ring = at(&ops, "ring", |o| matches!(o, MapOp::WriteStandbyRing { id: 0, .. }));
        let flip = at(&ops, "flip", |o| matches!(o, MapOp::FlipService { id: 0, .. }));
        let gone = at(
            &ops,
            "removal",
            |o| matches!(o, MapOp::RemoveService(k) if *k == old.services[1].key),
        );
        assert!(b4 < ring && acl < flip && ring < flip && flip < gone, "{ops:#?}");
        assert_eq!(
            ops.iter().filter(|o| matches!(o, MapOp::SetBackend { .. })).count(),
            1,
            "unchanged backends are not rewritten"
        );
        // Removing the list again: the flag flips off first, the entry goes after.
        let back = diff(&new, &old);
        let flip = at(&back, "flip", |o| matches!(o, MapOp::FlipService { id: 0, .. }));
        let removal = at(&back, "acl removal", |o| matches!(o, MapOp::RemoveAcl(_)));
        assert!(flip < removal, "{back:#?}");
        let j1 = at(&back, "j1", |o| matches!(o, MapOp::SetBackend { id: 3, .. }));
        let bastion = at(&back, "bastion", |o| matches!(o, MapOp::FlipService { id: 1, .. }));
        assert!(j1 < bastion, "{back:#?}");
    }

    /// High availability rests on this: two balancers with the same configuration send a
    /// mid-flow packet without a table entry to the same backend. Fresh balancers build
    /// byte-identical rings; one whose ids differ (another history of reloads) still has every
    /// slot naming the same backend address and port.
    #[test]
    fn two_balancers_with_the_same_config_build_the_same_rings() {
        let config = config();
        let (a, _) = plan_with(&config, |_, _| true, &Ids::default()).expect("plan a");
        let (b, _) = plan_with(&config, |_, _| true, &Ids::default()).expect("plan b");
        assert_eq!(a.services[0].ring, b.services[0].ring, "byte-identical rings");
        assert!(a.services[0].ring.iter().any(|&id| id != a.services[0].ring[0]), "a real ring");

        // Balancer c once had another backend first, so its ids are shifted.
        let mut backends = git_backends();
        backends.insert(0, BackendBuilder::new("b0", "198.18.0.10"));
        let other = config_with(backends);
        let (_, history) = plan_with(&other, |_, _| true, &Ids::default()).expect("history");
        let (c, _) = plan_with(&config, |_, _| true, &history).expect("plan c");
        assert_ne!(a.services[0].ring, c.services[0].ring, "ids differ, so the bytes do");
        let by_id = |p: &Plan| -> BTreeMap<u32, ([u8; 16], u16)> {
            p.backends.iter().map(|(id, b)| (*id, (b.addr, b.port_be))).collect()
        };
        let (ids_a, ids_c) = (by_id(&a), by_id(&c));
        for (slot, (x, y)) in a.services[0].ring.iter().zip(&c.services[0].ring).enumerate() {
            assert_eq!(ids_a[x], ids_c[y], "slot {slot} names another backend");
        }
    }
}
