//! The service table and backend selection: which (VIP, port, protocol) the balancer answers for,
//! and which backend a new flow of a service goes to (its Maglev ring).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use sshlb_common::{
    hash::{filter_slot, flow_hash, RING_SEED},
    service_flags, Backend, FlowKey, OwnAddr, OwnFilter, Service, ServiceFilter, ServiceKey,
    EMPTY_SLOT, FILTER_BITS, MAX_BACKENDS, MAX_OWN_ADDRESSES, MAX_SERVICES, RING_STRIDE,
};

/// The balancer's own addresses (VIPs, NAT addresses, backends). Written by the agent, read by
/// XDP ([`is_own_address`]) only when a flow would start.
#[map]
static OWN_ADDRESSES: HashMap<OwnAddr, u32> = HashMap::with_max_entries(MAX_OWN_ADDRESSES, 0);

/// The own-address pre-filter at index 0 (see [`OwnFilter`]: a set bit proves a source
/// foreign). Written by the agent around its `OWN_ADDRESSES` updates, read by XDP
/// ([`is_own_address`]).
#[map]
static OWN_FILTER: Array<OwnFilter> = Array::with_max_entries(1, 0);

/// Whether `key`'s source is one of the balancer's own addresses: no client has one, so a flow
/// from it is spoofed (or a loop) and must not get state. A client's source is nearly always
/// proved foreign by one word of the pre-filter; only the rest costs the hash lookup.
#[inline(always)]
pub fn is_own_address(key: &FlowKey) -> bool {
    if let Some(filter) = OWN_FILTER.get(0) {
        if bit_set(&filter.words, filter_slot(&key.src, 0, key.family)) {
            return false;
        }
    }
    // SAFETY: only presence is read.
    unsafe { OWN_ADDRESSES.get(OwnAddr::new(key.src, key.family)) }.is_some()
}

/// The service pre-filter at index 0. Written by the agent (a service's bit is set before its
/// `SERVICES` entry appears and cleared after it is gone), read by XDP ([`may_be_service`]).
#[map]
static SERVICE_FILTER: Array<ServiceFilter> = Array::with_max_entries(1, 0);

/// Whether a segment to `key`'s destination may be addressed to a service. `false` is certain
/// (no service has that VIP and port); `true` sends it on to the table lookups. One inlined array
/// read: what every segment to the balancer host's own addresses pays.
#[inline(always)]
pub fn may_be_service(key: &FlowKey) -> bool {
    let Some(filter) = SERVICE_FILTER.get(0) else { return true };
    bit_set(&filter.words, filter_slot(&key.dst, key.dport_be, key.family))
}

/// Whether bit `slot` of a pre-filter's words is set. `slot < FILTER_BITS`, so the word index is
/// in bounds; the mask makes that visible (no bounds check, hence no panic path in the object).
#[inline(always)]
fn bit_set(words: &[u64; FILTER_BITS as usize / 64], slot: u32) -> bool {
    words[(slot as usize / 64) & (words.len() - 1)] & (1 << (slot % 64)) != 0
}

/// (VIP, port, protocol) → service. Written by the agent, read by XDP ([`lookup`]).
#[map]
static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// The service a TCP flow is addressed to, if any.
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<Service> {
    // SAFETY: the value is copied out before the map can change underneath it.
    unsafe { SERVICES.get(ServiceKey::of_flow(key)) }.copied()
}

/// Maglev rings: service `s` owns slots `[2s × RING_STRIDE, (2s + 2) × RING_STRIDE)`, two rings
/// of which `Service::ring_offset` names the active one. Written by the agent (into the standby
/// ring, then the service entry is flipped in one update), read by XDP
/// ([`backend_for_new_flow`]).
#[map]
static RINGS: Array<u32> = Array::with_max_entries(MAX_SERVICES * 2 * RING_STRIDE, 0);

/// The backend id a new flow of `service` goes to: its slot in the service's active ring.
#[inline(always)]
pub fn backend_for_new_flow(service: &Service, key: &FlowKey) -> Option<u32> {
    let source_only = service.flags & service_flags::SOURCE_AFFINITY != 0;
    // None for an empty ring (size 0), without a division-by-zero panic path in the object.
    let slot = flow_hash(key, source_only, RING_SEED).checked_rem(service.ring_size)?;
    let id = *RINGS.get(service.ring_offset.wrapping_add(slot))?;
    (id != EMPTY_SLOT).then_some(id)
}

/// Backend id → address and port. Written by the agent, read by XDP ([`backend`]). An entry
/// outlives the backend's presence in any ring for as long as established flows still point at
/// it.
#[map]
static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Backend `id`, if the agent has defined it.
///
/// Returned by value: an `Option<&Backend>` lets LLVM fold the null check into arithmetic on the
/// map-value pointer, which the verifier rejects.
#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    let backend = *BACKENDS.get(id)?;
    (backend.family != 0).then_some(backend)
}
