//! Tunnel mode: the outer headers the balancer puts in front of a client's segment (IP-in-IP or
//! GUE), and the decapsulation program's ABI on the backend side (`sshlb-agent backend up`).
//!
//! The builders are plain functions over byte arrays so the data plane and the host tests use
//! the very same code; the fixtures check their output against an independent encoder.

use crate::{family, FlowKey};

/// IPv4 header without options.
pub const IPV4_HEADER: u16 = 20;
/// IPv6 fixed header.
pub const IPV6_HEADER: u16 = 40;
/// UDP header (GUE's outer transport).
pub const UDP_HEADER: u16 = 8;
/// IP protocol number of IPv4-in-IP (RFC 2003).
pub const PROTO_IPIP: u8 = 4;
/// IP protocol number of IPv6-in-IP (RFC 2473).
pub const PROTO_IPV6: u8 = 41;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// Default GUE destination port (no IANA assignment exists; Linux's `fou` takes any).
pub const DEFAULT_GUE_PORT: u16 = 6080;
/// Hop limit / TTL of outer headers.
pub const OUTER_TTL: u8 = 64;
/// IPv4 "don't fragment": outer datagrams are never fragmented on the way (the balancer
/// answers oversized segments with "packet too big" instead).
pub const IPV4_DF: u16 = 0x4000;

/// Bytes the encapsulation adds to a segment of family `fam`.
#[inline(always)]
pub const fn overhead(fam: u8, gue: bool) -> u16 {
    let ip = if fam == family::V6 { IPV6_HEADER } else { IPV4_HEADER };
    if gue {
        ip + UDP_HEADER
    } else {
        ip
    }
}

/// The flow's entropy for the outer headers: one hash of the 5-tuple, from which GUE's UDP
/// source port ([`gue_source_port`]) and the IPv6 outer flow label ([`flow_label`]) are taken,
/// so backend NICs' receive-side scaling and routers' ECMP spread tunnelled flows like plain
/// ones and keep each flow on one queue and path.
#[inline(always)]
pub const fn entropy(key: &FlowKey) -> u32 {
    crate::hash::flow_hash(key, false, 0x6775_6500)
}

/// GUE's outer UDP source port for a flow of [`entropy`] `h`: in the dynamic range (RFC 6335).
#[inline(always)]
pub const fn gue_source_port(h: u32) -> u16 {
    0xC000 | (h & 0x3FFF) as u16
}

/// IPv6 outer flow label for a flow of [`entropy`] `h` (20 bits).
#[inline(always)]
pub const fn flow_label(h: u32) -> u32 {
    h & 0x000F_FFFF
}

/// Bytes of the offending datagram an ICMP "fragmentation needed" quotes: its IP header (up
/// to 60 bytes with options) and at least the ports.
pub const QUOTE_V4: u16 = 64;
/// Bytes of the offending datagram an ICMPv6 "packet too big" quotes (the whole reply stays far
/// below IPv6's minimum MTU of 1,280).
pub const QUOTE_V6: u16 = 128;
/// Smallest `tunnel-mtu` the agent accepts: IPv6's minimum link MTU.
pub const MIN_TUNNEL_MTU: u16 = 1280;

/// Map names of the backend side's decapsulation program (`sshlb-decap`).
pub mod decap_maps {
    /// Balancer prefixes tunnel packets may come from: LPM trie of [`super::DecapSource`]
    /// (prefix length [`super::DECAP_PREFIX_BASE`] + the CIDR's) → 1.
    pub const SOURCES: &str = "DECAP_SOURCES";
    /// VIPs this backend serves, as [`crate::OwnAddr`] → 1: the only inner destinations.
    pub const VIPS: &str = "DECAP_VIPS";
    /// One [`super::DecapConfig`] at index 0.
    pub const CONFIG: &str = "DECAP_CONFIG";
    /// Per-CPU counters indexed by [`crate::stats::decap`].
    pub const STATS: &str = "DECAP_STATS";
}

/// Largest number of balancer prefixes a backend accepts tunnels from.
pub const MAX_DECAP_SOURCES: u32 = 64;
/// Largest number of VIPs one backend decapsulates for.
pub const MAX_DECAP_VIPS: u32 = 64;

/// Data of a [`decap_maps::SOURCES`] key (after the trie's prefix length).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DecapSource {
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// Explicit padding, zero.
    pub pad8: u8,
    /// Explicit padding, zero.
    pub pad16: u16,
    /// The balancer address (prefix), network byte order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
}

/// Bits of a [`DecapSource`] key before the address: the family and padding always match in
/// full.
pub const DECAP_PREFIX_BASE: u32 = 32;

/// Value of [`decap_maps::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DecapConfig {
    /// GUE's UDP destination port, network byte order; 0 = GUE not accepted.
    pub gue_port_be: u16,
    /// Explicit padding, zero.
    pub pad: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overheads_and_entropy() {
        assert_eq!(overhead(family::V4, false), 20);
        assert_eq!(overhead(family::V4, true), 28);
        assert_eq!(overhead(family::V6, false), 40);
        assert_eq!(overhead(family::V6, true), 48);
        let a = FlowKey { sport_be: 40000u16.to_be(), ..FlowKey::default() };
        let b = FlowKey { sport_be: 40001u16.to_be(), ..FlowKey::default() };
        let (ha, hb) = (entropy(&a), entropy(&b));
        assert!(gue_source_port(ha) >= 0xC000 && gue_source_port(hb) >= 0xC000);
        assert_ne!(gue_source_port(ha), gue_source_port(hb), "flows spread over source ports");
        assert!(flow_label(ha) < 1 << 20);
    }
}
