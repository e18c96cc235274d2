//! sshlb's XDP entry point: parse, classify, balance, count, decide.
//!
//! The entry is deliberately thin: parsing and the balancer's paths produce either an `Outcome`
//! (the packet was understood) or an `Error` (malformed, or a flow that cannot be served); each
//! variant maps explicitly to one counter and one XDP verdict (`verdict.rs`), so every packet is
//! counted exactly once and nothing is silently swallowed.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `asm!` on BPF: the one-instruction unaligned word accesses of `word.rs`.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        clippy::cast_ptr_alignment,
        reason = "header words are read and written through pointers the verifier bounds-checks; \
                  BPF and every JIT we run on take unaligned packet access"
    )
)]

#[cfg(target_arch = "bpf")]
mod balance;
#[cfg(target_arch = "bpf")]
mod cache;
#[cfg(target_arch = "bpf")]
mod clock;
#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod flow;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod protection;
#[cfg(target_arch = "bpf")]
mod reset;
#[cfg(target_arch = "bpf")]
mod services;
#[cfg(target_arch = "bpf")]
mod stats;
#[cfg(target_arch = "bpf")]
mod tunnel;
#[cfg(target_arch = "bpf")]
mod verdict;
#[cfg(target_arch = "bpf")]
mod word;
#[cfg(target_arch = "bpf")]
mod xmit;

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{macros::xdp, programs::XdpContext};

    use crate::{
        balance, icmp, nat,
        parse::{self, Tcp},
        services, stats,
        verdict::{Decision, Error, Outcome},
    };

    /// The XDP program attached to the balancer's interface.
    #[xdp]
    #[expect(
        clippy::needless_pass_by_value,
        reason = "aya's #[xdp] entry takes the context by value"
    )]
    pub fn sshlb(ctx: XdpContext) -> u32 {
        let decision = try_sshlb(&ctx);
        stats::count(decision.counter());
        decision.action()
    }

    #[inline(always)]
    fn try_sshlb(ctx: &XdpContext) -> Decision {
        let icmp = match icmp::scratch() {
            Ok(slot) => slot,
            Err(err) => return Decision::from(Err::<Outcome, Error>(err)),
        };
        // Not zeroed (see `Tcp`): parse_into writes it whole before saying CONTINUE.
        let mut tcp = core::mem::MaybeUninit::<Tcp>::uninit();
        // SAFETY: this CPU's scratch slot; nothing else runs on this CPU meanwhile.
        let parsed = parse::parse_into(ctx, tcp.as_mut_ptr(), unsafe { &mut *icmp });
        if parsed != Decision::CONTINUE {
            if parsed == Decision::ICMP {
                // SAFETY: as above.
                return icmp::handle(ctx, unsafe { &*icmp });
            }
            return parsed;
        }
        // SAFETY: CONTINUE means parse_into wrote the whole Tcp.
        let tcp = unsafe { tcp.assume_init_ref() };
        // Client → VIP first (the pre-filter rules out most other segments with one array
        // read); anything that is not a service's goes to the full-NAT reply path, which passes
        // what is not addressed to the NAT address either.
        if services::may_be_service(&tcp.key) {
            let decision = balance::forward(ctx, tcp);
            if decision != Decision::NOT_SERVICE {
                return decision;
            }
        }
        // Decided here, without a call, for what is addressed to neither: the host's own
        // traffic (a subprogram call and its `ret` cost more than this comparison).
        if !nat::is_nat_address(&tcp.key) {
            return Decision::NOT_SERVICE;
        }
        balance::reverse(ctx, tcp)
    }

    /// A one-line XDP_PASS program. Test and lab topologies attach it to the veth peers of
    /// interfaces running `sshlb`: in native mode a veth only delivers an XDP_TX'd frame when its
    /// peer runs an XDP program too.
    #[xdp]
    pub fn sshlb_pass(_ctx: XdpContext) -> u32 {
        aya_ebpf::bindings::xdp_action::XDP_PASS
    }

    /// Benchmark baseline: swaps the Ethernet addresses and bounces the frame (XDP_TX) — the
    /// least any XDP forwarder does per packet. `cargo xtask bench dataplane` measures `sshlb`
    /// against it on the same interface, in the same run.
    #[xdp]
    #[expect(
        clippy::needless_pass_by_value,
        reason = "aya's #[xdp] entry takes the context by value"
    )]
    pub fn sshlb_baseline(ctx: XdpContext) -> u32 {
        bounce(&ctx)
    }

    /// Benchmark floor: the baseline plus what every established packet of a design with a
    /// connection table pays at least — its key from the frame (untagged IPv4 without options
    /// at fixed offsets: the benchmark's frames; nothing validated) and one lookup in `FLOWS`.
    /// `cargo xtask bench dataplane` loads it with a table of the balancer's size and flows:
    /// what `sshlb` costs beyond this is its own work, the rest is the table's.
    #[xdp]
    #[expect(
        clippy::needless_pass_by_value,
        reason = "aya's #[xdp] entry takes the context by value"
    )]
    pub fn sshlb_floor(ctx: XdpContext) -> u32 {
        let Some(key) = floor_key(&ctx) else {
            return aya_ebpf::bindings::xdp_action::XDP_DROP;
        };
        if crate::flow::get(&key).is_none() {
            return aya_ebpf::bindings::xdp_action::XDP_PASS;
        }
        bounce(&ctx)
    }

    /// Benchmark floor for new flows: [`sshlb_floor`]'s lookup and, when it misses, an insert
    /// of an empty entry under the same key — the least a connection table costs a new flow
    /// (`sshlb` also looks up the service, picks a backend and, for full NAT, claims a port in
    /// a second table). `cargo xtask bench dataplane` sends it the new-flow scenarios' SYNs.
    #[xdp]
    #[expect(
        clippy::needless_pass_by_value,
        reason = "aya's #[xdp] entry takes the context by value"
    )]
    pub fn sshlb_floor_insert(ctx: XdpContext) -> u32 {
        let Some(key) = floor_key(&ctx) else {
            return aya_ebpf::bindings::xdp_action::XDP_DROP;
        };
        if crate::flow::get(&key).is_none()
            && crate::flow::insert(&key, &sshlb_common::Flow::default(), false).is_err()
        {
            return aya_ebpf::bindings::xdp_action::XDP_PASS;
        }
        bounce(&ctx)
    }

    /// The floors' flow key, from fixed offsets (untagged IPv4 without options: the
    /// benchmark's frames; nothing validated).
    #[inline(always)]
    fn floor_key(ctx: &XdpContext) -> Option<sshlb_common::FlowKey> {
        use sshlb_common::{family, proto, v4_in_16, FlowKey};
        // Ethernet (14) + IPv4 without options (20) + the TCP ports (4).
        let frame = crate::parse::ptr_at::<[u8; 38]>(ctx, 0)?;
        // SAFETY: ptr_at checked the 38 bytes.
        let b = unsafe { &*frame };
        Some(FlowKey::new(
            v4_in_16([b[26], b[27], b[28], b[29]]),
            v4_in_16([b[30], b[31], b[32], b[33]]),
            u16::from_ne_bytes([b[34], b[35]]),
            u16::from_ne_bytes([b[36], b[37]]),
            proto::TCP,
            family::V4,
        ))
    }

    /// Benchmark floor with the parser: [`sshlb_floor`]'s lookup keyed by what `sshlb`'s own
    /// parser (`parse_into`, every header validated) makes of the frame. Its cost over
    /// `sshlb_floor` is the parser's; `sshlb`'s over it is the rest of an established packet's
    /// work (counters, backend, next hop, rewrite).
    #[xdp]
    #[expect(
        clippy::needless_pass_by_value,
        reason = "aya's #[xdp] entry takes the context by value"
    )]
    pub fn sshlb_floor_parsed(ctx: XdpContext) -> u32 {
        let Ok(icmp) = icmp::scratch() else {
            return aya_ebpf::bindings::xdp_action::XDP_ABORTED;
        };
        let mut tcp = core::mem::MaybeUninit::<Tcp>::uninit();
        // SAFETY: this CPU's scratch slot; nothing else runs on this CPU meanwhile.
        if parse::parse_into(&ctx, tcp.as_mut_ptr(), unsafe { &mut *icmp }) != Decision::CONTINUE {
            return aya_ebpf::bindings::xdp_action::XDP_PASS;
        }
        // SAFETY: CONTINUE means parse_into wrote the whole Tcp.
        let tcp = unsafe { tcp.assume_init_ref() };
        if crate::flow::get(&tcp.key).is_none() {
            return aya_ebpf::bindings::xdp_action::XDP_PASS;
        }
        bounce(&ctx)
    }

    /// Swaps the frame's Ethernet addresses and says XDP_TX (XDP_DROP for a frame shorter than
    /// them).
    #[inline(always)]
    fn bounce(ctx: &XdpContext) -> u32 {
        let Some(eth) = crate::parse::ptr_at::<[u8; 12]>(ctx, 0) else {
            return aya_ebpf::bindings::xdp_action::XDP_DROP;
        };
        // SAFETY: ptr_at checked the 12 address bytes.
        unsafe {
            let macs = *eth;
            let mut swapped = [0u8; 12];
            swapped[..6].copy_from_slice(&macs[6..]);
            swapped[6..].copy_from_slice(&macs[..6]);
            *eth = swapped;
        }
        aya_ebpf::bindings::xdp_action::XDP_TX
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // The verifier rejects any program that could reach this; it exists only to satisfy no_std.
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
