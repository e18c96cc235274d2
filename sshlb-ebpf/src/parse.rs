//! Header parsing: Ethernet (with at most one 802.1Q tag), IPv4 (honouring IHL and total length),
//! IPv6 (fixed header; extension headers are reported, not walked) and TCP (honouring the data
//! offset). Every read goes through [`ptr_at`], the one bounds-checked accessor; every length is
//! taken from the packet and checked against both the frame and the enclosing header's length.

use aya_ebpf::programs::XdpContext;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    vlan::VlanHdr,
};
use sshlb_common::{family, proto, FlowKey};

pub use crate::packet::ptr_at;
use crate::{
    packet::data_end,
    verdict::{Decision, Error, Outcome},
    word,
};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

/// IPv4 flags+offset field: More Fragments bit and the 13-bit offset.
const IPV4_MF_OR_OFFSET: u16 = 0x3FFF;

/// TCP flag bits (byte 13 of the header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// Whether a host would accept a segment with `flags` at all (RFC 9293 §3.10.7, and Linux's
/// `tcp_validate_incoming`/`tcp_rcv_state_process`): a SYN never carries FIN or RST (nor URG
/// without ACK); every segment but the first SYN and a bare RST carries ACK. Scans (null, FIN,
/// Xmas) and malformed stacks send the rest. ECE/CWR are left alone (ECN).
#[inline(always)]
pub fn flags_are_valid(flags: u8) -> bool {
    use tcp_flags::{ACK, FIN, RST, SYN, URG};
    if flags & SYN != 0 {
        return flags & (FIN | RST) == 0 && (flags & ACK != 0 || flags & URG == 0);
    }
    flags & (ACK | RST) != 0
}

/// A well-formed TCP segment: its flow key (as sent) and where its headers are.
///
/// Built whole and written once (never zeroed first): this LLVM's BPF backend lowers every
/// `memset` — however small — to a call into a byte loop, which cost more than the rest of the
/// parse.
pub struct Tcp {
    /// Addresses, ports, protocol and family exactly as in the packet.
    pub key: FlowKey,
    /// Offset of the IP header.
    pub l3_off: usize,
    /// Offset of the TCP header.
    pub l4_off: usize,
    /// IP datagram length (header + payload), for byte counters and the FIB's MTU check.
    pub ip_len: u16,
    /// TCP flags byte.
    pub flags: u8,
}

/// An ICMP error quoting a TCP segment: where its headers are and the quoted tuple.
#[derive(Default)]
pub struct IcmpError {
    /// The outer packet's addresses (family set, ports unused).
    pub outer: FlowKey,
    /// Offset of the outer IP header.
    pub l3_off: usize,
    /// Offset of the ICMP header.
    pub l4_off: usize,
    /// Offset of the quoted IP header.
    pub inner_l3_off: usize,
    /// Offset of the quoted TCP header (its first 8 bytes are present).
    pub inner_l4_off: usize,
    /// The quoted segment's tuple, as it was sent.
    pub inner: FlowKey,
    /// Outer IP datagram length.
    pub ip_len: u16,
}

/// Result of parsing up to layer 4 (the parsed headers are written to the caller's buffers
/// rather than returned: returned by value they would be copied through the stack).
pub enum L3 {
    /// A well-formed TCP segment (in the TCP buffer).
    Tcp,
    /// An ICMP error about a TCP segment (in the ICMP buffer).
    Icmp,
    /// Something the program passes on without looking further.
    Other(Outcome),
}

/// Where parsed headers go.
pub struct Out<'a> {
    /// Written (whole) only when the result is [`L3::Tcp`]; may be uninitialized before.
    pub tcp: *mut Tcp,
    pub icmp: &'a mut IcmpError,
}

/// A big-endian 16-bit length field, in a form every supported kernel's verifier can bound.
///
/// LLVM turns `from_be_bytes` into a `be16` byte swap, and verifiers before 6.6 forget a
/// register's range across one: adding the result to a packet pointer is then refused ("math
/// between pkt pointer and register with unbounded min value", seen on 6.1 by `cargo xtask
/// vm-test`). The value goes through an opaque copy and is masked afterwards, which LLVM cannot
/// fold away and the verifier reads as 0..=65535.
#[inline(always)]
fn be16_bounded(bytes: [u8; 2]) -> u16 {
    let swapped = core::hint::black_box(u32::from(u16::from_be_bytes(bytes)));
    (swapped & 0xFFFF) as u16
}

/// Parses the frame in `ctx` down to TCP (or an ICMP error quoting TCP): a TCP segment is
/// written to `out_tcp` and [`Decision::CONTINUE`] returned, an ICMP error to `out_icmp` and
/// [`Decision::ICMP`]; anything else is decided here.
///
/// A BPF subprogram of its own: its temporaries (addresses assembled byte by byte) then do not
/// sit in the entry's stack frame underneath the balancer's deeper call chain.
#[inline(never)]
pub fn parse_into(ctx: &XdpContext, out_tcp: *mut Tcp, out_icmp: &mut IcmpError) -> Decision {
    let mut out = Out { tcp: out_tcp, icmp: out_icmp };
    match parse(ctx, &mut out) {
        Ok(L3::Tcp) => Decision::CONTINUE,
        Ok(L3::Icmp) => Decision::ICMP,
        Ok(L3::Other(outcome)) => Ok::<Outcome, Error>(outcome).into(),
        Err(err) => Err::<Outcome, Error>(err).into(),
    }
}

/// Parses the frame in `ctx` down to TCP.
#[inline(always)]
fn parse(ctx: &XdpContext, out: &mut Out<'_>) -> Result<L3, Error> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Error::TruncatedEth)?;
    // SAFETY: ptr_at checked that the whole header lies inside the frame.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3_off = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let vlan = ptr_at::<VlanHdr>(ctx, l3_off).ok_or(Error::TruncatedVlan)?;
        // SAFETY: as above.
        let (tci, inner) = unsafe { ((*vlan).tci, (*vlan).ether_type) };
        ether_type = u16::from_be(inner);
        l3_off += VlanHdr::LEN;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            return Ok(L3::Other(Outcome::VlanStacked));
        }
        // A VLAN id means a VLAN the balancer has no service on (services are untagged):
        // the kernel's — forwarded to untagged backends it would hop VLANs. Id 0 is a
        // priority tag (802.1p) on the untagged network: parsed as untagged.
        if u16::from_be_bytes(tci) & 0x0FFF != 0 {
            return Ok(L3::Other(Outcome::VlanTagged));
        }
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(ctx, l3_off, out),
        ETH_P_IPV6 => parse_ipv6(ctx, l3_off, out),
        _ => Ok(L3::Other(Outcome::NotIp)),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3_off: usize, out: &mut Out<'_>) -> Result<L3, Error> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, l3_off).ok_or(Error::TruncatedIpv4)?;
    // SAFETY: ptr_at checked that the fixed 20-byte header lies inside the frame.
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Err(Error::BadIpVersion);
    }
    let header_len = usize::from(ip.vihl & 0x0F) * 4;
    if header_len < Ipv4Hdr::LEN {
        return Err(Error::BadIpv4Ihl);
    }
    let total_len = be16_bounded(ip.tot_len);
    if usize::from(total_len) < header_len {
        return Err(Error::BadIpv4Len);
    }
    // The frame may carry Ethernet padding after the datagram, never less than the datagram.
    if ctx.data() + l3_off + usize::from(total_len) > data_end(ctx) {
        return Err(Error::TruncatedIpv4);
    }
    let fragment = u16::from_be_bytes(ip.frags) & IPV4_MF_OR_OFFSET != 0;
    if ip.proto == proto::ICMP && !fragment {
        let icmp = &mut *out.icmp;
        icmp.outer = FlowKey { proto: proto::ICMP, family: family::V4, ..FlowKey::default() };
        icmp.outer.src[..4].copy_from_slice(&ip.src_addr);
        icmp.outer.dst[..4].copy_from_slice(&ip.dst_addr);
        icmp.l3_off = l3_off;
        icmp.l4_off = l3_off + header_len;
        icmp.ip_len = total_len;
        return parse_icmp(ctx, icmp, l3_off + usize::from(total_len));
    }
    if ip.proto != proto::TCP {
        return Ok(L3::Other(Outcome::NotTcp));
    }
    if fragment {
        return Ok(L3::Other(Outcome::Ipv4Fragment));
    }
    if ip.ttl == 0 {
        return Err(Error::TtlZero);
    }
    if header_len > Ipv4Hdr::LEN {
        check_ipv4_options(ctx, l3_off + Ipv4Hdr::LEN, l3_off + header_len)?;
    }
    // Ports are filled in by parse_tcp. Addresses in words (see `word`).
    let base = core::ptr::from_ref(ip).cast::<u8>();
    // SAFETY: ptr_at checked the 20-byte header; the addresses are bytes 12..20.
    let (src, dst) = unsafe { (word::load32(base.add(12)), word::load32(base.add(16))) };
    let mut key = FlowKey::new(
        addr_of([src, 0, 0, 0]),
        addr_of([dst, 0, 0, 0]),
        0,
        0,
        proto::TCP,
        family::V4,
    );
    // The header length is read again from the packet for the TCP offset: on the options path
    // the walk narrows the first copy to a constant per option layout, LLVM may keep that in a
    // stack slot, and Linux 6.12's verifier mis-tracks a constant filled back from the stack
    // (REG INVARIANTS VIOLATION: the register becomes an unbounded scalar, and the TCP header
    // read through it is refused). A fresh read is a bounded range, never such a constant.
    // SAFETY: `ip` points at the bounds-checked 20-byte header; one byte load.
    let vihl = unsafe { core::ptr::read_volatile(core::ptr::from_ref(&ip.vihl)) };
    let header_len = usize::from(vihl & 0x0F) * 4;
    let l4_off = l3_off + header_len;
    let flags =
        parse_tcp(ctx, l4_off, usize::from(total_len).saturating_sub(header_len), &mut key)?;
    // SAFETY: `out.tcp` points at writable memory for a Tcp (the caller's stack slot).
    unsafe { out.tcp.write(Tcp { key, l3_off, l4_off, ip_len: total_len, flags }) };
    Ok(L3::Tcp)
}

/// IPv4 option kinds (RFC 791, IANA "ip-parameters").
mod ipv4_option {
    /// End of option list.
    pub const EOL: u8 = 0;
    /// No operation (one byte, padding).
    pub const NOP: u8 = 1;
    /// Loose source and record route.
    pub const LSRR: u8 = 131;
    /// Strict source and record route.
    pub const SSRR: u8 = 137;
}

/// Options walked per header. The verifier follows every path through the walk, so it must stay
/// short; real traffic carries one or two options (router alert, a timestamp, record route,
/// with NOP padding). A header with more is refused as malformed.
const MAX_IPV4_OPTIONS: usize = 4;

/// Walks the IPv4 options in `[start, end)` (inside the datagram, whose length the caller
/// checked against the frame): every option must fit, with a length byte of at least 2 where
/// it has one (the kernel's `__ip_options_compile` rules), none may be a source route, and
/// there may be at most [`MAX_IPV4_OPTIONS`] of them before the end-of-list or the header's
/// end. Valid options (router alert, timestamps, record route, security labels) pass: hosts
/// accept them, and they are forwarded untouched.
#[inline(always)]
fn check_ipv4_options(ctx: &XdpContext, start: usize, end: usize) -> Result<(), Error> {
    let mut off = start;
    let mut i = 0;
    while i < MAX_IPV4_OPTIONS && off < end {
        // Kind and length byte read as one pair (a 1-byte read's bounds check is one LLVM
        // rewrites into a form the verifier cannot use). The pair always exists in a TCP
        // segment (its header follows the options); if the frame ends first it is truncated.
        // SAFETY: ptr_at checked both bytes.
        let [kind, len] = unsafe { *ptr_at::<[u8; 2]>(ctx, off).ok_or(Error::TruncatedTcp)? };
        if kind == ipv4_option::EOL {
            return Ok(());
        }
        if kind == ipv4_option::LSRR || kind == ipv4_option::SSRR {
            return Err(Error::BadIpv4Options);
        }
        let step = if kind == ipv4_option::NOP { 1 } else { usize::from(len) };
        if step == 0 || (kind != ipv4_option::NOP && step < 2) || off + step > end {
            return Err(Error::BadIpv4Options);
        }
        off += step;
        i += 1;
    }
    if off < end {
        return Err(Error::BadIpv4Options);
    }
    Ok(())
}

/// A 16-byte address from its four words as loaded (native order).
#[inline(always)]
fn addr_of(words: [u32; 4]) -> [u8; 16] {
    // SAFETY: [u32; 4] and [u8; 16] have the same size; every bit pattern is valid for both.
    unsafe { core::mem::transmute(words) }
}

/// A 16-byte address from its two 64-bit words as loaded.
#[inline(always)]
fn addr_of64(words: [u64; 2]) -> [u8; 16] {
    // SAFETY: as in addr_of.
    unsafe { core::mem::transmute(words) }
}

/// IPv6 next-header values that are extension headers (RFC 8200 §4 and the IANA registry).
#[inline(always)]
fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(next_header, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3_off: usize, out: &mut Out<'_>) -> Result<L3, Error> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, l3_off).ok_or(Error::TruncatedIpv6)?;
    // SAFETY: ptr_at checked that the fixed 40-byte header lies inside the frame.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(Error::BadIpVersion);
    }
    let payload_len = be16_bounded(ip.payload_len);
    let l4_off = l3_off + Ipv6Hdr::LEN;
    if ctx.data() + l4_off + usize::from(payload_len) > data_end(ctx) {
        return Err(Error::TruncatedIpv6);
    }
    if ip.next_hdr == proto::ICMPV6 {
        let icmp = &mut *out.icmp;
        icmp.outer = FlowKey {
            src: ip.src_addr,
            dst: ip.dst_addr,
            proto: proto::ICMPV6,
            family: family::V6,
            ..FlowKey::default()
        };
        icmp.l3_off = l3_off;
        icmp.l4_off = l4_off;
        icmp.ip_len = payload_len.saturating_add(Ipv6Hdr::LEN as u16);
        return parse_icmp(ctx, icmp, l4_off + usize::from(payload_len));
    }
    if ip.next_hdr != proto::TCP {
        let outcome =
            if is_ipv6_extension(ip.next_hdr) { Outcome::Ipv6ExtHeader } else { Outcome::NotTcp };
        return Ok(L3::Other(outcome));
    }
    if ip.hop_limit == 0 {
        return Err(Error::TtlZero);
    }
    // Ports are filled in by parse_tcp. Addresses in words (see `word`).
    let base = core::ptr::from_ref(ip).cast::<u8>();
    // SAFETY: ptr_at checked the 40-byte header; the addresses are bytes 8..40.
    let (src, dst) = unsafe {
        (
            addr_of64([word::load64(base.add(8)), word::load64(base.add(16))]),
            addr_of64([word::load64(base.add(24)), word::load64(base.add(32))]),
        )
    };
    let mut key = FlowKey::new(src, dst, 0, 0, proto::TCP, family::V6);
    let flags = parse_tcp(ctx, l4_off, usize::from(payload_len), &mut key)?;
    let ip_len = payload_len.saturating_add(Ipv6Hdr::LEN as u16);
    // SAFETY: as in parse_ipv4.
    unsafe { out.tcp.write(Tcp { key, l3_off, l4_off, ip_len, flags }) };
    Ok(L3::Tcp)
}

/// Validates the TCP header at `l4_off` inside an IP payload of `ip_payload_len` bytes, fills
/// in the ports of `key` and returns the flags byte.
#[inline(always)]
fn parse_tcp(
    ctx: &XdpContext,
    l4_off: usize,
    ip_payload_len: usize,
    key: &mut FlowKey,
) -> Result<u8, Error> {
    if ip_payload_len < TcpHdr::LEN {
        return Err(Error::TruncatedTcp);
    }
    let tcp = ptr_at::<TcpHdr>(ctx, l4_off).ok_or(Error::TruncatedTcp)?;
    // SAFETY: ptr_at checked that the fixed 20-byte header lies inside the frame.
    let tcp = unsafe { &*tcp };
    let header_len = usize::from(tcp.doff()) * 4;
    if header_len < TcpHdr::LEN {
        return Err(Error::BadTcpDoff);
    }
    if header_len > ip_payload_len {
        return Err(Error::TruncatedTcp);
    }
    // SAFETY: the ports are the header's first 4 bytes, checked above.
    let ports = unsafe { word::load32(core::ptr::from_ref(tcp).cast::<u8>()) };
    // Native order: the first two bytes on the wire (the source port) are the low half.
    key.sport_be = ports as u16;
    key.dport_be = (ports >> 16) as u16;
    if key.sport_be == 0 || key.dport_be == 0 {
        return Err(Error::PortZero);
    }
    // SAFETY: byte 13 (flags) is inside the 20-byte header checked above.
    let flags = unsafe { *core::ptr::from_ref(tcp).cast::<u8>().add(13) };
    if !flags_are_valid(flags) {
        return Err(Error::BadTcpFlags);
    }
    Ok(flags)
}

/// ICMP(v6) error types that quote the offending packet and concern a connection:
/// destination unreachable (incl. fragmentation needed), packet too big, time exceeded.
#[inline(always)]
fn is_error(fam: u8, icmp_type: u8) -> bool {
    if fam == family::V4 {
        matches!(icmp_type, 3 | 11)
    } else {
        matches!(icmp_type, 1..=3)
    }
}

/// ICMP header length (type, code, checksum, 4 type-specific bytes) before the quoted packet.
const ICMP_HEADER_LEN: usize = 8;
/// Bytes of the quoted transport header an ICMP error carries at least (RFC 792, RFC 4443).
const QUOTED_L4_LEN: usize = 8;

/// Parses the ICMP message `icmp` describes (outer fields set) whose datagram ends at `end`.
/// Anything but an error quoting TCP passes; an error too short to quote what it claims is
/// dropped and counted.
#[inline(always)]
fn parse_icmp(ctx: &XdpContext, icmp: &mut IcmpError, end: usize) -> Result<L3, Error> {
    let Some(header) = ptr_at::<[u8; 2]>(ctx, icmp.l4_off) else {
        return Err(Error::TruncatedIcmp);
    };
    // SAFETY: ptr_at checked the two bytes.
    let icmp_type = unsafe { (*header)[0] };
    let fam = icmp.outer.family;
    if !is_error(fam, icmp_type) {
        return Ok(L3::Other(Outcome::NotTcp));
    }
    let inner_l3_off = icmp.l4_off + ICMP_HEADER_LEN;
    icmp.inner_l3_off = inner_l3_off;
    let inner = &mut icmp.inner;
    *inner = FlowKey { proto: proto::TCP, family: fam, ..FlowKey::default() };
    let inner_l4_off = if fam == family::V4 {
        let ip = ptr_at::<Ipv4Hdr>(ctx, inner_l3_off).ok_or(Error::TruncatedIcmp)?;
        // SAFETY: ptr_at checked the quoted header's fixed part.
        let ip = unsafe { &*ip };
        if ip.proto != proto::TCP {
            return Ok(L3::Other(Outcome::NotTcp));
        }
        // Quoted IPv4 options are legal but rare: leave such errors to the kernel.
        if ip.vihl != 0x45 {
            return Ok(L3::Other(Outcome::NotTcp));
        }
        inner.src[..4].copy_from_slice(&ip.src_addr);
        inner.dst[..4].copy_from_slice(&ip.dst_addr);
        inner_l3_off + Ipv4Hdr::LEN
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, inner_l3_off).ok_or(Error::TruncatedIcmp)?;
        // SAFETY: as above.
        let ip = unsafe { &*ip };
        if ip.next_hdr != proto::TCP {
            return Ok(L3::Other(Outcome::NotTcp));
        }
        inner.src = ip.src_addr;
        inner.dst = ip.dst_addr;
        inner_l3_off + Ipv6Hdr::LEN
    };
    if inner_l4_off + QUOTED_L4_LEN > end {
        return Err(Error::TruncatedIcmp);
    }
    let ports = ptr_at::<[u8; 4]>(ctx, inner_l4_off).ok_or(Error::TruncatedIcmp)?;
    // SAFETY: ptr_at checked the four port bytes.
    let ports = unsafe { *ports };
    inner.sport_be = u16::from_ne_bytes([ports[0], ports[1]]);
    inner.dport_be = u16::from_ne_bytes([ports[2], ports[3]]);
    icmp.inner_l4_off = inner_l4_off;
    Ok(L3::Icmp)
}
