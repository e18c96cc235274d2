//! sshlb's XDP entry point: parse, classify, balance, count, decide.
//!
//! The entry is deliberately thin: [`try_sshlb`] returns either an [`Outcome`] (the packet was
//! understood) or an [`Error`] (it was malformed); each variant maps explicitly to one counter and
//! one XDP verdict, so every packet is counted exactly once and nothing is silently swallowed.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod balance;
#[cfg(target_arch = "bpf")]
mod flow;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod services;
#[cfg(target_arch = "bpf")]
mod stats;
#[cfg(target_arch = "bpf")]
mod verdict;
#[cfg(target_arch = "bpf")]
mod xmit;

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{macros::xdp, programs::XdpContext};

    use crate::{
        balance,
        parse::{self, L3},
        services, stats,
        verdict::{Error, Outcome},
    };

    /// The XDP program attached to the balancer's interface.
    #[xdp]
    pub fn sshlb(ctx: XdpContext) -> u32 {
        let (counter, action) = match try_sshlb(&ctx) {
            Ok(outcome) => (outcome.counter(), outcome.action()),
            Err(err) => (err.counter(), err.action()),
        };
        stats::count(counter);
        action
    }

    #[inline(always)]
    fn try_sshlb(ctx: &XdpContext) -> Result<Outcome, Error> {
        let tcp = match parse::parse(ctx)? {
            L3::Tcp(tcp) => tcp,
            L3::Other(outcome) => return Ok(outcome),
        };
        match services::lookup(&tcp.key) {
            Some(service) => balance::forward(ctx, &tcp, &service),
            None => balance::reverse(ctx, &tcp),
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // The verifier rejects any program that could reach this; it exists only to satisfy no_std.
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
