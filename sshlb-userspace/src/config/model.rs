//! The typed, validated configuration the agent runs on, with every default in one place.
//!
//! Enum fields are declared through `config_enum!`: one table per enum gives each value its
//! spelling, and parsing, error messages ("expected one of …"), status and metrics all read it.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
    time::Duration,
};

use super::error::UnknownChoice;
use crate::protection::{Acl, RateLimit};

/// Declares an enum of the configuration file together with its spelling table: `ALL`,
/// `SPELLINGS`, `as_str`, `Display` and `FromStr` (whose error lists every choice) all come from
/// the one list of `Variant => "spelling"` rows. Mark the default value with `#[default]`.
macro_rules! config_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value with its spelling, in the order error messages list them.
            pub const ALL: &'static [(Self, &'static str)] = &[$((Self::$variant, $text)),+];

            /// Every spelling, in the order of [`Self::ALL`].
            pub const SPELLINGS: &'static [&'static str] = &[$($text),+];

            /// The spelling in the configuration file, `status` and metrics.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownChoice;

            /// The value spelled `text`; the error lists every spelling.
            fn from_str(text: &str) -> Result<Self, UnknownChoice> {
                Self::ALL.iter().find(|(_, s)| *s == text).map(|&(v, _)| v).ok_or_else(|| {
                    UnknownChoice { given: text.to_owned(), choices: Self::SPELLINGS }
                })
            }
        }
    };
}

config_enum! {
    /// Forwarding mode of a service (`mode`).
    pub enum Mode {
        /// Full NAT: backends need no changes; the balancer rewrites both addresses.
        #[default]
        Nat => "nat",
        /// Direct server return: backends own the VIP on loopback and answer clients directly.
        Dsr => "dsr",
        /// Direct server return through a tunnel (`encap`): backends may sit in any subnet;
        /// `sshlb-agent backend up` on each decapsulates.
        Tunnel => "tunnel",
    }
}

impl Mode {
    /// Whether backends answer clients themselves (and so listen on the service port).
    pub const fn is_direct_return(self) -> bool {
        matches!(self, Self::Dsr | Self::Tunnel)
    }
}

config_enum! {
    /// Encapsulation of a `tunnel` service (`encap`).
    pub enum Encap {
        /// IPv4 in IPv4 / IPv6 in IPv6 (protocols 4 and 41): 20 or 40 bytes.
        #[default]
        Ipip => "ipip",
        /// GUE (UDP to `agent.gue-port`, the IP packet right after the UDP header): 28 or 48
        /// bytes; its UDP source port carries the flow's hash for the backends' RSS.
        Gue => "gue",
    }
}

config_enum! {
    /// What a new flow is hashed on (`affinity`).
    pub enum Affinity {
        /// The 5-tuple: connections spread independently.
        #[default]
        Flow => "flow",
        /// The client address: one client's connections land together.
        Source => "source",
    }
}

config_enum! {
    /// Operator-set state of a backend (`state`).
    pub enum BackendState {
        /// In the ring (if healthy and weight > 0).
        #[default]
        Active => "active",
        /// Out of the ring for new flows; established flows continue.
        Drain => "drain",
        /// Out of the ring; established flows continue until they end.
        Disabled => "disabled",
    }
}

config_enum! {
    /// What happens to a backend whose host keys differ from the service's (`host-key-policy`).
    pub enum HostKeyPolicy {
        /// Log, count and show it; keep it in the ring.
        #[default]
        Warn => "warn",
        /// Keep it out of the ring until it presents the configured keys.
        Enforce => "enforce",
    }
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `[agent]`.
    pub agent: Agent,
    /// `[[service]]`, in file order (their index is their service id).
    pub services: Vec<Service>,
    /// `[announce]`.
    pub announce: super::Announce,
}

/// `[agent]`: the balancer itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    /// Prometheus listen address.
    pub metrics: String,
    /// Control socket path.
    pub control: String,
    /// Full-NAT source address towards IPv4 backends (default: the interface's own).
    pub nat_v4: Option<Ipv4Addr>,
    /// Full-NAT source address towards IPv6 backends (default: the interface's own).
    pub nat_v6: Option<Ipv6Addr>,
    /// Full-NAT source-port range (inclusive). Must not overlap the kernel's
    /// `ip_local_port_range` (default 32768–60999), whose ports the host's own connections use.
    pub nat_ports: (u16, u16),
    /// Connection-table size.
    pub max_flows: u32,
    /// Idle timeouts per flow state.
    pub timeouts: Timeouts,
    /// UDP destination port of GUE tunnels.
    pub gue_port: u16,
    /// Largest outer datagram towards tunnel backends (default: the interface's MTU).
    pub tunnel_mtu: Option<u16>,
}

impl Agent {
    /// Default `metrics`: the Prometheus listen address.
    pub const DEFAULT_METRICS: &'static str = "127.0.0.1:9734";
    /// Default `control`: the control socket path (also the CLI's default).
    pub const DEFAULT_CONTROL: &'static str = "/run/sshlb/sshlb.sock";
    /// Default `nat-ports`: below the kernel's default `ip_local_port_range`.
    pub const DEFAULT_NAT_PORTS: (u16, u16) = (10_000, 32_767);
    /// Default `max-flows`.
    pub const DEFAULT_MAX_FLOWS: u32 = sshlb_common::DEFAULT_MAX_FLOWS;
    /// Default `gue-port`.
    pub const DEFAULT_GUE_PORT: u16 = sshlb_common::tunnel::DEFAULT_GUE_PORT;
    /// Accepted `tunnel-mtu` values: IPv6's minimum link MTU up to jumbo frames.
    pub const TUNNEL_MTU_RANGE: (u16, u16) = (sshlb_common::tunnel::MIN_TUNNEL_MTU, 9216);
}

impl Default for Agent {
    fn default() -> Self {
        Self {
            metrics: Self::DEFAULT_METRICS.to_owned(),
            control: Self::DEFAULT_CONTROL.to_owned(),
            nat_v4: None,
            nat_v6: None,
            nat_ports: Self::DEFAULT_NAT_PORTS,
            max_flows: Self::DEFAULT_MAX_FLOWS,
            timeouts: Timeouts::default(),
            gue_port: Self::DEFAULT_GUE_PORT,
            tunnel_mtu: None,
        }
    }
}

/// Idle time after which the agent removes a flow, per TCP state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Handshake not completed.
    pub syn: Duration,
    /// Established. Long by design: an idle SSH session must survive hours of silence.
    pub established: Duration,
    /// FIN seen.
    pub fin: Duration,
    /// RST seen.
    pub closed: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        // nf_conntrack's defaults for SYN_SENT, ESTABLISHED (5 days) and FIN_WAIT; RST: 10 s.
        Self {
            syn: Duration::from_secs(120),
            established: Duration::from_secs(5 * 24 * 3600),
            fin: Duration::from_secs(120),
            closed: Duration::from_secs(10),
        }
    }
}

/// `[[service]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// Unique name.
    pub name: String,
    /// Virtual IP clients connect to.
    pub vip: IpAddr,
    /// Port clients connect to.
    pub port: u16,
    /// Forwarding mode.
    pub mode: Mode,
    /// Encapsulation (`tunnel` mode only).
    pub encap: Encap,
    /// Hash input for new flows.
    pub affinity: Affinity,
    /// Maglev ring size (prime).
    pub ring_size: u32,
    /// `[service.health]`.
    pub health: HealthCheck,
    /// `allow` / `deny`: who may open new connections.
    pub acl: Acl,
    /// `[service.limit]`: new connections per client prefix.
    pub limit: Option<RateLimit>,
    /// `host-keys`: the fingerprints (`SHA256:…`) every backend must present.
    pub host_keys: Vec<String>,
    /// `host-key-policy`: what a backend presenting other keys gets.
    pub host_key_policy: HostKeyPolicy,
    /// `[[service.backend]]`.
    pub backends: Vec<Backend>,
}

/// `[service.health]`: how backends are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time between checks of one backend.
    pub interval: Duration,
    /// Time one check may take (connect, read the identification line, close).
    pub timeout: Duration,
    /// Consecutive passes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// Prefix the backend's identification line must start with; empty = TCP connect only.
    /// `"SSH-2.0-"` also accepts `"SSH-1.99-"` (RFC 4253 §5.1 compatibility servers).
    pub expect: String,
    /// Time between host-key scans of one backend (a full key exchange per key type, so far
    /// rarer than the banner check); zero when `expect` is not an SSH banner.
    pub host_key_interval: Duration,
}

impl HealthCheck {
    /// Default `expect`: an SSH-2 server's identification line.
    pub const DEFAULT_EXPECT: &'static str = "SSH-2.0-";
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(250),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            expect: Self::DEFAULT_EXPECT.to_owned(),
            host_key_interval: Duration::from_secs(60),
        }
    }
}

/// `[service.limit]` defaults for the keys that may be left out (`rate` is required).
pub mod limit_defaults {
    /// Default `burst`: connections a quiet prefix may open at once.
    pub const BURST: u32 = 10;
    /// Default `ipv4-prefix`: each IPv4 address has its own bucket.
    pub const IPV4_PREFIX: u8 = 32;
    /// Default `ipv6-prefix`: a /64 is one customer's LAN or one cloud instance.
    pub const IPV6_PREFIX: u8 = 64;
}

/// `[[service.backend]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    /// Unique within the service.
    pub name: String,
    /// Address (same family as the VIP).
    pub address: IpAddr,
    /// Port (for `dsr`, equal to the service port).
    pub port: u16,
    /// Relative weight; 0 = drain.
    pub weight: u32,
    /// Operator state.
    pub state: BackendState,
    /// Blue-green group.
    pub group: Option<String>,
}

impl Backend {
    /// Default `port`: SSH.
    pub const DEFAULT_PORT: u16 = 22;
    /// Default `weight`.
    pub const DEFAULT_WEIGHT: u32 = 100;

    /// Stable identity used by the Maglev ring ("address:port"), identical on every balancer.
    pub fn ring_key(&self) -> String {
        match self.address {
            IpAddr::V4(a) => format!("{a}:{}", self.port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
        }
    }
}

/// Largest weight accepted (keeps ring arithmetic far from overflow and typos obvious).
pub const MAX_WEIGHT: u32 = 65_535;
