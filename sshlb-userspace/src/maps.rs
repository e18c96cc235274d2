//! Typed writers and readers for the data plane's maps. The agent's single map owner goes through
//! these; nothing else writes to the kernel.

use aya::maps::{
    lpm_trie::{Key as LpmKey, LpmTrie},
    Array, HashMap, Map, MapData, MapError, PerCpuArray,
};
use sshlb_common::{
    family, map_names, Backend, Bucket, Config, Flow, FlowKey, Limit, NatFlow, NatKey, OwnAddr,
    OwnFilter, Service, ServiceFilter, ServiceKey, SourceKey, Traffic, EMPTY_SLOT, MAX_BACKENDS,
    MAX_SERVICES, RING_STRIDE,
};

use crate::{
    loader::Dataplane,
    plan::{AclEntry, MapOp},
};

/// A map write that the data plane refused, or a request outside its limits.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// The kernel refused a map operation.
    #[error("{op} on map {map} failed")]
    Map {
        /// What was attempted.
        op: &'static str,
        /// Which map.
        map: &'static str,
        /// Cause.
        #[source]
        source: MapError,
    },
    /// A service id outside `0..MAX_SERVICES`.
    #[error("service id {0} is out of range (at most {MAX_SERVICES} services)")]
    ServiceId(u32),
    /// A backend id outside `0..MAX_BACKENDS`.
    #[error("backend id {0} is out of range (at most {MAX_BACKENDS} backends)")]
    BackendId(u32),
    /// A ring larger than the stride or empty.
    #[error("ring size {0} must be between 1 and {RING_STRIDE}")]
    RingSize(usize),
}

fn map_err(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map { op, map, source }
}

impl Dataplane {
    fn array<T: aya::Pod>(&mut self, name: &'static str) -> Array<&mut MapData, T> {
        let map = self.ebpf_mut().map_mut(name).expect("the object defines every map");
        Array::try_from(map).expect("map type matches its declaration")
    }

    /// The service table, for writing.
    pub fn services(&mut self) -> HashMap<&mut MapData, ServiceKey, Service> {
        let map = self.ebpf_mut().map_mut(map_names::SERVICES).expect("object defines SERVICES");
        HashMap::try_from(map).expect("SERVICES is a hash map of ServiceKey → Service")
    }

    /// The connection table (read, and expired by the agent).
    pub fn flows(&mut self) -> HashMap<&mut MapData, FlowKey, Flow> {
        let map = self.ebpf_mut().map_mut(map_names::FLOWS).expect("object defines FLOWS");
        HashMap::try_from(map).expect("FLOWS is a hash map of FlowKey → Flow")
    }

    /// Tells the data plane that `FLOWS` entries were changed or removed behind it: bumps
    /// `FLOW_EPOCH`, so that no CPU's flow cache follows a copy made before the change (each
    /// CPU keeps copies of the established flows it forwards, trusted for at most a second
    /// otherwise). Call once after a batch of changes.
    pub fn flows_changed(&mut self) -> Result<(), MapsError> {
        let mut epoch = self.array::<u64>(map_names::FLOW_EPOCH);
        let now = epoch.get(&0, 0).map_err(map_err("reading", map_names::FLOW_EPOCH))?;
        epoch.set(0, now.wrapping_add(1), 0).map_err(map_err("writing", map_names::FLOW_EPOCH))
    }

    /// The connection table's generation (`FLOW_EPOCH`), as [`Self::flows_changed`] bumps it.
    pub fn flow_epoch(&mut self) -> Result<u64, MapsError> {
        self.array::<u64>(map_names::FLOW_EPOCH)
            .get(&0, 0)
            .map_err(map_err("reading", map_names::FLOW_EPOCH))
    }

    /// Calls `visit` with every connection-table entry, in batched reads ([`crate::flows`]).
    pub fn walk_flows(
        &mut self,
        visit: impl FnMut(&FlowKey, &Flow),
    ) -> Result<crate::flows::Walked, crate::flows::WalkError> {
        let table = self.ebpf_mut().map(map_names::FLOWS).expect("object defines FLOWS");
        crate::flows::walk(table, visit)
    }

    /// The same walk one entry at a time (what [`Self::walk_flows`] falls back to on kernels
    /// without batched reads).
    pub fn walk_flows_iterating(
        &mut self,
        visit: impl FnMut(&FlowKey, &Flow),
    ) -> Result<u64, crate::flows::WalkError> {
        let table = self.ebpf_mut().map(map_names::FLOWS).expect("object defines FLOWS");
        crate::flows::walk_iterating(table, visit)
    }

    /// The full-NAT reverse index (entries are removed with their flows).
    pub fn nat_reverse(&mut self) -> HashMap<&mut MapData, NatKey, NatFlow> {
        let map = self.ebpf_mut().map_mut(map_names::NAT_REVERSE).expect("object defines it");
        HashMap::try_from(map).expect("NAT_REVERSE is a hash map of NatKey → NatFlow")
    }

    fn acl(&mut self) -> LpmTrie<&mut MapData, SourceKey, u32> {
        let map = self.ebpf_mut().map_mut(map_names::ACL).expect("object defines ACL");
        LpmTrie::try_from(map).expect("ACL is an LPM trie of SourceKey → u32")
    }

    /// Every allow/deny entry in the data plane.
    pub fn acl_entries(&mut self) -> Vec<AclEntry> {
        let keys: Vec<LpmKey<SourceKey>> = self.acl().keys().filter_map(Result::ok).collect();
        let acl = self.acl();
        keys.into_iter()
            .filter_map(|k| {
                let action = acl.get(&k, 0).ok()?;
                Some(AclEntry { prefix_len: k.prefix_len(), key: k.data(), action })
            })
            .collect()
    }

    /// Adds or replaces an allow/deny entry.
    pub fn set_acl_entry(&mut self, entry: &AclEntry) -> Result<(), MapsError> {
        let key = LpmKey::new(entry.prefix_len, entry.key);
        self.acl().insert(&key, entry.action, 0).map_err(map_err("writing", map_names::ACL))
    }

    /// Removes an allow/deny entry (absent is fine).
    pub fn remove_acl_entry(&mut self, entry: &AclEntry) -> Result<(), MapsError> {
        let key = LpmKey::new(entry.prefix_len, entry.key);
        match self.acl().remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err("removing", map_names::ACL)(e)),
        }
    }

    /// Sets service `id`'s per-source limit (all zero: none; the service flag decides).
    pub fn set_limit(&mut self, id: u32, limit: &Limit) -> Result<(), MapsError> {
        if id >= MAX_SERVICES {
            return Err(MapsError::ServiceId(id));
        }
        self.array::<Limit>(map_names::LIMITS)
            .set(id, limit, 0)
            .map_err(map_err("writing", map_names::LIMITS))
    }

    fn limiter(&mut self) -> HashMap<&mut MapData, SourceKey, Bucket> {
        let map = self.ebpf_mut().map_mut(map_names::LIMITER).expect("object defines LIMITER");
        HashMap::try_from(map).expect("LIMITER is an LRU hash of SourceKey → Bucket")
    }

    /// The rate limiter's buckets that refused at least one SYN: (source prefix key, bucket).
    pub fn limited_sources(&mut self) -> Vec<(SourceKey, Bucket)> {
        self.limiter().iter().filter_map(Result::ok).filter(|(_, b)| b.refused > 0).collect()
    }

    /// Buckets the rate limiter holds now (at most `LIMITER_ENTRIES`).
    pub fn limiter_len(&mut self) -> u32 {
        self.limiter().keys().flatten().count() as u32
    }

    /// The entries of `BACKENDS` in use (a family set), with their ids: the whole array in one
    /// batched read where the kernel has batch operations on arrays (Linux 5.6), one lookup per
    /// slot otherwise. A slot that cannot be read counts as unused.
    pub fn defined_backends(&mut self) -> Vec<(u32, Backend)> {
        let mut slots = Vec::new();
        let map = self.ebpf().map(map_names::BACKENDS).expect("object defines BACKENDS");
        let batched = match map {
            // SAFETY: BACKENDS maps u32 → Backend, one value per key.
            Map::Array(data) => unsafe {
                crate::flows::visit_batched(data, MAX_BACKENDS, &mut |id: &u32, b: &Backend| {
                    slots.push((*id, *b));
                })
            },
            _ => Ok(None),
        };
        if !matches!(batched, Ok(Some(_))) {
            // No batches here (or the read failed part-way): slot by slot, from scratch.
            let backends = self.array::<Backend>(map_names::BACKENDS);
            slots =
                (0..MAX_BACKENDS).filter_map(|id| Some((id, backends.get(&id, 0).ok()?))).collect();
        }
        slots.retain(|(_, backend)| backend.family != 0);
        slots
    }

    /// Backend `id` as the data plane sees it.
    pub fn backend(&mut self, id: u32) -> Result<Backend, MapsError> {
        self.array::<Backend>(map_names::BACKENDS)
            .get(&id, 0)
            .map_err(map_err("reading", map_names::BACKENDS))
    }

    /// The global outcome counters.
    pub fn stats(&self) -> PerCpuArray<&MapData, u64> {
        let map = self.ebpf().map(map_names::STATS).expect("object defines STATS");
        PerCpuArray::try_from(map).expect("STATS is a per-CPU array of u64")
    }

    /// Traffic of service `id` (summed over CPUs).
    pub fn service_traffic(&self, id: u32) -> Result<Traffic, MapsError> {
        self.traffic(map_names::SERVICE_STATS, id)
    }

    /// Traffic of backend `id` (summed over CPUs).
    pub fn backend_traffic(&self, id: u32) -> Result<Traffic, MapsError> {
        self.traffic(map_names::BACKEND_STATS, id)
    }

    fn traffic(&self, name: &'static str, id: u32) -> Result<Traffic, MapsError> {
        let map = self.ebpf().map(name).expect("object defines traffic maps");
        let map: PerCpuArray<&MapData, Traffic> =
            PerCpuArray::try_from(map).expect("traffic maps are per-CPU arrays of Traffic");
        let per_cpu = map.get(&id, 0).map_err(map_err("reading", name))?;
        Ok(per_cpu.iter().fold(Traffic::default(), |sum, t| Traffic {
            packets: sum.packets + t.packets,
            bytes: sum.bytes + t.bytes,
            new_flows: sum.new_flows + t.new_flows,
        }))
    }

    /// Flows per service id and per backend id, counted from the connection table: active
    /// (anything not reset) and live sessions (handshaking or established: no FIN or RST seen).
    pub fn active_flows(&mut self) -> ActiveFlows {
        let mut active = ActiveFlows {
            per_service: vec![0; MAX_SERVICES as usize],
            per_backend: vec![0; MAX_BACKENDS as usize],
            live_per_backend: vec![0; MAX_BACKENDS as usize],
        };
        let walked = self.walk_flows(|_, flow| {
            if flow.state == sshlb_common::flow_state::CLOSED {
                return;
            }
            if let Some(n) = active.per_service.get_mut(flow.service_id as usize) {
                *n += 1;
            }
            if let Some(n) = active.per_backend.get_mut(flow.backend_id as usize) {
                *n += 1;
            }
            if flow.state < sshlb_common::flow_state::FIN {
                if let Some(n) = active.live_per_backend.get_mut(flow.backend_id as usize) {
                    *n += 1;
                }
            }
        });
        if let Err(err) = walked {
            tracing::warn!("counting flows: {err}; the counts are partial");
        }
        active
    }

    /// The ids the maps already use (after a takeover): services by key, backends by address.
    pub fn existing_ids(&mut self) -> crate::plan::Ids {
        let mut ids = crate::plan::Ids::default();
        for (key, service) in self.services().iter().filter_map(Result::ok) {
            ids.insert_service(&key, service.id);
        }
        for (id, backend) in self.defined_backends() {
            ids.insert_backend(&backend, id);
        }
        ids
    }

    /// The balancer's NAT addresses and port range as the data plane has them.
    pub fn nat_config(&mut self) -> Result<Config, MapsError> {
        self.array::<Config>(map_names::CONFIG)
            .get(&0, 0)
            .map_err(map_err("reading", map_names::CONFIG))
    }

    /// The ring of reports from killed flows' segments, taken out of the object (one reader:
    /// the agent's resetter). `None` once taken.
    pub fn take_resets(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        let map = self.ebpf_mut().take_map(map_names::RESETS)?;
        Some(aya::maps::RingBuf::try_from(map).expect("RESETS is a ring buffer"))
    }

    /// Writes the balancer's NAT addresses and port range.
    pub fn set_config(&mut self, config: &Config) -> Result<(), MapsError> {
        self.array::<Config>(map_names::CONFIG)
            .set(0, config, 0)
            .map_err(map_err("writing", map_names::CONFIG))
    }

    /// Defines (or redefines) backend `id`.
    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapsError> {
        if id >= MAX_BACKENDS {
            return Err(MapsError::BackendId(id));
        }
        self.array::<Backend>(map_names::BACKENDS)
            .set(id, backend, 0)
            .map_err(map_err("writing", map_names::BACKENDS))
    }

    /// Forgets backend `id`; flows still pointing at it are then dropped (`drop_no_backend`).
    /// Only call this once no ring names it and its flows have drained.
    pub fn clear_backend(&mut self, id: u32) -> Result<(), MapsError> {
        self.set_backend(id, &Backend::default())
    }

    /// Publishes `ring` (backend ids per slot, [`EMPTY_SLOT`] for none) for the service `key`
    /// with dense id `service.id`, and creates or updates the service entry.
    ///
    /// The ring goes into the service's standby half of `RINGS` first; then the service entry
    /// is replaced in one map update that points it at that half. A packet therefore sees either
    /// the whole old ring or the whole new one, never a mix.
    pub fn publish_service(
        &mut self,
        key: &ServiceKey,
        id: u32,
        flags: u32,
        ring: &[u32],
    ) -> Result<(), MapsError> {
        self.write_standby_ring(key, id, ring)?;
        self.flip_service(key, id, flags, ring.len() as u32)
    }

    /// The first `RINGS` slot of the half of service `id`'s slots that the entry under `key`
    /// does not point at (the first half when there is no entry yet).
    fn standby_half(&mut self, key: &ServiceKey, id: u32) -> u32 {
        let base = 2 * id * RING_STRIDE;
        match self.services().get(key, 0).ok() {
            Some(s) if s.id == id && s.ring_offset == base => base + RING_STRIDE,
            _ => base,
        }
    }

    /// Writes `ring` into service `id`'s standby half (see [`Self::publish_service`]); packets
    /// do not see it until [`Self::flip_service`].
    pub fn write_standby_ring(
        &mut self,
        key: &ServiceKey,
        id: u32,
        ring: &[u32],
    ) -> Result<(), MapsError> {
        if id >= MAX_SERVICES {
            return Err(MapsError::ServiceId(id));
        }
        if ring.is_empty() || ring.len() > RING_STRIDE as usize {
            return Err(MapsError::RingSize(ring.len()));
        }
        let standby = self.standby_half(key, id);
        // Maglev moves few slots per change: write only those that differ from what this
        // process last put in the standby half (all of them when it does not know).
        let known = self.ring_cache.remove(&standby).filter(|old| old.len() == ring.len());
        let mut rings = self.array::<u32>(map_names::RINGS);
        for (i, (slot, backend)) in (standby..).zip(ring).enumerate() {
            if known.as_ref().is_some_and(|old| old[i] == *backend) {
                continue;
            }
            rings.set(slot, backend, 0).map_err(map_err("writing", map_names::RINGS))?;
        }
        self.ring_cache.insert(standby, ring.to_vec());
        Ok(())
    }

    /// Points the service entry under `key` at the standby half [`Self::write_standby_ring`]
    /// filled, in one map update (creating the entry when there is none).
    pub fn flip_service(
        &mut self,
        key: &ServiceKey,
        id: u32,
        flags: u32,
        ring_size: u32,
    ) -> Result<(), MapsError> {
        if id >= MAX_SERVICES {
            return Err(MapsError::ServiceId(id));
        }
        if ring_size == 0 || ring_size > RING_STRIDE {
            return Err(MapsError::RingSize(ring_size as usize));
        }
        let ring_offset = self.standby_half(key, id);
        let service = Service { id, flags, ring_size, ring_offset };
        // The pre-filter's bit first: a service the filter hides would pass its packets by.
        let mut filter = self.service_filter()?;
        if !filter.may_contain(key) {
            filter.insert(key);
            self.set_service_filter(&filter)?;
        }
        self.services().insert(key, service, 0).map_err(map_err("writing", map_names::SERVICES))
    }

    /// The service pre-filter as the data plane reads it.
    pub fn service_filter(&mut self) -> Result<ServiceFilter, MapsError> {
        self.array::<ServiceFilter>(map_names::SERVICE_FILTER)
            .get(&0, 0)
            .map_err(map_err("reading", map_names::SERVICE_FILTER))
    }

    fn set_service_filter(&mut self, filter: &ServiceFilter) -> Result<(), MapsError> {
        self.array::<ServiceFilter>(map_names::SERVICE_FILTER)
            .set(0, filter, 0)
            .map_err(map_err("writing", map_names::SERVICE_FILTER))
    }

    /// Carries out `ops` in order ([`crate::plan::diff`] decides them; this only writes). Stops
    /// at the first refused write.
    pub fn execute(&mut self, ops: &[MapOp]) -> Result<(), MapsError> {
        for op in ops {
            match op {
                MapOp::SetConfig(config) => self.set_config(config)?,
                MapOp::SetBackend { id, backend } => self.set_backend(*id, backend)?,
                MapOp::SetAcl(entry) => self.set_acl_entry(entry)?,
                MapOp::SetLimit { id, limit } => self.set_limit(*id, limit)?,
                MapOp::WriteStandbyRing { key, id, ring } => {
                    self.write_standby_ring(key, *id, ring)?;
                }
                MapOp::FlipService { key, id, flags, ring_size } => {
                    self.flip_service(key, *id, *flags, *ring_size)?;
                }
                MapOp::RemoveService(key) => self.remove_service(key)?,
                MapOp::RemoveAcl(entry) => self.remove_acl_entry(entry)?,
            }
        }
        self.refresh_own_addresses()
    }

    /// Makes `OWN_ADDRESSES` hold exactly the addresses the maps now name — every VIP, NAT
    /// address and defined backend — so that a new flow from one of them is refused as spoofed.
    /// Additions go in before removals; an address that stays is not touched.
    pub fn refresh_own_addresses(&mut self) -> Result<(), MapsError> {
        let mut want = std::collections::BTreeSet::new();
        for key in self.services().keys().filter_map(Result::ok) {
            want.insert(OwnAddr::new(key.addr, key.family));
        }
        for (_, backend) in self.defined_backends() {
            want.insert(OwnAddr::new(backend.addr, backend.family));
        }
        if let Ok(config) = self.array::<Config>(map_names::CONFIG).get(&0, 0) {
            if config.nat_v4 != [0; 4] {
                want.insert(OwnAddr::new(sshlb_common::v4_in_16(config.nat_v4), family::V4));
            }
            if config.nat_v6 != [0; 16] {
                want.insert(OwnAddr::new(config.nat_v6, family::V6));
            }
        }
        let have: std::collections::BTreeSet<OwnAddr> =
            self.own_addresses().keys().filter_map(Result::ok).collect();
        // The pre-filter may prove foreign only what is in neither set while the hash changes
        // (an address about to be added must already be a "maybe"), then only what is not in
        // the new one.
        self.write_own_filter(&OwnFilter::of(want.union(&have)))?;
        let mut own = self.own_addresses();
        for addr in want.difference(&have) {
            own.insert(addr, 1, 0).map_err(map_err("writing", map_names::OWN_ADDRESSES))?;
        }
        for addr in have.difference(&want) {
            own.remove(addr).map_err(map_err("removing", map_names::OWN_ADDRESSES))?;
        }
        self.write_own_filter(&OwnFilter::of(&want))
    }

    /// The balancer's own addresses and the pre-filter in front of them, as the data plane
    /// reads them.
    pub fn own(&mut self) -> Result<(Vec<OwnAddr>, OwnFilter), MapsError> {
        let addrs = self.own_addresses().keys().filter_map(Result::ok).collect();
        let filter = self
            .array::<OwnFilter>(map_names::OWN_FILTER)
            .get(&0, 0)
            .map_err(map_err("reading", map_names::OWN_FILTER))?;
        Ok((addrs, filter))
    }

    fn write_own_filter(&mut self, filter: &OwnFilter) -> Result<(), MapsError> {
        self.array::<OwnFilter>(map_names::OWN_FILTER)
            .set(0, filter, 0)
            .map_err(map_err("writing", map_names::OWN_FILTER))
    }

    fn own_addresses(&mut self) -> HashMap<&mut MapData, OwnAddr, u32> {
        let map = self.ebpf_mut().map_mut(map_names::OWN_ADDRESSES).expect("object defines it");
        HashMap::try_from(map).expect("OWN_ADDRESSES is a hash map of OwnAddr → u32")
    }

    /// Removes a service: new flows to it are no longer balanced, and once the pre-filter is
    /// rebuilt without it (here, right after) neither are its established ones — removal ends
    /// them.
    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<(), MapsError> {
        self.services().remove(key).map_err(map_err("removing", map_names::SERVICES))?;
        // Rebuilt from the services that remain: another service may share the bit.
        let mut filter = ServiceFilter::default();
        for remaining in self.services().keys().filter_map(Result::ok) {
            filter.insert(&remaining);
        }
        self.set_service_filter(&filter)
    }
}

/// Live flows by service and by backend (see [`Dataplane::active_flows`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveFlows {
    /// Indexed by service id.
    pub per_service: Vec<u64>,
    /// Indexed by backend id.
    pub per_backend: Vec<u64>,
    /// Live sessions (no FIN or RST seen yet), indexed by backend id.
    pub live_per_backend: Vec<u64>,
}

/// A ring of `size` slots all naming `backend` (tests, single-backend services).
pub fn uniform_ring(size: usize, backend: u32) -> Vec<u32> {
    vec![backend; size]
}

/// A ring of `size` slots with no backend.
pub fn empty_ring(size: usize) -> Vec<u32> {
    vec![EMPTY_SLOT; size]
}
