//! SSH banner health checks: the state machine (sans-IO) and the check itself.
//!
//! A check connects, reads the backend's identification line within the timeout (RFC 4253 §4.2
//! lets a server send other lines first), matches it against `expect`, answers with our own
//! identification line (`SSH-2.0-sshlb-health`) so sshd records a client that went away rather
//! than a protocol error, and closes. Everything is bounded by the timeout: a backend that sends
//! garbage, is too slow or never closes is simply a failed check, and the socket is dropped.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

/// A backend's health as the balancer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not checked yet. Counts as usable: a restarted agent must not drop capacity while its
    /// first checks run.
    Unknown,
    /// Passing.
    Up,
    /// Failing: out of the ring for new flows (its established flows continue).
    Down,
}

impl Health {
    /// Whether new flows may be sent to a backend in this state.
    pub fn usable(self) -> bool {
        !matches!(self, Self::Down)
    }

    /// Stable name (status output, metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// Rise/fall bookkeeping for one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracker {
    health: Health,
    passes: u32,
    failures: u32,
    changes: u64,
}

impl Default for Tracker {
    fn default() -> Self {
        Self { health: Health::Unknown, passes: 0, failures: 0, changes: 0 }
    }
}

impl Tracker {
    /// Current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// How many times the health changed.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Records one check result; returns the new health when it changed.
    ///
    /// Up after `rise` consecutive passes (the first pass of a never-checked backend is
    /// enough), down after `fall` consecutive failures. A flapping backend that never strings
    /// `rise` passes together stays down.
    pub fn observe(&mut self, passed: bool, rise: u32, fall: u32) -> Option<Health> {
        if passed {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
        }
        let next = match self.health {
            Health::Unknown if passed => Health::Up,
            Health::Down if self.passes >= rise => Health::Up,
            Health::Up | Health::Unknown if self.failures >= fall => Health::Down,
            same => same,
        };
        (next != self.health).then(|| {
            self.health = next;
            self.changes += 1;
            next
        })
    }
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Connecting failed (refused, unreachable, reset).
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The whole check took longer than the timeout.
    #[error("no identification line within {0:?}")]
    Timeout(Duration),
    /// The backend closed before identifying itself (with the first other line it sent).
    #[error("closed before sending an identification line{}", sent(.0.as_deref()))]
    Closed(Option<String>),
    /// Reading or writing failed mid-check.
    #[error("i/o: {0}")]
    Io(#[source] std::io::Error),
    /// The identification line is not what `expect` asks for.
    #[error("identification {0:?} does not start with the expected prefix")]
    Mismatch(String),
    /// More than [`MAX_PREAMBLE`] bytes without an `SSH-` line (with the first line sent).
    #[error("no identification line in the first {MAX_PREAMBLE} bytes{}", sent(.0.as_deref()))]
    TooLong(Option<String>),
}

/// `" (it sent \"…\")"` for the first non-SSH line a backend sent, if any: a web server or
/// another daemon on the port is then obvious.
fn sent(first_line: Option<&str>) -> String {
    first_line.map(|l| format!(" (it sent {l:?})")).unwrap_or_default()
}

/// Bytes a backend may send before its identification line (RFC 4253 allows other lines).
pub const MAX_PREAMBLE: usize = 8192;

/// Our identification line, sent before closing.
pub const OUR_IDENTIFICATION: &[u8] = b"SSH-2.0-sshlb-health\r\n";

/// Whether `line` (without CR LF) satisfies `expect`; `SSH-2.0-` also accepts `SSH-1.99-`.
pub fn banner_matches(line: &str, expect: &str) -> bool {
    line.starts_with(expect) || (expect == "SSH-2.0-" && line.starts_with("SSH-1.99-"))
}

/// One health check of `addr` from `source` (the kernel picks when `None`). `expect` empty =
/// TCP connect only.
///
/// The agent passes the balancer's own NAT address: left to itself the kernel may pick a VIP
/// held on the same interface as the source (Linux prefers a /128 whose bits match longer), and
/// a DSR backend that owns that VIP would answer itself.
pub async fn check(
    addr: SocketAddr,
    timeout: Duration,
    expect: &str,
    source: Option<std::net::IpAddr>,
) -> Result<(), CheckError> {
    match tokio::time::timeout(timeout, check_unbounded(addr, expect, source)).await {
        Ok(result) => result,
        Err(_) => Err(CheckError::Timeout(timeout)),
    }
}

/// Connects to `addr` from `source` (when it is of the same family; else the kernel picks).
///
/// A `source` this host does not hold right now (`EADDRNOTAVAIL`) is left to the kernel too: a
/// full-NAT standby whose NAT address its VRRP master holds must still check its backends, so
/// that its ring is the master's the moment the address moves to it (it holds no VIP then
/// either, so the kernel cannot pick one).
pub async fn connect_from(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    match source.filter(|s| s.is_ipv4() == addr.is_ipv4()) {
        Some(source) => {
            let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }?;
            match socket.bind(SocketAddr::new(source, 0)) {
                Ok(()) => socket.connect(addr).await,
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                    TcpStream::connect(addr).await
                }
                Err(e) => Err(e),
            }
        }
        None => TcpStream::connect(addr).await,
    }
}

async fn check_unbounded(
    addr: SocketAddr,
    expect: &str,
    source: Option<std::net::IpAddr>,
) -> Result<(), CheckError> {
    let mut stream = connect_from(addr, source).await.map_err(CheckError::Connect)?;
    if expect.is_empty() {
        return Ok(());
    }
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let mut total = 0usize;
    let mut first_line: Option<String> = None;
    let line = loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&buf[..end]).trim_end_matches('\r').to_owned();
            if line.starts_with("SSH-") {
                break line;
            }
            first_line.get_or_insert_with(|| line.chars().take(80).collect());
            buf.drain(..=end);
            continue;
        }
        if total > MAX_PREAMBLE {
            return Err(CheckError::TooLong(first_line.or_else(|| partial(&buf))));
        }
        let n = stream.read(&mut chunk).await.map_err(CheckError::Io)?;
        if n == 0 {
            return Err(CheckError::Closed(first_line.or_else(|| partial(&buf))));
        }
        total += n;
        buf.extend_from_slice(&chunk[..n]);
    };
    if !banner_matches(&line, expect) {
        return Err(CheckError::Mismatch(line.chars().take(80).collect()));
    }
    stream.write_all(OUR_IDENTIFICATION).await.map_err(CheckError::Io)?;
    stream.shutdown().await.map_err(CheckError::Io)?;
    Ok(())
}

/// The start of an unterminated line (a backend that closed mid-line), if any.
fn partial(buf: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(buf);
    let text = text.trim_end();
    (!text.is_empty()).then(|| text.chars().take(80).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_this_host_does_not_hold_is_left_to_the_kernel() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listen");
            let addr = listener.local_addr().expect("addr");
            // An address of the benchmarking range no interface of the test host holds (a
            // full-NAT standby's NAT address while its VRRP master holds it).
            let absent: std::net::IpAddr = "198.18.251.7".parse().expect("ip");
            let stream = connect_from(addr, Some(absent)).await.expect("connects anyway");
            assert_ne!(stream.local_addr().expect("local").ip(), absent);
        });
    }

    #[test]
    fn fresh_backend_is_up_after_one_pass_and_down_after_fall_failures() {
        let mut t = Tracker::default();
        assert!(t.health().usable(), "unknown counts as usable");
        assert_eq!(t.observe(true, 2, 3), Some(Health::Up));
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), Some(Health::Down));
        assert!(!t.health().usable());
        assert_eq!(t.changes(), 2, "unknown → up → down");
    }

    #[test]
    fn down_backend_needs_rise_consecutive_passes() {
        let mut t = Tracker::default();
        for _ in 0..3 {
            t.observe(false, 2, 3);
        }
        assert_eq!(t.health(), Health::Down, "never-seen backend that fails goes down after fall");
        assert_eq!(t.observe(true, 2, 3), None);
        assert_eq!(t.observe(false, 2, 3), None, "a failure resets the streak");
        assert_eq!(t.observe(true, 2, 3), None);
        assert_eq!(t.observe(true, 2, 3), Some(Health::Up));
    }

    #[test]
    fn flapping_backend_stays_down() {
        let mut t = Tracker::default();
        for _ in 0..3 {
            t.observe(false, 3, 3);
        }
        for i in 0..100 {
            t.observe(i % 2 == 0, 3, 3);
            assert_eq!(t.health(), Health::Down, "flap {i} brought it up");
        }
    }

    #[test]
    fn one_failure_does_not_take_an_up_backend_down() {
        let mut t = Tracker::default();
        t.observe(true, 2, 3);
        for _ in 0..10 {
            assert_eq!(t.observe(false, 2, 3), None);
            assert_eq!(t.observe(true, 2, 3), None);
        }
        assert_eq!(t.health(), Health::Up);
    }

    #[test]
    fn a_server_that_is_not_sshd_is_named_by_what_it_sent() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listen");
            let addr = listener.local_addr().expect("addr");
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.expect("accept");
                s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n").await.expect("write");
            });
            let err = check(addr, Duration::from_secs(2), "SSH-2.0-", None).await;
            let err = err.expect_err("an HTTP server is not sshd");
            server.await.expect("server");
            assert_eq!(
                err.to_string(),
                "closed before sending an identification line \
                 (it sent \"HTTP/1.0 400 Bad Request\")"
            );
        });
    }

    #[test]
    fn banners() {
        assert!(banner_matches("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3", "SSH-2.0-"));
        assert!(banner_matches("SSH-1.99-OpenSSH_3.9", "SSH-2.0-"));
        assert!(!banner_matches("SSH-1.5-old", "SSH-2.0-"));
        assert!(!banner_matches("HTTP/1.1 400 Bad Request", "SSH-2.0-"));
        assert!(banner_matches("SSH-2.0-anything", "SSH-"));
    }
}
