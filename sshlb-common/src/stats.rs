//! Indexes of the global per-CPU `STATS` counters: one counter per packet outcome.
//!
//! Every packet the program sees increments exactly one `pass_*`, `fwd_*` or `drop_*` counter, so
//! their sum is the number of packets processed; `event_*` counters count things that happened
//! on the way and are not outcomes. Names are stable: they become Prometheus label values and the fixture tests
//! refer to them.

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident = $idx:literal, $label:literal;)*) => {
        $( $(#[doc = $doc])* pub const $name: u32 = $idx; )*
        /// Number of counters (the `STATS` map's `max_entries`).
        pub const COUNT: u32 = [$($idx),*].len() as u32;
        /// Stable label of each counter, indexed by counter index.
        pub const NAMES: [&str; COUNT as usize] = [$($label),*];
        // Indexes must be 0, 1, 2, ... in declaration order so NAMES lines up with them.
        const _: () = {
            let idx = [$($idx),*];
            let mut i = 0;
            while i < idx.len() {
                assert!(idx[i] as usize == i, "counter indexes must be dense and in order");
                i += 1;
            }
        };
    };
}

counters! {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed.
    PASS_NOT_IP = 0, "pass_not_ip";
    /// More than one VLAN tag (QinQ): passed untouched, we only parse one 802.1Q tag.
    PASS_VLAN_STACKED = 1, "pass_vlan_stacked";
    /// IP but not TCP (UDP, ICMP, ...): passed.
    PASS_NOT_TCP = 2, "pass_not_tcp";
    /// TCP to an address/port that is not a service: passed (e.g. the balancer's own sshd).
    PASS_NOT_SERVICE = 3, "pass_not_service";
    /// IPv4 fragment (MF set or offset ≠ 0): passed for the kernel to reassemble.
    PASS_IPV4_FRAGMENT = 4, "pass_ipv4_fragment";
    /// IPv6 with an extension header before the transport header: passed.
    PASS_IPV6_EXT_HEADER = 5, "pass_ipv6_ext_header";
    /// Client → VIP segment forwarded to its backend with full NAT.
    FWD_NAT = 6, "fwd_nat";
    /// Frame shorter than an Ethernet header: dropped.
    DROP_TRUNCATED_ETH = 7, "drop_truncated_eth";
    /// Frame ends inside the 802.1Q tag: dropped.
    DROP_TRUNCATED_VLAN = 8, "drop_truncated_vlan";
    /// IPv4 header (per IHL) or total length runs past the frame: dropped.
    DROP_TRUNCATED_IPV4 = 9, "drop_truncated_ipv4";
    /// IPv6 header or payload length runs past the frame: dropped.
    DROP_TRUNCATED_IPV6 = 10, "drop_truncated_ipv6";
    /// TCP header (per data offset) runs past the IP payload: dropped.
    DROP_TRUNCATED_TCP = 11, "drop_truncated_tcp";
    /// IPv4 IHL below 5 words: dropped.
    DROP_BAD_IPV4_IHL = 12, "drop_bad_ipv4_ihl";
    /// IPv4 total length smaller than its own header: dropped.
    DROP_BAD_IPV4_LEN = 13, "drop_bad_ipv4_len";
    /// IP version nibble does not match the EtherType: dropped.
    DROP_BAD_IP_VERSION = 14, "drop_bad_ip_version";
    /// TCP data offset below 5 words: dropped.
    DROP_BAD_TCP_DOFF = 15, "drop_bad_tcp_doff";
    /// Client → VIP segment forwarded to its backend by direct server return (MAC rewrite).
    FWD_DSR = 16, "fwd_dsr";
    /// Backend → balancer segment of a full-NAT flow, rewritten back to VIP → client.
    FWD_REVERSE_NAT = 17, "fwd_reverse_nat";
    /// ICMP error about a tracked flow, rewritten and delivered to the flow's other end.
    FWD_ICMP_ERROR = 18, "fwd_icmp_error";
    /// Rewritten, but the next hop's MAC is not resolved yet: passed for the kernel to resolve
    /// the neighbour and forward it.
    PASS_NO_NEIGH = 19, "pass_no_neigh";
    /// The service has no usable backend (empty ring, or a slot naming a removed backend).
    DROP_NO_BACKEND = 20, "drop_no_backend";
    /// New flow refused: the connection table is full (established flows are never evicted).
    DROP_FLOW_TABLE_FULL = 21, "drop_flow_table_full";
    /// New full-NAT flow refused: no free NAT source port towards that backend after 8 probes.
    DROP_NAT_PORTS_EXHAUSTED = 22, "drop_nat_ports_exhausted";
    /// Full-NAT service but the agent has not configured the balancer's NAT address.
    DROP_NAT_UNCONFIGURED = 23, "drop_nat_unconfigured";
    /// The FIB has no usable route to the next hop (unreachable, blackhole, prohibited, MTU).
    DROP_NO_ROUTE = 24, "drop_no_route";
    /// ICMP message too short for the header it claims to quote: dropped.
    DROP_TRUNCATED_ICMP = 25, "drop_truncated_icmp";
    /// Event (not an outcome): a flow was created from a non-SYN segment (restart, failover).
    EVENT_FLOW_RECOVERED = 26, "event_flow_recovered";
    /// Event (not an outcome): a NAT source-port probe collided and the next one was tried.
    EVENT_NAT_PORT_RETRY = 27, "event_nat_port_retry";
    /// New flow refused: the service's allow/deny list denies the client's address.
    DROP_ACL_DENIED = 28, "drop_acl_denied";
    /// SYN refused: the client's prefix exceeded the service's new-connection rate.
    DROP_RATE_LIMITED = 29, "drop_rate_limited";
    /// The kernel's checksum helper (`bpf_csum_diff`) refused the program's arguments while
    /// rewriting: an internal error (XDP_ABORTED), not a malformed packet.
    DROP_CSUM_HELPER_FAILED = 30, "drop_csum_helper_failed";
    /// A per-CPU scratch slot (ICMP parse, new reverse entry) could not be looked up: an
    /// internal error (XDP_ABORTED).
    DROP_SCRATCH_MISSING = 31, "drop_scratch_missing";
    /// TCP flags no stack sends (RFC 9293 §3.10.7): SYN with FIN or RST, or a segment without
    /// ACK that is neither a SYN nor a RST (no flags, FIN, URG or PSH alone): dropped.
    DROP_BAD_TCP_FLAGS = 32, "drop_bad_tcp_flags";
    /// TCP source or destination port 0 (reserved, never a connection's): dropped.
    DROP_PORT_ZERO = 33, "drop_port_zero";
    /// IPv4 TTL or IPv6 hop limit 0: no router forwards it, neither do we: dropped.
    DROP_TTL_ZERO = 34, "drop_ttl_zero";
    /// A new flow whose source is one of our own addresses — a VIP, a NAT address or a
    /// backend's — which no client has: spoofed (or looped), dropped before any state.
    DROP_SPOOFED_SOURCE = 35, "drop_spoofed_source";
    /// IPv4 options that run past the header or carry a source route (LSRR/SSRR, refused by
    /// hosts: `accept_source_route = 0`): dropped.
    DROP_BAD_IPV4_OPTIONS = 36, "drop_bad_ipv4_options";
    /// 802.1Q-tagged (VLAN id ≠ 0) frame: no service is on a VLAN, so it is the kernel's
    /// (forwarding it to untagged backends would hop VLANs): passed.
    PASS_VLAN_TAGGED = 37, "pass_vlan_tagged";
    /// A RST or FIN for a full-NAT flow the table does not know: it cannot start a flow and has
    /// no NAT port to go out with (guessing one could reset another client's session): dropped.
    DROP_CLOSE_WITHOUT_FLOW = 38, "drop_close_without_flow";
    /// Event (not an outcome): a RST or FIN for a direct-server-return flow the table does not
    /// know was forwarded by the ring without creating an entry (the backend, which may hold the
    /// connection after a restart or failover, needs it).
    EVENT_STATELESS_CLOSE = 39, "event_stateless_close";
    /// Event (not an outcome): a new full-NAT flow took the NAT port of a flow whose handshake
    /// never completed and which was idle past the embryonic grace period (SYN flood defence).
    EVENT_NAT_PORT_RECLAIMED = 40, "event_nat_port_reclaimed";
    /// Event (not an outcome): a client segment of a flow the agent is killing was turned into
    /// a RST towards the backend (and reported so the agent resets the client too).
    EVENT_FLOW_RESET = 41, "event_flow_reset";
    /// Event (not an outcome): the report of such a segment did not fit in the ring buffer (the
    /// backend was still reset; the client is reset by its next segment).
    EVENT_RESET_REPORT_LOST = 42, "event_reset_report_lost";
    /// Client → VIP segment encapsulated (IP-in-IP or GUE) towards its backend (tunnel mode).
    FWD_TUNNEL = 43, "fwd_tunnel";
    /// A tunnel-mode segment too large for the tunnel MTU with the encapsulation's overhead:
    /// answered with ICMP "fragmentation needed" / ICMPv6 "packet too big" (its quoted header
    /// tells the client's TCP the MTU), the segment itself dropped.
    FWD_PACKET_TOO_BIG = 44, "fwd_packet_too_big";
    /// A tunnel-mode IPv4 segment too large for the tunnel MTU and without DF: the balancer
    /// does not fragment, and a client that lets routers fragment does not do path-MTU
    /// discovery: dropped.
    DROP_TUNNEL_TOO_BIG_NO_DF = 45, "drop_tunnel_too_big_no_df";
    /// A tunnel-mode segment in a priority-tagged (802.1Q, VLAN 0) frame: encapsulation takes
    /// untagged frames only: dropped.
    DROP_TUNNEL_TAGGED = 46, "drop_tunnel_tagged";
    /// `bpf_xdp_adjust_head`/`_tail` refused to make room for the tunnel's headers or the ICMP
    /// answer: an internal error (XDP_ABORTED).
    DROP_ADJUST_FAILED = 47, "drop_adjust_failed";
}

/// Counters of the backend side's decapsulation program (`DECAP_STATS`): each frame it sees
/// increments exactly one.
pub mod decap {
    counters! {
        /// Not a tunnel packet (nor one that looks like it): passed untouched.
        PASS_NOT_TUNNEL = 0, "pass_not_tunnel";
        /// Decapsulated (outer headers removed) and passed to the stack.
        PASS_DECAPSULATED = 1, "pass_decapsulated";
        /// A tunnel packet whose outer source is outside the balancer prefixes: dropped (a
        /// backend must not become an open relay).
        DROP_FOREIGN_SOURCE = 2, "drop_foreign_source";
        /// A tunnel packet from a balancer whose inner destination is not one of this
        /// backend's VIPs: dropped.
        DROP_NOT_VIP = 3, "drop_not_vip";
        /// A tunnel packet whose inner header is truncated or of the wrong version, or an
        /// outer fragment: dropped.
        DROP_MALFORMED = 4, "drop_malformed";
        /// `bpf_xdp_adjust_head` refused to remove the outer headers: internal (XDP_ABORTED).
        DROP_ADJUST_FAILED = 5, "drop_adjust_failed";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_say_their_verdict() {
        for (i, a) in NAMES.iter().enumerate() {
            let kinds = ["pass_", "drop_", "fwd_", "event_"];
            assert!(kinds.iter().any(|k| a.starts_with(k)), "{a} says no verdict");
            for b in &NAMES[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn existing_indexes_keep_their_meaning() {
        // Counters are only ever appended: a pinned STATS map and dashboards read by index.
        assert_eq!(NAMES[PASS_NOT_IP as usize], "pass_not_ip");
        assert_eq!(NAMES[DROP_TRUNCATED_TCP as usize], "drop_truncated_tcp");
        assert_eq!(NAMES[DROP_RATE_LIMITED as usize], "drop_rate_limited");
        assert_eq!(DROP_RATE_LIMITED, 29);
        assert_eq!(NAMES[DROP_CSUM_HELPER_FAILED as usize], "drop_csum_helper_failed");
        assert_eq!(NAMES[DROP_SCRATCH_MISSING as usize], "drop_scratch_missing");
        assert_eq!(NAMES[DROP_BAD_TCP_FLAGS as usize], "drop_bad_tcp_flags");
        assert_eq!(COUNT, 48);
    }
}
