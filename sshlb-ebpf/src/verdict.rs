//! What the program decided about a packet, and the one place those decisions become counters
//! and XDP verdicts.

use aya_ebpf::bindings::xdp_action;
use sshlb_common::stats;

/// How a forwarded frame leaves.
#[derive(Clone, Copy)]
pub enum Xmit {
    /// Back out of the interface it came in on (the one-armed case).
    Tx,
    /// Out of another interface; `bpf_redirect` has been called.
    Redirect,
}

impl Xmit {
    #[inline(always)]
    const fn action(self) -> u32 {
        match self {
            Self::Tx => xdp_action::XDP_TX,
            Self::Redirect => xdp_action::XDP_REDIRECT,
        }
    }
}

/// Which forwarding path a frame took.
#[derive(Clone, Copy)]
pub enum Path {
    /// Client → backend, full NAT.
    Nat,
    /// Client → backend, direct server return.
    Dsr,
    /// Backend → client, full NAT reversed.
    ReverseNat,
    /// An ICMP error about a tracked flow, delivered to the flow's other end.
    IcmpError,
    /// Client → backend, encapsulated (tunnel mode).
    Tunnel,
    /// A tunnel-mode segment too large for the tunnel, answered with "packet too big".
    TooBig,
}

/// A packet the program understood.
#[derive(Clone, Copy)]
pub enum Outcome {
    /// Not IPv4/IPv6.
    NotIp,
    /// QinQ or a second 802.1Q tag.
    VlanStacked,
    /// One 802.1Q tag with a VLAN id: no service is on a VLAN.
    VlanTagged,
    /// IP, but not TCP.
    NotTcp,
    /// IPv4 fragment: the kernel reassembles it.
    Ipv4Fragment,
    /// IPv6 extension header before the transport header.
    Ipv6ExtHeader,
    /// TCP to an endpoint that is not a service (nor a full-NAT flow's return path).
    NotService,
    /// Rewritten and sent on.
    Forwarded(Path, Xmit),
    /// Rewritten, next hop unresolved: the kernel resolves and forwards it.
    NoNeigh,
}

impl Outcome {
    /// The counter this outcome increments.
    #[inline(always)]
    pub const fn counter(self) -> u32 {
        match self {
            Self::NotIp => stats::PASS_NOT_IP,
            Self::VlanStacked => stats::PASS_VLAN_STACKED,
            Self::VlanTagged => stats::PASS_VLAN_TAGGED,
            Self::NotTcp => stats::PASS_NOT_TCP,
            Self::Ipv4Fragment => stats::PASS_IPV4_FRAGMENT,
            Self::Ipv6ExtHeader => stats::PASS_IPV6_EXT_HEADER,
            Self::NotService => stats::PASS_NOT_SERVICE,
            Self::Forwarded(Path::Nat, _) => stats::FWD_NAT,
            Self::Forwarded(Path::Dsr, _) => stats::FWD_DSR,
            Self::Forwarded(Path::ReverseNat, _) => stats::FWD_REVERSE_NAT,
            Self::Forwarded(Path::IcmpError, _) => stats::FWD_ICMP_ERROR,
            Self::Forwarded(Path::Tunnel, _) => stats::FWD_TUNNEL,
            Self::Forwarded(Path::TooBig, _) => stats::FWD_PACKET_TOO_BIG,
            Self::NoNeigh => stats::PASS_NO_NEIGH,
        }
    }

    /// The XDP verdict. Everything the program does not forward goes on to the kernel
    /// untouched: the balancer host's own traffic must never notice the program.
    #[inline(always)]
    pub const fn action(self) -> u32 {
        match self {
            Self::NotIp
            | Self::VlanStacked
            | Self::VlanTagged
            | Self::NotTcp
            | Self::Ipv4Fragment
            | Self::Ipv6ExtHeader
            | Self::NotService
            | Self::NoNeigh => xdp_action::XDP_PASS,
            Self::Forwarded(_, xmit) => xmit.action(),
        }
    }
}

/// A packet the program refuses: malformed, or a flow it cannot serve.
#[derive(Clone, Copy)]
pub enum Error {
    /// Shorter than an Ethernet header.
    TruncatedEth,
    /// Ends inside the 802.1Q tag.
    TruncatedVlan,
    /// The IPv4 header (per IHL) or total length runs past the frame.
    TruncatedIpv4,
    /// The IPv6 header or payload length runs past the frame.
    TruncatedIpv6,
    /// The TCP header (per data offset) runs past the IP payload or the frame.
    TruncatedTcp,
    /// IPv4 IHL below 5 words.
    BadIpv4Ihl,
    /// IPv4 total length smaller than its own header.
    BadIpv4Len,
    /// The IP version nibble does not match the EtherType.
    BadIpVersion,
    /// TCP data offset below 5 words.
    BadTcpDoff,
    /// The service's ring is empty or names a removed backend.
    NoBackend,
    /// The connection table is full: new flows are refused, established ones keep working.
    FlowTableFull,
    /// No free NAT source port towards the chosen backend.
    NatPortsExhausted,
    /// Full-NAT service without a configured NAT address.
    NatUnconfigured,
    /// No usable route/neighbour for the rewritten packet.
    NoRoute,
    /// An ICMP error too short for the packet it quotes.
    TruncatedIcmp,
    /// A new flow from a source the service's allow/deny list refuses.
    AclDenied,
    /// A SYN over the source prefix's new-connection rate.
    RateLimited,
    /// TCP flags no stack sends.
    BadTcpFlags,
    /// TCP port 0.
    PortZero,
    /// IPv4 TTL / IPv6 hop limit 0.
    TtlZero,
    /// A new flow from one of our own addresses.
    SpoofedSource,
    /// IPv4 options malformed or source-routed.
    BadIpv4Options,
    /// RST/FIN for an unknown full-NAT flow.
    CloseWithoutFlow,
    /// Internal: `bpf_csum_diff` refused the program's own arguments mid-rewrite.
    CsumHelperFailed,
    /// Internal: one of this CPU's scratch slots could not be looked up.
    ScratchMissing,
    /// A tunnel-mode IPv4 segment too large for the tunnel, without DF.
    TunnelTooBigNoDf,
    /// A tunnel-mode segment in a priority-tagged frame.
    TunnelTagged,
    /// Internal: `bpf_xdp_adjust_head`/`_tail` refused.
    AdjustFailed,
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
            Self::NoBackend => stats::DROP_NO_BACKEND,
            Self::FlowTableFull => stats::DROP_FLOW_TABLE_FULL,
            Self::NatPortsExhausted => stats::DROP_NAT_PORTS_EXHAUSTED,
            Self::NatUnconfigured => stats::DROP_NAT_UNCONFIGURED,
            Self::NoRoute => stats::DROP_NO_ROUTE,
            Self::TruncatedIcmp => stats::DROP_TRUNCATED_ICMP,
            Self::AclDenied => stats::DROP_ACL_DENIED,
            Self::RateLimited => stats::DROP_RATE_LIMITED,
            Self::BadTcpFlags => stats::DROP_BAD_TCP_FLAGS,
            Self::PortZero => stats::DROP_PORT_ZERO,
            Self::TtlZero => stats::DROP_TTL_ZERO,
            Self::SpoofedSource => stats::DROP_SPOOFED_SOURCE,
            Self::BadIpv4Options => stats::DROP_BAD_IPV4_OPTIONS,
            Self::CloseWithoutFlow => stats::DROP_CLOSE_WITHOUT_FLOW,
            Self::CsumHelperFailed => stats::DROP_CSUM_HELPER_FAILED,
            Self::ScratchMissing => stats::DROP_SCRATCH_MISSING,
            Self::TunnelTooBigNoDf => stats::DROP_TUNNEL_TOO_BIG_NO_DF,
            Self::TunnelTagged => stats::DROP_TUNNEL_TAGGED,
            Self::AdjustFailed => stats::DROP_ADJUST_FAILED,
        }
    }

    /// The XDP verdict. Malformed headers: the kernel's own IP and TCP input would discard every
    /// one of them, so dropping here loses nothing and keeps garbage off the slow path. Flows we
    /// cannot serve: passing a VIP-addressed SYN to the kernel would only earn the client a RST
    /// (or worse, reach a local listener); dropping lets it retry, and the counter says why.
    /// Internal errors are the program's own failures, not the packet's: XDP_ABORTED, which
    /// also fires the kernel's `xdp:xdp_exception` tracepoint, so they cannot pass unnoticed.
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
            | Self::BadTcpDoff
            | Self::NoBackend
            | Self::FlowTableFull
            | Self::NatPortsExhausted
            | Self::NatUnconfigured
            | Self::NoRoute
            | Self::TruncatedIcmp
            | Self::AclDenied
            | Self::RateLimited
            | Self::BadTcpFlags
            | Self::PortZero
            | Self::TtlZero
            | Self::SpoofedSource
            | Self::BadIpv4Options
            | Self::CloseWithoutFlow
            | Self::TunnelTooBigNoDf
            | Self::TunnelTagged => xdp_action::XDP_DROP,
            Self::CsumHelperFailed | Self::ScratchMissing | Self::AdjustFailed => {
                xdp_action::XDP_ABORTED
            }
        }
    }
}

/// A decided packet as one plain integer: what to count (high half) and what to return (low).
///
/// The balancer's paths are BPF subprograms; they return this rather than a
/// `Result<Outcome, Error>`, whose padding bytes LLVM may fill from any dead register — and
/// when that register holds a map pointer, the verifier refuses the resulting arithmetic. One
/// `u64` also comes back in R0, where a struct would come back through a hidden pointer and
/// leave R0 holding whatever LLVM left there (possibly a stack pointer, which the verifier
/// refuses to see returned).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct Decision(u64);

impl Decision {
    /// Not a verdict: "parsed a TCP segment, keep going" (never a valid XDP action).
    pub const CONTINUE: Self = Self::new(0, u32::MAX);
    /// Not a verdict: "parsed an ICMP error about TCP, keep going".
    pub const ICMP: Self = Self::new(1, u32::MAX);
    /// A TCP segment addressed to no service: the reply path may still claim it.
    pub const NOT_SERVICE: Self =
        Self::new(Outcome::NotService.counter(), Outcome::NotService.action());

    /// Count `counter`, return `action`.
    #[inline(always)]
    pub const fn new(counter: u32, action: u32) -> Self {
        Self(((counter as u64) << 32) | action as u64)
    }

    /// The counter to increment.
    #[inline(always)]
    pub const fn counter(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The XDP action to return.
    #[inline(always)]
    pub const fn action(self) -> u32 {
        self.0 as u32
    }
}

impl From<Result<Outcome, Error>> for Decision {
    #[inline(always)]
    fn from(result: Result<Outcome, Error>) -> Self {
        match result {
            Ok(outcome) => Self::new(outcome.counter(), outcome.action()),
            Err(err) => Self::new(err.counter(), err.action()),
        }
    }
}
