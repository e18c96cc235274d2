//! Each CPU's copies of the table entries its established segments follow: the connection
//! table's (client → VIP, [`flow`], [`remember_flow`]) and the full-NAT reverse index's
//! (backend → NAT address, [`reply`], [`remember_reply`]).
//!
//! A hit is an array slot and a few compares, where a table lookup is a helper call, the
//! kernel's hash over the key and an out-of-line key compare — two `ret`s through the return
//! thunk on machines with SRSO/retbleed mitigations, most of an established segment's cost.
//! Direct-mapped by `hash::flow_cache_slot` of the segment's own tuple; a collision or an
//! eviction costs a table lookup, nothing else.
//!
//! The tables stay the truth. A copy is trusted only
//! - for [`LAST_SEEN_GRANULARITY_NS`] after it was made (so a flow's `last_seen_ns`, which a
//!   hit does not touch, lags by at most twice that: `LAST_SEEN_MAX_LAG_NS`);
//! - while `FLOW_EPOCH` holds the value read before the table lookup it came from: whoever
//!   changes or removes entries behind the data plane bumps it (the agent's kill and expiry,
//!   and this program when it replaces a flow or takes over a NAT port), and every copy made
//!   before lapses at once;
//! - for segments that change nothing: a SYN, FIN or RST always goes to the table, and only
//!   established flows (not being killed) are copied.

use core::mem::size_of;

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use sshlb_common::{
    flow_flags, flow_state,
    hash::{flow_cache_slot, FLOW_CACHE_SLOTS},
    FlowKey, NatFlow, LAST_SEEN_GRANULARITY_NS,
};

use crate::{flow::next_state, parse::tcp_flags};

/// The tables' generation (index 0; `map_names::FLOW_EPOCH`, pinned: a restarted agent bumps
/// the running program's).
#[map]
static FLOW_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// Per CPU, copies of established flows' connection-table entries. Private to the data plane:
/// not pinned, created empty with the program.
#[map]
static FLOW_CACHE: PerCpuArray<CachedFlow> = PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

/// Per CPU, copies of full-NAT flows' reverse entries, keyed by the backend's segment.
#[map]
static REPLY_CACHE: PerCpuArray<CachedReply> = PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

/// Whose copy a slot holds and since when, first in every slot; the slot's `epoch` follows.
#[repr(C)]
struct Stamp {
    /// The segment's tuple as five words (compared inline, no call).
    key: [u64; 5],
    /// When the copy was made; 0: empty.
    filled_ns: u64,
}

/// A connection-table copy: what a client's segment needs. One cache line.
#[repr(C)]
pub struct CachedFlow {
    stamp: Stamp,
    /// `FLOW_EPOCH`'s low half, read before the table lookup the copy came from.
    epoch: u32,
    pub backend_id: u32,
    pub service_id: u32,
    pub nat_port_be: u16,
    pub flags: u8,
}

/// A reverse-index copy: the client flow a backend's segment goes back to.
#[repr(C)]
pub struct CachedReply {
    stamp: Stamp,
    /// As [`CachedFlow::epoch`].
    epoch: u32,
    pub flow: NatFlow,
}

const _: () = assert!(size_of::<CachedFlow>() == 64);
const _: () = assert!(size_of::<CachedReply>() == 104);
const _: () = assert!(size_of::<FlowKey>() == 40);

/// The segments a copy may serve: those that change nothing about their flow.
#[inline(always)]
const fn changes_nothing(flags: u8) -> bool {
    flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0
}

/// `key` as five words, read from wherever it lies (what `hash::flow_key_words` computes on
/// the host, in five loads).
#[inline(always)]
#[expect(clippy::cast_ptr_alignment, reason = "read with read_unaligned, never dereferenced")]
fn key_words(key: &FlowKey) -> [u64; 5] {
    let p = core::ptr::from_ref(key).cast::<u64>();
    // SAFETY: a FlowKey is 40 readable bytes (asserted above); read_unaligned has no alignment
    // requirement.
    unsafe {
        [
            p.read_unaligned(),
            p.add(1).read_unaligned(),
            p.add(2).read_unaligned(),
            p.add(3).read_unaligned(),
            p.add(4).read_unaligned(),
        ]
    }
}

/// Whether a slot stamped `stamp`, made under `made_under`, vouches for a segment with tuple
/// `w` at `now` under `epoch`.
///
/// # Safety
/// `stamp` must point at this CPU's slot.
#[inline(always)]
unsafe fn trusted(
    stamp: *const Stamp,
    made_under: u32,
    w: &[u64; 5],
    now: u64,
    epoch: u32,
) -> bool {
    // SAFETY: per the contract; nothing else runs on this CPU meanwhile.
    unsafe {
        let filled = (*stamp).filled_ns;
        (*stamp).key[0] == w[0]
            && (*stamp).key[1] == w[1]
            && (*stamp).key[2] == w[2]
            && (*stamp).key[3] == w[3]
            && (*stamp).key[4] == w[4]
            && made_under == epoch
            && filled != 0
            && now.saturating_sub(filled) < LAST_SEEN_GRANULARITY_NS
    }
}

/// The tables' generation now (its low half: a slot has room for 32 bits, and 2³² bumps never
/// pass between a copy and its use). Read before a table lookup whose result may be copied.
#[inline(always)]
pub fn epoch() -> Option<u32> {
    FLOW_EPOCH.get(0).map(|e| *e as u32)
}

/// After this CPU replaced or removed an entry other CPUs may hold copies of (a new flow
/// reusing a finished flow's tuple, a NAT port taken over): bumps `FLOW_EPOCH`, as the agent
/// does after its changes. Rare, so every CPU refilling its copies afterwards costs nothing
/// measurable.
#[inline(always)]
pub fn replaced() {
    if let Some(epoch) = FLOW_EPOCH.get_ptr_mut(0) {
        // SAFETY: a live map value, 8-byte aligned; atomic against other CPUs' bumps.
        unsafe { crate::word::atomic_add64(epoch, 1) };
    }
}

/// This CPU's trusted copy of the connection-table entry of client segment `key`, if a
/// segment with `flags` may follow it.
#[inline(always)]
pub fn flow(key: &FlowKey, flags: u8, now: u64, epoch: u32) -> Option<*const CachedFlow> {
    if !changes_nothing(flags) {
        return None;
    }
    let w = key_words(key);
    let slot = FLOW_CACHE.get_ptr(flow_cache_slot(&w))?;
    // SAFETY: this CPU's slot.
    unsafe { trusted(&raw const (*slot).stamp, (*slot).epoch, &w, now, epoch) }.then_some(slot)
}

/// The fields of a flow's entry a client's segment follows, read once.
pub struct Copied {
    pub backend_id: u32,
    pub service_id: u32,
    pub nat_port_be: u16,
    pub state: u8,
    pub flags: u8,
}

/// After a table lookup found `copy` for client segment `key` and a segment with `flags`
/// followed it: keeps it in this CPU's cache if the flow is established, not being killed, and
/// the segment changed nothing. `epoch`: read before the lookup.
#[inline(always)]
pub fn remember_flow(key: &FlowKey, flags: u8, copy: &Copied, now: u64, epoch: u32) {
    if !changes_nothing(flags)
        || next_state(copy.state, flags, true) != flow_state::ESTABLISHED
        || copy.flags & flow_flags::KILL != 0
    {
        return;
    }
    let w = key_words(key);
    let Some(slot) = FLOW_CACHE.get_ptr_mut(flow_cache_slot(&w)) else { return };
    // SAFETY: this CPU's slot; nothing else runs on this CPU meanwhile.
    unsafe {
        (*slot).stamp = Stamp { key: w, filled_ns: now };
        (*slot).epoch = epoch;
        (*slot).backend_id = copy.backend_id;
        (*slot).service_id = copy.service_id;
        (*slot).nat_port_be = copy.nat_port_be;
        (*slot).flags = copy.flags;
    }
}

/// This CPU's trusted copy of the reverse entry of backend segment `key` (backend → NAT
/// address), if a segment with `flags` may follow it.
#[inline(always)]
pub fn reply(key: &FlowKey, flags: u8, now: u64, epoch: u32) -> Option<*const NatFlow> {
    if !changes_nothing(flags) {
        return None;
    }
    let w = key_words(key);
    let slot = REPLY_CACHE.get_ptr(flow_cache_slot(&w))?;
    // SAFETY: this CPU's slot.
    unsafe {
        trusted(&raw const (*slot).stamp, (*slot).epoch, &w, now, epoch)
            .then_some(&raw const (*slot).flow)
    }
}

/// After a reverse-index lookup found `flow` for backend segment `key` and a segment with
/// `flags` followed it: keeps it in this CPU's cache if the segment changed nothing (a backend
/// sends segments without SYN, FIN or RST only on an established connection). `epoch`: read
/// before the lookup.
#[inline(always)]
pub fn remember_reply(key: &FlowKey, flags: u8, flow: &NatFlow, now: u64, epoch: u32) {
    if !changes_nothing(flags) {
        return;
    }
    let w = key_words(key);
    let Some(slot) = REPLY_CACHE.get_ptr_mut(flow_cache_slot(&w)) else { return };
    // SAFETY: this CPU's slot; nothing else runs on this CPU meanwhile.
    unsafe {
        (*slot).stamp = Stamp { key: w, filled_ns: now };
        (*slot).epoch = epoch;
        (*slot).flow = *flow;
    }
}
