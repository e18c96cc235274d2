//! Indexes of the global per-CPU `STATS` counters: one counter per packet outcome.
//!
//! Every packet the program sees increments exactly one of these, so their sum is the number of
//! packets processed. Names are stable: they become Prometheus label values and the fixture tests
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
    /// TCP to a service: matched (forwarding comes with the connection table).
    SERVICE_HIT = 6, "service_hit";
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_say_their_verdict() {
        for (i, a) in NAMES.iter().enumerate() {
            assert!(a.starts_with("pass_") || a.starts_with("drop_") || *a == "service_hit");
            for b in &NAMES[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
