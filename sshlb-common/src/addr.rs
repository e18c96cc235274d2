//! The 16-byte address layout every map key and value uses, and the keys built from it.
//!
//! An address is sixteen bytes in network order plus a [`family`] tag: IPv6 fills all sixteen,
//! IPv4 the first four with the other twelve zero. The tag, not the bytes, tells the families
//! apart (a v4 key and a v6 key whose first bytes agree never collide). The agent converts
//! `IpAddr`s with [`to16`] / [`from16`]; the data plane copies bytes out of packets and builds
//! keys with the constructors here, so both sides fill every field (padding included) the same.

use core::net::IpAddr;

use crate::{family, FlowKey, NatKey, ServiceKey};

/// An IPv4 address in the 16-byte layout (first four bytes, rest zero).
///
/// Built from four words rather than by zeroing sixteen bytes and patching four: on the BPF
/// target every zeroing memset becomes a call into a byte loop.
#[inline(always)]
pub const fn v4_in_16(addr: [u8; 4]) -> [u8; 16] {
    let words = [u32::from_ne_bytes(addr), 0, 0, 0];
    // SAFETY: [u32; 4] and [u8; 16] have the same size and every bit pattern is valid for both.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// `addr` in the 16-byte layout, with its family tag ([`family::V4`] or [`family::V6`]).
pub const fn to16(addr: IpAddr) -> ([u8; 16], u8) {
    match addr {
        IpAddr::V4(a) => (v4_in_16(a.octets()), family::V4),
        IpAddr::V6(a) => (a.octets(), family::V6),
    }
}

/// The address `addr` holds in the 16-byte layout under tag `fam` (the inverse of [`to16`]):
/// for [`family::V4`] only the first four bytes count; any other tag reads all sixteen.
pub fn from16(fam: u8, addr: &[u8; 16]) -> IpAddr {
    if fam == family::V4 {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(*addr)
    }
}

impl ServiceKey {
    /// Key of the service at `vip`:`port` (`port` in host byte order) for protocol `proto`.
    pub const fn new(vip: IpAddr, port: u16, proto: u8) -> Self {
        let (addr, family) = to16(vip);
        Self { addr, port_be: port.to_be(), proto, family }
    }

    /// Key of the service a flow is addressed to: its destination address, port and protocol.
    #[inline(always)]
    pub const fn of_flow(flow: &FlowKey) -> Self {
        Self { addr: flow.dst, port_be: flow.dport_be, proto: flow.proto, family: flow.family }
    }
}

impl NatKey {
    /// Key of the full-NAT reverse index for the connection between the balancer's
    /// `nat_port_be` and `backend`:`backend_port_be` (addresses in the 16-byte layout, ports in
    /// network order); the padding is zero.
    #[inline(always)]
    pub const fn new(backend: [u8; 16], backend_port_be: u16, nat_port_be: u16, fam: u8) -> Self {
        Self { backend, backend_port_be, nat_port_be, family: fam, pad8: 0, pad16: 0 }
    }
}

impl FlowKey {
    /// Key of the flow `src`:`sport_be` → `dst`:`dport_be` (16-byte layout, network-order
    /// ports) of protocol `proto` and family `fam`; the padding is zero.
    #[inline(always)]
    pub const fn new(
        src: [u8; 16],
        dst: [u8; 16],
        sport_be: u16,
        dport_be: u16,
        proto: u8,
        fam: u8,
    ) -> Self {
        Self { src, dst, sport_be, dport_be, proto, family: fam, pad: 0 }
    }
}

#[cfg(test)]
mod tests {
    use core::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::proto;

    #[test]
    fn v4_takes_the_first_four_bytes_and_zeroes_the_rest() {
        let (addr, fam) = to16(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100)));
        assert_eq!(fam, family::V4);
        assert_eq!(addr, [198, 18, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(addr, v4_in_16([198, 18, 0, 100]));
    }

    #[test]
    fn v6_takes_all_sixteen_bytes() {
        let ip = Ipv6Addr::new(0xfd00, 0x5, 0, 0, 0, 0, 0, 0x10);
        assert_eq!(to16(IpAddr::V6(ip)), (ip.octets(), family::V6));
    }

    #[test]
    fn from16_inverts_to16() {
        for ip in [
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x5, 0, 0, 0, 0, 0, 0x10)),
            // A v6 address whose tail is zero stays v6: the tag decides, not the bytes.
            IpAddr::V6(Ipv6Addr::new(0xc612, 0x0001, 0, 0, 0, 0, 0, 0)),
        ] {
            let (addr, fam) = to16(ip);
            assert_eq!(from16(fam, &addr), ip);
        }
    }

    #[test]
    fn from16_ignores_the_tail_of_a_v4_address() {
        let mut addr = v4_in_16([198, 18, 0, 1]);
        addr[15] = 7;
        assert_eq!(from16(family::V4, &addr), IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
    }

    #[test]
    fn service_key_new_matches_the_per_family_constructors() {
        let v4 = Ipv4Addr::new(198, 18, 0, 100);
        let v6 = Ipv6Addr::new(0xfd00, 0x5, 0, 0, 0, 0, 0, 0x64);
        assert_eq!(
            ServiceKey::new(IpAddr::V4(v4), 22, proto::TCP),
            ServiceKey::v4(v4.octets(), 22, proto::TCP)
        );
        assert_eq!(
            ServiceKey::new(IpAddr::V6(v6), 2222, proto::TCP),
            ServiceKey::v6(v6.octets(), 2222, proto::TCP)
        );
    }

    #[test]
    fn service_key_of_a_flow_is_its_destination() {
        let (client, _) = to16(IpAddr::V4(Ipv4Addr::new(198, 19, 0, 7)));
        let (vip, fam) = to16(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100)));
        let flow = FlowKey::new(client, vip, 40000u16.to_be(), 22u16.to_be(), proto::TCP, fam);
        let want = ServiceKey::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100)), 22, proto::TCP);
        assert_eq!(ServiceKey::of_flow(&flow), want);
    }

    #[test]
    fn key_constructors_zero_the_padding() {
        let (backend, fam) = to16(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)));
        let nat = NatKey::new(backend, 22u16.to_be(), 1024u16.to_be(), fam);
        assert_eq!((nat.pad8, nat.pad16), (0, 0));
        assert_eq!(nat.backend_port_be.to_ne_bytes(), [0, 22]);
        assert_eq!(nat.nat_port_be.to_ne_bytes(), [4, 0]);
        assert_eq!(nat.family, family::V4);
        let flow = FlowKey::new(backend, backend, 1, 2, proto::TCP, fam);
        assert_eq!(flow.pad, 0);
        assert_eq!(
            flow,
            FlowKey {
                src: backend,
                dst: backend,
                sport_be: 1,
                dport_be: 2,
                proto: proto::TCP,
                family: fam,
                pad: 0
            }
        );
    }
}
