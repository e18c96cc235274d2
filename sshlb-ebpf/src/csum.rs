//! The data plane's side of checksum updates: the kernel's `bpf_csum_diff` over runs of packet
//! bytes, feeding the pure RFC 1624 arithmetic of [`sshlb_common::csum`] (which also provides
//! the word runs — address pairs, port pairs — that the rewrites write back).

use aya_ebpf::helpers::bpf_csum_diff;
pub use sshlb_common::csum::{ports, v4_pair, v6_pair, words, Delta};

use crate::verdict::Error;

/// `seed + ~old + new` over the `N` words at `old` (in the packet) and `new`, by the kernel's
/// `bpf_csum_diff`. The helper refusing its arguments is the program's own fault, not the
/// packet's: [`Error::CsumHelperFailed`].
///
/// # Safety
/// `old` must point at `4 × N` readable packet bytes.
#[inline(always)]
pub unsafe fn diff<const N: usize>(
    old: *mut u32,
    new: &[u32; N],
    seed: Delta,
) -> Result<Delta, Error> {
    let len = (N * 4) as u32;
    // SAFETY: per the caller's contract; the helper only reads both buffers.
    let sum = unsafe { bpf_csum_diff(old, len, new.as_ptr().cast_mut(), len, seed.partial()) };
    if sum < 0 {
        return Err(Error::CsumHelperFailed);
    }
    Ok(Delta::from_partial(sum as u32))
}
