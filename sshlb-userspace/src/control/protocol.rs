//! The control protocol: one JSON [`Request`] line in, one JSON [`Reply`] line out ([`encode`],
//! [`decode_request`], [`decode_reply`]: the bytes of one line, sans-IO); the `status --json`
//! schema ([`Status`]); and how backend-changing requests edit a configuration ([`edit`],
//! sans-IO).

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::config::{BackendState, Config};

/// Default control socket path (also `agent.control`'s default).
pub const DEFAULT_SOCKET: &str = crate::config::Agent::DEFAULT_CONTROL;

/// Largest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Why the bytes of one line are not a request (or a reply).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A request longer than [`MAX_REQUEST`] (the server reads no more).
    #[error("longer than {MAX_REQUEST} bytes")]
    TooLong,
    /// Not UTF-8 text.
    #[error("not UTF-8: {0}")]
    NotUtf8(#[source] std::str::Utf8Error),
    /// Not one JSON object of the protocol (syntax, unknown command or field, wrong type).
    #[error("{0}")]
    Json(#[source] serde_json::Error),
}

/// One message as its line on the socket: compact JSON and a `\n`.
pub fn encode<T: Serialize>(message: &T) -> Result<String, serde_json::Error> {
    let mut line = serde_json::to_string(message)?;
    line.push('\n');
    Ok(line)
}

/// A request from the bytes of one line as read from the socket (its `\n` or `\r\n` optional).
pub fn decode_request(line: &[u8]) -> Result<Request, DecodeError> {
    if line.len() > MAX_REQUEST {
        return Err(DecodeError::TooLong);
    }
    decode(line)
}

/// A reply from the bytes of one line as read from the socket (its `\n` or `\r\n` optional).
/// No length limit: a status of many services is longer than any request.
pub fn decode_reply(line: &[u8]) -> Result<Reply, DecodeError> {
    decode(line)
}

fn decode<T: DeserializeOwned>(line: &[u8]) -> Result<T, DecodeError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(DecodeError::NotUtf8)?;
    serde_json::from_str(text).map_err(DecodeError::Json)
}

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
    /// `maintenance on|off`: withdraw this balancer's VIPs from the routers (flows that still
    /// arrive are forwarded), or announce them again.
    Maintenance {
        /// On (leave) or off (return).
        on: bool,
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
    /// `maintenance on`: the VIPs are withdrawn; flows that still arrive are forwarded.
    #[serde(default)]
    pub maintenance: bool,
    /// Flows in the connection table (what maintenance waits on).
    #[serde(default)]
    pub active_flows: u64,
    /// BIRD's last refusal of the announcements (`None`: fine, or `mode = "none"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bird_error: Option<String>,
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
    /// Whether its VIP is announced to the routers, and why.
    #[serde(default)]
    pub announce: AnnounceStatus,
}

/// A service's announcement in [`ServiceStatus`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    /// Announced to the routers now.
    pub announced: bool,
    /// Why (or why not), e.g. `"maintenance on"`, `"0 usable backend(s), min-backends is 1"`.
    pub reason: String,
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

/// Why a backend-changing request was refused (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// No service has that name.
    #[error("no service named {0:?}")]
    NoService(String),
    /// The service has no backend of that name.
    #[error("service {service:?} has no backend named {backend:?}")]
    NoBackend {
        /// Service name.
        service: String,
        /// Backend name.
        backend: String,
    },
    /// The service has no backend in that group.
    #[error("service {service:?} has no backend in group {group:?}")]
    NoGroup {
        /// Service name.
        service: String,
        /// Group name.
        group: String,
    },
    /// A weight above [`crate::config::MAX_WEIGHT`].
    #[error("weight {0}: must be 0-{max}", max = crate::config::MAX_WEIGHT)]
    Weight(u32),
}

/// Applies a backend-changing request to `config` (sans-IO; the caller re-plans).
pub fn edit(config: &mut Config, request: &Request) -> Result<(), EditError> {
    let find = |config: &Config, service: &str| -> Result<usize, EditError> {
        config
            .services
            .iter()
            .position(|s| s.name == service)
            .ok_or_else(|| EditError::NoService(service.to_owned()))
    };
    match request {
        Request::SetWeight { service, backend, weight } => {
            if *weight > crate::config::MAX_WEIGHT {
                return Err(EditError::Weight(*weight));
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
                return Err(EditError::NoGroup { service: service.clone(), group: group.clone() });
            }
            for b in backends.iter_mut() {
                b.state = if b.group.as_deref() == Some(group.as_str()) {
                    BackendState::Active
                } else {
                    BackendState::Drain
                };
            }
        }
        Request::Status | Request::Reload { .. } | Request::Maintenance { .. } => {}
    }
    Ok(())
}

fn backend_mut<'a>(
    config: &'a mut Config,
    service: usize,
    backend: &str,
) -> Result<&'a mut crate::config::Backend, EditError> {
    let name = config.services[service].name.clone();
    config.services[service]
        .backends
        .iter_mut()
        .find(|b| b.name == backend)
        .ok_or_else(|| EditError::NoBackend { service: name, backend: backend.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use sshlb_tests::config::{BackendBuilder, ConfigBuilder, ServiceBuilder};

    /// git with a blue and a draining green backend.
    fn config() -> Config {
        let git = ServiceBuilder::new("git", "198.18.0.100", 22)
            .backend(BackendBuilder::new("blue1", "198.18.0.11").group("blue"))
            .backend(BackendBuilder::new("green1", "198.18.0.12").group("green").state("drain"));
        parse("t.toml", &ConfigBuilder::new().service(git).to_toml()).expect("valid")
    }

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
    fn lines_decode_to_typed_errors() {
        let request = Request::Drain { service: "git".into(), backend: "b1".into() };
        let line = encode(&request).expect("encode");
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "{line:?}");
        assert_eq!(decode_request(line.as_bytes()).expect("decode"), request);
        let crlf = line.replace('\n', "\r\n");
        assert_eq!(decode_request(crlf.as_bytes()).expect("CRLF line"), request);
        assert!(matches!(decode_request(b"\xff\n"), Err(DecodeError::NotUtf8(_))));
        assert!(matches!(decode_request(b""), Err(DecodeError::Json(_))));
        let long = vec![b' '; MAX_REQUEST + 1];
        assert!(matches!(decode_request(&long), Err(DecodeError::TooLong)));
        let reply = Reply::failed("no");
        let line = encode(&reply).expect("encode");
        assert_eq!(decode_reply(line.as_bytes()).expect("decode"), reply);
    }

    #[test]
    fn floats_read_back_exactly() {
        // Read back as 1.0086398161248256e149 without serde_json's float_roundtrip.
        let limit =
            LimitStatus { per_second: 1.008_639_816_124_825_7e149, burst: 1, ..Default::default() };
        let service = ServiceStatus { limit: Some(limit), ..Default::default() };
        let status =
            Status { interface: "eth0".into(), services: vec![service], ..Status::default() };
        let reply = Reply { status: Some(status), ..Reply::done() };
        let line = encode(&reply).expect("encode");
        assert_eq!(decode_reply(line.as_bytes()).expect("decode"), reply, "{line}");
    }

    #[test]
    fn edits_change_only_their_target() {
        let mut cfg = config();
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
        let mut cfg = config();
        let err = edit(&mut cfg, &Request::Drain { service: "svn".into(), backend: "x".into() })
            .expect_err("no such service");
        assert!(err.to_string().contains("\"svn\""), "{err}");
        let err = edit(&mut cfg, &Request::Enable { service: "git".into(), backend: "b9".into() })
            .expect_err("no such backend");
        assert!(err.to_string().contains("\"b9\""), "{err}");
        let err = edit(&mut cfg, &Request::Switch { service: "git".into(), group: "red".into() })
            .expect_err("no such group");
        assert!(err.to_string().contains("\"red\""), "{err}");
        let err = edit(
            &mut cfg,
            &Request::SetWeight { service: "git".into(), backend: "blue1".into(), weight: 1 << 20 },
        )
        .expect_err("too heavy");
        assert!(err.to_string().contains("0-65535"), "{err}");
        assert_eq!(cfg, config(), "failed edits change nothing");
    }
}
