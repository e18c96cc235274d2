//! The one bounds-checked way into the frame ([`ptr_at`]), shared by the balancer and the
//! backend side's decapsulation program.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;

/// End of the frame, loaded afresh on every call.
///
/// The volatile load stops LLVM from proving a later bounds check redundant from an earlier,
/// arithmetically stronger one (e.g. "IP total length fits" ⇒ "TCP header fits") and deleting it:
/// the verifier only accepts packet reads dominated by their own `ptr + len <= data_end` check.
#[inline(always)]
pub fn data_end(ctx: &XdpContext) -> usize {
    // SAFETY: ctx.ctx points at the kernel's xdp_md for the whole program run.
    unsafe { core::ptr::read_volatile(&raw const (*ctx.ctx).data_end) as usize }
}

/// Largest header offset the program ever reads at (Ethernet + VLAN + IPv4 with options is 82).
const MAX_HEADER_OFFSET: usize = 255;

/// Bounds-checked pointer to a `T` at byte `off` of the frame.
///
/// `off` is bounded explicitly first: offsets that travelled through memory (a parsed `Tcp`
/// handed to another subprogram) reach the verifier as unbounded scalars, and it refuses to add
/// those to a packet pointer.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    if off > MAX_HEADER_OFFSET {
        return None;
    }
    let start = ctx.data();
    let end = data_end(ctx);
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}
