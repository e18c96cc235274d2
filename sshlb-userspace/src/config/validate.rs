//! From the file as written ([`super::raw`]) to the typed model ([`super::model`]), refusing
//! anything invalid with a [`ConfigError`] that names the file, line and field.

use std::{collections::HashSet, fmt, net::IpAddr, ops::Range, str::FromStr, time::Duration};

use toml::Spanned;

use super::{
    error::{ConfigError, Problem, UnknownChoice},
    model::{
        limit_defaults, Agent, Backend, Config, HealthCheck, HostKeyPolicy, Mode, Service,
        Timeouts, MAX_WEIGHT,
    },
    raw::{RawAgent, RawBackend, RawFile, RawHealth, RawLimit, RawService},
    units::{parse_duration, parse_port_range, parse_rate},
};
use crate::{
    maglev::{is_prime, DEFAULT_RING_SIZE},
    protection::{Acl, Cidr, RateLimit},
};

/// The file being validated: its name (for messages) and text (to turn spans into lines).
pub(super) struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn line(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].bytes().filter(|&b| b == b'\n').count() + 1
    }

    pub(super) fn err(
        &self,
        span: Range<usize>,
        field: impl fmt::Display,
        problem: impl Into<Problem>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: self.line(span),
            field: field.to_string(),
            problem: problem.into(),
        }
    }

    /// An enum field: its default when absent, else the value its spelling names.
    pub(super) fn choice<T>(
        &self,
        raw: Option<&Spanned<String>>,
        field: String,
    ) -> Result<T, ConfigError>
    where
        T: FromStr<Err = UnknownChoice> + Default,
    {
        match raw {
            None => Ok(T::default()),
            Some(s) => s.get_ref().parse().map_err(|e: UnknownChoice| self.err(s.span(), field, e)),
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
        ctx.err(span, field, Problem::Toml(message))
    })?;
    let agent = validate_agent(&ctx, raw.agent)?;
    if raw.service.len() > sshlb_common::MAX_SERVICES as usize {
        return Err(ctx.err(
            0..0,
            "service",
            Problem::TooManyServices { count: raw.service.len(), max: sshlb_common::MAX_SERVICES },
        ));
    }
    let mut services = Vec::with_capacity(raw.service.len());
    let mut names = HashSet::new();
    let mut endpoints = HashSet::new();
    for (i, raw) in raw.service.into_iter().enumerate() {
        let service = validate_service(&ctx, i, raw, &mut names, &mut endpoints)?;
        services.push(service);
    }
    let announce = super::announce::validate_announce(&ctx, raw.announce)?;
    Ok(Config { agent, services, announce })
}

fn field_of_toml_error(message: &str) -> String {
    // toml names unknown/missing keys in backticks: "unknown field `wieght`, expected ...".
    message.split('`').nth(1).map_or_else(|| "syntax".to_owned(), str::to_owned)
}

fn validate_agent(ctx: &Ctx<'_>, raw: Option<RawAgent>) -> Result<Agent, ConfigError> {
    let defaults = Agent::default();
    let Some(raw) = raw else { return Ok(defaults) };
    let nat_v4 = match raw.nat_v4 {
        None => defaults.nat_v4,
        Some(s) => Some(s.get_ref().parse().map_err(|_| {
            ctx.err(s.span(), "agent.nat-v4", Problem::NotIpv4(s.get_ref().clone()))
        })?),
    };
    let nat_v6 = match raw.nat_v6 {
        None => defaults.nat_v6,
        Some(s) => Some(s.get_ref().parse().map_err(|_| {
            ctx.err(s.span(), "agent.nat-v6", Problem::NotIpv6(s.get_ref().clone()))
        })?),
    };
    let nat_ports = match raw.nat_ports {
        None => defaults.nat_ports,
        Some(s) => parse_port_range(s.get_ref()).ok_or_else(|| {
            ctx.err(s.span(), "agent.nat-ports", Problem::PortRange(s.get_ref().clone()))
        })?,
    };
    let (min_flows, max_flows) = (1024, 16_777_216);
    let max_flows = match raw.max_flows {
        None => defaults.max_flows,
        Some(n) if (min_flows..=max_flows).contains(n.get_ref()) => *n.get_ref(),
        Some(n) => {
            return Err(ctx.err(
                n.span(),
                "agent.max-flows",
                Problem::MaxFlows { min: min_flows, max: max_flows },
            ));
        }
    };
    let timeout = |v: Option<Spanned<String>>, name: &str, default: Duration| match v {
        None => Ok(default),
        Some(s) => parse_duration(s.get_ref()).ok_or_else(|| {
            ctx.err(s.span(), format!("agent.{name}"), Problem::Duration(s.get_ref().clone()))
        }),
    };
    let d = defaults.timeouts;
    let timeouts = Timeouts {
        syn: timeout(raw.syn_timeout, "syn-timeout", d.syn)?,
        established: timeout(raw.established_timeout, "established-timeout", d.established)?,
        fin: timeout(raw.fin_timeout, "fin-timeout", d.fin)?,
        closed: timeout(raw.closed_timeout, "closed-timeout", d.closed)?,
    };
    let gue_port = match raw.gue_port {
        None => defaults.gue_port,
        Some(p) => validate_port(*p.get_ref(), p.span(), ctx, "agent.gue-port".to_owned())?,
    };
    let (lo, hi) = Agent::TUNNEL_MTU_RANGE;
    let tunnel_mtu = match raw.tunnel_mtu {
        None => None,
        Some(m) if (lo..=hi).contains(m.get_ref()) => Some(*m.get_ref()),
        Some(m) => {
            return Err(ctx.err(m.span(), "agent.tunnel-mtu", Problem::TunnelMtu { lo, hi }));
        }
    };
    Ok(Agent {
        gue_port,
        tunnel_mtu,
        metrics: raw.metrics.unwrap_or(defaults.metrics),
        control: raw.control.unwrap_or(defaults.control),
        nat_v4,
        nat_v6,
        nat_ports,
        max_flows,
        timeouts,
    })
}

/// A service or backend name: letters, digits, `-`, `_`, `.`; not empty.
fn validate_name(
    ctx: &Ctx<'_>,
    raw: &Spanned<String>,
    field: String,
) -> Result<String, ConfigError> {
    let name = raw.get_ref();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(ctx.err(raw.span(), field, Problem::Name(name.clone())));
    }
    Ok(name.clone())
}

/// A VIP or backend address.
fn validate_address(
    ctx: &Ctx<'_>,
    raw: &Spanned<String>,
    field: String,
) -> Result<IpAddr, ConfigError> {
    raw.get_ref()
        .parse()
        .map_err(|_| ctx.err(raw.span(), field, Problem::NotAnAddress(raw.get_ref().clone())))
}

/// A port, 1-65535.
fn validate_port(
    port: u16,
    span: Range<usize>,
    ctx: &Ctx<'_>,
    field: String,
) -> Result<u16, ConfigError> {
    if port == 0 {
        return Err(ctx.err(span, field, Problem::OutOfRange { min: 1, max: 65_535 }));
    }
    Ok(port)
}

fn validate_service(
    ctx: &Ctx<'_>,
    i: usize,
    raw: RawService,
    names: &mut HashSet<String>,
    endpoints: &mut HashSet<(IpAddr, u16)>,
) -> Result<Service, ConfigError> {
    let at = |f: &str| format!("service[{i}].{f}");
    let name = validate_name(ctx, &raw.name, at("name"))?;
    if !names.insert(name.clone()) {
        return Err(ctx.err(raw.name.span(), at("name"), Problem::DuplicateService(name)));
    }
    let vip = validate_address(ctx, &raw.vip, at("vip"))?;
    let port = validate_port(*raw.port.get_ref(), raw.port.span(), ctx, at("port"))?;
    if !endpoints.insert((vip, port)) {
        return Err(ctx.err(raw.port.span(), at("port"), Problem::DuplicateEndpoint { vip, port }));
    }
    let mode: Mode = ctx.choice(raw.mode.as_ref(), at("mode"))?;
    let encap = ctx.choice(raw.encap.as_ref(), at("encap"))?;
    if let (Some(e), false) = (raw.encap.as_ref(), mode == Mode::Tunnel) {
        return Err(ctx.err(e.span(), at("encap"), Problem::EncapWithoutTunnel(mode.as_str())));
    }
    let affinity = ctx.choice(raw.affinity.as_ref(), at("affinity"))?;
    let ring_size = match raw.ring_size {
        None => DEFAULT_RING_SIZE,
        Some(n) => {
            let size = *n.get_ref();
            let max = sshlb_common::RING_STRIDE;
            if !is_prime(size) || !(3..=max).contains(&size) {
                return Err(ctx.err(n.span(), at("ring-size"), Problem::RingSize { size, max }));
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
                    Problem::Fingerprint(fp.get_ref().clone()),
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let host_key_policy = ctx.choice(raw.host_key_policy.as_ref(), at("host-key-policy"))?;
    if host_key_policy == HostKeyPolicy::Enforce {
        let span = raw.host_key_policy.as_ref().map_or(0..0, Spanned::span);
        if host_keys.is_empty() {
            return Err(ctx.err(span, at("host-key-policy"), Problem::EnforceWithoutKeys));
        }
        if health.host_key_interval.is_zero() {
            return Err(ctx.err(span, at("host-key-policy"), Problem::EnforceWithoutScans));
        }
    }
    let mut backends = Vec::with_capacity(raw.backend.len());
    let mut seen = SeenBackends::default();
    let parent = Parent { name: &name, vip, port, mode };
    for (j, b) in raw.backend.into_iter().enumerate() {
        backends.push(validate_backend(ctx, (i, j), b, &parent, &mut seen)?);
    }
    Ok(Service {
        name,
        vip,
        port,
        mode,
        encap,
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

/// What a backend is checked against: its service's name, VIP, port and mode.
struct Parent<'a> {
    name: &'a str,
    vip: IpAddr,
    port: u16,
    mode: Mode,
}

/// The names and endpoints of a service's backends validated so far (each must be unique).
#[derive(Default)]
struct SeenBackends {
    names: HashSet<String>,
    endpoints: HashSet<(IpAddr, u16)>,
}

/// One `[[service.backend]]`; `(i, j)` are the service's and the backend's indexes.
fn validate_backend(
    ctx: &Ctx<'_>,
    (i, j): (usize, usize),
    b: RawBackend,
    service: &Parent<'_>,
    seen: &mut SeenBackends,
) -> Result<Backend, ConfigError> {
    let at = |f: &str| format!("service[{i}].backend[{j}].{f}");
    let name = validate_name(ctx, &b.name, at("name"))?;
    if !seen.names.insert(name.clone()) {
        return Err(ctx.err(
            b.name.span(),
            at("name"),
            Problem::DuplicateBackend { backend: name, service: service.name.to_owned() },
        ));
    }
    let address = validate_address(ctx, &b.address, at("address"))?;
    let vip = service.vip;
    if address.is_ipv4() != vip.is_ipv4() {
        return Err(ctx.err(
            b.address.span(),
            at("address"),
            Problem::BackendFamily { address, vip },
        ));
    }
    let (port, port_span) =
        b.port.as_ref().map_or((Backend::DEFAULT_PORT, 0..0), |p| (*p.get_ref(), p.span()));
    let port = validate_port(port, port_span.clone(), ctx, at("port"))?;
    if service.mode.is_direct_return() && port != service.port {
        return Err(ctx.err(
            port_span,
            at("port"),
            Problem::DsrPort {
                mode: service.mode.as_str(),
                backend_port: port,
                service_port: service.port,
            },
        ));
    }
    if !seen.endpoints.insert((address, port)) {
        return Err(ctx.err(
            b.address.span(),
            at("address"),
            Problem::DuplicateBackendEndpoint { address, port },
        ));
    }
    let weight = match b.weight {
        None => Backend::DEFAULT_WEIGHT,
        Some(w) if *w.get_ref() <= MAX_WEIGHT => *w.get_ref(),
        Some(w) => {
            return Err(ctx.err(w.span(), at("weight"), Problem::Weight { max: MAX_WEIGHT }))
        }
    };
    let state = ctx.choice(b.state.as_ref(), at("state"))?;
    Ok(Backend { name, address, port, weight, state, group: b.group })
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
            Problem::TooManyAclEntries { count: total, max: sshlb_common::MAX_ACL_ENTRIES },
        ));
    }
    let mut acl = Acl::default();
    for (list_name, list) in [("allow", allow), ("deny", deny)] {
        for (k, text) in list.iter().enumerate() {
            let field = format!("service[{i}].{list_name}[{k}]");
            let cidr: Cidr = text.get_ref().parse().map_err(|e: <Cidr as FromStr>::Err| {
                ctx.err(text.span(), &field, Problem::Cidr(e.clone()))
            })?;
            if cidr.addr.is_ipv4() != vip.is_ipv4() {
                return Err(ctx.err(text.span(), &field, Problem::AclFamily { cidr, vip }));
            }
            if acl.allow.contains(&cidr) || acl.deny.contains(&cidr) {
                return Err(ctx.err(text.span(), &field, Problem::DuplicateCidr(cidr)));
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
        ctx.err(raw.rate.span(), at("rate"), Problem::Rate(raw.rate.get_ref().clone()))
    })?;
    let burst = match raw.burst {
        None => limit_defaults::BURST,
        Some(b) if (1..=100_000).contains(b.get_ref()) => *b.get_ref(),
        Some(b) => {
            return Err(ctx.err(
                b.span(),
                at("burst"),
                Problem::OutOfRange { min: 1, max: 100_000 },
            ))
        }
    };
    let prefix = |v: Option<Spanned<u8>>, name: &str, default: u8, max: u8| match v {
        None => Ok(default),
        Some(p) if *p.get_ref() <= max => Ok(*p.get_ref()),
        Some(p) => {
            Err(ctx.err(p.span(), at(name), Problem::OutOfRange { min: 0, max: u64::from(max) }))
        }
    };
    Ok(RateLimit {
        interval,
        burst,
        ipv4_prefix: prefix(raw.ipv4_prefix, "ipv4-prefix", limit_defaults::IPV4_PREFIX, 32)?,
        ipv6_prefix: prefix(raw.ipv6_prefix, "ipv6-prefix", limit_defaults::IPV6_PREFIX, 128)?,
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
    let duration = |v: Option<Spanned<String>>, name: &str, default: Duration| match v {
        None => Ok(default),
        Some(s) => match parse_duration(s.get_ref()) {
            Some(d) if d >= Duration::from_millis(10) && d <= Duration::from_secs(3600) => Ok(d),
            _ => Err(ctx.err(s.span(), at(name), Problem::CheckDuration(s.get_ref().clone()))),
        },
    };
    let interval = duration(raw.interval, "interval", defaults.interval)?;
    let timeout = duration(raw.timeout, "timeout", defaults.timeout)?;
    let count = |v: Option<Spanned<u32>>, name: &str, default: u32| match v {
        None => Ok(default),
        Some(n) if (1..=100).contains(n.get_ref()) => Ok(*n.get_ref()),
        Some(n) => Err(ctx.err(n.span(), at(name), Problem::OutOfRange { min: 1, max: 100 })),
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
                    Problem::HostKeyInterval(s.get_ref().clone()),
                ))
            }
        },
    };
    let expect = match raw.expect {
        None => defaults.expect,
        Some(e) if e.get_ref().len() <= 64 && e.get_ref().is_ascii() => e.get_ref().clone(),
        Some(e) => return Err(ctx.err(e.span(), at("expect"), Problem::Expect)),
    };
    // Host keys are only scanned on SSH services (the banner check says so).
    let host_key_interval =
        if expect.starts_with("SSH-") { host_key_interval } else { Duration::ZERO };
    Ok(HealthCheck { interval, timeout, rise, fall, expect, host_key_interval })
}
