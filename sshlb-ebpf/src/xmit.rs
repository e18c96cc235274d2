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
use sshlb_common::{
    csum::words,
    family,
    hash::{hop_slot, HOP_CACHE_SLOTS},
};

use crate::{
    parse::ptr_at,
    verdict::{Error, Outcome, Path, Xmit},
    word,
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
///
/// Inline, and so is a next-hop cache hit (what nearly every packet takes); only a cache miss
/// calls a subprogram ([`routed`]). A call is not free: on this kind of machine every `ret`
/// goes through the kernel's return thunk (SRSO/retbleed mitigations).
#[inline(always)]
pub fn send(ctx: &XdpContext, path: Path, hop: &Hop<'_>, now: u64) -> Result<Outcome, Error> {
    let ingress = ctx.ingress_ifindex() as u32;
    let dst_words = words(hop.dst);
    if let Some(entry) = HOP_CACHE.get_ptr_mut(hop_slot(&dst_words)) {
        // SAFETY: this CPU's slot; no other program runs on this CPU meanwhile. Fields are read
        // in place, not copied out whole.
        unsafe {
            let stamped = (*entry).stamped_ns;
            if stamped != 0
                && now.saturating_sub(stamped) < HOP_CACHE_TTL_NS
                && (*entry).ingress == ingress
                && (*entry).dst[0] == dst_words[0]
                && (*entry).dst[1] == dst_words[1]
                && (*entry).dst[2] == dst_words[2]
                && (*entry).dst[3] == dst_words[3]
            {
                let (lo, hi, ifindex) = ((*entry).macs_lo, (*entry).macs_hi, (*entry).ifindex);
                let how = apply(ctx, lo, hi, ifindex, ingress)?;
                return Ok(Outcome::Forwarded(path, how));
            }
        }
    }
    match routed(ctx, hop, now) {
        Routed::Tx => Ok(Outcome::Forwarded(path, Xmit::Tx)),
        Routed::Redirect => Ok(Outcome::Forwarded(path, Xmit::Redirect)),
        Routed::NoNeigh => Ok(Outcome::NoNeigh),
        Routed::NoRoute => Err(Error::NoRoute),
        Routed::Truncated => Err(Error::TruncatedEth),
    }
}

/// [`route`]'s answer as one integer (a subprogram's result in R0; see `Decision`).
#[repr(u32)]
#[derive(Clone, Copy)]
enum Routed {
    Tx,
    Redirect,
    NoNeigh,
    NoRoute,
    Truncated,
}

/// A next-hop cache miss: [`route`] as a BPF subprogram of its own, so the FIB's 64-byte
/// parameter block lives in this frame, not in the caller's (the verifier allows 512 bytes of
/// stack for a whole call chain).
#[inline(never)]
fn routed(ctx: &XdpContext, hop: &Hop<'_>, now: u64) -> Routed {
    match route(ctx, hop, now) {
        Ok(Next::Send(Xmit::Tx)) => Routed::Tx,
        Ok(Next::Send(Xmit::Redirect)) => Routed::Redirect,
        Ok(Next::NoNeigh) => Routed::NoNeigh,
        Err(Error::NoRoute) => Routed::NoRoute,
        Err(_) => Routed::Truncated,
    }
}

/// A resolved next hop, cached per CPU.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct CachedHop {
    /// When the FIB answered (`bpf_ktime_get_ns`); 0 = empty.
    stamped_ns: u64,
    /// Destination the answer was for, as four native-order words.
    dst: [u32; 4],
    /// Interface the frame came in on when the FIB answered.
    ingress: u32,
    /// Egress interface.
    ifindex: u32,
    /// The frame's new first 12 bytes — next hop's MAC, then the egress interface's — as one
    /// 8-byte and one 4-byte word, stored with two instructions.
    macs_lo: u64,
    macs_hi: u32,
    pad: u32,
}

/// How long a cached FIB answer is trusted: a neighbour's new MAC is picked up within this.
const HOP_CACHE_TTL_NS: u64 = 1_000_000_000;

/// Per-CPU cache of FIB answers by destination ([`route`]): `bpf_fib_lookup` costs more than the rest of
/// the established path together, and a balancer sends nearly everything to a handful of next
/// hops (its backends, its router). Written and read by XDP only; entries expire after
/// [`HOP_CACHE_TTL_NS`], so route and neighbour changes reach the data plane within a second.
#[map]
static HOP_CACHE: PerCpuArray<CachedHop> = PerCpuArray::with_max_entries(HOP_CACHE_SLOTS, 0);

/// Sets the frame's MACs (its first 12 bytes, as two words) and says how to send it.
#[inline(always)]
fn apply(
    ctx: &XdpContext,
    macs_lo: u64,
    macs_hi: u32,
    ifindex: u32,
    ingress: u32,
) -> Result<Xmit, Error> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Error::TruncatedEth)?.cast::<u8>();
    // SAFETY: ptr_at checked the 14-byte header.
    unsafe {
        word::store64(eth, macs_lo);
        word::store32(eth.add(8), macs_hi);
    }
    if ifindex == ingress {
        Ok(Xmit::Tx)
    } else {
        // SAFETY: plain helper call; flags 0.
        unsafe { bpf_redirect(ifindex, 0) };
        Ok(Xmit::Redirect)
    }
}

/// Zeroes the `bpf_fib_lookup` at `params` with eight stores, in place: `mem::zeroed` of 64
/// bytes compiles to a call to `memset`, a subprogram of its own whose frame, rounded up to 32
/// bytes by older kernels' verifiers, was one frame too many for the deepest call chain
/// (entry → ICMP error → next-hop miss) on Linux 5.10; and a zeroed value moved into place
/// is copied by one.
#[inline(always)]
fn zero_params(params: &mut core::mem::MaybeUninit<FibParams>) -> &mut FibParams {
    const WORDS: usize = size_of::<FibParams>() / 8;
    const _: () = assert!(size_of::<FibParams>().is_multiple_of(8));
    let words = params.as_mut_ptr().cast::<u64>();
    for i in 0..WORDS {
        // SAFETY: `i` < WORDS, so every store is inside the struct; volatile keeps LLVM from
        // merging them back into a memset.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // SAFETY: every byte was written; all-zero is a valid bpf_fib_lookup (plain old data).
    unsafe { params.assume_init_mut() }
}

/// Looks up the route for `hop` (the frame's addresses after rewriting) with `bpf_fib_lookup`,
/// caches the answer, rewrites the Ethernet addresses and says how to send the frame.
#[inline(always)]
fn route(ctx: &XdpContext, hop: &Hop<'_>, now: u64) -> Result<Next, Error> {
    let Hop { fam, src, dst, ip_len } = *hop;
    let ingress = ctx.ingress_ifindex() as u32;
    let dst_words = words(dst);
    let slot = HOP_CACHE.get_ptr_mut(hop_slot(&dst_words));
    let mut storage = core::mem::MaybeUninit::<FibParams>::uninit();
    let params = zero_params(&mut storage);
    params.ifindex = ingress;
    params.l4_protocol = sshlb_common::proto::TCP;
    params.__bindgen_anon_1.tot_len = ip_len;
    if fam == family::V4 {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = words(src)[0];
        params.__bindgen_anon_4.ipv4_dst = dst_words[0];
    } else {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = words(src);
        params.__bindgen_anon_4.ipv6_dst = dst_words;
    }
    // SAFETY: params is a valid, writable bpf_fib_lookup of the size passed.
    let rc =
        unsafe { bpf_fib_lookup(ctx.as_ptr(), &raw mut *params, size_of::<FibParams>() as i32, 0) };
    if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return Ok(Next::NoNeigh);
    }
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return Err(Error::NoRoute);
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&params.dmac);
    macs[6..].copy_from_slice(&params.smac);
    let macs_lo = u64::from_ne_bytes([
        macs[0], macs[1], macs[2], macs[3], macs[4], macs[5], macs[6], macs[7],
    ]);
    let macs_hi = u32::from_ne_bytes([macs[8], macs[9], macs[10], macs[11]]);
    if let Some(entry) = slot {
        // SAFETY: as above.
        unsafe {
            *entry = CachedHop {
                stamped_ns: now,
                dst: dst_words,
                ingress,
                ifindex: params.ifindex,
                macs_lo,
                macs_hi,
                pad: 0,
            };
        }
    }
    apply(ctx, macs_lo, macs_hi, params.ifindex, ingress).map(Next::Send)
}
