//! The data plane's one clock read per packet: flow last-seen stamps, the next-hop cache's
//! freshness, the NAT grace period and the rate limiter's tokens all use it.

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};

/// Non-zero when the kernel has `bpf_ktime_get_coarse_ns` (Linux 5.11+): set by the agent's
/// loader before the program is verified (`.rodata`, frozen), so the verifier sees a constant
/// and never explores — nor, on 5.10, refuses — the branch the kernel lacks.
#[unsafe(no_mangle)]
static COARSE_CLOCK: u8 = 0;

/// CLOCK_MONOTONIC in nanoseconds (the clock the agent's expiry compares against). Where the
/// kernel has it, the coarse variant: the time of the last tick (1–4 ms old), read from memory
/// instead of the clock source — on a virtual machine's pvclock a read costs as much as a map
/// lookup, and nothing the data plane times needs better than a millisecond.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a plain read of a static; volatile so LLVM keeps the load the loader's value
    // decides (it would otherwise fold the initialiser in).
    if unsafe { core::ptr::read_volatile(&raw const COARSE_CLOCK) } != 0 {
        // SAFETY: plain helper call without arguments.
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        // SAFETY: plain helper call without arguments.
        unsafe { bpf_ktime_get_ns() }
    }
}
