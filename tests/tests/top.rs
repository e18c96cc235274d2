//! `sshlb-agent top` in a real terminal: a detached `tmux` session (its own server socket,
//! 160x40) runs the real binary against the real agent on the namespace topology while real TCP
//! flows through the VIP. The pane, read with `capture-pane`, must show the services and
//! backends with their health and weight; the backend carrying the sessions with live sessions
//! and packets per second, the idle ones at 0; SYNs a deny list refuses as `drop_acl_denied` per
//! second; `set-weight` and `drain` in the next screens; after SIGTERM, and after `q` in a
//! second one under which the agent is killed (said so while the pinned counters count on),
//! the shell back in a cooked terminal. Without an agent: one line of error and the prompt.

use std::{
    process::Output,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use sshlb_tests::{
    agent::AgentHandle,
    agent_binary,
    config::{ConfigBuilder, ServiceBuilder},
    topo::{Conn, Topo, DSR4, VIP4},
    unique, wait_for,
};

const PROMPT: &str = "top-test$";
/// Every wait on the pane is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

/// A tmux server of this test's own (`-L`), with one detached session running `sh`; the server
/// is killed on drop, also when the test panics.
struct Tmux {
    socket: String,
    session: String,
    /// The server's socket file (tmux leaves it behind when killed).
    socket_path: Option<std::path::PathBuf>,
}

impl Tmux {
    fn start(width: u16, height: u16) -> Self {
        let mut tmux =
            Self { socket: unique("sshlb-top"), session: unique("top"), socket_path: None };
        let (w, h) = (width.to_string(), height.to_string());
        let ps1 = format!("PS1={PROMPT} ");
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            &tmux.session,
            "-x",
            &w,
            "-y",
            &h,
            "env",
            &ps1,
            "sh",
        ]);
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        let out = tmux.run(&["display-message", "-p", "#{socket_path}"]);
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        tmux.socket_path = (!path.is_empty()).then(|| path.into());
        tmux
    }

    /// `tmux -u -L <socket> -f /dev/null args…` (UTF-8, no user configuration).
    fn run(&self, args: &[&str]) -> Output {
        std::process::Command::new("tmux")
            .args(["-u", "-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("spawn tmux")
    }

    /// Types `text` literally, then Enter.
    fn type_line(&self, text: &str) {
        self.keys(&["-l", text]);
        self.keys(&["Enter"]);
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "send-keys {keys:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The visible pane as text.
    fn capture(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-t", &self.session]);
        assert!(out.status.success(), "capture-pane: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The PID of the one process the pane's shell is running (`pgrep -P`).
    fn child_of_shell(&self) -> i32 {
        let out = self.run(&["display-message", "-p", "-t", &self.session, "#{pane_pid}"]);
        let shell = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let out = std::process::Command::new("pgrep").args(["-P", &shell]).output().expect("pgrep");
        let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        assert_eq!(pids.len(), 1, "children of the pane's shell {shell}: {pids:?}");
        pids[0]
    }

    /// After top ended: it exited 0 (the command line echoes `rc=$?`), the alternate screen
    /// was left, the terminal is cooked again (`stty`: icanon, echo) and the prompt is back;
    /// then clears the pane for the next step.
    fn shell_back(&self, what: &str) {
        let pane = self.wait(&format!("the shell {what}"), |p| p.contains("rc=0"));
        assert!(!pane.contains("Services and backends"), "{what}: screen not left:\n{pane}");
        self.type_line(
            "stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon -e echo -e -echo",
        );
        // Done when its output is followed by the next prompt.
        let last_line = |p: &str| {
            p.lines().rev().find(|l| !l.trim().is_empty()).map(str::trim_end).map(str::to_owned)
        };
        let pane = self.wait(&format!("stty's modes {what}"), |p| {
            let modes = p.lines().any(|l| l.trim() == "icanon" || l.trim() == "-icanon");
            modes && last_line(p).as_deref() == Some(PROMPT)
        });
        let modes: Vec<&str> = pane
            .lines()
            .map(str::trim)
            .filter(|l| l.ends_with("icanon") || l.ends_with("echo"))
            .collect();
        assert!(
            modes.contains(&"icanon") && modes.contains(&"echo"),
            "{what}: terminal not restored: {modes:?}\n{pane}"
        );
        self.type_line("clear");
        self.wait(&format!("a clear pane {what}"), |p| !p.contains("rc=0"));
    }

    /// The first pane (polled every 100 ms for [`WAIT`]) for which `ready` holds; panics with
    /// the last pane otherwise.
    fn wait(&self, what: &str, mut ready: impl FnMut(&str) -> bool) -> String {
        let mut last = String::new();
        let found = wait_for(WAIT, || {
            last = self.capture();
            ready(&last).then(|| last.clone())
        });
        found.unwrap_or_else(|| panic!("{what}: not seen within {WAIT:?}; the pane:\n{last}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ignored = self.run(&["kill-session", "-t", &self.session]);
        let _ignored = self.run(&["kill-server"]);
        if let Some(path) = &self.socket_path {
            let _ignored = std::fs::remove_file(path);
        }
    }
}

/// The whitespace-separated cells of the pane's row whose first cell is `first`.
fn row<'a>(pane: &'a str, first: &str) -> Option<Vec<&'a str>> {
    pane.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
}

/// The row of backend `name` under service `service`: name, address, health, state, weight,
/// ring, live, flows, new/s, pkts/s, bytes/s. Backend rows are indented under their service's.
fn backend<'a>(pane: &'a str, service: &str, name: &str) -> Option<Vec<&'a str>> {
    let mut under = false;
    for line in pane.lines() {
        let cells: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(' ') && !cells.is_empty() {
            under = cells[0] == service;
        } else if under && cells.first() == Some(&name) && cells.len() == 11 {
            return Some(cells);
        }
    }
    None
}

fn moving(cell: &str) -> bool {
    cell != "0" && cell != "-"
}

/// Sets the flag when dropped: the traffic threads stop, also when the test panics.
struct Stop(Arc<AtomicBool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn top_shows_live_backends_rates_drops_and_changes_in_a_real_terminal() {
    let test = "top_shows_live_backends_rates_drops_and_changes_in_a_real_terminal";
    let Some(topo) = Topo::for_test(test) else { return };
    let bin = agent_binary().display().to_string();
    let mut agent = AgentHandle::new(&topo);
    let control = agent.control().display().to_string();
    let iface = topo.lb_if.clone();

    // No terminal, or no agent: one line of error, non-zero, before any terminal work.
    let out = agent.ctl(&["top", &iface]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("use --once"), "{err}");
    let tmux = Tmux::start(160, 40);
    tmux.wait("the shell's prompt", |p| p.contains(PROMPT));
    tmux.type_line(&format!("{bin} --control {control} top {iface}; echo \"rc=$?\""));
    let pane = tmux.wait("the error without an agent", |p| p.contains("rc=1"));
    let errors: Vec<&str> = pane.lines().filter(|l| l.starts_with("sshlb-agent: error:")).collect();
    assert_eq!(errors.len(), 1, "{pane}");
    assert!(
        errors[0].contains("cannot reach the agent at") && errors[0].contains(&control),
        "{pane}"
    );
    tmux.type_line("clear");

    // b1 takes every new flow; b2 and b3 (weight 0) are healthy and idle. The second service
    // refuses the client's prefix: its SYNs are drops by reason.
    let git = ServiceBuilder::new("git", VIP4, 22)
        .fast_connect_checks()
        .topo_backends(false, |i, b| b.weight(if i == 0 { 100 } else { 0 }));
    let locked = ServiceBuilder::new("locked", DSR4, 22)
        .raw("deny = [\"198.18.2.0/24\"]")
        .fast_connect_checks()
        .topo_backends(false, |_, b| b);
    agent.start(ConfigBuilder::new().service(git).service(locked));

    let conns = topo
        .client
        .run(|| (0..4).map(|_| Conn::open(VIP4, 22).expect("connect")).collect::<Vec<_>>());
    assert!(conns.iter().all(|c| c.backend == "b1"), "only b1 is in the ring");
    let stop = Stop(Arc::new(AtomicBool::new(false)));
    let (flag, deadline) = (stop.0.clone(), Instant::now() + Duration::from_secs(90));
    let echo = thread::spawn(move || {
        let mut conns = conns;
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            for c in &mut conns {
                assert!(c.echo(b"top is watching\n").expect("echo"), "bytes changed on the way");
            }
            thread::sleep(Duration::from_millis(20));
        }
        conns
    });
    let flag = stop.0.clone();
    let refused = topo.client.spawn_thread(move || {
        let to = format!("{DSR4}:22").parse().expect("address");
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            let got = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(300));
            assert!(got.is_err(), "the deny list let a connection through");
        }
    });

    // The live view.
    tmux.type_line(&format!("{bin} --control {control} top {iface}; echo \"rc=$?\""));
    let pane = tmux.wait("b1 carrying the sessions, the others idle, drops per second", |p| {
        let (Some(b1), Some(b2), Some(drops)) =
            (backend(p, "git", "b1"), backend(p, "git", "b2"), row(p, "drop_acl_denied"))
        else {
            return false;
        };
        let live: u64 = b1[6].parse().unwrap_or(0);
        live >= 4 && moving(b1[9]) && moving(b1[10]) && b2[9] == "0" && moving(drops[1])
    });
    eprintln!("the live screen:\n{pane}");
    assert!(pane.contains(&format!("sshlb top  {iface}  every 1s")), "{pane}");
    assert!(
        row(&pane, "git").is_some_and(|r| r[1] == "198.18.0.100:22" && r[2] == "nat"),
        "{pane}"
    );
    assert!(row(&pane, "locked").is_some_and(|r| r[1] == "198.18.0.101:22"), "{pane}");
    for (name, weight, ring) in [("b1", "100", "yes"), ("b2", "0", "no"), ("b3", "0", "no")] {
        let b = backend(&pane, "git", name).unwrap_or_else(|| panic!("no row {name}:\n{pane}"));
        assert_eq!((b[2], b[3], b[4], b[5]), ("up", "active", weight, ring), "{name}:\n{pane}");
        if name != "b1" {
            assert_eq!((b[6], b[8], b[9], b[10]), ("0", "0", "0", "0"), "{name} is idle:\n{pane}");
        }
    }
    // Per service: b1 of the refused service carries nothing although git's b1 does.
    let locked_b1 =
        backend(&pane, "locked", "b1").unwrap_or_else(|| panic!("no locked/b1:\n{pane}"));
    assert_eq!((locked_b1[4], locked_b1[6], locked_b1[9]), ("100", "0", "0"), "{pane}");
    let packets = pane.lines().find(|l| l.starts_with("packets ")).expect("the totals line");
    assert!(!packets.starts_with("packets 0/s") && !packets.contains("dropped 0/s"), "{pane}");

    // Runtime changes through the agent appear in the next screens.
    let started = Instant::now();
    let out = agent.ctl(&["set-weight", "git/b2", "7"]);
    assert!(out.status.success(), "set-weight: {}", String::from_utf8_lossy(&out.stderr));
    tmux.wait("b2's new weight", |p| {
        backend(p, "git", "b2").is_some_and(|b| b[4] == "7" && b[5] == "yes")
    });
    eprintln!("set-weight on screen after {:?}", started.elapsed());
    let out = agent.ctl(&["drain", "git/b1"]);
    assert!(out.status.success(), "drain: {}", String::from_utf8_lossy(&out.stderr));
    let pane = tmux.wait("b1 drained, its sessions still live", |p| {
        backend(p, "git", "b1").is_some_and(|b| b[3] == "drain" && b[5] == "no" && b[6] != "0")
    });
    assert_eq!(backend(&pane, "git", "b2").map(|b| b[5]), Some("yes"), "{pane}");

    // Keys: s cycles the backend order (the header names it), z lists every drop reason.
    tmux.keys(&["s"]);
    tmux.wait("the sort key", |p| p.contains("sort: live"));
    tmux.keys(&["z"]);
    tmux.wait("every drop reason", |p| {
        row(p, "drop_ttl_zero").is_some() && p.contains("reasons: all")
    });

    // One plain-text screen for scripts, from a pipe.
    let out = agent.ctl(&["top", "--once", "--interval", "500ms"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "top --once: {}", String::from_utf8_lossy(&out.stderr));
    let b1 = backend(&text, "git", "b1").unwrap_or_else(|| panic!("no b1 in --once:\n{text}"));
    assert!(b1[3] == "drain" && moving(b1[9]), "{text}");

    // SIGTERM (a `kill` from another terminal) ends it like q: the terminal is given back.
    let pid = tmux.child_of_shell();
    // SAFETY: kill(2) on the PID of the top this test started in its own tmux pane.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill {pid}");
    tmux.shell_back("after SIGTERM");

    // A second one; the agent dies under it (SIGKILL; the data plane stays attached and keeps
    // forwarding): top says so over the agent's last answer, with no made-up rates, while the
    // pinned counters count on.
    tmux.type_line(&format!("{bin} --control {control} top {iface}; echo \"rc=$?\""));
    tmux.wait("the second screen", |p| backend(p, "git", "b1").is_some());
    agent.kill();
    let pane = tmux.wait("the dead agent", |p| {
        let forwarding =
            p.lines().any(|l| l.starts_with("packets ") && !l.contains("forwarded 0/s"));
        p.contains("agent not answering") && forwarding
    });
    eprintln!("after the agent died:\n{}", pane.lines().take(8).collect::<Vec<_>>().join("\n"));
    let b1 = backend(&pane, "git", "b1").unwrap_or_else(|| panic!("rows kept:\n{pane}"));
    assert_eq!((b1[3], b1[9]), ("drain", "-"), "{pane}");

    // q leaves the same way.
    tmux.keys(&["q"]);
    tmux.shell_back("after q");

    drop(stop);
    let conns = echo.join().expect("the echo thread");
    refused.join().expect("the refused-connection thread");
    drop(conns);
}
