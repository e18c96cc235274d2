//! Sending a rewritten frame on — the one way every forwarding path finishes a packet
//! ([`send`]): the kernel's FIB (or its per-CPU cache) picks the egress interface and next-hop
//! MAC, and the path's outcome says how the frame leaves.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup, bpf_redirect},
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
    EbpfContext as _,
};
use network_types::eth::EthHdr;
use sshlb_common::{csum::words, family};

use crate::{
    parse::ptr_at,
    verdict::{Error, Outcome, Path, Xmit},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// How the frame can leave.
enum Next {
    /// MACs rewritten; send it.
    Send(Xmit),
    /// Route known, neighbour not resolved: hand the (rewritten) frame to the kernel.
    NoNeigh,
}

/// The hop a rewritten frame takes: its (new) addresses and IP length.
pub struct Hop<'a> {
    /// [`family::V4`] or [`family::V6`].
    pub fam: u8,
    /// Source address after rewriting.
    pub src: &'a [u8; 16],
    /// Destination address after rewriting (the FIB looks up its route).
    pub dst: &'a [u8; 16],
    /// IP datagram length, for the FIB's MTU check.
    pub ip_len: u16,
}

/// Finishes a frame `path` rewrote: routes it for `hop`, sets its MACs and says how it leaves
/// (or that the kernel must resolve the neighbour first).
#[inline(always)]
pub fn send(ctx: &XdpContext, path: Path, hop: &Hop<'_>, now: u64) -> Result<Outcome, Error> {
    match route(ctx, hop, now)? {
        Next::Send(how) => Ok(Outcome::Forwarded(path, how)),
        Next::NoNeigh => Ok(Outcome::NoNeigh),
    }
}

/// A resolved next hop, cached per CPU.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct CachedHop {
    /// When the FIB answered (`bpf_ktime_get_ns`); 0 = empty.
    stamped_ns: u64,
    /// Destination the answer was for.
    dst: [u8; 16],
    /// Interface the frame came in on when the FIB answered.
    ingress: u32,
    /// Egress interface.
    ifindex: u32,
    /// Next hop's MAC (the frame's new destination).
    dmac: [u8; 6],
    /// Egress interface's MAC (the frame's new source).
    smac: [u8; 6],
}

/// Slots in the per-CPU next-hop cache (direct-mapped by destination hash).
const HOP_CACHE_SLOTS: u32 = 256;
/// How long a cached FIB answer is trusted: a neighbour's new MAC is picked up within this.
const HOP_CACHE_TTL_NS: u64 = 1_000_000_000;

/// Per-CPU cache of FIB answers by destination ([`route`]): `bpf_fib_lookup` costs more than the rest of
/// the established path together, and a balancer sends nearly everything to a handful of next
/// hops (its backends, its router). Written and read by XDP only; entries expire after
/// [`HOP_CACHE_TTL_NS`], so route and neighbour changes reach the data plane within a second.
#[map]
static HOP_CACHE: PerCpuArray<CachedHop> = PerCpuArray::with_max_entries(HOP_CACHE_SLOTS, 0);

#[inline(always)]
fn cache_slot(dst: &[u8; 16]) -> u32 {
    let w = words(dst);
    let h = w[0] ^ w[1] ^ w[2] ^ w[3];
    (h ^ (h >> 16) ^ (h >> 8)) & (HOP_CACHE_SLOTS - 1)
}

/// Sets the frame's MACs and says how to send it.
#[inline(always)]
fn apply(
    ctx: &XdpContext,
    dmac: [u8; 6],
    smac: [u8; 6],
    ifindex: u32,
    ingress: u32,
) -> Result<Next, Error> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Error::TruncatedEth)?;
    // SAFETY: ptr_at checked the header's bounds.
    unsafe {
        (*eth).dst_addr = dmac;
        (*eth).src_addr = smac;
    }
    if ifindex == ingress {
        Ok(Next::Send(Xmit::Tx))
    } else {
        // SAFETY: plain helper call; flags 0.
        unsafe { bpf_redirect(ifindex, 0) };
        Ok(Next::Send(Xmit::Redirect))
    }
}

/// Looks up the route for `hop` (the frame's addresses after rewriting), rewrites the Ethernet
/// addresses and says how to send the frame. Answers come from the per-CPU next-hop cache
/// while fresh, else from `bpf_fib_lookup` (and are cached).
#[inline(always)]
fn route(ctx: &XdpContext, hop: &Hop<'_>, now: u64) -> Result<Next, Error> {
    let Hop { fam, src, dst, ip_len } = *hop;
    let ingress = ctx.ingress_ifindex() as u32;
    let slot = HOP_CACHE.get_ptr_mut(cache_slot(dst));
    if let Some(entry) = slot {
        // SAFETY: this CPU's slot; no other program runs on this CPU meanwhile.
        let cached = unsafe { *entry };
        if cached.stamped_ns != 0
            && now.wrapping_sub(cached.stamped_ns) < HOP_CACHE_TTL_NS
            && cached.ingress == ingress
            && cached.dst == *dst
        {
            return apply(ctx, cached.dmac, cached.smac, cached.ifindex, ingress);
        }
    }
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is a valid starting value.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.ifindex = ingress;
    params.l4_protocol = sshlb_common::proto::TCP;
    params.__bindgen_anon_1.tot_len = ip_len;
    if fam == family::V4 {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = words(src)[0];
        params.__bindgen_anon_4.ipv4_dst = words(dst)[0];
    } else {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = words(src);
        params.__bindgen_anon_4.ipv6_dst = words(dst);
    }
    // SAFETY: params is a valid, writable bpf_fib_lookup of the size passed.
    let rc =
        unsafe { bpf_fib_lookup(ctx.as_ptr(), &raw mut params, size_of::<FibParams>() as i32, 0) };
    if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return Ok(Next::NoNeigh);
    }
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return Err(Error::NoRoute);
    }
    if let Some(entry) = slot {
        // SAFETY: as above.
        unsafe {
            *entry = CachedHop {
                stamped_ns: now,
                dst: *dst,
                ingress,
                ifindex: params.ifindex,
                dmac: params.dmac,
                smac: params.smac,
            };
        }
    }
    apply(ctx, params.dmac, params.smac, params.ifindex, ingress)
}
