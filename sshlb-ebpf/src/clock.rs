//! The data plane's one clock read per packet: flow last-seen stamps, the flow and next-hop
//! caches' freshness, the NAT grace period and the rate limiter's tokens all use it.
//!
//! CLOCK_MONOTONIC in nanoseconds, to the last tick (1–10 ms old): nothing the data plane
//! times needs better. Read, where the agent could calibrate it, as the kernel's `jiffies`
//! scaled to nanoseconds — `bpf_jiffies64()` is one load once the verifier inlines it (every
//! 64-bit kernel with a JIT), where any other clock is a helper call, and on machines with
//! SRSO/retbleed mitigations a call and its `ret` cost as much as the rest of an established
//! segment's lookup. Otherwise `bpf_ktime_get_coarse_ns` (Linux 5.11+), else the precise
//! clock.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};

/// Non-zero when the kernel has `bpf_ktime_get_coarse_ns` (Linux 5.11+): set by the agent's
/// loader before the program is verified (`.rodata`, frozen), so the verifier sees a constant
/// and never explores — nor, on 5.10, refuses — the branch the kernel lacks.
#[unsafe(no_mangle)]
static COARSE_CLOCK: u8 = 0;

/// Nanoseconds per jiffy (the kernel's `TICK_NSEC`) as the agent measured it with the
/// `sshlb-clock` probe; 0: not calibrated, use a helper. `.rodata`, set by the loader.
#[unsafe(no_mangle)]
static JIFFY_NS: u64 = 0;

/// CLOCK_MONOTONIC at jiffy 0 as the probe measured it (wrapping: jiffies start below zero),
/// so that `jiffies × JIFFY_NS + JIFFIES_BASE_NS` is the time of the last tick.
#[unsafe(no_mangle)]
static JIFFIES_BASE_NS: u64 = 0;

/// CLOCK_MONOTONIC in nanoseconds, as of the last tick (the clock the agent's expiry compares
/// against).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: plain reads of statics; volatile so LLVM keeps the loads the loader's values
    // decide (it would otherwise fold the initialisers in).
    let (jiffy_ns, coarse) = unsafe {
        (
            core::ptr::read_volatile(&raw const JIFFY_NS),
            core::ptr::read_volatile(&raw const COARSE_CLOCK),
        )
    };
    if jiffy_ns != 0 {
        // SAFETY: as above; then a helper call without arguments (inlined into a load).
        let base = unsafe { core::ptr::read_volatile(&raw const JIFFIES_BASE_NS) };
        return unsafe { bpf_jiffies64() }.wrapping_mul(jiffy_ns).wrapping_add(base);
    }
    if coarse != 0 {
        // SAFETY: plain helper call without arguments.
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        // SAFETY: plain helper call without arguments.
        unsafe { bpf_ktime_get_ns() }
    }
}
