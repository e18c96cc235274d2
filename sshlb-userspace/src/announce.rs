//! VIP announcement by BGP: which VIPs this balancer announces and why (sans-IO, [`decide`]),
//! the BIRD 2 include file that says so ([`render_bird`]), and the edge that hands it to BIRD
//! ([`Bird::apply`]).
//!
//! Why an include file and `birdc configure` rather than routes in a kernel table that BIRD
//! imports: the file is the whole truth in one place (an operator can read it, `birdc configure
//! check` validates it, BIRD's own syntax errors come back on the control socket), it carries
//! the BGP sessions and BFD timers as well as the routes, and the agent never touches the host's
//! routing tables. The file holds a `protocol static sshlb_vips` with one `route VIP/32
//! blackhole` (or `/128`) per announced VIP, and, when `[[announce.neighbor]]` are configured,
//! one `protocol bgp` per neighbour exporting exactly those routes (with BFD when on). The
//! operator's `bird.conf` says `include "…";` — and nothing else is needed.
//!
//! A blackhole route is only a vehicle for BGP: it is never exported to the kernel (no
//! `protocol kernel` exports it), and packets to the VIP are taken by XDP before any route is
//! looked up.
//!
//! Faults at the edge (BIRD not running, refusing the file) are returned as [`BirdError`] and
//! the caller reports them; balancing never depends on them.

use std::{
    fmt::Write as _,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::config::{Announce, AnnounceMode};

/// What one service's VIP should be, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// Announced to the routers.
    pub announced: bool,
    /// Why (or why not).
    pub reason: Reason,
}

/// Why a VIP is or is not announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `announce.mode = "none"`: the operator routes the VIP.
    Off,
    /// The agent is stopping cleanly: the routers must stop sending before it goes.
    Stopping,
    /// The data plane is not attached: nothing would forward what arrives.
    NotAttached,
    /// `maintenance on`: this balancer leaves; flows that still arrive are forwarded.
    Maintenance,
    /// Fewer usable backends than `min-backends`.
    TooFewBackends {
        /// Backends in the ring now.
        usable: usize,
        /// `min-backends`.
        min: u32,
    },
    /// Attached, healthy, enough backends.
    Healthy {
        /// Backends in the ring now.
        usable: usize,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("announce.mode is \"none\""),
            Self::Stopping => f.write_str("agent stopping"),
            Self::NotAttached => f.write_str("data plane not attached"),
            Self::Maintenance => f.write_str("maintenance on"),
            Self::TooFewBackends { usable, min } => {
                write!(f, "{usable} usable backend(s), min-backends is {min}")
            }
            Self::Healthy { usable } => write!(f, "{usable} usable backend(s)"),
        }
    }
}

/// The balancer's state that decides announcements, besides each service's backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalancerState {
    /// The XDP program is attached.
    pub attached: bool,
    /// `maintenance on`.
    pub maintenance: bool,
    /// A clean stop (`down`, SIGTERM, SIGINT) is under way.
    pub stopping: bool,
}

/// One service as [`decide`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    /// Its name.
    pub name: String,
    /// Its VIP.
    pub vip: IpAddr,
    /// Backends in its ring now (healthy, active, weight > 0, admitted by host keys).
    pub usable: usize,
}

/// Which services' VIPs to announce, in the order given. The balancer-wide reasons come first
/// (off, stopping, not attached, maintenance), then the service's own backends. Several
/// services sharing a VIP (different ports) are decided apiece; [`announced_vips`] announces a
/// VIP while any of them is announced.
pub fn decide(
    announce: &Announce,
    state: BalancerState,
    services: &[ServiceView],
) -> Vec<(String, Announcement)> {
    services
        .iter()
        .map(|s| {
            let reason = if announce.mode == AnnounceMode::None {
                Reason::Off
            } else if state.stopping {
                Reason::Stopping
            } else if !state.attached {
                Reason::NotAttached
            } else if state.maintenance {
                Reason::Maintenance
            } else if s.usable < announce.min_backends as usize {
                Reason::TooFewBackends { usable: s.usable, min: announce.min_backends }
            } else {
                Reason::Healthy { usable: s.usable }
            };
            let announced = matches!(reason, Reason::Healthy { .. });
            (s.name.clone(), Announcement { announced, reason })
        })
        .collect()
}

/// The VIPs to announce, sorted and without duplicates (a VIP may serve several ports).
pub fn announced_vips(
    services: &[ServiceView],
    decisions: &[(String, Announcement)],
) -> Vec<IpAddr> {
    let mut vips: Vec<IpAddr> = services
        .iter()
        .zip(decisions)
        .filter(|(_, (_, a))| a.announced)
        .map(|(s, _)| s.vip)
        .collect();
    vips.sort_unstable();
    vips.dedup();
    vips
}

/// The BIRD 2 include file announcing `vips` (and declaring the configured BGP sessions).
/// Deterministic: the same inputs give the same bytes, so an unchanged file is not reloaded.
pub fn render_bird(announce: &Announce, vips: &[IpAddr]) -> String {
    let mut out = String::from("# Written by sshlb-agent; do not edit. Included from bird.conf.\n");
    if let Some(id) = announce.router_id {
        let _ = writeln!(out, "router id {id};");
    }
    out.push_str("\nprotocol static sshlb_vips4 {\n  ipv4;\n");
    for vip in vips.iter().filter(|v| v.is_ipv4()) {
        let _ = writeln!(out, "  route {vip}/32 blackhole;");
    }
    out.push_str("}\n\nprotocol static sshlb_vips6 {\n  ipv6;\n");
    for vip in vips.iter().filter(|v| v.is_ipv6()) {
        let _ = writeln!(out, "  route {vip}/128 blackhole;");
    }
    out.push_str("}\n");
    if announce.bfd.enabled && !announce.neighbors.is_empty() {
        let ms = announce.bfd.interval.as_millis();
        let _ = write!(
            out,
            "\nprotocol bfd sshlb_bfd {{\n  interface \"*\" {{\n    min rx interval {ms} ms;\n    \
             min tx interval {ms} ms;\n    idle tx interval {ms} ms;\n    multiplier {};\n  }};\n}}\n",
            announce.bfd.multiplier
        );
    }
    for (i, n) in announce.neighbors.iter().enumerate() {
        let local_as = announce.local_as.unwrap_or_default();
        let (channel, vips) =
            if n.address.is_ipv4() { ("ipv4", "sshlb_vips4") } else { ("ipv6", "sshlb_vips6") };
        let _ = write!(
            out,
            "\nprotocol bgp sshlb_peer{i} {{\n  local as {local_as};\n  neighbor {} as {};\n",
            n.address, n.remote_as
        );
        if announce.bfd.enabled {
            out.push_str("  bfd on;\n");
        }
        let _ = write!(
            out,
            "  {channel} {{\n    import none;\n    export where proto = \"{vips}\";\n  }};\n}}\n"
        );
    }
    out
}

/// BIRD's answer to the agent, when it is not "done".
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    /// The include file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The include file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `birdc` could not be run at all.
    #[error("cannot run birdc: {0}")]
    Birdc(#[source] io::Error),
    /// BIRD is not running, or refused the configuration: its own words.
    #[error("birdc configure: {0}")]
    Refused(String),
}

/// The BIRD edge: the include file and the control socket.
#[derive(Debug)]
pub struct Bird {
    include_file: PathBuf,
    socket: PathBuf,
    /// The text BIRD last took.
    last: Option<String>,
    /// The text last refused, and when: retried at most once per [`RETRY_EVERY`].
    refused: Option<(String, Instant)>,
}

/// How often a refused (or undeliverable) file is offered to BIRD again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

impl Bird {
    /// The BIRD that `announce` names.
    pub fn new(announce: &Announce) -> Self {
        Self {
            include_file: announce.include_file.clone().into(),
            socket: announce.bird_socket.clone().into(),
            last: None,
            refused: None,
        }
    }

    /// Whether this is the BIRD (socket and include file) that `announce` names.
    pub fn is_for(&self, announce: &Announce) -> bool {
        self.include_file == Path::new(&announce.include_file)
            && self.socket == Path::new(&announce.bird_socket)
    }

    /// Writes `text` as the include file (atomically: a temporary file renamed over it, so BIRD
    /// never reads half a file) and asks BIRD to reload, unless the same text was already
    /// accepted. Returns whether BIRD was asked.
    pub fn apply(&mut self, text: &str) -> Result<bool, BirdError> {
        if self.last.as_deref() == Some(text) {
            return Ok(false);
        }
        if let Some((refused, at)) = &self.refused {
            if refused == text && at.elapsed() < RETRY_EVERY {
                return Ok(false);
            }
        }
        let result = write_atomically(&self.include_file, text)
            .map_err(|source| BirdError::Write { path: self.include_file.clone(), source })
            .and_then(|()| configure(&self.socket));
        match result {
            Ok(()) => {
                self.last = Some(text.to_owned());
                self.refused = None;
                Ok(true)
            }
            Err(err) => {
                self.last = None;
                self.refused = Some((text.to_owned(), Instant::now()));
                Err(err)
            }
        }
    }
}

/// Writes `path` by writing a sibling and renaming it over `path`.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// `birdc -s SOCKET configure`, judged by BIRD's reply.
fn configure(socket: &Path) -> Result<(), BirdError> {
    let out = Command::new("birdc")
        .arg("-s")
        .arg(socket)
        .arg("configure")
        .output()
        .map_err(BirdError::Birdc)?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    configure_reply(out.status.success(), &text)
}

/// Whether BIRD's reply to `configure` says it took the file (sans-IO, tested).
fn configure_reply(exit_ok: bool, text: &str) -> Result<(), BirdError> {
    let took = text.lines().any(|l| {
        let l = l.trim();
        l == "Reconfigured"
            || l.starts_with("Reconfiguration in progress")
            || l.starts_with("Reconfiguration already in progress")
    });
    if exit_ok && took {
        Ok(())
    } else {
        let why: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| {
                !l.is_empty() && !l.starts_with("BIRD ") && !l.starts_with("Reading configuration")
            })
            .collect();
        Err(BirdError::Refused(if why.is_empty() { "no reply".into() } else { why.join("; ") }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Bfd, Neighbor};

    fn bgp() -> Announce {
        Announce {
            mode: AnnounceMode::Bgp,
            min_backends: 2,
            local_as: Some(65001),
            ..Announce::default()
        }
    }

    fn views() -> Vec<ServiceView> {
        vec![
            ServiceView { name: "git".into(), vip: "198.18.0.100".parse().unwrap(), usable: 3 },
            ServiceView { name: "git6".into(), vip: "fd00:1::100".parse().unwrap(), usable: 1 },
            ServiceView { name: "alt".into(), vip: "198.18.0.100".parse().unwrap(), usable: 2 },
        ]
    }

    const UP: BalancerState = BalancerState { attached: true, maintenance: false, stopping: false };

    fn reasons(a: &Announce, state: BalancerState) -> Vec<(bool, Reason)> {
        decide(a, state, &views()).into_iter().map(|(_, d)| (d.announced, d.reason)).collect()
    }

    #[test]
    fn a_healthy_service_is_announced_and_one_short_of_min_backends_is_not() {
        assert_eq!(
            reasons(&bgp(), UP),
            [
                (true, Reason::Healthy { usable: 3 }),
                (false, Reason::TooFewBackends { usable: 1, min: 2 }),
                (true, Reason::Healthy { usable: 2 }),
            ]
        );
        let vips = announced_vips(&views(), &decide(&bgp(), UP, &views()));
        assert_eq!(vips, ["198.18.0.100".parse::<IpAddr>().unwrap()], "one VIP, two ports, once");
    }

    #[test]
    fn balancer_wide_reasons_withdraw_every_vip_in_order_of_precedence() {
        let all = |state, reason| {
            let r = reasons(&bgp(), state);
            assert!(r.iter().all(|&(a, why)| !a && why == reason), "{state:?}: {r:?}");
        };
        all(BalancerState { maintenance: true, ..UP }, Reason::Maintenance);
        all(BalancerState { attached: false, maintenance: true, ..UP }, Reason::NotAttached);
        all(BalancerState { stopping: true, attached: false, maintenance: true }, Reason::Stopping);
    }

    #[test]
    fn mode_none_announces_nothing_whatever_the_health() {
        let off = Announce { mode: AnnounceMode::None, ..bgp() };
        assert!(reasons(&off, UP).iter().all(|&(a, why)| !a && why == Reason::Off));
    }

    #[test]
    fn the_include_file_routes_each_announced_vip_and_exports_only_those() {
        let mut a = bgp();
        a.router_id = Some("198.18.2.11".parse().unwrap());
        a.bfd = Bfd { enabled: true, interval: Duration::from_millis(100), multiplier: 3 };
        a.neighbors = vec![
            Neighbor { address: "198.18.2.1".parse().unwrap(), remote_as: 65000 },
            Neighbor { address: "fd00:2::1".parse().unwrap(), remote_as: 65000 },
        ];
        let vips: Vec<IpAddr> =
            vec!["198.18.0.100".parse().unwrap(), "fd00:1::100".parse().unwrap()];
        let text = render_bird(&a, &vips);
        for line in [
            "router id 198.18.2.11;",
            "  route 198.18.0.100/32 blackhole;",
            "  route fd00:1::100/128 blackhole;",
            "    min rx interval 100 ms;",
            "    multiplier 3;",
            "  neighbor 198.18.2.1 as 65000;",
            "  neighbor fd00:2::1 as 65000;",
            "  bfd on;",
            "    export where proto = \"sshlb_vips4\";",
            "    export where proto = \"sshlb_vips6\";",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
        assert_eq!(text, render_bird(&a, &vips), "deterministic");
        let withdrawn = render_bird(&a, &[]);
        assert!(!withdrawn.contains("route "), "nothing announced:\n{withdrawn}");
        assert!(withdrawn.contains("protocol bgp sshlb_peer1"), "sessions stay up while withdrawn");
        a.bfd.enabled = false;
        assert!(!render_bird(&a, &vips).contains("bfd"), "BFD off");
    }

    #[test]
    fn birds_reply_decides_whether_the_file_was_taken() {
        assert!(configure_reply(
            true,
            "BIRD 2.0.12 ready.\nReading configuration from /etc/bird/bird.conf\nReconfigured\n"
        )
        .is_ok());
        assert!(configure_reply(true, "Reconfiguration in progress\n").is_ok());
        let refused = configure_reply(
            true,
            "BIRD 2.0.12 ready.\nReading configuration from /etc/bird/bird.conf\n/etc/bird/sshlb.conf:4:9 syntax error, unexpected '/'\n",
        )
        .expect_err("syntax error");
        assert!(refused.to_string().contains("sshlb.conf:4:9 syntax error"), "{refused}");
        let down = configure_reply(false, "Unable to connect to server control socket (/run/bird/bird.ctl): No such file or directory\n")
            .expect_err("not running");
        assert!(down.to_string().contains("Unable to connect"), "{down}");
    }

    #[test]
    fn an_unchanged_file_is_not_handed_to_bird_again_and_a_refusal_is_retried() {
        let dir = std::env::temp_dir().join(format!("sshlb-announce-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = Announce {
            include_file: dir.join("sshlb.conf").display().to_string(),
            bird_socket: dir.join("no-bird.ctl").display().to_string(),
            ..bgp()
        };
        let mut bird = Bird::new(&a);
        let err = bird.apply("x").expect_err("no BIRD at that socket");
        assert!(matches!(err, BirdError::Refused(_) | BirdError::Birdc(_)), "{err}");
        assert_eq!(std::fs::read_to_string(dir.join("sshlb.conf")).unwrap(), "x", "written anyway");
        assert!(matches!(bird.apply("x"), Ok(false)), "not offered again within a second");
        std::thread::sleep(RETRY_EVERY);
        assert!(bird.apply("x").is_err(), "a refused file is offered again");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
