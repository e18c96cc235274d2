//! Tunnel mode: a client's segment leaves encapsulated towards its backend — IPv4 in IPv4 or
//! IPv6 in IPv6 (IP-in-IP), or either inside UDP (GUE, variant 1: the IP packet right after the
//! UDP header) — so the backend may sit in any subnet, sees the client's own address and
//! answers it directly. A segment that would not fit the tunnel MTU with the outer headers is
//! answered with ICMP "fragmentation needed" / ICMPv6 "packet too big" built here, so the
//! client's path-MTU discovery works.
//!
//! [`encapsulate`] and [`too_big`] are sibling subprograms reached only by tunnel-mode flows;
//! each answers with one integer ([`Encap`]), as `Decision` explains for the balancer's other
//! subprograms. Headers are written a word at a time straight into the frame: addresses never
//! go through the stack byte by byte (the verifier allows 512 bytes for a whole call chain).

use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use sshlb_common::{
    csum::fold,
    family, flow_flags, proto,
    tunnel::{
        self, entropy, flow_label, gue_source_port, IPV4_DF, IPV4_HEADER, IPV6_HEADER, OUTER_TTL,
        PROTO_IPIP, PROTO_IPV6, PROTO_UDP, QUOTE_V4, QUOTE_V6, UDP_HEADER,
    },
    Backend, Config,
};

use crate::{
    packet::ptr_at,
    parse::Tcp,
    verdict::Error,
    word::{load16, load32, store16, store32},
};

/// Ethernet header length; tunnel mode takes untagged frames only.
const ETH: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// What [`encapsulate`] or [`too_big`] did, as one integer: an outer IP length
/// (`1..=65535`), or one of the constants below.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct Encap(u32);

/// How the tunnel path finished a segment.
pub enum Done {
    /// Encapsulated: the outer datagram is this long (the next hop's lookup needs it).
    Outer(u16),
    /// Too large for the tunnel: the frame is now an ICMP error back to the client.
    AnsweredTooBig,
}

impl Encap {
    const TOO_BIG: Self = Self(0x1_0000);
    const NO_DF: Self = Self(0x2_0000);
    const TAGGED: Self = Self(0x3_0000);
    const TRUNCATED: Self = Self(0x4_0000);
    const ADJUST_FAILED: Self = Self(0x5_0000);
    const CSUM_FAILED: Self = Self(0x6_0000);

    /// The result as the balancer's paths use it.
    #[inline(always)]
    pub const fn get(self) -> Result<Done, Error> {
        match self {
            Self::TOO_BIG => Ok(Done::AnsweredTooBig),
            Self::NO_DF => Err(Error::TunnelTooBigNoDf),
            Self::TAGGED => Err(Error::TunnelTagged),
            Self::TRUNCATED => Err(Error::TruncatedEth),
            Self::ADJUST_FAILED => Err(Error::AdjustFailed),
            Self::CSUM_FAILED => Err(Error::CsumHelperFailed),
            Self(len) => Ok(Done::Outer(len as u16)),
        }
    }
}

/// The MTU to name in a "packet too big" answer when `pkt` does not fit the tunnel with the
/// outer headers its flow's `flags` ask for; `None` when it fits.
#[inline(always)]
pub fn too_big_mtu(pkt: &Tcp, flags: u8, cfg: &Config) -> Option<u16> {
    let overhead = tunnel::overhead(pkt.key.family, flags & flow_flags::GUE != 0);
    (u32::from(pkt.ip_len) + u32::from(overhead) > u32::from(cfg.tunnel_mtu))
        .then(|| cfg.tunnel_mtu.saturating_sub(overhead))
}

/// Whether the frame's datagram is IPv6 (`Some(false)`: IPv4), read from the frame's EtherType;
/// `None` for a (priority-)tagged frame, which tunnel mode does not take.
///
/// Read from the frame, not from the parser's `Tcp` (`l3_off`, `key.family`): Linux 5.10's
/// verifier does not follow a load through a pointer into the caller's stack when it marks
/// values precise, so a subprogram reached first with one constant there (an untagged IPv4
/// segment, say) and later with another (tagged, or IPv6) was pruned as already explored, and
/// the branch it never walked removed as dead code: on 5.10 every oversized tunnel segment was
/// dropped as tagged. A byte of the frame is unknown to the verifier, so both sides are walked.
#[inline(always)]
fn untagged_family(ctx: &XdpContext) -> Option<bool> {
    let ether_type = ptr_at::<u16>(ctx, ETH - 2)?;
    // SAFETY: two bytes in bounds.
    match u16::from_be(unsafe { load16(ether_type.cast()) }) {
        ETH_P_IPV4 => Some(false),
        ETH_P_IPV6 => Some(true),
        _ => None,
    }
}

/// Puts the outer headers towards `backend` in front of `pkt`'s IP header, from the balancer's
/// own address of the family (the NAT address). The caller checked the size
/// ([`too_big_mtu`]) and that the address is configured.
#[inline(never)]
pub fn encapsulate(
    ctx: &XdpContext,
    pkt: &Tcp,
    backend: &Backend,
    flags: u8,
    cfg: &Config,
) -> Encap {
    let Some(v6) = untagged_family(ctx) else { return Encap::TAGGED };
    let gue = flags & flow_flags::GUE != 0;
    let overhead = tunnel::overhead(if v6 { family::V6 } else { family::V4 }, gue);
    let inner_len = pkt.ip_len;
    let outer_len = u32::from(inner_len) + u32::from(overhead);
    let hash = entropy(&pkt.key);
    // The inner header's first word: IPv4's TOS is its second byte, IPv6's traffic class
    // straddles the first two.
    let Some(l3) = ptr_at::<[u8; 2]>(ctx, ETH) else { return Encap::TRUNCATED };
    // SAFETY: two bytes in bounds.
    let [b0, b1] = unsafe { *l3 };
    let tos = if v6 { (b0 << 4) | (b1 >> 4) } else { b1 };
    // SAFETY: plain helper call on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -i32::from(overhead)) } != 0 {
        return Encap::ADJUST_FAILED;
    }
    // The old Ethernet header now starts `overhead` bytes in: its MACs move to the front (the
    // next hop's replace them on send; a frame handed to the kernel keeps them, so it is still
    // addressed to this host), the EtherType stays (same family inside and out).
    let ethertype = if v6 { ETH_P_IPV6 } else { ETH_P_IPV4 };
    if !move_eth(ctx, usize::from(overhead), ethertype) {
        return Encap::TRUNCATED;
    }
    let ok = if v6 {
        let next = if gue { PROTO_UDP } else { PROTO_IPV6 };
        let payload = inner_len + if gue { UDP_HEADER } else { 0 };
        let first = (6u32 << 28) | (u32::from(tos) << 20) | flow_label(hash);
        write_v6(ctx, first, payload, next, &cfg.nat_v6, &backend.addr)
            && (!gue || write_udp(ctx, ETH + IPV6_HEADER as usize, hash, cfg, payload))
    } else {
        let proto = if gue { PROTO_UDP } else { PROTO_IPIP };
        let fields = V4 { tos, total_len: outer_len as u16, df: true, proto };
        // SAFETY: both arrays hold at least four bytes.
        let (src, dst) = unsafe { (load32(cfg.nat_v4.as_ptr()), load32(backend.addr.as_ptr())) };
        write_v4(ctx, &fields, src, dst)
            && (!gue
                || write_udp(ctx, ETH + IPV4_HEADER as usize, hash, cfg, inner_len + UDP_HEADER))
    };
    if ok {
        Encap(outer_len)
    } else {
        Encap::TRUNCATED
    }
}

/// Copies the 12 MAC bytes found `from` bytes into the frame to its start and sets the
/// EtherType.
#[inline(always)]
fn move_eth(ctx: &XdpContext, from: usize, ethertype: u16) -> bool {
    // One check at a time: LLVM turns a pair of checks into selects on the frame's end, whose
    // arithmetic the verifier refuses.
    let Some(old) = ptr_at::<[u8; 12]>(ctx, from) else { return false };
    let Some(new) = ptr_at::<[u8; ETH]>(ctx, 0) else { return false };
    let (old, new) = (old.cast::<u8>(), new.cast::<u8>());
    // SAFETY: both ranges were bounds-checked just above; the words are copied front to back
    // and `from` ≥ 20, so no source word is overwritten before it is read.
    unsafe {
        store32(new, load32(old));
        store32(new.add(4), load32(old.add(4)));
        store32(new.add(8), load32(old.add(8)));
        store16(new.add(12), ethertype.to_be());
    }
    true
}

/// The fields of an IPv4 header the paths here choose.
struct V4 {
    tos: u8,
    total_len: u16,
    df: bool,
    proto: u8,
}

/// Writes an IPv4 header (no options, TTL 64, id 0) at the frame's IP offset; `src` and `dst`
/// are the addresses as stored (network order read natively). The checksum is summed over the
/// native-order words (RFC 1071 §2(B): the sum does not depend on byte order).
#[inline(always)]
fn write_v4(ctx: &XdpContext, f: &V4, src: u32, dst: u32) -> bool {
    let Some(at) = ptr_at::<[u8; IPV4_HEADER as usize]>(ctx, ETH) else { return false };
    let at = at.cast::<u8>();
    let len = f.total_len.to_be_bytes();
    let frag = if f.df { IPV4_DF.to_be_bytes() } else { [0, 0] };
    let w0 = u32::from_ne_bytes([0x45, f.tos, len[0], len[1]]);
    let w1 = u32::from_ne_bytes([0, 0, frag[0], frag[1]]);
    let w2 = u32::from_ne_bytes([OUTER_TTL, f.proto, 0, 0]);
    let halves = |w: u32| u64::from(w & 0xFFFF) + u64::from(w >> 16);
    let check = !fold(halves(w0) + halves(w1) + halves(w2) + halves(src) + halves(dst));
    let [c0, c1] = check.to_ne_bytes();
    // SAFETY: 20 bytes at `at` are in bounds.
    unsafe {
        store32(at, w0);
        store32(at.add(4), w1);
        store32(at.add(8), u32::from_ne_bytes([OUTER_TTL, f.proto, c0, c1]));
        store32(at.add(12), src);
        store32(at.add(16), dst);
    }
    true
}

/// Writes an IPv6 header at the frame's IP offset: `first` is its first word (version, traffic
/// class, flow label) in host order.
#[inline(always)]
fn write_v6(
    ctx: &XdpContext,
    first: u32,
    payload_len: u16,
    next: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
) -> bool {
    let Some(at) = ptr_at::<[u8; IPV6_HEADER as usize]>(ctx, ETH) else { return false };
    let at = at.cast::<u8>();
    let len = payload_len.to_be_bytes();
    // SAFETY: 40 bytes at `at` are in bounds; both addresses are 16 readable bytes.
    unsafe {
        store32(at, first.to_be());
        store32(at.add(4), u32::from_ne_bytes([len[0], len[1], next, OUTER_TTL]));
        for i in 0..4 {
            store32(at.add(8 + 4 * i), load32(src.as_ptr().add(4 * i)));
            store32(at.add(24 + 4 * i), load32(dst.as_ptr().add(4 * i)));
        }
    }
    true
}

/// Writes GUE's UDP header at `off`: source port from the flow's hash, checksum 0 (RFC
/// 6935/6936 let tunnel protocols leave it out, over IPv6 too; the inner segment carries its
/// own).
#[inline(always)]
fn write_udp(ctx: &XdpContext, off: usize, hash: u32, cfg: &Config, len: u16) -> bool {
    let Some(at) = ptr_at::<[u8; UDP_HEADER as usize]>(ctx, off) else { return false };
    let at = at.cast::<u8>();
    let [s0, s1] = gue_source_port(hash).to_be_bytes();
    let [d0, d1] = cfg.gue_port_be.to_ne_bytes();
    let [l0, l1] = len.to_be_bytes();
    // SAFETY: 8 bytes at `at` are in bounds.
    unsafe {
        store32(at, u32::from_ne_bytes([s0, s1, d0, d1]));
        store32(at.add(4), u32::from_ne_bytes([l0, l1, 0, 0]));
    }
    true
}

/// Turns the frame into an ICMP "fragmentation needed" (IPv4, when the segment has DF) or
/// ICMPv6 "packet too big" from the VIP to the client, quoting the segment's first bytes and
/// naming `mtu`, and leaves it for XDP_TX back the way it came.
#[inline(never)]
pub fn too_big(ctx: &XdpContext, pkt: &Tcp, mtu: u16) -> Encap {
    let Some(v6) = untagged_family(ctx) else { return Encap::TAGGED };
    if !v6 {
        let Some(frag) = ptr_at::<u16>(ctx, ETH + 6) else { return Encap::TRUNCATED };
        // SAFETY: two bytes in bounds.
        if u16::from_be(unsafe { load16(frag.cast()) }) & IPV4_DF == 0 {
            return Encap::NO_DF;
        }
    }
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else { return Encap::TRUNCATED };
    let eth = eth.cast::<u8>();
    // SAFETY: 12 bytes in bounds. The MACs, swapped, as three words.
    let (dst_lo, dst_hi, src_lo, src_hi) =
        unsafe { (load32(eth), load16(eth.add(4)), load16(eth.add(6)), load32(eth.add(8))) };
    let (quote, added) = if v6 {
        (QUOTE_V6 as usize, (IPV6_HEADER + 8) as usize)
    } else {
        (QUOTE_V4 as usize, (IPV4_HEADER + 8) as usize)
    };
    // Cut the datagram to the quote, then make room for the new IP and ICMP headers in front
    // of it. The cut is computed from the IP length (the verifier allows no arithmetic on the
    // frame's end): bytes past the datagram (Ethernet padding, never on a segment this large)
    // would stay behind the quote, outside the ICMP message.
    let ip_len = usize::from(pkt.ip_len);
    if ip_len < quote {
        return Encap::TRUNCATED;
    }
    // SAFETY: plain helper calls on this program's context.
    unsafe {
        if bpf_xdp_adjust_tail(ctx.ctx, quote as i32 - ip_len as i32) != 0
            || bpf_xdp_adjust_head(ctx.ctx, -(added as i32)) != 0
        {
            return Encap::ADJUST_FAILED;
        }
    }
    let Some(new) = ptr_at::<[u8; ETH]>(ctx, 0) else { return Encap::TRUNCATED };
    let new = new.cast::<u8>();
    let ethertype = if v6 { ETH_P_IPV6 } else { ETH_P_IPV4 };
    // SAFETY: 14 bytes in bounds: the old source MAC becomes the destination and back.
    unsafe {
        store16(new, src_lo);
        store32(new.add(2), src_hi);
        store32(new.add(6), dst_lo);
        store16(new.add(10), dst_hi);
        store16(new.add(12), ethertype.to_be());
    }
    let result = if v6 {
        icmp6_too_big(ctx, &pkt.key.dst, &pkt.key.src, mtu)
    } else {
        icmp4_frag_needed(ctx, &pkt.key.dst, &pkt.key.src, mtu)
    };
    match result {
        Ok(()) => Encap::TOO_BIG,
        Err(Error::CsumHelperFailed) => Encap::CSUM_FAILED,
        Err(_) => Encap::TRUNCATED,
    }
}

/// IPv4 header from the VIP, then ICMP type 3 code 4 naming `mtu`, checksummed over the quote.
#[inline(always)]
fn icmp4_frag_needed(
    ctx: &XdpContext,
    vip: &[u8; 16],
    client: &[u8; 16],
    mtu: u16,
) -> Result<(), Error> {
    const ICMP_LEN: usize = 8 + QUOTE_V4 as usize;
    let total_len = (IPV4_HEADER as usize + ICMP_LEN) as u16;
    // No DF on the error itself (as Linux sends them).
    let fields = V4 { tos: 0, total_len, df: false, proto: proto::ICMP };
    // SAFETY: both arrays hold at least four bytes.
    let (src, dst) = unsafe { (load32(vip.as_ptr()), load32(client.as_ptr())) };
    if !write_v4(ctx, &fields, src, dst) {
        return Err(Error::TruncatedEth);
    }
    let msg = ptr_at::<[u8; ICMP_LEN]>(ctx, ETH + IPV4_HEADER as usize)
        .ok_or(Error::TruncatedEth)?
        .cast::<u8>();
    let [m0, m1] = mtu.to_be_bytes();
    // SAFETY: ICMP_LEN bytes at `msg` are in bounds.
    unsafe {
        store32(msg, u32::from_ne_bytes([3, 4, 0, 0]));
        store32(msg.add(4), u32::from_ne_bytes([0, 0, m0, m1]));
    }
    let check = checksum(msg, ICMP_LEN as u32, 0)?;
    // SAFETY: as above; the checksum is bytes 2..4 of the message.
    unsafe { store16(msg.add(2), check) };
    Ok(())
}

/// IPv6 header from the VIP, then ICMPv6 type 2 naming `mtu`, checksummed with the
/// pseudo-header.
#[inline(always)]
fn icmp6_too_big(
    ctx: &XdpContext,
    vip: &[u8; 16],
    client: &[u8; 16],
    mtu: u16,
) -> Result<(), Error> {
    const ICMP_LEN: usize = 8 + QUOTE_V6 as usize;
    if !write_v6(ctx, 6 << 28, ICMP_LEN as u16, proto::ICMPV6, vip, client) {
        return Err(Error::TruncatedEth);
    }
    let at = ETH + IPV6_HEADER as usize;
    let msg = ptr_at::<[u8; ICMP_LEN]>(ctx, at).ok_or(Error::TruncatedEth)?.cast::<u8>();
    // SAFETY: ICMP_LEN bytes at `msg` are in bounds.
    unsafe {
        store32(msg, u32::from_ne_bytes([2, 0, 0, 0]));
        store32(msg.add(4), u32::from(mtu).to_be());
    }
    // Pseudo-header (RFC 8200 §8.1): the addresses, as just written into the IP header, then the
    // upper-layer length and the next header.
    let addrs = ptr_at::<[u8; 32]>(ctx, ETH + 8).ok_or(Error::TruncatedEth)?.cast::<u8>();
    let seed = partial_sum(addrs, 32)?
        + u64::from((ICMP_LEN as u32).to_be())
        + u64::from(u32::from(proto::ICMPV6).to_be());
    let msg = ptr_at::<[u8; ICMP_LEN]>(ctx, at).ok_or(Error::TruncatedEth)?.cast::<u8>();
    let check = checksum(msg, ICMP_LEN as u32, seed)?;
    // SAFETY: as above.
    unsafe { store16(msg.add(2), check) };
    Ok(())
}

/// The one's complement sum (unfolded) of the `len` bytes at `p`, a multiple of 4 the caller
/// bounds-checked, by `bpf_csum_diff`.
#[inline(always)]
fn partial_sum(p: *mut u8, len: u32) -> Result<u64, Error> {
    // SAFETY: the caller's `len` bytes at `p` are in bounds; the helper only reads them.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p.cast(), len, 0) };
    if sum < 0 {
        return Err(Error::CsumHelperFailed);
    }
    Ok(sum as u64)
}

/// The Internet checksum of the `len` bytes at `p` with `seed` added, as it is stored (native
/// order of the network-order sum).
#[inline(always)]
fn checksum(p: *mut u8, len: u32, seed: u64) -> Result<u16, Error> {
    Ok(!fold(partial_sum(p, len)? + seed))
}
