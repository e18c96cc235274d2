//! The control socket: the running agent's runtime API, and its client.
//!
//! Protocol: a unix stream socket (mode 0600, root only); the client writes one JSON request on
//! one line, the agent answers with one JSON reply on one line and closes. Requests that change
//! backends (`set-weight`, `drain`, `enable`, `disable`, `switch`) edit the agent's in-memory
//! configuration and go through the same re-plan as a reload, so they take effect atomically
//! (one ring flip) and touch no established flow. They are not written back to the file: the
//! next reload returns to what the file says (as HAProxy's runtime API does).
//!
//! `status --json` prints [`Status`]: a stable schema for scripts (fields are only ever added).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::config::{BackendState, Config};

/// Default control socket path (also `agent.control`'s default).
pub const DEFAULT_SOCKET: &str = crate::config::Agent::DEFAULT_CONTROL;

/// Largest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A request to the running agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Services, backends, health, weights, flows, traffic.
    Status,
    /// Set a backend's weight (0 drains it).
    SetWeight {
        /// Service name.
        service: String,
        /// Backend name.
        backend: String,
        /// New weight.
        weight: u32,
    },
    /// Stop sending new flows to a backend; established flows continue.
    Drain {
        /// Service name.
        service: String,
        /// Backend name.
        backend: String,
    },
    /// Put a drained or disabled backend back (state `active`).
    Enable {
        /// Service name.
        service: String,
        /// Backend name.
        backend: String,
    },
    /// Take a backend out of service (state `disabled`); established flows continue.
    Disable {
        /// Service name.
        service: String,
        /// Backend name.
        backend: String,
    },
    /// Blue-green: every backend of `group` active, every other backend of the service
    /// drained, in one step.
    Switch {
        /// Service name.
        service: String,
        /// The group that takes all new flows.
        group: String,
    },
    /// Re-read the configuration file (as SIGHUP does).
    Reload {
        /// Also end established flows whose client the new allow/deny lists refuse (by
        /// default list changes only apply to new connections).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        kill_established: bool,
    },
}

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// What the agent did, for people (e.g. how many flows `--kill-established` ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Reply {
    /// Success without data.
    pub fn done() -> Self {
        Self { ok: true, error: None, status: None, note: None }
    }

    /// Failure with a reason.
    pub fn failed(error: impl Into<String>) -> Self {
        Self { ok: false, error: Some(error.into()), status: None, note: None }
    }
}

/// `status --json`: the documented schema.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Interface the data plane is attached to.
    pub interface: String,
    /// One entry per configured service, in file order.
    pub services: Vec<ServiceStatus>,
}

/// One service in [`Status`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// VIP.
    pub vip: String,
    /// Port.
    pub port: u16,
    /// `"nat"` or `"dsr"`.
    pub mode: String,
    /// `"flow"` or `"source"`.
    pub affinity: String,
    /// Live flows in the connection table.
    pub active_flows: u64,
    /// Flows started since the data plane was attached.
    pub new_flows: u64,
    /// Packets forwarded (both directions for full NAT).
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Backends, in file order.
    pub backends: Vec<BackendStatus>,
    /// Allow list in force (CIDRs); empty: everyone not denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Deny list in force (CIDRs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Per-source new-connection limit, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitStatus>,
    /// The most-refused source prefixes (at most 10, most refused first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limited: Vec<LimitedPrefix>,
    /// `"warn"` or `"enforce"`.
    #[serde(default)]
    pub host_key_policy: String,
    /// Backends whose host keys do not match now.
    #[serde(default)]
    pub host_key_mismatches: u64,
}

/// A service's per-source limit in [`ServiceStatus`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitStatus {
    /// New connections per second per prefix, sustained.
    pub per_second: f64,
    /// Connections a quiet prefix may open at once.
    pub burst: u32,
    /// IPv4 prefix length sharing one bucket.
    pub ipv4_prefix: u8,
    /// IPv6 prefix length sharing one bucket.
    pub ipv6_prefix: u8,
}

/// A source prefix the limiter refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitedPrefix {
    /// `addr/len`.
    pub prefix: String,
    /// SYNs refused since its bucket was created.
    pub refused: u64,
}

/// One backend in [`ServiceStatus`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// Name.
    pub name: String,
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// `"up"`, `"down"` or `"unknown"`.
    pub health: String,
    /// `"active"`, `"drain"` or `"disabled"`.
    pub state: String,
    /// Weight in force.
    pub weight: u32,
    /// Blue-green group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Whether new flows can reach it now (active, weight > 0, not down).
    pub in_ring: bool,
    /// Health state changes since the agent started.
    #[serde(default)]
    pub health_changes: u64,
    /// Live flows in the connection table.
    pub active_flows: u64,
    /// Sessions still open (handshaking or established, no FIN or RST seen): what
    /// `drain --wait` waits for.
    #[serde(default)]
    pub live_sessions: u64,
    /// Flows started.
    pub new_flows: u64,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Host keys from the last successful scan, sorted by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_keys: Vec<crate::hostkeys::HostKey>,
    /// `"match"`, `"mismatch"` or `"unknown"` (not scanned yet, or not an SSH service).
    #[serde(default)]
    pub host_key_check: String,
    /// Why the keys do not match, or why the last scan failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_problem: Option<String>,
}

/// Applies a backend-changing request to `config` (sans-IO; the caller re-plans).
pub fn edit(config: &mut Config, request: &Request) -> Result<(), String> {
    let find = |config: &Config, service: &str| -> Result<usize, String> {
        config
            .services
            .iter()
            .position(|s| s.name == service)
            .ok_or_else(|| format!("no service named {service:?}"))
    };
    match request {
        Request::SetWeight { service, backend, weight } => {
            if *weight > crate::config::MAX_WEIGHT {
                return Err(format!("weight {weight}: must be 0-{}", crate::config::MAX_WEIGHT));
            }
            let s = find(config, service)?;
            backend_mut(config, s, backend)?.weight = *weight;
        }
        Request::Drain { service, backend } => {
            let s = find(config, service)?;
            backend_mut(config, s, backend)?.state = BackendState::Drain;
        }
        Request::Enable { service, backend } => {
            let s = find(config, service)?;
            backend_mut(config, s, backend)?.state = BackendState::Active;
        }
        Request::Disable { service, backend } => {
            let s = find(config, service)?;
            backend_mut(config, s, backend)?.state = BackendState::Disabled;
        }
        Request::Switch { service, group } => {
            let s = find(config, service)?;
            let backends = &mut config.services[s].backends;
            if !backends.iter().any(|b| b.group.as_deref() == Some(group.as_str())) {
                return Err(format!("service {service:?} has no backend in group {group:?}"));
            }
            for b in backends.iter_mut() {
                b.state = if b.group.as_deref() == Some(group.as_str()) {
                    BackendState::Active
                } else {
                    BackendState::Drain
                };
            }
        }
        Request::Status | Request::Reload { .. } => {}
    }
    Ok(())
}

fn backend_mut<'a>(
    config: &'a mut Config,
    service: usize,
    backend: &str,
) -> Result<&'a mut crate::config::Backend, String> {
    let name = config.services[service].name.clone();
    config.services[service]
        .backends
        .iter_mut()
        .find(|b| b.name == backend)
        .ok_or_else(|| format!("service {name:?} has no backend named {backend:?}"))
}

/// Splits `SERVICE/BACKEND`.
pub fn parse_target(target: &str) -> Result<(String, String), String> {
    match target.split_once('/') {
        Some((s, b)) if !s.is_empty() && !b.is_empty() => Ok((s.to_owned(), b.to_owned())),
        _ => Err(format!("{target:?}: expected SERVICE/BACKEND")),
    }
}

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent listening.
    #[error(
        "cannot reach the agent at {path}: {source} (is `sshlb-agent up` running? see --control)"
    )]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("talking to the agent failed: {0}")]
    Io(#[from] std::io::Error),
    /// The reply was not understood.
    #[error("the agent's reply is not valid: {0}")]
    Reply(#[from] serde_json::Error),
}

/// Sends `request` to the agent listening at `socket` and returns its reply.
pub fn call(socket: &Path, request: &Request) -> Result<Reply, ClientError> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|source| ClientError::Connect { path: socket.display().to_string(), source })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    Ok(serde_json::from_str(&reply)?)
}

/// Live sessions of `service`/`backend` in `status`, if the status names that backend.
pub fn live_sessions(status: &Status, service: &str, backend: &str) -> Option<u64> {
    let s = status.services.iter().find(|s| s.name == service)?;
    s.backends.iter().find(|b| b.name == backend).map(|b| b.live_sessions)
}

/// How `drain --wait` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainEnd {
    /// No live session left.
    Drained,
    /// The timeout passed with this many sessions still open.
    TimedOut(u64),
}

/// After a drain: asks the agent for the backend's live sessions every `every` until they reach
/// zero or `timeout` passes, calling `report` with each new count (the first one included).
pub fn wait_drained(
    socket: &Path,
    (service, backend): (&str, &str),
    timeout: Duration,
    every: Duration,
    mut report: impl FnMut(u64),
) -> Result<DrainEnd, String> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        let reply = call(socket, &Request::Status).map_err(|e| e.to_string())?;
        let status = reply
            .status
            .ok_or_else(|| reply.error.unwrap_or_else(|| "the agent sent no status".to_owned()))?;
        let live = live_sessions(&status, service, backend).ok_or_else(|| {
            format!("{service}/{backend} is no longer configured (reloaded meanwhile?)")
        })?;
        if last != Some(live) {
            report(live);
            last = Some(live);
        }
        if live == 0 {
            return Ok(DrainEnd::Drained);
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return Ok(DrainEnd::TimedOut(live));
        }
        std::thread::sleep(every.min(deadline - now));
    }
}

/// Renders a status for people.
pub fn render(status: &Status) -> String {
    let mut out = format!("interface {}\n", status.interface);
    for s in &status.services {
        out.push_str(&format!(
            "service {} {}:{} {} affinity={} flows={} new={} packets={} bytes={}\n",
            s.name,
            s.vip,
            s.port,
            s.mode,
            s.affinity,
            s.active_flows,
            s.new_flows,
            s.packets,
            s.bytes
        ));
        for b in &s.backends {
            out.push_str(&format!(
                "  {:<12} {:>22} health={:<7} state={:<8} weight={:<5} ring={:<5} flows={} live={} new={} packets={} bytes={}{}\n",
                b.name,
                format!("{}:{}", b.address, b.port),
                b.health,
                b.state,
                b.weight,
                if b.in_ring { "yes" } else { "no" },
                b.active_flows,
                b.live_sessions,
                b.new_flows,
                b.packets,
                b.bytes,
                b.group.as_ref().map_or(String::new(), |g| format!(" group={g}")),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const CFG: &str = r#"
[[service]]
name = "git"
vip = "198.18.0.100"
port = 22
[[service.backend]]
name = "blue1"
address = "198.18.0.11"
group = "blue"
[[service.backend]]
name = "green1"
address = "198.18.0.12"
group = "green"
state = "drain"
"#;

    #[test]
    fn requests_round_trip_as_one_json_line_each() {
        let requests = [
            Request::Status,
            Request::SetWeight { service: "git".into(), backend: "b1".into(), weight: 5 },
            Request::Switch { service: "git".into(), group: "green".into() },
            Request::Reload { kill_established: false },
            Request::Reload { kill_established: true },
        ];
        for r in requests {
            let text = serde_json::to_string(&r).expect("serialize");
            assert!(!text.contains('\n'));
            assert_eq!(serde_json::from_str::<Request>(&text).expect("parse"), r);
        }
        assert_eq!(
            serde_json::to_string(&Request::Drain { service: "git".into(), backend: "b1".into() })
                .expect("serialize"),
            r#"{"cmd":"drain","service":"git","backend":"b1"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        // Older clients' plain reload still parses, and means "keep established flows".
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"reload"}"#).expect("parse"),
            Request::Reload { kill_established: false }
        );
    }

    #[test]
    fn edits_change_only_their_target() {
        let mut cfg = parse("t.toml", CFG).expect("valid");
        let before = cfg.clone();
        edit(
            &mut cfg,
            &Request::SetWeight { service: "git".into(), backend: "blue1".into(), weight: 7 },
        )
        .expect("ok");
        assert_eq!(cfg.services[0].backends[0].weight, 7);
        assert_eq!(cfg.services[0].backends[1], before.services[0].backends[1]);
        edit(&mut cfg, &Request::Switch { service: "git".into(), group: "green".into() })
            .expect("ok");
        assert_eq!(cfg.services[0].backends[0].state, BackendState::Drain);
        assert_eq!(cfg.services[0].backends[1].state, BackendState::Active);
    }

    #[test]
    fn edits_name_what_is_missing() {
        let mut cfg = parse("t.toml", CFG).expect("valid");
        let err = edit(&mut cfg, &Request::Drain { service: "svn".into(), backend: "x".into() })
            .expect_err("no such service");
        assert!(err.contains("\"svn\""), "{err}");
        let err = edit(&mut cfg, &Request::Enable { service: "git".into(), backend: "b9".into() })
            .expect_err("no such backend");
        assert!(err.contains("\"b9\""), "{err}");
        let err = edit(&mut cfg, &Request::Switch { service: "git".into(), group: "red".into() })
            .expect_err("no such group");
        assert!(err.contains("\"red\""), "{err}");
        let err = edit(
            &mut cfg,
            &Request::SetWeight { service: "git".into(), backend: "blue1".into(), weight: 1 << 20 },
        )
        .expect_err("too heavy");
        assert!(err.contains("0-65535"), "{err}");
        assert_eq!(cfg, parse("t.toml", CFG).expect("valid"), "failed edits change nothing");
    }

    #[test]
    fn targets_parse() {
        assert_eq!(parse_target("git/b1").expect("ok"), ("git".into(), "b1".into()));
        for bad in ["git", "/b1", "git/", ""] {
            assert!(parse_target(bad).is_err(), "{bad:?}");
        }
    }
}
