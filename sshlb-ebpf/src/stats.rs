//! Per-CPU counters: global outcomes, and traffic per service and per backend.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use sshlb_common::{stats::COUNT, Traffic, MAX_BACKENDS, MAX_SERVICES};

/// One u64 per outcome/event (`sshlb_common::stats`). Written by XDP ([`count`]), read (summed)
/// by the agent.
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

/// Traffic per service id. Written by XDP ([`traffic`]), read by the agent.
#[map]
static SERVICE_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Traffic per backend id. Written by XDP ([`traffic`]), read by the agent.
#[map]
static BACKEND_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Accounts one forwarded packet of `bytes` to a service and a backend.
#[inline(always)]
pub fn traffic(service_id: u32, backend_id: u32, bytes: u16, new_flow: bool) {
    for slot in [SERVICE_STATS.get_ptr_mut(service_id), BACKEND_STATS.get_ptr_mut(backend_id)]
        .into_iter()
        .flatten()
    {
        // SAFETY: as in `count`.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += u64::from(bytes);
            (*slot).new_flows += u64::from(new_flow);
        }
    }
}
