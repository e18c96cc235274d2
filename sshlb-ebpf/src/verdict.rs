//! What the program decided about a packet, and the one place those decisions become counters
//! and XDP verdicts.

use aya_ebpf::bindings::xdp_action;
use sshlb_common::stats;

/// A packet the program understood.
#[derive(Clone, Copy)]
pub enum Outcome {
    /// Not IPv4/IPv6.
    NotIp,
    /// QinQ or a second 802.1Q tag.
    VlanStacked,
    /// IP, but not TCP.
    NotTcp,
    /// IPv4 fragment: the kernel reassembles it.
    Ipv4Fragment,
    /// IPv6 extension header before the transport header.
    Ipv6ExtHeader,
    /// TCP to an endpoint that is not a service.
    NotService,
    /// TCP to a service.
    ServiceHit,
}

impl Outcome {
    /// The counter this outcome increments.
    #[inline(always)]
    pub const fn counter(self) -> u32 {
        match self {
            Self::NotIp => stats::PASS_NOT_IP,
            Self::VlanStacked => stats::PASS_VLAN_STACKED,
            Self::NotTcp => stats::PASS_NOT_TCP,
            Self::Ipv4Fragment => stats::PASS_IPV4_FRAGMENT,
            Self::Ipv6ExtHeader => stats::PASS_IPV6_EXT_HEADER,
            Self::NotService => stats::PASS_NOT_SERVICE,
            Self::ServiceHit => stats::SERVICE_HIT,
        }
    }

    /// The XDP verdict. Everything the program does not (yet) forward goes on to the kernel
    /// untouched: the balancer host's own traffic must never notice the program.
    #[inline(always)]
    pub const fn action(self) -> u32 {
        match self {
            Self::NotIp
            | Self::VlanStacked
            | Self::NotTcp
            | Self::Ipv4Fragment
            | Self::Ipv6ExtHeader
            | Self::NotService
            | Self::ServiceHit => xdp_action::XDP_PASS,
        }
    }
}

/// A malformed packet.
#[derive(Clone, Copy)]
pub enum Error {
    TruncatedEth,
    TruncatedVlan,
    TruncatedIpv4,
    TruncatedIpv6,
    TruncatedTcp,
    BadIpv4Ihl,
    BadIpv4Len,
    BadIpVersion,
    BadTcpDoff,
}

impl Error {
    /// The counter this error increments.
    #[inline(always)]
    pub const fn counter(self) -> u32 {
        match self {
            Self::TruncatedEth => stats::DROP_TRUNCATED_ETH,
            Self::TruncatedVlan => stats::DROP_TRUNCATED_VLAN,
            Self::TruncatedIpv4 => stats::DROP_TRUNCATED_IPV4,
            Self::TruncatedIpv6 => stats::DROP_TRUNCATED_IPV6,
            Self::TruncatedTcp => stats::DROP_TRUNCATED_TCP,
            Self::BadIpv4Ihl => stats::DROP_BAD_IPV4_IHL,
            Self::BadIpv4Len => stats::DROP_BAD_IPV4_LEN,
            Self::BadIpVersion => stats::DROP_BAD_IP_VERSION,
            Self::BadTcpDoff => stats::DROP_BAD_TCP_DOFF,
        }
    }

    /// The XDP verdict. The kernel's own IP and TCP input would discard every one of these
    /// (bad header length, length past the frame, wrong version), so dropping them here loses
    /// nothing and keeps garbage off the slow path; the counter says why.
    #[inline(always)]
    pub const fn action(self) -> u32 {
        match self {
            Self::TruncatedEth
            | Self::TruncatedVlan
            | Self::TruncatedIpv4
            | Self::TruncatedIpv6
            | Self::TruncatedTcp
            | Self::BadIpv4Ihl
            | Self::BadIpv4Len
            | Self::BadIpVersion
            | Self::BadTcpDoff => xdp_action::XDP_DROP,
        }
    }
}
