//! The frames the benchmark injects (`sshlb_tests::inject` sends them).
//!
//! Addresses: the bench network is 198.18.0.0/24 and fd00:18::/64 (balancer .2 / ::2, backends
//! .11–.13 / ::11–::13, router .254 / ::fe); clients are 198.18.64.0–198.18.255.255 and fd00:19::/64.

use etherparse::PacketBuilder;

/// The balancer's interface MAC (bl0).
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The generator's interface MAC (bg0); also the router's, so XDP_TX'd frames come back to it.
pub const GEN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// IPv4 or IPv6 (each scenario runs over both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The scenario-name suffix: "" for IPv4 (the names the JSON has always had), " v6".
    pub fn suffix(self) -> &'static str {
        match self {
            Self::V4 => "",
            Self::V6 => " v6",
        }
    }

    /// The VIP every service listens on.
    pub fn vip(self) -> [u8; 16] {
        match self {
            Self::V4 => sshlb_common::v4_in_16([198, 18, 0, 100]),
            Self::V6 => v6([0xfd00, 0x18, 0, 0, 0, 0, 0, 0x100]),
        }
    }

    /// The balancer's own (full-NAT source) address.
    pub fn nat_addr(self) -> [u8; 16] {
        match self {
            Self::V4 => sshlb_common::v4_in_16([198, 18, 0, 2]),
            Self::V6 => v6([0xfd00, 0x18, 0, 0, 0, 0, 0, 2]),
        }
    }

    /// The `sshlb_common::family` tag.
    pub fn tag(self) -> u8 {
        match self {
            Self::V4 => sshlb_common::family::V4,
            Self::V6 => sshlb_common::family::V6,
        }
    }

    /// Client number `i`: 198.18.(64 + j / 256).(j % 256) with j = i mod 49152 (the tuples
    /// stay distinct through the source port), or fd00:19::i.
    pub fn client(self, i: u32) -> [u8; 16] {
        match self {
            Self::V4 => {
                let j = i % (192 * 256);
                sshlb_common::v4_in_16([198, 18, 64 + (j / 256) as u8, (j % 256) as u8])
            }
            Self::V6 => v6([0xfd00, 0x19, 0, 0, 0, 0, (i >> 16) as u16, i as u16]),
        }
    }
}

fn v6(segments: [u16; 8]) -> [u8; 16] {
    std::net::Ipv6Addr::from(segments).octets()
}

/// One TCP segment with no payload.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// Address family (only the first four address bytes count for IPv4).
    pub family: Family,
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port (host order).
    pub sport: u16,
    /// Destination port (host order).
    pub dport: u16,
    /// A SYN; otherwise an ACK.
    pub syn: bool,
}

impl Segment {
    /// The Ethernet frame carrying it, generator → balancer.
    pub fn frame(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(GEN_MAC, LB_MAC);
        let ip = match self.family {
            Family::V4 => {
                let four = |a: [u8; 16]| [a[0], a[1], a[2], a[3]];
                eth.ipv4(four(self.src), four(self.dst), 64)
            }
            Family::V6 => eth.ipv6(self.src, self.dst, 64),
        };
        let tcp = ip.tcp(self.sport, self.dport, 1, 64240);
        let tcp = if self.syn { tcp.syn() } else { tcp.ack(1) };
        let mut out = Vec::new();
        tcp.write(&mut out, &[]).expect("writing into a Vec");
        out
    }
}

/// Segments from clients number `range` (see [`Family::client`]; ports 40000 + i % 20000) to the VIP
/// on `dport`: SYNs or ACKs.
pub fn from_clients(
    family: Family,
    range: std::ops::Range<u32>,
    dport: u16,
    syn: bool,
) -> Vec<Vec<u8>> {
    range.map(|i| client_segment(family, i, dport, syn).frame()).collect()
}

/// Client `i`'s segment to the VIP's port `dport` (one of [`from_clients`]'s).
pub fn client_segment(family: Family, i: u32, dport: u16, syn: bool) -> Segment {
    Segment {
        family,
        src: family.client(i),
        dst: family.vip(),
        sport: 40000 + (i % 20000) as u16,
        dport,
        syn,
    }
}
