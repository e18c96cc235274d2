//! Global per-CPU outcome counters.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use sshlb_common::stats::COUNT;

/// One u64 per outcome (`sshlb_common::stats`). Written by XDP, read (summed over CPUs) by the agent.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNT, 0);

/// Adds one to counter `index`. Per-CPU, so a plain add is race-free.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: the pointer is to this CPU's slot of a live map element; nothing else on this
        // CPU runs concurrently with the program.
        unsafe { *slot += 1 };
    }
}
