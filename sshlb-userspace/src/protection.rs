//! Per-service protection policy, sans-IO: allow/deny lists (CIDRs, longest prefix wins) and the
//! per-source new-connection limit — their types, their parsing and their decisions. How they
//! become map entries is [`crate::plan`]'s business (this module imports nothing above it).

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

/// An address prefix, `addr/len` with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length (0-32 for IPv4, 0-128 for IPv6).
    pub len: u8,
}

impl Cidr {
    /// Whether `ip` is inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask32(self.len);
                u32::from(ip) & mask == u32::from(net) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask128(self.len);
                u128::from(ip) & mask == u128::from(net) & mask
            }
            _ => false,
        }
    }

    /// The prefix `ip/len` with host bits cleared (`len` clamped to the family's width).
    pub fn of(ip: IpAddr, len: u8) -> Self {
        match ip {
            IpAddr::V4(a) => {
                let len = len.min(32);
                Self { addr: IpAddr::V4(std::net::Ipv4Addr::from(u32::from(a) & mask32(len))), len }
            }
            IpAddr::V6(a) => {
                let len = len.min(128);
                Self {
                    addr: IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & mask128(len))),
                    len,
                }
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `"198.18.8.0/24"`, `"fd00:8::/64"`, or a bare address (a host: /32 or /128).
    fn from_str(text: &str) -> Result<Self, String> {
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("{text:?} is not an address or ADDRESS/PREFIX-LENGTH"))?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len_text {
            None => width,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= width => n,
                _ => return Err(format!("{text:?}: prefix length must be 0-{width}")),
            },
        };
        let cidr = Self::of(addr, len);
        if cidr.addr != addr {
            return Err(format!("{text:?} has host bits set; did you mean \"{cidr}\"?"));
        }
        Ok(cidr)
    }
}

/// The IPv4 netmask of a `len`-bit prefix, as a host-order integer.
pub fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0)
}

/// The IPv6 netmask of a `len`-bit prefix, as a host-order integer.
pub fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0)
}

/// A service's allow and deny lists. Semantics (as a firewall's, and as the data plane's trie
/// computes them): the longest matching prefix decides; a source no entry matches is allowed,
/// unless the service has an allow list — then only what it allows gets in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    /// Prefixes allowed in.
    pub allow: Vec<Cidr>,
    /// Prefixes kept out.
    pub deny: Vec<Cidr>,
}

impl Acl {
    /// Whether the lists say anything at all.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether a new connection from `ip` is let in.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let longest = |list: &[Cidr]| list.iter().filter(|c| c.contains(ip)).map(|c| c.len).max();
        match (longest(&self.allow), longest(&self.deny)) {
            (Some(a), Some(d)) => a > d,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => self.allow.is_empty(),
        }
    }
}

/// `[service.limit]`: new connections per client prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Time per token: one new connection per `interval` on average.
    pub interval: Duration,
    /// Connections a quiet prefix may open at once.
    pub burst: u32,
    /// IPv4 sources sharing a bucket: this many leading bits.
    pub ipv4_prefix: u8,
    /// IPv6 sources sharing a bucket (a /64 is one customer's LAN or one cloud instance).
    pub ipv6_prefix: u8,
}

impl RateLimit {
    /// The bucket prefix of a client address.
    pub fn prefix_of(&self, ip: IpAddr) -> Cidr {
        Cidr::of(ip, if ip.is_ipv4() { self.ipv4_prefix } else { self.ipv6_prefix })
    }
}

/// `"10/s"`, `"30/m"`, `"100/h"` → the time per connection.
pub fn parse_rate(text: &str) -> Option<Duration> {
    let (n, unit) = text.trim().split_once('/')?;
    let n: u64 = n.trim().parse().ok().filter(|&n| n > 0)?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return None,
    };
    let interval = per / u32::try_from(n).ok()?;
    (!interval.is_zero()).then_some(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("valid cidr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid ip")
    }

    #[test]
    fn cidrs_parse_and_refuse_host_bits() {
        assert_eq!(cidr("198.18.8.0/24").to_string(), "198.18.8.0/24");
        assert_eq!(cidr("198.18.8.7").len, 32);
        assert_eq!(cidr("fd00:8::/64").to_string(), "fd00:8::/64");
        assert_eq!(cidr("0.0.0.0/0").len, 0);
        let err = "198.18.8.7/24".parse::<Cidr>().expect_err("host bits");
        assert!(err.contains("did you mean \"198.18.8.0/24\""), "{err}");
        assert!("198.18.8.0/33".parse::<Cidr>().expect_err("too long").contains("0-32"));
        assert!("office".parse::<Cidr>().is_err());
    }

    #[test]
    fn longest_prefix_decides_and_an_allow_list_closes_the_rest() {
        let acl = Acl {
            allow: vec![cidr("198.18.0.0/16"), cidr("198.18.8.66/32")],
            deny: vec![cidr("198.18.8.0/24")],
        };
        assert!(acl.allows(ip("198.18.1.1")), "allowed /16");
        assert!(!acl.allows(ip("198.18.8.1")), "the /24 deny is longer than the /16 allow");
        assert!(acl.allows(ip("198.18.8.66")), "the /32 allow is longer than the /24 deny");
        assert!(!acl.allows(ip("203.0.113.1")), "an allow list closes everything else");
        assert!(!acl.allows(ip("fd00::1")), "other family: nothing allows it");
        let deny_only = Acl { allow: vec![], deny: vec![cidr("198.18.8.0/24")] };
        assert!(deny_only.allows(ip("203.0.113.1")));
        assert!(!deny_only.allows(ip("198.18.8.9")));
        assert!(Acl::default().allows(ip("198.18.8.9")));
    }

    #[test]
    fn limits_bucket_clients_by_prefix() {
        let limit = RateLimit {
            interval: parse_rate("10/s").expect("rate"),
            burst: 5,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
        };
        assert_eq!(limit.prefix_of(ip("198.18.8.77")).to_string(), "198.18.8.0/24");
        assert_eq!(limit.prefix_of(ip("fd00:8::1:2")).to_string(), "fd00:8::/64");
        assert_eq!(mask32(24), 0xffff_ff00);
        assert_eq!(mask128(0), 0);
    }

    #[test]
    fn rates_parse_per_second_minute_and_hour() {
        assert_eq!(parse_rate("30/m"), Some(Duration::from_secs(2)));
        assert_eq!(parse_rate("4/s"), Some(Duration::from_millis(250)));
        assert_eq!(parse_rate("1/h"), Some(Duration::from_secs(3600)));
        for bad in ["", "10", "0/s", "-1/s", "10/d", "ten/s"] {
            assert_eq!(parse_rate(bad), None, "{bad:?}");
        }
    }
}
