//! `[announce]`: whether and how this balancer announces its VIPs to the upstream routers (BGP
//! through the local BIRD 2), with the model, its defaults and its validation in one room.
//!
//! The agent does not speak BGP itself: it writes a BIRD include file and asks BIRD to reload
//! (see [`crate::announce`]). The neighbours, AS numbers and BFD timers here are what that
//! include file needs to describe the BGP sessions.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use super::{
    error::{ConfigError, Problem, UnknownChoice},
    units::parse_duration,
    validate::Ctx,
};

config_enum! {
    /// How VIPs are announced (`announce.mode`).
    pub enum AnnounceMode {
        /// Not at all: the VIPs are reachable however the operator routes them (default).
        #[default]
        None => "none",
        /// By BGP through the local BIRD 2, while the balancer is healthy.
        Bgp => "bgp",
    }
}

/// `[announce]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    /// `mode`.
    pub mode: AnnounceMode,
    /// `min-backends`: usable backends a service needs for its VIP to be announced.
    pub min_backends: u32,
    /// `local-as`: this balancer's AS number (required with `mode = "bgp"` and neighbours).
    pub local_as: Option<u32>,
    /// `router-id`: BIRD's router id, written into the include file when set (leave it out when
    /// the operator's `bird.conf` sets its own).
    pub router_id: Option<Ipv4Addr>,
    /// `[[announce.neighbor]]`: the BGP sessions the include file declares. Empty: the
    /// operator's `bird.conf` declares them and exports the routes of protocol `sshlb_vips`.
    pub neighbors: Vec<Neighbor>,
    /// `bfd`, `bfd-interval`, `bfd-multiplier`.
    pub bfd: Bfd,
    /// `bird-socket`: BIRD's control socket (`birdc -s`).
    pub bird_socket: String,
    /// `include-file`: the file the agent writes and the operator's `bird.conf` includes.
    pub include_file: String,
}

impl Announce {
    /// Default `min-backends`.
    pub const DEFAULT_MIN_BACKENDS: u32 = 1;
    /// Default `bird-socket`: Debian's `bird2`.
    pub const DEFAULT_BIRD_SOCKET: &'static str = "/run/bird/bird.ctl";
    /// Default `include-file`.
    pub const DEFAULT_INCLUDE_FILE: &'static str = "/etc/bird/sshlb.conf";
}

impl Default for Announce {
    fn default() -> Self {
        Self {
            mode: AnnounceMode::default(),
            min_backends: Self::DEFAULT_MIN_BACKENDS,
            local_as: None,
            router_id: None,
            neighbors: Vec::new(),
            bfd: Bfd::default(),
            bird_socket: Self::DEFAULT_BIRD_SOCKET.to_owned(),
            include_file: Self::DEFAULT_INCLUDE_FILE.to_owned(),
        }
    }
}

/// `[[announce.neighbor]]`: one BGP peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbor {
    /// `address`.
    pub address: IpAddr,
    /// `as`: the peer's AS number.
    pub remote_as: u32,
}

/// BFD on the BGP sessions: how fast the router notices this balancer is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bfd {
    /// `bfd`: on or off.
    pub enabled: bool,
    /// `bfd-interval`: BFD's transmit and receive interval.
    pub interval: Duration,
    /// `bfd-multiplier`: missed packets that declare the peer down.
    pub multiplier: u32,
}

impl Default for Bfd {
    fn default() -> Self {
        Self { enabled: true, interval: Duration::from_millis(100), multiplier: 3 }
    }
}

/// `[announce]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawAnnounce {
    mode: Option<Spanned<String>>,
    min_backends: Option<Spanned<u32>>,
    local_as: Option<Spanned<u32>>,
    router_id: Option<Spanned<String>>,
    #[serde(default)]
    neighbor: Vec<RawNeighbor>,
    bfd: Option<bool>,
    bfd_interval: Option<Spanned<String>>,
    bfd_multiplier: Option<Spanned<u32>>,
    bird_socket: Option<String>,
    include_file: Option<String>,
}

/// `[[announce.neighbor]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawNeighbor {
    address: Spanned<String>,
    #[serde(rename = "as")]
    remote_as: Spanned<u32>,
}

/// Validates `[announce]` (absent: announcing is off).
pub(super) fn validate_announce(
    ctx: &Ctx<'_>,
    raw: Option<RawAnnounce>,
) -> Result<Announce, ConfigError> {
    let defaults = Announce::default();
    let Some(raw) = raw else { return Ok(defaults) };
    let mode = ctx.choice(raw.mode.as_ref(), "announce.mode".to_owned())?;
    let min_backends = match raw.min_backends {
        None => defaults.min_backends,
        Some(n) if (1..=1024).contains(n.get_ref()) => *n.get_ref(),
        Some(n) => {
            return Err(ctx.err(
                n.span(),
                "announce.min-backends",
                Problem::OutOfRange { min: 1, max: 1024 },
            ));
        }
    };
    let asn = |v: &Spanned<u32>, field: String| {
        if *v.get_ref() == 0 {
            Err(ctx.err(v.span(), field, Problem::OutOfRange { min: 1, max: u64::from(u32::MAX) }))
        } else {
            Ok(*v.get_ref())
        }
    };
    let local_as = raw.local_as.as_ref().map(|v| asn(v, "announce.local-as".into())).transpose()?;
    let router_id = match &raw.router_id {
        None => None,
        Some(s) => Some(s.get_ref().parse().map_err(|_| {
            ctx.err(s.span(), "announce.router-id", Problem::NotIpv4(s.get_ref().clone()))
        })?),
    };
    let mut neighbors = Vec::with_capacity(raw.neighbor.len());
    let mut seen = HashSet::new();
    for (i, n) in raw.neighbor.iter().enumerate() {
        let field = format!("announce.neighbor[{i}].address");
        let address: IpAddr = n.address.get_ref().parse().map_err(|_| {
            ctx.err(n.address.span(), &field, Problem::NotAnAddress(n.address.get_ref().clone()))
        })?;
        if !seen.insert(address) {
            return Err(ctx.err(n.address.span(), field, Problem::DuplicateNeighbor(address)));
        }
        let remote_as = asn(&n.remote_as, format!("announce.neighbor[{i}].as"))?;
        neighbors.push(Neighbor { address, remote_as });
    }
    if let (Some(first), None) = (raw.neighbor.first(), local_as) {
        return Err(ctx.err(
            first.address.span(),
            "announce.local-as",
            Problem::NeighborsNeedLocalAs,
        ));
    }
    let interval = match &raw.bfd_interval {
        None => defaults.bfd.interval,
        Some(s) => parse_duration(s.get_ref())
            .filter(|d| (Duration::from_millis(10)..=Duration::from_secs(10)).contains(d))
            .ok_or_else(|| {
                ctx.err(
                    s.span(),
                    "announce.bfd-interval",
                    Problem::BfdInterval(s.get_ref().clone()),
                )
            })?,
    };
    let multiplier = match raw.bfd_multiplier {
        None => defaults.bfd.multiplier,
        Some(n) if (1..=255).contains(n.get_ref()) => *n.get_ref(),
        Some(n) => {
            return Err(ctx.err(
                n.span(),
                "announce.bfd-multiplier",
                Problem::OutOfRange { min: 1, max: 255 },
            ));
        }
    };
    Ok(Announce {
        mode,
        min_backends,
        local_as,
        router_id,
        neighbors,
        bfd: Bfd { enabled: raw.bfd.unwrap_or(defaults.bfd.enabled), interval, multiplier },
        bird_socket: raw.bird_socket.unwrap_or(defaults.bird_socket),
        include_file: raw.include_file.unwrap_or(defaults.include_file),
    })
}
