//! The connection table: per flow, the backend chosen at its start, its NAT port and its TCP state.
//!
//! A plain (non-LRU) hash: an entry leaves only when the agent expires it by its state's idle
//! timeout, never because the table is under pressure. When it is full, *new* flows are refused
//! and counted; an idle SSH session is never evicted to make room for a SYN flood. Each CPU
//! keeps copies of the entries its established segments follow in front of it (`cache.rs`).

use aya_ebpf::{bindings::BPF_NOEXIST, macros::map, maps::HashMap};
use sshlb_common::{flow_state, Flow, FlowKey, DEFAULT_MAX_FLOWS, LAST_SEEN_GRANULARITY_NS};

use crate::parse::tcp_flags;

/// Client → VIP flow key → flow. Created ([`insert`]), read ([`get`]) and updated ([`touch`]) by
/// XDP; read and expired by the agent, which may also resize it at load time.
#[map]
static FLOWS: HashMap<FlowKey, Flow> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// `-EEXIST`: another CPU inserted the same flow first.
pub const EEXIST: i32 = -17;

/// The live entry of a flow (a pointer into the map: updates are visible to every CPU).
#[inline(always)]
pub fn get(key: &FlowKey) -> Option<*mut Flow> {
    FLOWS.get_ptr_mut(key)
}

/// Inserts a new flow; `replace` overwrites a finished flow with the same tuple.
#[inline(always)]
pub fn insert(key: &FlowKey, flow: &Flow, replace: bool) -> Result<(), i32> {
    FLOWS.insert(key, flow, if replace { 0 } else { u64::from(BPF_NOEXIST) })
}

/// Removes a flow's entry (a dead handshake whose NAT port a new flow reclaims).
#[inline(always)]
pub fn remove(key: &FlowKey) -> Result<(), i32> {
    FLOWS.remove(key)
}

/// Whether a SYN on a flow in `state` starts a new flow (the client reused a finished tuple).
#[inline(always)]
pub fn is_finished(state: u8) -> bool {
    state >= flow_state::FIN
}

/// State after a segment with `flags`; `from_client` tells the direction.
#[inline(always)]
pub fn next_state(state: u8, flags: u8, from_client: bool) -> u8 {
    if flags & tcp_flags::RST != 0 {
        flow_state::CLOSED
    } else if flags & tcp_flags::FIN != 0 {
        if state < flow_state::FIN {
            flow_state::FIN
        } else {
            state
        }
    } else if state == flow_state::SYN
        && from_client
        && flags & (tcp_flags::ACK | tcp_flags::SYN) == tcp_flags::ACK
    {
        flow_state::ESTABLISHED
    } else {
        state
    }
}

/// Records a segment on an existing flow: state transition and (coarse) last-seen time.
/// Writes only when something changed, so a busy flow does not bounce its cache line between
/// CPUs on every packet.
#[inline(always)]
pub fn touch(flow: *mut Flow, flags: u8, now: u64, from_client: bool) {
    // SAFETY: `flow` points at a live map value; racing writers only store whole small fields
    // (a lost update delays a state change by one packet, never corrupts the entry).
    unsafe {
        let state = (*flow).state;
        let new_state = next_state(state, flags, from_client);
        if new_state != state {
            (*flow).state = new_state;
        }
        if now.saturating_sub((*flow).last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
            (*flow).last_seen_ns = now;
        }
    }
}
