//! Configuration errors: where ([`ConfigError`]: file, line, field) and what ([`Problem`]).
//!
//! The texts are what the operator reads after `file:line: field: `; each says what is allowed.

use std::{fmt, net::IpAddr};

use crate::protection::Cidr;

/// An error in a configuration file, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}: {problem}")]
pub struct ConfigError {
    /// File name as given.
    pub file: String,
    /// 1-based line of the offending value (0 when not locatable).
    pub line: usize,
    /// Dotted path of the field, e.g. `service[0].backend[1].address`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub problem: Problem,
}

/// A value that is not one of an enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?}: expected {}", OneOf(.choices))]
pub struct UnknownChoice {
    /// The value as written.
    pub given: String,
    /// Every accepted spelling, in table order.
    pub choices: &'static [&'static str],
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
struct OneOf<'a>(&'a [&'a str]);

impl fmt::Display for OneOf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        for (k, choice) in self.0.iter().enumerate() {
            match k {
                0 => {}
                k if k + 1 == n => f.write_str(" or ")?,
                _ => f.write_str(", ")?,
            }
            write!(f, "{choice:?}")?;
        }
        Ok(())
    }
}

/// What is wrong with one value of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The TOML parser's own message (syntax, unknown or missing keys, wrong types).
    #[error("{0}")]
    Toml(String),
    /// An enum field spelled in none of the accepted ways.
    #[error(transparent)]
    UnknownChoice(#[from] UnknownChoice),
    /// A number outside its inclusive range.
    #[error("must be {min}-{max}")]
    OutOfRange {
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
    /// `agent.max-flows` outside its range.
    #[error("must be between {min} and {max}")]
    MaxFlows {
        /// Smallest accepted.
        min: u32,
        /// Largest accepted.
        max: u32,
    },
    /// `agent.nat-v4` is not an IPv4 address.
    #[error("{0:?} is not an IPv4 address")]
    NotIpv4(String),
    /// `agent.nat-v6` is not an IPv6 address.
    #[error("{0:?} is not an IPv6 address")]
    NotIpv6(String),
    /// A VIP or backend address that is not an address.
    #[error("{0:?} is not an IPv4 or IPv6 address")]
    NotAnAddress(String),
    /// `agent.nat-ports` is not a valid range.
    #[error("{0:?}: expected \"FIRST-LAST\" with 1024 <= FIRST <= LAST <= 65535")]
    PortRange(String),
    /// An agent timeout that is not a duration.
    #[error("{0:?}: expected a duration like \"250ms\", \"30s\", \"5m\", \"2h\", \"5d\"")]
    Duration(String),
    /// More `[[service]]` sections than the data plane has room for.
    #[error("{count} services; at most {max} are supported")]
    TooManyServices {
        /// Services in the file.
        count: usize,
        /// The data plane's limit.
        max: u32,
    },
    /// A service or backend name with characters outside the allowed set.
    #[error("{0:?}: use letters, digits, '-', '_' or '.'")]
    Name(String),
    /// Two services share a name.
    #[error("{0:?} is used by another service")]
    DuplicateService(String),
    /// Two services share VIP and port.
    #[error("{vip} port {port} is already a service")]
    DuplicateEndpoint {
        /// The VIP.
        vip: IpAddr,
        /// The port.
        port: u16,
    },
    /// `ring-size` is not an allowed prime.
    #[error("{size}: must be a prime between 3 and {max} (e.g. 65537, 32749, 4093)")]
    RingSize {
        /// As written.
        size: u32,
        /// Largest accepted.
        max: u32,
    },
    /// A `host-keys` entry that is not a SHA256 fingerprint.
    #[error(
        "{0:?}: expected a SHA256 fingerprint as `ssh-keygen -lf KEY.pub` prints it, \
         \"SHA256:\" and 43 base64 characters"
    )]
    Fingerprint(String),
    /// `host-key-policy = "enforce"` with no `host-keys`.
    #[error("\"enforce\" needs the expected fingerprints in host-keys = [\"SHA256:…\"]")]
    EnforceWithoutKeys,
    /// `host-key-policy = "enforce"` on a service whose health check scans no host keys.
    #[error("\"enforce\" needs host-key scans: health.expect must be an SSH banner")]
    EnforceWithoutScans,
    /// Two backends of one service share a name.
    #[error("{backend:?} appears twice in service {service:?}")]
    DuplicateBackend {
        /// The backend's name.
        backend: String,
        /// The service's name.
        service: String,
    },
    /// A backend of another address family than its VIP.
    #[error(
        "{address} and the VIP {vip} are of different families; backends must match the VIP's"
    )]
    BackendFamily {
        /// The backend's address.
        address: IpAddr,
        /// The service's VIP.
        vip: IpAddr,
    },
    /// `encap` on a service that is not in `tunnel` mode.
    #[error("encap applies to mode = \"tunnel\" only; this service's mode is {0:?}")]
    EncapWithoutTunnel(&'static str),
    /// `tunnel-mtu` outside the accepted range.
    #[error("expected a tunnel MTU from {lo} to {hi} bytes")]
    TunnelMtu {
        /// Smallest accepted value.
        lo: u16,
        /// Largest accepted value.
        hi: u16,
    },
    /// A `dsr` or `tunnel` backend on another port than the service's.
    #[error(
        "{backend_port}: in {mode} mode the backend answers on the service port ({service_port}); \
         the balancer does not rewrite ports"
    )]
    DsrPort {
        /// The service's mode.
        mode: &'static str,
        /// The backend's port.
        backend_port: u16,
        /// The service's port.
        service_port: u16,
    },
    /// Two backends of one service share address and port.
    #[error("{address} port {port} appears twice")]
    DuplicateBackendEndpoint {
        /// The address.
        address: IpAddr,
        /// The port.
        port: u16,
    },
    /// A backend weight above the maximum.
    #[error("must be 0-{max} (0 drains)")]
    Weight {
        /// Largest accepted.
        max: u32,
    },
    /// More allow/deny entries than the data plane has room for.
    #[error("{count} entries; at most {max} over all services")]
    TooManyAclEntries {
        /// Entries in this service.
        count: usize,
        /// The data plane's limit.
        max: u32,
    },
    /// An allow/deny entry that is not a prefix (the prefix parser's message).
    #[error("{0}")]
    Cidr(String),
    /// An allow/deny prefix of another family than the VIP.
    #[error(
        "{cidr} and the VIP {vip} are of different families; no client of this service can match it"
    )]
    AclFamily {
        /// The prefix.
        cidr: Cidr,
        /// The service's VIP.
        vip: IpAddr,
    },
    /// A prefix in both lists or twice in one.
    #[error("{0} is listed twice (in allow or deny); each prefix once")]
    DuplicateCidr(Cidr),
    /// `limit.rate` is not a rate.
    #[error("{0:?}: expected new connections per time, like \"10/s\", \"30/m\" or \"500/h\"")]
    Rate(String),
    /// A health-check interval or timeout that is not a duration in range.
    #[error("{0:?}: expected a duration between \"10ms\" and \"1h\", like \"250ms\" or \"2s\"")]
    CheckDuration(String),
    /// `health.host-key-interval` that is not a duration in range.
    #[error("{0:?}: expected a duration between \"1s\" and \"1d\"")]
    HostKeyInterval(String),
    /// `health.expect` that is not short ASCII.
    #[error("must be ASCII, at most 64 characters (\"\" = TCP connect only)")]
    Expect,
    /// Two `[[announce.neighbor]]` with one address.
    #[error("{0} is already a neighbor")]
    DuplicateNeighbor(IpAddr),
    /// `[[announce.neighbor]]` without `announce.local-as`.
    #[error("neighbors are declared, so local-as (this balancer's AS number) is required")]
    NeighborsNeedLocalAs,
    /// `announce.bfd-interval` that is not a duration in range.
    #[error("{0:?}: expected a duration between \"10ms\" and \"10s\", like \"100ms\"")]
    BfdInterval(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_listed_like_prose() {
        let e = |choices| UnknownChoice { given: "x".into(), choices }.to_string();
        assert_eq!(e(&["a"]), r#""x": expected "a""#);
        assert_eq!(e(&["a", "b"]), r#""x": expected "a" or "b""#);
        assert_eq!(e(&["a", "b", "c"]), r#""x": expected "a", "b" or "c""#);
    }
}
