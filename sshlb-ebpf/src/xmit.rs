//! Sending a rewritten frame on: the kernel's FIB picks the egress interface and next-hop MAC.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
    EbpfContext as _,
};
use network_types::eth::EthHdr;
use sshlb_common::{csum::words, family};

use crate::{
    parse::ptr_at,
    verdict::{Error, Xmit},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// How the frame can leave.
pub enum Next {
    /// MACs rewritten; send it.
    Send(Xmit),
    /// Route known, neighbour not resolved: hand the (rewritten) frame to the kernel.
    NoNeigh,
}

/// The hop a rewritten frame takes: its (new) addresses and IP length.
pub struct Hop<'a> {
    pub fam: u8,
    pub src: &'a [u8; 16],
    pub dst: &'a [u8; 16],
    pub ip_len: u16,
}

/// Looks up the route for `hop` (the frame's addresses after rewriting), rewrites the Ethernet
/// addresses and says how to send the frame.
#[inline(always)]
pub fn route(ctx: &XdpContext, hop: &Hop<'_>) -> Result<Next, Error> {
    let Hop { fam, src, dst, ip_len } = *hop;
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is a valid starting value.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    let ingress = ctx.ingress_ifindex() as u32;
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
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut params, size_of::<FibParams>() as i32, 0) };
    if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return Ok(Next::NoNeigh);
    }
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return Err(Error::NoRoute);
    }
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Error::TruncatedEth)?;
    // SAFETY: ptr_at checked the header's bounds.
    unsafe {
        (*eth).dst_addr = params.dmac;
        (*eth).src_addr = params.smac;
    }
    if params.ifindex == ingress {
        Ok(Next::Send(Xmit::Tx))
    } else {
        // SAFETY: plain helper call; flags 0.
        unsafe { bpf_redirect(params.ifindex, 0) };
        Ok(Next::Send(Xmit::Redirect))
    }
}
