//! The control client: what `sshlb-agent status`, `drain`, `set-weight`, ... use to talk to a
//! running agent, and the human rendering of a status.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::protocol::{decode_reply, encode, Reply, Request, Status};

/// A command-line target that is not `SERVICE/BACKEND`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?}: expected SERVICE/BACKEND")]
pub struct TargetError(pub String);

/// Splits `SERVICE/BACKEND`.
pub fn parse_target(target: &str) -> Result<(String, String), TargetError> {
    match target.split_once('/') {
        Some((s, b)) if !s.is_empty() && !b.is_empty() => Ok((s.to_owned(), b.to_owned())),
        _ => Err(TargetError(target.to_owned())),
    }
}

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent listening.
    #[error("cannot reach the agent at {path} (is `sshlb-agent up` running? see --control)")]
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
    /// The request could not be written as JSON.
    #[error("encoding the request failed: {0}")]
    Encode(#[from] serde_json::Error),
    /// The reply was not understood.
    #[error("the agent's reply is not valid: {0}")]
    Reply(#[from] super::protocol::DecodeError),
}

/// Sends `request` to the agent listening at `socket` and returns its reply.
pub fn call(socket: &Path, request: &Request) -> Result<Reply, ClientError> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|source| ClientError::Connect { path: socket.display().to_string(), source })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(encode(request)?.as_bytes())?;
    let mut reply = Vec::new();
    BufReader::new(stream).read_until(b'\n', &mut reply)?;
    Ok(decode_reply(&reply)?)
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

/// Why `drain --wait` could not follow the backend.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// Asking the agent failed.
    #[error(transparent)]
    Call(#[from] ClientError),
    /// The agent answered without a status (its reason, if it gave one).
    #[error("{0}")]
    NoStatus(String),
    /// The backend is not configured any more.
    #[error("{service}/{backend} is no longer configured (reloaded meanwhile?)")]
    Gone {
        /// Service name.
        service: String,
        /// Backend name.
        backend: String,
    },
}

/// After a drain: asks the agent for the backend's live sessions every `every` until they reach
/// zero or `timeout` passes, calling `report` with each new count (the first one included).
pub fn wait_drained(
    socket: &Path,
    (service, backend): (&str, &str),
    timeout: Duration,
    every: Duration,
    mut report: impl FnMut(u64),
) -> Result<DrainEnd, DrainError> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        let reply = call(socket, &Request::Status)?;
        let status = reply.status.ok_or_else(|| {
            DrainError::NoStatus(
                reply.error.unwrap_or_else(|| "the agent sent no status".to_owned()),
            )
        })?;
        let live = live_sessions(&status, service, backend).ok_or_else(|| DrainError::Gone {
            service: service.to_owned(),
            backend: backend.to_owned(),
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

    #[test]
    fn targets_parse() {
        assert_eq!(
            parse_target("git").expect_err("no slash").to_string(),
            "\"git\": expected SERVICE/BACKEND"
        );
        assert_eq!(parse_target("git/b1").expect("ok"), ("git".into(), "b1".into()));
        for bad in ["git", "/b1", "git/", ""] {
            assert!(parse_target(bad).is_err(), "{bad:?}");
        }
    }
}
