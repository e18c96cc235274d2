//! The data plane's one clock read per packet: flow last-seen stamps and the next-hop cache's
//! freshness both use it.

use aya_ebpf::helpers::bpf_ktime_get_ns;

/// CLOCK_MONOTONIC in nanoseconds (the clock the agent's expiry compares against).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: plain helper call without arguments.
    unsafe { bpf_ktime_get_ns() }
}
