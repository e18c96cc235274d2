//! `sshlb-decap`: the backend side of tunnel mode. Attached (XDP) to a backend's interface by
//! `sshlb-agent backend up`, it takes the outer headers off IP-in-IP and GUE packets that come
//! from the balancers' prefixes and carry a segment for one of this backend's VIPs, and passes
//! the inner packet to the stack as if it had arrived plain. Tunnel packets from anywhere else,
//! or for any other destination, are dropped and counted: a backend must not become an open
//! relay. Everything that is not a tunnel packet passes untouched.
//!
//! Its own object, with its own small maps: loading the balancer's object on every backend
//! would allocate the connection table there too.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
#[path = "packet.rs"]
mod packet;
#[cfg(target_arch = "bpf")]
#[path = "word.rs"]
#[expect(dead_code, reason = "shared with the balancer, which uses all of it")]
mod word;

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::xdp_action,
        helpers::bpf_xdp_adjust_head,
        macros::{map, xdp},
        maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray},
        programs::XdpContext,
    };
    use sshlb_common::{
        family,
        stats::decap::{self as counter, COUNT},
        tunnel::{
            DecapConfig, DecapSource, DECAP_PREFIX_BASE, MAX_DECAP_SOURCES, MAX_DECAP_VIPS,
            PROTO_IPIP, PROTO_IPV6, PROTO_UDP,
        },
        OwnAddr,
    };

    use crate::{
        packet::ptr_at,
        word::{load16, load32, store16, store32},
    };

    /// Balancer prefixes tunnel packets may come from. Written by the agent.
    #[map]
    static DECAP_SOURCES: LpmTrie<DecapSource, u32> =
        LpmTrie::with_max_entries(MAX_DECAP_SOURCES, 0);

    /// This backend's VIPs: the only inner destinations. Written by the agent.
    #[map]
    static DECAP_VIPS: HashMap<OwnAddr, u32> = HashMap::with_max_entries(MAX_DECAP_VIPS, 0);

    /// The GUE port. Written by the agent.
    #[map]
    static DECAP_CONFIG: Array<DecapConfig> = Array::with_max_entries(1, 0);

    /// One counter per outcome (`sshlb_common::stats::decap`).
    #[map]
    static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNT, 0);

    const ETH: usize = 14;
    const ETH_P_IPV4: u16 = 0x0800;
    const ETH_P_IPV6: u16 = 0x86DD;

    /// What a frame turned out to be: the counter to bump and the verdict.
    #[derive(Clone, Copy)]
    enum Seen {
        NotTunnel,
        Decapsulated,
        ForeignSource,
        NotVip,
        Malformed,
        AdjustFailed,
    }

    impl Seen {
        const fn counter(self) -> u32 {
            match self {
                Self::NotTunnel => counter::PASS_NOT_TUNNEL,
                Self::Decapsulated => counter::PASS_DECAPSULATED,
                Self::ForeignSource => counter::DROP_FOREIGN_SOURCE,
                Self::NotVip => counter::DROP_NOT_VIP,
                Self::Malformed => counter::DROP_MALFORMED,
                Self::AdjustFailed => counter::DROP_ADJUST_FAILED,
            }
        }

        const fn action(self) -> u32 {
            match self {
                Self::NotTunnel | Self::Decapsulated => xdp_action::XDP_PASS,
                Self::ForeignSource | Self::NotVip | Self::Malformed => xdp_action::XDP_DROP,
                Self::AdjustFailed => xdp_action::XDP_ABORTED,
            }
        }
    }

    /// A tunnel packet's outer header, as found.
    struct Outer {
        /// [`family::V4`] or [`family::V6`] (inner and outer alike).
        fam: u8,
        /// Bytes of outer headers after the Ethernet header.
        len: usize,
        /// The outer source, network order (IPv4 in the first four bytes).
        src: [u8; 16],
    }

    #[xdp]
    #[expect(
        clippy::needless_pass_by_value,
        reason = "aya's #[xdp] entry takes the context by value"
    )]
    pub fn sshlb_decap(ctx: XdpContext) -> u32 {
        let seen = decap(&ctx);
        if let Some(slot) = DECAP_STATS.get_ptr_mut(seen.counter()) {
            // SAFETY: this CPU's slot; nothing else runs on this CPU meanwhile.
            unsafe { *slot += 1 };
        }
        seen.action()
    }

    #[inline(always)]
    fn decap(ctx: &XdpContext) -> Seen {
        let gue_port_be = DECAP_CONFIG.get(0).map_or(0, |c| c.gue_port_be);
        let outer = match outer(ctx, gue_port_be) {
            Ok(Some(outer)) => outer,
            Ok(None) => return Seen::NotTunnel,
            Err(seen) => return seen,
        };
        let key = Key::new(
            DECAP_PREFIX_BASE + if outer.fam == family::V4 { 32 } else { 128 },
            DecapSource { family: outer.fam, pad8: 0, pad16: 0, addr: outer.src },
        );
        if DECAP_SOURCES.get(&key).is_none() {
            return Seen::ForeignSource;
        }
        let inner = ETH + outer.len;
        let Some(vip) = inner_destination(ctx, inner, outer.fam) else { return Seen::Malformed };
        // SAFETY: a plain lookup; the value is not read.
        if unsafe { DECAP_VIPS.get(OwnAddr::new(vip, outer.fam)) }.is_none() {
            return Seen::NotVip;
        }
        // Move the MACs in front of the inner header, then drop everything before them.
        let ethertype = if outer.fam == family::V4 { ETH_P_IPV4 } else { ETH_P_IPV6 };
        let Some(old) = ptr_at::<[u8; 12]>(ctx, 0) else { return Seen::Malformed };
        let old = old.cast::<u8>();
        // SAFETY: 12 bytes in bounds.
        let (a, b, c) = unsafe { (load32(old), load32(old.add(4)), load32(old.add(8))) };
        let Some(new) = ptr_at::<[u8; ETH]>(ctx, outer.len) else { return Seen::Malformed };
        let new = new.cast::<u8>();
        // SAFETY: 14 bytes in bounds (the inner header starts right after them).
        unsafe {
            store32(new, a);
            store32(new.add(4), b);
            store32(new.add(8), c);
            store16(new.add(12), ethertype.to_be());
        }
        // SAFETY: plain helper call on this program's context.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer.len as i32) } != 0 {
            return Seen::AdjustFailed;
        }
        Seen::Decapsulated
    }

    /// The outer header of a tunnel packet, `None` for anything else (passed untouched).
    #[inline(always)]
    fn outer(ctx: &XdpContext, gue_port_be: u16) -> Result<Option<Outer>, Seen> {
        let Some(eth) = ptr_at::<[u8; ETH]>(ctx, 0) else { return Ok(None) };
        // SAFETY: 14 bytes in bounds.
        let ethertype = u16::from_be(unsafe { load16(eth.cast::<u8>().add(12)) });
        let mut src = [0u8; 16];
        let (fam, len) = match ethertype {
            ETH_P_IPV4 => {
                let Some(ip) = ptr_at::<[u8; 20]>(ctx, ETH) else { return Ok(None) };
                // SAFETY: 20 bytes in bounds.
                let ip = unsafe { &*ip };
                let len = match ip[9] {
                    PROTO_IPIP => 20,
                    PROTO_UDP if gue_port_be != 0 && is_gue(ctx, ETH + 20, gue_port_be) => 28,
                    _ => return Ok(None),
                };
                // Our balancers send a plain header (no options) and never fragment.
                let frag = u16::from_be_bytes([ip[6], ip[7]]);
                if ip[0] != 0x45 || frag & 0x3FFF != 0 {
                    return Err(Seen::Malformed);
                }
                src[..4].copy_from_slice(&ip[12..16]);
                (family::V4, len)
            }
            ETH_P_IPV6 => {
                let Some(ip) = ptr_at::<[u8; 40]>(ctx, ETH) else { return Ok(None) };
                // SAFETY: 40 bytes in bounds.
                let ip = unsafe { &*ip };
                let len = match ip[6] {
                    PROTO_IPV6 => 40,
                    PROTO_UDP if gue_port_be != 0 && is_gue(ctx, ETH + 40, gue_port_be) => 48,
                    _ => return Ok(None),
                };
                src.copy_from_slice(&ip[8..24]);
                (family::V6, len)
            }
            _ => return Ok(None),
        };
        Ok(Some(Outer { fam, len, src }))
    }

    /// Whether the UDP header at `off` is addressed to the GUE port.
    #[inline(always)]
    fn is_gue(ctx: &XdpContext, off: usize, gue_port_be: u16) -> bool {
        let Some(udp) = ptr_at::<[u8; 8]>(ctx, off) else { return false };
        // SAFETY: 8 bytes in bounds; the destination port is bytes 2..4.
        unsafe { load16(udp.cast::<u8>().add(2)) == gue_port_be }
    }

    /// The inner header's destination, when it is a complete header of family `fam`.
    #[inline(always)]
    fn inner_destination(ctx: &XdpContext, off: usize, fam: u8) -> Option<[u8; 16]> {
        let mut dst = [0u8; 16];
        if fam == family::V4 {
            let ip = ptr_at::<[u8; 20]>(ctx, off)?;
            // SAFETY: 20 bytes in bounds.
            let ip = unsafe { &*ip };
            if ip[0] >> 4 != 4 {
                return None;
            }
            dst[..4].copy_from_slice(&ip[16..20]);
        } else {
            let ip = ptr_at::<[u8; 40]>(ctx, off)?;
            // SAFETY: 40 bytes in bounds.
            let ip = unsafe { &*ip };
            if ip[0] >> 4 != 6 {
                return None;
            }
            dst.copy_from_slice(&ip[24..40]);
        }
        Some(dst)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // The verifier rejects any program that could reach this; it exists only to satisfy no_std.
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
