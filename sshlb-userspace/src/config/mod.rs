//! The configuration file (TOML): parsing, validation, and the typed model the agent runs on.
//!
//! Sans-IO: [`parse`] takes the file's name and text. Every error names the file, the line and
//! the field, and says what is allowed.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Range,
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    maglev::{is_prime, DEFAULT_RING_SIZE},
    protect::{parse_rate, Acl, Cidr, RateLimit},
};

/// An error in a configuration file, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct ConfigError {
    /// File name as given.
    pub file: String,
    /// 1-based line of the offending value (0 when not locatable).
    pub line: usize,
    /// Dotted path of the field, e.g. `service[0].backend[1].address`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// Forwarding mode of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Full NAT: backends need no changes; the balancer rewrites both addresses.
    Nat,
    /// Direct server return: backends own the VIP on loopback and answer clients directly.
    Dsr,
}

/// What a new flow is hashed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity {
    /// The 5-tuple: connections spread independently.
    Flow,
    /// The client address: one client's connections land together.
    Source,
}

/// Operator-set state of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendState {
    /// In the ring (if healthy and weight > 0).
    Active,
    /// Out of the ring for new flows; established flows continue.
    Drain,
    /// Out of the ring; established flows continue until they end.
    Disabled,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `[agent]`.
    pub agent: Agent,
    /// `[[service]]`, in file order (their index is their service id).
    pub services: Vec<Service>,
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

/// What happens to a backend whose host keys differ from the service's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Log, count and show it; keep it in the ring.
    Warn,
    /// Keep it out of the ring until it presents the configured keys.
    Enforce,
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

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(250),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            expect: "SSH-2.0-".to_owned(),
            host_key_interval: Duration::from_secs(60),
        }
    }
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

// ---- raw, as written in the file -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFile {
    agent: Option<RawAgent>,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAgent {
    metrics: Option<String>,
    control: Option<String>,
    nat_v4: Option<Spanned<String>>,
    nat_v6: Option<Spanned<String>>,
    nat_ports: Option<Spanned<String>>,
    max_flows: Option<Spanned<u32>>,
    syn_timeout: Option<Spanned<String>>,
    established_timeout: Option<Spanned<String>>,
    fin_timeout: Option<Spanned<String>>,
    closed_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawService {
    name: Spanned<String>,
    vip: Spanned<String>,
    port: Spanned<u16>,
    mode: Option<Spanned<String>>,
    affinity: Option<Spanned<String>>,
    ring_size: Option<Spanned<u32>>,
    health: Option<RawHealth>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    limit: Option<RawLimit>,
    #[serde(default)]
    host_keys: Vec<Spanned<String>>,
    host_key_policy: Option<Spanned<String>>,
    #[serde(default)]
    backend: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLimit {
    rate: Spanned<String>,
    burst: Option<Spanned<u32>>,
    ipv4_prefix: Option<Spanned<u8>>,
    ipv6_prefix: Option<Spanned<u8>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHealth {
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
    expect: Option<Spanned<String>>,
    host_key_interval: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBackend {
    name: Spanned<String>,
    address: Spanned<String>,
    port: Option<Spanned<u16>>,
    weight: Option<Spanned<u32>>,
    state: Option<Spanned<String>>,
    group: Option<String>,
}

// ---- validation ------------------------------------------------------------------------------

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn line(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].bytes().filter(|&b| b == b'\n').count() + 1
    }

    fn err(
        &self,
        span: Range<usize>,
        field: impl fmt::Display,
        message: impl fmt::Display,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: self.line(span),
            field: field.to_string(),
            message: message.to_string(),
        }
    }
}

/// Parses and validates a configuration file's text. `file` is only used in messages.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let ctx = Ctx { file, text };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_owned();
        let field = field_of_toml_error(&message);
        ctx.err(span, field, message)
    })?;
    let agent = validate_agent(&ctx, raw.agent)?;
    if raw.service.len() > sshlb_common::MAX_SERVICES as usize {
        return Err(ctx.err(
            0..0,
            "service",
            format!(
                "{} services; at most {} are supported",
                raw.service.len(),
                sshlb_common::MAX_SERVICES
            ),
        ));
    }
    let mut services = Vec::with_capacity(raw.service.len());
    let mut names = HashSet::new();
    let mut endpoints = HashSet::new();
    for (i, raw) in raw.service.into_iter().enumerate() {
        let service = validate_service(&ctx, i, raw, &mut names, &mut endpoints)?;
        services.push(service);
    }
    Ok(Config { agent, services })
}

fn field_of_toml_error(message: &str) -> String {
    // toml names unknown/missing keys in backticks: "unknown field `wieght`, expected ...".
    message.split('`').nth(1).map_or_else(|| "syntax".to_owned(), str::to_owned)
}

fn validate_agent(ctx: &Ctx<'_>, raw: Option<RawAgent>) -> Result<Agent, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Agent {
            metrics: "127.0.0.1:9734".into(),
            control: "/run/sshlb/sshlb.sock".into(),
            nat_v4: None,
            nat_v6: None,
            nat_ports: (10_000, 32_767),
            max_flows: sshlb_common::DEFAULT_MAX_FLOWS,
            timeouts: Timeouts::default(),
        });
    };
    let nat_v4 = match raw.nat_v4 {
        None => None,
        Some(s) => Some(s.get_ref().parse::<Ipv4Addr>().map_err(|_| {
            ctx.err(s.span(), "agent.nat-v4", format!("{:?} is not an IPv4 address", s.get_ref()))
        })?),
    };
    let nat_v6 = match raw.nat_v6 {
        None => None,
        Some(s) => Some(s.get_ref().parse::<Ipv6Addr>().map_err(|_| {
            ctx.err(s.span(), "agent.nat-v6", format!("{:?} is not an IPv6 address", s.get_ref()))
        })?),
    };
    let nat_ports = match raw.nat_ports {
        None => (10_000, 32_767),
        Some(s) => parse_port_range(s.get_ref()).ok_or_else(|| {
            ctx.err(
                s.span(),
                "agent.nat-ports",
                format!(
                    "{:?}: expected \"FIRST-LAST\" with 1024 <= FIRST <= LAST <= 65535",
                    s.get_ref()
                ),
            )
        })?,
    };
    let max_flows = match raw.max_flows {
        None => sshlb_common::DEFAULT_MAX_FLOWS,
        Some(n) if (1024..=16_777_216).contains(n.get_ref()) => *n.get_ref(),
        Some(n) => {
            return Err(ctx.err(n.span(), "agent.max-flows", "must be between 1024 and 16777216"));
        }
    };
    let defaults = Timeouts::default();
    let timeout = |v: Option<Spanned<String>>, name: &str, default: Duration| match v {
        None => Ok(default),
        Some(s) => parse_duration(s.get_ref()).ok_or_else(|| {
            ctx.err(
                s.span(),
                format!("agent.{name}"),
                format!(
                    "{:?}: expected a duration like \"250ms\", \"30s\", \"5m\", \"2h\", \"5d\"",
                    s.get_ref()
                ),
            )
        }),
    };
    let timeouts = Timeouts {
        syn: timeout(raw.syn_timeout, "syn-timeout", defaults.syn)?,
        established: timeout(raw.established_timeout, "established-timeout", defaults.established)?,
        fin: timeout(raw.fin_timeout, "fin-timeout", defaults.fin)?,
        closed: timeout(raw.closed_timeout, "closed-timeout", defaults.closed)?,
    };
    Ok(Agent {
        metrics: raw.metrics.unwrap_or_else(|| "127.0.0.1:9734".into()),
        control: raw.control.unwrap_or_else(|| "/run/sshlb/sshlb.sock".into()),
        nat_v4,
        nat_v6,
        nat_ports,
        max_flows,
        timeouts,
    })
}

fn validate_service(
    ctx: &Ctx<'_>,
    i: usize,
    raw: RawService,
    names: &mut HashSet<String>,
    endpoints: &mut HashSet<(IpAddr, u16)>,
) -> Result<Service, ConfigError> {
    let at = |f: &str| format!("service[{i}].{f}");
    let name = raw.name.get_ref().clone();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(ctx.err(
            raw.name.span(),
            at("name"),
            format!("{name:?}: use letters, digits, '-', '_' or '.'"),
        ));
    }
    if !names.insert(name.clone()) {
        return Err(ctx.err(
            raw.name.span(),
            at("name"),
            format!("{name:?} is used by another service"),
        ));
    }
    let vip: IpAddr = raw.vip.get_ref().parse().map_err(|_| {
        ctx.err(
            raw.vip.span(),
            at("vip"),
            format!("{:?} is not an IPv4 or IPv6 address", raw.vip.get_ref()),
        )
    })?;
    let port = *raw.port.get_ref();
    if port == 0 {
        return Err(ctx.err(raw.port.span(), at("port"), "must be 1-65535"));
    }
    if !endpoints.insert((vip, port)) {
        return Err(ctx.err(
            raw.port.span(),
            at("port"),
            format!("{vip} port {port} is already a service"),
        ));
    }
    let mode = match raw.mode.as_ref().map(|m| m.get_ref().as_str()) {
        None | Some("nat") => Mode::Nat,
        Some("dsr") => Mode::Dsr,
        Some(other) => {
            let span = raw.mode.as_ref().map_or(0..0, Spanned::span);
            return Err(ctx.err(
                span,
                at("mode"),
                format!("{other:?}: expected \"nat\" or \"dsr\""),
            ));
        }
    };
    let affinity = match raw.affinity.as_ref().map(|a| a.get_ref().as_str()) {
        None | Some("flow") => Affinity::Flow,
        Some("source") => Affinity::Source,
        Some(other) => {
            let span = raw.affinity.as_ref().map_or(0..0, Spanned::span);
            return Err(ctx.err(
                span,
                at("affinity"),
                format!("{other:?}: expected \"flow\" or \"source\""),
            ));
        }
    };
    let ring_size = match raw.ring_size {
        None => DEFAULT_RING_SIZE,
        Some(n) => {
            let size = *n.get_ref();
            if !is_prime(size) || !(3..=sshlb_common::RING_STRIDE).contains(&size) {
                return Err(ctx.err(
                    n.span(),
                    at("ring-size"),
                    format!(
                        "{size}: must be a prime between 3 and {} (e.g. 65537, 32749, 4093)",
                        sshlb_common::RING_STRIDE
                    ),
                ));
            }
            size
        }
    };
    let health = validate_health(ctx, i, raw.health)?;
    let acl = validate_acl(ctx, i, vip, &raw.allow, &raw.deny)?;
    let limit = raw.limit.map(|l| validate_limit(ctx, i, l)).transpose()?;
    let host_keys = raw
        .host_keys
        .iter()
        .enumerate()
        .map(|(k, fp)| {
            if is_sha256_fingerprint(fp.get_ref()) {
                Ok(fp.get_ref().clone())
            } else {
                Err(ctx.err(
                    fp.span(),
                    at(&format!("host-keys[{k}]")),
                    format!(
                        "{:?}: expected a SHA256 fingerprint as `ssh-keygen -lf KEY.pub` prints \
                         it, \"SHA256:\" and 43 base64 characters",
                        fp.get_ref()
                    ),
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let host_key_policy = match raw.host_key_policy.as_ref().map(|p| p.get_ref().as_str()) {
        None | Some("warn") => HostKeyPolicy::Warn,
        Some("enforce") => HostKeyPolicy::Enforce,
        Some(other) => {
            let span = raw.host_key_policy.as_ref().map_or(0..0, Spanned::span);
            return Err(ctx.err(
                span,
                at("host-key-policy"),
                format!("{other:?}: expected \"warn\" or \"enforce\""),
            ));
        }
    };
    if host_key_policy == HostKeyPolicy::Enforce {
        let span = raw.host_key_policy.as_ref().map_or(0..0, Spanned::span);
        if host_keys.is_empty() {
            return Err(ctx.err(
                span,
                at("host-key-policy"),
                "\"enforce\" needs the expected fingerprints in host-keys = [\"SHA256:…\"]",
            ));
        }
        if health.host_key_interval.is_zero() {
            return Err(ctx.err(
                span,
                at("host-key-policy"),
                "\"enforce\" needs host-key scans: health.expect must be an SSH banner",
            ));
        }
    }
    let mut backends = Vec::with_capacity(raw.backend.len());
    let mut backend_names = HashSet::new();
    let mut backend_endpoints = HashSet::new();
    for (j, b) in raw.backend.into_iter().enumerate() {
        let at = |f: &str| format!("service[{i}].backend[{j}].{f}");
        let bname = b.name.get_ref().clone();
        if bname.is_empty()
            || !bname.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ctx.err(
                b.name.span(),
                at("name"),
                format!("{bname:?}: use letters, digits, '-', '_' or '.'"),
            ));
        }
        if !backend_names.insert(bname.clone()) {
            return Err(ctx.err(
                b.name.span(),
                at("name"),
                format!("{bname:?} appears twice in service {name:?}"),
            ));
        }
        let address: IpAddr = b.address.get_ref().parse().map_err(|_| {
            ctx.err(
                b.address.span(),
                at("address"),
                format!("{:?} is not an IPv4 or IPv6 address", b.address.get_ref()),
            )
        })?;
        if address.is_ipv4() != vip.is_ipv4() {
            return Err(ctx.err(
                b.address.span(),
                at("address"),
                format!("{address} and the VIP {vip} are of different families; backends must match the VIP's"),
            ));
        }
        let (bport, port_span) = b.port.as_ref().map_or((22, 0..0), |p| (*p.get_ref(), p.span()));
        if bport == 0 {
            return Err(ctx.err(port_span, at("port"), "must be 1-65535"));
        }
        if mode == Mode::Dsr && bport != port {
            return Err(ctx.err(
                port_span,
                at("port"),
                format!("{bport}: in dsr mode the backend answers on the service port ({port}); only the MAC changes"),
            ));
        }
        if !backend_endpoints.insert((address, bport)) {
            return Err(ctx.err(
                b.address.span(),
                at("address"),
                format!("{address} port {bport} appears twice"),
            ));
        }
        let weight = match b.weight {
            None => 100,
            Some(w) if *w.get_ref() <= MAX_WEIGHT => *w.get_ref(),
            Some(w) => {
                return Err(ctx.err(
                    w.span(),
                    at("weight"),
                    format!("must be 0-{MAX_WEIGHT} (0 drains)"),
                ))
            }
        };
        let state = match b.state.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("active") => BackendState::Active,
            Some("drain") => BackendState::Drain,
            Some("disabled") => BackendState::Disabled,
            Some(other) => {
                let span = b.state.as_ref().map_or(0..0, Spanned::span);
                return Err(ctx.err(
                    span,
                    at("state"),
                    format!("{other:?}: expected \"active\", \"drain\" or \"disabled\""),
                ));
            }
        };
        backends.push(Backend { name: bname, address, port: bport, weight, state, group: b.group });
    }
    Ok(Service {
        name,
        vip,
        port,
        mode,
        affinity,
        ring_size,
        health,
        acl,
        limit,
        host_keys,
        host_key_policy,
        backends,
    })
}

/// `SHA256:` and 43 characters of unpadded base64 (a 32-byte digest).
fn is_sha256_fingerprint(text: &str) -> bool {
    text.strip_prefix("SHA256:").is_some_and(|b64| {
        b64.len() == 43 && b64.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    })
}

fn validate_acl(
    ctx: &Ctx<'_>,
    i: usize,
    vip: IpAddr,
    allow: &[Spanned<String>],
    deny: &[Spanned<String>],
) -> Result<Acl, ConfigError> {
    let total = allow.len() + deny.len();
    if total > sshlb_common::MAX_ACL_ENTRIES as usize {
        return Err(ctx.err(
            allow.first().or(deny.first()).map_or(0..0, Spanned::span),
            format!("service[{i}].allow"),
            format!("{total} entries; at most {} over all services", sshlb_common::MAX_ACL_ENTRIES),
        ));
    }
    let mut acl = Acl::default();
    for (list_name, list) in [("allow", allow), ("deny", deny)] {
        for (k, text) in list.iter().enumerate() {
            let field = format!("service[{i}].{list_name}[{k}]");
            let cidr: Cidr = text.get_ref().parse().map_err(|e| ctx.err(text.span(), &field, e))?;
            if cidr.addr.is_ipv4() != vip.is_ipv4() {
                return Err(ctx.err(
                    text.span(),
                    &field,
                    format!("{cidr} and the VIP {vip} are of different families; no client of this service can match it"),
                ));
            }
            if acl.allow.contains(&cidr) || acl.deny.contains(&cidr) {
                return Err(ctx.err(
                    text.span(),
                    &field,
                    format!("{cidr} is listed twice (in allow or deny); each prefix once"),
                ));
            }
            if list_name == "allow" {
                acl.allow.push(cidr);
            } else {
                acl.deny.push(cidr);
            }
        }
    }
    Ok(acl)
}

fn validate_limit(ctx: &Ctx<'_>, i: usize, raw: RawLimit) -> Result<RateLimit, ConfigError> {
    let at = |f: &str| format!("service[{i}].limit.{f}");
    let interval = parse_rate(raw.rate.get_ref()).ok_or_else(|| {
        ctx.err(
            raw.rate.span(),
            at("rate"),
            format!(
                "{:?}: expected new connections per time, like \"10/s\", \"30/m\" or \"500/h\"",
                raw.rate.get_ref()
            ),
        )
    })?;
    let burst = match raw.burst {
        None => 10,
        Some(b) if (1..=100_000).contains(b.get_ref()) => *b.get_ref(),
        Some(b) => return Err(ctx.err(b.span(), at("burst"), "must be 1-100000")),
    };
    let prefix = |v: Option<Spanned<u8>>, name: &str, default: u8, max: u8| match v {
        None => Ok(default),
        Some(p) if *p.get_ref() <= max => Ok(*p.get_ref()),
        Some(p) => Err(ctx.err(p.span(), at(name), format!("must be 0-{max}"))),
    };
    Ok(RateLimit {
        interval,
        burst,
        ipv4_prefix: prefix(raw.ipv4_prefix, "ipv4-prefix", 32, 32)?,
        ipv6_prefix: prefix(raw.ipv6_prefix, "ipv6-prefix", 64, 128)?,
    })
}

fn validate_health(
    ctx: &Ctx<'_>,
    i: usize,
    raw: Option<RawHealth>,
) -> Result<HealthCheck, ConfigError> {
    let defaults = HealthCheck::default();
    let Some(raw) = raw else { return Ok(defaults) };
    let at = |f: &str| format!("service[{i}].health.{f}");
    let duration = |v: Option<Spanned<String>>, name: &str, default: Duration| {
        match v {
        None => Ok(default),
        Some(s) => match parse_duration(s.get_ref()) {
            Some(d) if d >= Duration::from_millis(10) && d <= Duration::from_secs(3600) => Ok(d),
            _ => Err(ctx.err(
                s.span(),
                at(name),
                format!("{:?}: expected a duration between \"10ms\" and \"1h\", like \"250ms\" or \"2s\"", s.get_ref()),
            )),
        },
    }
    };
    let interval = duration(raw.interval, "interval", defaults.interval)?;
    let timeout = duration(raw.timeout, "timeout", defaults.timeout)?;
    let count = |v: Option<Spanned<u32>>, name: &str, default: u32| match v {
        None => Ok(default),
        Some(n) if (1..=100).contains(n.get_ref()) => Ok(*n.get_ref()),
        Some(n) => Err(ctx.err(n.span(), at(name), "must be 1-100")),
    };
    let rise = count(raw.rise, "rise", defaults.rise)?;
    let fall = count(raw.fall, "fall", defaults.fall)?;
    let host_key_interval = match raw.host_key_interval {
        None => defaults.host_key_interval,
        Some(s) => match parse_duration(s.get_ref()) {
            Some(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(86_400) => d,
            _ => {
                return Err(ctx.err(
                    s.span(),
                    at("host-key-interval"),
                    format!("{:?}: expected a duration between \"1s\" and \"1d\"", s.get_ref()),
                ))
            }
        },
    };
    let expect = match raw.expect {
        None => defaults.expect,
        Some(e) if e.get_ref().len() <= 64 && e.get_ref().is_ascii() => e.get_ref().clone(),
        Some(e) => {
            return Err(ctx.err(
                e.span(),
                at("expect"),
                "must be ASCII, at most 64 characters (\"\" = TCP connect only)",
            ));
        }
    };
    // Host keys are only scanned on SSH services (the banner check says so).
    let host_key_interval =
        if expect.starts_with("SSH-") { host_key_interval } else { Duration::ZERO };
    Ok(HealthCheck { interval, timeout, rise, fall, expect, host_key_interval })
}

/// `"FIRST-LAST"` → `(FIRST, LAST)` with `1024 <= FIRST <= LAST`.
fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
    (a >= 1024 && a <= b).then_some((a, b))
}

/// `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"5d"` → a duration.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(ms)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[agent]
metrics = "127.0.0.1:9734"
nat-ports = "20000-29999"

[[service]]
name = "git"
vip = "198.18.0.100"
port = 22
mode = "nat"
affinity = "flow"

[service.health]
interval = "250ms"

[[service.backend]]
name = "b1"
address = "198.18.1.11"
port = 22
weight = 100
state = "active"
group = "blue"

[[service.backend]]
name = "b2"
address = "198.18.1.12"
weight = 0

[[service]]
name = "bastion6"
vip = "fd00:1::100"
port = 2222
mode = "dsr"
affinity = "source"
ring-size = 4093

[[service.backend]]
name = "j1"
address = "fd00:1::21"
port = 2222
state = "drain"
"#;

    #[test]
    fn parses_the_documented_example() {
        let cfg = parse("sshlb.toml", GOOD).expect("valid");
        assert_eq!(cfg.agent.nat_ports, (20000, 29999));
        assert_eq!(cfg.services.len(), 2);
        let git = &cfg.services[0];
        assert_eq!((git.mode, git.affinity, git.ring_size), (Mode::Nat, Affinity::Flow, 65537));
        assert_eq!(git.backends[1].port, 22, "port defaults to 22");
        assert_eq!(git.backends[1].weight, 0);
        assert_eq!(git.backends[0].group.as_deref(), Some("blue"));
        let b = &cfg.services[1];
        assert_eq!((b.mode, b.affinity, b.ring_size), (Mode::Dsr, Affinity::Source, 4093));
        assert_eq!(b.backends[0].state, BackendState::Drain);
        assert_eq!(b.backends[0].ring_key(), "[fd00:1::21]:2222");
        assert_eq!(git.health.interval, Duration::from_millis(250));
        assert_eq!((git.health.rise, git.health.fall), (2, 3), "defaults");
        assert_eq!(git.health.expect, "SSH-2.0-");
    }

    #[test]
    fn health_section_is_validated() {
        let cfg = parse(
            "h.toml",
            &GOOD.replace(
                "interval = \"250ms\"",
                "interval = \"2s\"\ntimeout = \"500ms\"\nrise = 1\nfall = 5\nexpect = \"\"",
            ),
        )
        .expect("valid");
        let h = &cfg.services[0].health;
        assert_eq!(
            (h.interval, h.timeout, h.rise, h.fall),
            (Duration::from_secs(2), Duration::from_millis(500), 1, 5)
        );
        assert_eq!(h.expect, "");
        let err = parse("h.toml", &GOOD.replace("interval = \"250ms\"", "interval = \"forever\""))
            .expect_err("bad");
        assert_eq!((err.line, err.field.as_str()), (14, "service[0].health.interval"), "{err}");
        let err =
            parse("h.toml", &GOOD.replace("interval = \"250ms\"", "rise = 0")).expect_err("bad");
        assert!(err.to_string().contains("service[0].health.rise: must be 1-100"), "{err}");
        let err = parse("h.toml", &GOOD.replace("interval = \"250ms\"", "intervall = \"1s\""))
            .expect_err("bad");
        assert!(err.to_string().contains("intervall"), "{err}");
    }

    fn error_for(edit: (&str, &str)) -> ConfigError {
        assert!(GOOD.contains(edit.0), "test edit {:?} does not apply", edit.0);
        parse("sshlb.toml", &GOOD.replacen(edit.0, edit.1, 1)).expect_err("must be refused")
    }

    #[test]
    fn every_error_names_file_line_and_field() {
        let cases: &[((&str, &str), usize, &str, &str)] = &[
            (("weight = 100", "wieght = 100"), 20, "wieght", "unknown field"),
            (
                ("address = \"198.18.1.11\"", "address = \"198.18.1.300\""),
                18,
                "service[0].backend[0].address",
                "not an IPv4 or IPv6",
            ),
            (
                ("address = \"198.18.1.12\"", "address = \"fd00::12\""),
                26,
                "service[0].backend[1].address",
                "different families",
            ),
            (
                ("mode = \"nat\"", "mode = \"ipip\""),
                10,
                "service[0].mode",
                "expected \"nat\" or \"dsr\"",
            ),
            (
                ("affinity = \"flow\"", "affinity = \"sticky\""),
                11,
                "service[0].affinity",
                "\"flow\" or \"source\"",
            ),
            (
                ("state = \"active\"", "state = \"up\""),
                21,
                "service[0].backend[0].state",
                "\"active\", \"drain\"",
            ),
            (("weight = 100", "weight = 70000"), 20, "service[0].backend[0].weight", "0-65535"),
            (
                ("ring-size = 4093", "ring-size = 4096"),
                35,
                "service[1].ring-size",
                "must be a prime",
            ),
            (
                ("port = 2222\nstate", "port = 22\nstate"),
                40,
                "service[1].backend[0].port",
                "dsr mode",
            ),
            (
                ("name = \"bastion6\"", "name = \"git\""),
                30,
                "service[1].name",
                "used by another service",
            ),
            (
                ("nat-ports = \"20000-29999\"", "nat-ports = \"29999-20000\""),
                4,
                "agent.nat-ports",
                "FIRST-LAST",
            ),
            (("name = \"b2\"", "name = \"b1\""), 25, "service[0].backend[1].name", "appears twice"),
            (("port = 22\nmode", "port = 0\nmode"), 9, "service[0].port", "1-65535"),
            (
                ("vip = \"198.18.0.100\"", "vip = \"vip.example\""),
                8,
                "service[0].vip",
                "not an IPv4 or IPv6",
            ),
        ];
        for (edit, line, field, words) in cases {
            let err = error_for(*edit);
            assert_eq!(err.file, "sshlb.toml");
            assert_eq!((err.line, err.field.as_str()), (*line, *field), "{err}");
            assert!(err.to_string().contains(words), "{err} should say {words:?}");
        }
    }

    const PROTECTED: &str = r#"
[[service]]
name = "bastion"
vip = "198.18.0.100"
port = 22
allow = ["198.18.8.0/24", "198.18.9.7"]
deny = ["198.18.8.66/32"]
host-keys = ["SHA256:okrPfI6GQnKScC7PX6NR+WtCReGzkhWkTzBcJ7DQmOI"]
host-key-policy = "enforce"

[service.limit]
rate = "30/m"
burst = 5
ipv4-prefix = 24

[service.health]
host-key-interval = "5m"

[[service.backend]]
name = "j1"
address = "198.18.1.21"
"#;

    #[test]
    fn protection_settings_parse() {
        let cfg = parse("p.toml", PROTECTED).expect("valid");
        let s = &cfg.services[0];
        assert_eq!(s.acl.allow.len(), 2);
        assert_eq!(s.acl.allow[1].to_string(), "198.18.9.7/32");
        assert!(!s.acl.allows("198.18.8.66".parse().expect("ip")));
        let limit = s.limit.expect("limit");
        assert_eq!((limit.interval, limit.burst), (Duration::from_secs(2), 5));
        assert_eq!((limit.ipv4_prefix, limit.ipv6_prefix), (24, 64), "IPv6 defaults to /64");
        assert_eq!(s.host_key_policy, HostKeyPolicy::Enforce);
        assert_eq!(s.health.host_key_interval, Duration::from_secs(300));
        let plain = parse("g.toml", GOOD).expect("valid");
        assert!(plain.services[0].acl.is_empty() && plain.services[0].limit.is_none());
        assert_eq!(plain.services[0].host_key_policy, HostKeyPolicy::Warn);
        assert_eq!(plain.services[0].health.host_key_interval, Duration::from_secs(60));
    }

    #[test]
    fn protection_errors_are_located_and_explained() {
        let cases: &[(&str, &str, usize, &str, &str)] = &[
            (
                "\"198.18.8.0/24\"",
                "\"198.18.8.1/24\"",
                6,
                "service[0].allow[0]",
                "did you mean \"198.18.8.0/24\"",
            ),
            ("\"198.18.8.66/32\"", "\"fd00::66\"", 7, "service[0].deny[0]", "different families"),
            ("\"198.18.8.66/32\"", "\"198.18.9.7\"", 7, "service[0].deny[0]", "listed twice"),
            ("rate = \"30/m\"", "rate = \"30\"", 12, "service[0].limit.rate", "\"10/s\""),
            ("burst = 5", "burst = 0", 13, "service[0].limit.burst", "1-100000"),
            ("ipv4-prefix = 24", "ipv4-prefix = 40", 14, "service[0].limit.ipv4-prefix", "0-32"),
            ("SHA256:okrP", "MD5:okrP", 8, "service[0].host-keys[0]", "ssh-keygen"),
            (
                "\"enforce\"",
                "\"strict\"",
                9,
                "service[0].host-key-policy",
                "\"warn\" or \"enforce\"",
            ),
            (
                "host-keys = [\"SHA256:okrPfI6GQnKScC7PX6NR+WtCReGzkhWkTzBcJ7DQmOI\"]",
                "",
                9,
                "service[0].host-key-policy",
                "needs the expected fingerprints",
            ),
        ];
        for (from, to, line, field, words) in cases {
            assert!(PROTECTED.contains(from), "edit {from:?} does not apply");
            let err = parse("p.toml", &PROTECTED.replacen(from, to, 1)).expect_err("refused");
            assert_eq!((err.line, err.field.as_str()), (*line, *field), "{err}");
            assert!(err.to_string().contains(words), "{err} should say {words:?}");
        }
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = parse("x.toml", "[[service]]\nname = \"a\"\nvip = \n").expect_err("syntax");
        assert_eq!(err.line, 3, "{err}");
        assert!(err.to_string().starts_with("x.toml:3: "), "{err}");
    }

    #[test]
    fn missing_required_field_is_named() {
        let err = parse("x.toml", "[[service]]\nname = \"a\"\nport = 22\n").expect_err("no vip");
        assert!(err.to_string().contains("vip"), "{err}");
    }

    #[test]
    fn durations_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5d"), Some(Duration::from_secs(432_000)));
        for bad in ["", "5", "ms", "5 parsecs", "-1s", "99999999999999999999s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
