//! The bytes the sshlb XDP program and `sshlb-agent` agree on.
//!
//! Everything that crosses the kernel boundary is defined here once: map names, map key and value
//! layouts (`#[repr(C)]`, no implicit padding, integers and named constants instead of `bool`,
//! `enum` or `Option`), counter indexes and limits. The layout tests at the bottom lock the ABI: a
//! pinned map written by one build must be readable by the next.
#![no_std]

pub mod stats;

/// Map names, as they appear in the BPF object and under the pin directory.
pub mod map_names {
    /// Services: (VIP, port, protocol) → [`crate::Service`]. Written by the agent, read by XDP.
    pub const SERVICES: &str = "SERVICES";
    /// Global per-CPU outcome counters indexed by [`crate::stats`]. Written by XDP, read by the agent.
    pub const STATS: &str = "STATS";
}

/// Largest number of services (VIP, port, protocol) one balancer serves.
pub const MAX_SERVICES: u32 = 256;

/// Address family tag stored in keys (`AF_INET`/`AF_INET6` would tie the ABI to libc's values).
pub mod family {
    /// IPv4: the address occupies the first four bytes, the other twelve are zero.
    pub const V4: u8 = 4;
    /// IPv6: all sixteen bytes.
    pub const V6: u8 = 6;
}

/// IANA protocol numbers used in [`ServiceKey::proto`].
pub mod proto {
    /// Transmission Control Protocol.
    pub const TCP: u8 = 6;
}

/// Key of the `SERVICES` map: one balanced endpoint.
///
/// Addresses and the port are kept in network byte order, exactly as they appear in the packet, so
/// the data plane builds a key by copying bytes and never swaps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// VIP address in network byte order; IPv4 uses the first four bytes, the rest are zero.
    pub addr: [u8; 16],
    /// Destination port, network byte order.
    pub port_be: u16,
    /// IP protocol number ([`proto::TCP`]).
    pub proto: u8,
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
}

impl ServiceKey {
    /// Key for an IPv4 VIP; `port` in host byte order.
    pub const fn v4(addr: [u8; 4], port: u16, proto: u8) -> Self {
        let mut full = [0u8; 16];
        full[0] = addr[0];
        full[1] = addr[1];
        full[2] = addr[2];
        full[3] = addr[3];
        Self { addr: full, port_be: port.to_be(), proto, family: family::V4 }
    }

    /// Key for an IPv6 VIP; `port` in host byte order.
    pub const fn v6(addr: [u8; 16], port: u16, proto: u8) -> Self {
        Self { addr, port_be: port.to_be(), proto, family: family::V6 }
    }
}

/// Value of the `SERVICES` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Service {
    /// Dense service index chosen by the agent (`< MAX_SERVICES`); indexes per-service state.
    pub id: u32,
    /// Bit set of `service_flags::*`.
    pub flags: u32,
}

/// Bits of [`Service::flags`].
pub mod service_flags {
    /// Direct server return: rewrite only the destination MAC (default is full NAT).
    pub const DSR: u32 = 1 << 0;
    /// Hash on the client address alone (source affinity) instead of the 5-tuple.
    pub const SOURCE_AFFINITY: u32 = 1 << 1;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are #[repr(C)], contain only integers and integer arrays, and have no padding
    // (checked by the layout tests below), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Service {}
}

#[cfg(test)]
mod layout_tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn service_key_layout_is_packed_and_stable() {
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(align_of::<ServiceKey>(), 2);
        assert_eq!(offset_of!(ServiceKey, addr), 0);
        assert_eq!(offset_of!(ServiceKey, port_be), 16);
        assert_eq!(offset_of!(ServiceKey, proto), 18);
        assert_eq!(offset_of!(ServiceKey, family), 19);
    }

    #[test]
    fn service_layout_is_stable() {
        assert_eq!(size_of::<Service>(), 8);
        assert_eq!(offset_of!(Service, id), 0);
        assert_eq!(offset_of!(Service, flags), 4);
    }

    #[test]
    fn v4_key_keeps_network_order_and_zero_tail() {
        let key = ServiceKey::v4([198, 18, 0, 100], 22, proto::TCP);
        assert_eq!(&key.addr[..4], &[198, 18, 0, 100]);
        assert!(key.addr[4..].iter().all(|&b| b == 0));
        assert_eq!(key.port_be.to_ne_bytes(), [0, 22]);
        assert_eq!(key.family, family::V4);
        // A v6 key whose first four bytes happen to match must not collide with the v4 key.
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&[198, 18, 0, 100]);
        assert_ne!(key, ServiceKey::v6(v6, 22, proto::TCP));
    }
}
