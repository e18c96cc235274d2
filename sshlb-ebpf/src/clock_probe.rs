//! `sshlb-clock`: one XDP program the agent runs with `BPF_PROG_TEST_RUN` before it loads the
//! balancer, to learn how the kernel's `jiffies` map onto CLOCK_MONOTONIC (the tick's length
//! and the offset between them). With that, the balancer reads its clock as `bpf_jiffies64()`
//! — which the verifier inlines into one load on 64-bit kernels — instead of a helper call per
//! packet (see the balancer's `clock.rs`).
//!
//! Its own object without maps: running it must not create the balancer's tables.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::xdp_action,
        helpers::{bpf_jiffies64, bpf_ktime_get_ns},
        macros::xdp,
        programs::XdpContext,
    };

    /// Writes `bpf_jiffies64()` then `bpf_ktime_get_ns()` (native order, 8 bytes each) over the
    /// first 16 bytes of the frame; XDP_ABORTED for a shorter one.
    #[xdp]
    #[expect(
        clippy::needless_pass_by_value,
        reason = "aya's #[xdp] entry takes the context by value"
    )]
    pub fn sshlb_clock(ctx: XdpContext) -> u32 {
        let (start, end) = (ctx.data(), ctx.data_end());
        if start + 16 > end {
            return xdp_action::XDP_ABORTED;
        }
        let out = start as *mut [u64; 2];
        // SAFETY: plain helper calls; the 16 bytes were bounds-checked above.
        unsafe {
            let jiffies = bpf_jiffies64();
            let ns = bpf_ktime_get_ns();
            *out = [jiffies, ns];
        }
        xdp_action::XDP_PASS
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // The verifier rejects any program that could reach this; it exists only to satisfy no_std.
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
