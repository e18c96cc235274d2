//! Ending a flow at both ends (`reload --kill-established`): the agent marks the flow's entry
//! [`flow_flags::KILL`] and makes the client speak (an out-of-window ACK, which every TCP answers
//! with an ACK carrying its own sequence and acknowledgment numbers); the data plane turns each
//! segment the client sends on the flow into a RST and forwards it as usual — its sequence number
//! is the one the backend expects next, so the backend accepts it (RFC 5961 §3.2) — and reports
//! the segment in [`RESETS`], from which the agent resets the client with the sequence number
//! the client acknowledged.
//!
//! A subprogram of its own, reached only through a marked entry: the established path pays one
//! test of the flags it has already loaded.
//!
//! [`flow_flags::KILL`]: sshlb_common::flow_flags::KILL

use aya_ebpf::{macros::map, maps::RingBuf, programs::XdpContext};
use sshlb_common::{flow_state, stats, ResetEvent, RESETS_BYTES};

use crate::{
    csum::Delta,
    flow,
    parse::{ptr_at, tcp_flags, Tcp},
    stats::count,
    word::{load16, load32, store16},
};

/// Segments of killed flows, for the agent. Written by XDP ([`reset`]), read by the agent.
#[map]
static RESETS: RingBuf = RingBuf::with_byte_size(RESETS_BYTES, 0);

/// Offsets inside the TCP header.
const SEQ: usize = 4;
const ACK: usize = 8;
const OFFSET_AND_FLAGS: usize = 12;
const CHECK: usize = 16;

/// Turns the client's segment `pkt` of a killed flow into a RST (payload and all: a RST may
/// carry data, which the receiver ignores), records the flow as closed and reports the segment.
/// `false` when the TCP header cannot be read (it was parsed, so only a program bug does that).
#[inline(never)]
pub fn reset(ctx: &XdpContext, pkt: &Tcp) -> bool {
    let Some(th) = ptr_at::<[u8; 20]>(ctx, pkt.l4_off) else { return false };
    let th = th.cast::<u8>();
    // SAFETY: 20 bytes at `th` are in bounds (checked just above).
    let (seq_be, ack_be, old) =
        unsafe { (load32(th.add(SEQ)), load32(th.add(ACK)), load16(th.add(OFFSET_AND_FLAGS))) };
    let [offset, _flags] = old.to_ne_bytes();
    let new = u16::from_ne_bytes([offset, tcp_flags::RST | tcp_flags::ACK]);
    let mut delta = Delta::new();
    delta.word16(old, new);
    // SAFETY: as above; the flags word and the checksum are rewritten together.
    unsafe {
        store16(th.add(OFFSET_AND_FLAGS), new);
        store16(th.add(CHECK), delta.apply16(load16(th.add(CHECK))));
    }
    if let Some(entry) = flow::get(&pkt.key) {
        // SAFETY: a live map value; one byte store.
        unsafe { (*entry).state = flow_state::CLOSED };
    }
    let event = ResetEvent { key: pkt.key, seq_be, ack_be };
    count(if RESETS.output::<ResetEvent>(&event, 0).is_ok() {
        stats::EVENT_FLOW_RESET
    } else {
        stats::EVENT_RESET_REPORT_LOST
    });
    true
}
