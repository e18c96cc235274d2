//! Shared scaffolding for sshlb's namespace and end-to-end tests.
//!
//! Every test builds its own little network out of namespaces whose names are unique to the test
//! (prefix + pid + counter), with addresses only in 198.18.0.0/15 and fd00::/8, and tears it down
//! in `Drop` — so a failing (panicking) test cleans up too. Processes a test starts are killed by
//! PID, never by name.

pub mod agent;
pub mod bird;
pub mod config;
pub mod counters;
pub mod ha;
pub mod inject;
pub mod inproc;
pub mod keepalived;
pub mod lab;
pub mod sshd;
pub mod topo;

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
    thread,
    time::{Duration, Instant},
};

/// Whether root-only tiers must run (set by `cargo xtask test` as root).
pub fn required() -> bool {
    std::env::var("SSHLB_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1")
}

/// True when the test may proceed; prints a SKIP line (or panics when required) otherwise.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(!required(), "{test}: needs root but SSHLB_REQUIRE_ROOT_TESTS=1");
    eprintln!("SKIP: {test}: needs root (network namespaces, XDP attach)");
    false
}

/// Runs `cmd`, panicking with its command line and stderr when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `sh -c`-free convenience: `cmd("ip", &["link", ...])`.
pub fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// The `sshlb-agent` binary, built once per test process so it is never stale — or the one
/// `$SSHLB_AGENT` names (the lab binary runs the agent xtask built).
pub fn agent_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("SSHLB_AGENT") {
            return PathBuf::from(path);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        let out = run(&mut cmd(
            &cargo,
            &[
                "build",
                "--quiet",
                "--manifest-path",
                manifest,
                "-p",
                "sshlb-userspace",
                "--bin",
                "sshlb-agent",
            ],
        ));
        drop(out);
        // target/debug/deps/<test binary> → target/debug/sshlb-agent
        let exe = std::env::current_exe().expect("current_exe");
        let bin = exe.parent().and_then(|d| d.parent()).expect("target dir").join("sshlb-agent");
        assert!(bin.exists(), "sshlb-agent not found at {}", bin.display());
        bin
    })
    .clone()
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// When set, namespaces made on this thread are named `<prefix>-<role>` (the lab's fixed
    /// names, so `lab down` can find them after a crash) instead of unique test names.
    static NAME_PREFIX: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Names namespaces created by `f` on this thread `<prefix>-<role>`.
pub fn with_name_prefix<T>(prefix: &str, f: impl FnOnce() -> T) -> T {
    NAME_PREFIX.with(|p| *p.borrow_mut() = Some(prefix.to_owned()));
    let out = f();
    NAME_PREFIX.with(|p| *p.borrow_mut() = None);
    out
}

/// A short name unique to this process and call, e.g. `t4711x3` (fits IFNAMSIZ with a prefix).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id() % 100_000, NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// A network namespace owned by the test; deleted (with everything in it) on drop.
pub struct Netns {
    /// Name under /run/netns.
    pub name: String,
    children: Vec<Child>,
}

impl Netns {
    /// Creates `sshlb-<unique>` with loopback up.
    pub fn new(role: &str) -> Self {
        let prefix = NAME_PREFIX.with(|p| p.borrow().clone());
        let name = match prefix {
            Some(prefix) => format!("{prefix}-{role}"),
            None => format!("sshlb-{}-{role}", unique("t")),
        };
        run(&mut cmd("ip", &["netns", "add", &name]));
        let ns = Self { name, children: Vec::new() };
        ns.ip(&["link", "set", "lo", "up"]);
        // No duplicate address detection: links made here are fresh and private, and a tentative
        // link-local address would stall neighbour discovery for the first second or two.
        for key in ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"] {
            run(&mut ns.command("sysctl", &["-qw", key]));
        }
        ns
    }

    /// Runs `ip -n <ns> args…`.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut c = cmd("ip", &["-n", &self.name]);
        c.args(args);
        run(&mut c)
    }

    /// A command that runs inside the namespace's network stack only (keeps the host's mounts,
    /// so /sys/fs/bpf pins stay visible — `ip netns exec` would hide them).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        Self::command_in(&self.name, program, args)
    }

    /// [`Self::command`] for the namespace called `name` (one this value does not own).
    pub fn command_in(name: &str, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{name}")).arg("--").arg(program).args(args);
        c
    }

    /// Starts a long-running process in the namespace; it is killed when the namespace drops.
    pub fn spawn(&mut self, program: &str, args: &[&str]) -> u32 {
        let child = self
            .command(program, args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {program} in {}: {e}", self.name));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Like [`Self::spawn`], with stdout and stderr going to the file `log`.
    pub fn spawn_logged(&mut self, program: &str, args: &[&str], log: &std::path::Path) -> u32 {
        let file = File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = file.try_clone().expect("dup log");
        let child = self
            .command(program, args)
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {program} in {}: {e}", self.name));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Runs `f` on a thread that has entered this namespace (std sockets then live in it).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn_thread(f).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Starts `f` on a background thread that has entered this namespace.
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // SAFETY: ns is an open namespace fd; setns only affects this (fresh) thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Netns {
    /// The processes living in this namespace, with their command lines (`ip netns pids`).
    pub fn processes(&self) -> Vec<(i32, String)> {
        let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() else {
            return Vec::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter_map(|pid: i32| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                Some((pid, text.trim().to_owned()))
            })
            .collect()
    }

    /// sshd's per-connection processes here (`sshd: root@notty`, `sshd: root [priv]`, …; the
    /// listener itself runs under its binary's path).
    pub fn ssh_sessions(&self) -> Vec<(i32, String)> {
        self.processes()
            .into_iter()
            .filter(|(_, cmd)| cmd.starts_with("sshd: ") && !cmd.contains("[listener]"))
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ignored = child.kill();
            let _ignored = child.wait();
        }
        self.kill_remaining();
        let _ignored = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

impl Netns {
    /// Kills what is still running inside the namespace: processes our children started and
    /// did not take with them (sshd's per-session children outlive a killed listener). `ip netns
    /// del` only unlinks the name, so without this they would run on in an unnamed namespace.
    /// Bounded: a few rounds of SIGKILL, as a fork between listing and killing is possible.
    /// Never this process itself: a benchmark that moved its own thread into the namespace
    /// (`setns`) is listed there too.
    fn kill_remaining(&self) {
        let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        for _ in 0..20 {
            let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() else {
                return;
            };
            let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .filter(|&pid| pid != me)
                .collect();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: kill(2) with a pid listed as living in this test's own namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Connects two namespaces with a veth pair (`a_if` in `a`, `b_if` in `b`), brings both up with
/// the given addresses, and turns TX checksum offload off on both ends: XDP_TX/redirect loses
/// veth's partial-checksum state and the receiver would drop the segment.
pub fn veth(a: &Netns, a_if: &str, a_addrs: &[&str], b: &Netns, b_if: &str, b_addrs: &[&str]) {
    run(&mut cmd(
        "ip",
        &[
            "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
            &b.name,
        ],
    ));
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        bring_up(ns, ifname, addrs);
    }
}

/// Adds `addrs` to `ifname` in `ns`, brings it up, and turns TX checksum offload off (veth
/// gotcha 1: an XDP_TX'd or redirected frame loses the partial-checksum state and the receiver
/// drops it; docs/toolchain.md).
pub fn bring_up(ns: &Netns, ifname: &str, addrs: &[&str]) {
    for addr in addrs {
        // nodad: IPv6 addresses are usable at once instead of after duplicate detection.
        let mut args = vec!["addr", "add", *addr, "dev", ifname];
        if addr.contains(':') {
            args.push("nodad");
        }
        ns.ip(&args);
    }
    ns.ip(&["link", "set", ifname, "up"]);
    run(ns.command("ethtool", &["-K", ifname, "tx", "off"]).stdout(Stdio::null()));
}

/// The standard output of a command that must have succeeded; otherwise panics with `what` and
/// everything it printed.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many times slower than native this machine runs the tests: `SSHLB_TEST_SLOWDOWN`
/// (a whole number, default 1; the e2e tier's guest sets it under software emulation, where
/// OpenSSH's process starts and key exchanges take many times longer). Every [`wait_for`] bound
/// is stretched by it: what a test waits for stays the same, only how long it may take changes.
pub fn slowdown() -> u32 {
    static FACTOR: OnceLock<u32> = OnceLock::new();
    *FACTOR.get_or_init(|| {
        std::env::var("SSHLB_TEST_SLOWDOWN").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1)
    })
}

/// A duration for the agent's or a daemon's configuration (`"300ms"`): `ms` milliseconds
/// stretched by [`slowdown`]. Under emulation the agent does what it does natively, only
/// slower, so its timeouts and intervals stretch with the kit's waits: a test that asserts what
/// a 300 ms health-check timeout does still asserts that, not how fast the emulated CPU is.
pub fn config_ms(ms: u32) -> String {
    format!("{}ms", ms * slowdown())
}

/// Polls `f` every 20 ms until it returns `Some` or `timeout` (× [`slowdown`]) passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout * slowdown();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Parses `sshlb-agent stats` output (`name value` lines) into pairs.
pub fn parse_stats(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let name = parts.next()?;
            let value = parts.next()?.parse().ok()?;
            Some((name.to_owned(), value))
        })
        .collect()
}

/// Where the tests pin: the agent's default root (names are unique per test).
pub const PIN_ROOT: &str = "/sys/fs/bpf/sshlb";

/// Undoes what a test attached, also when it fails: the balancer on `iface`, the XDP_PASS
/// program on the bridge port `pass_port`, and `files` (configs, logs, sockets).
pub struct Detach {
    /// The balancer's interface.
    pub iface: String,
    /// The bridge-side port carrying the pass program.
    pub pass_port: String,
    /// Files to remove.
    pub files: Vec<PathBuf>,
}

impl Drop for Detach {
    fn drop(&mut self) {
        let root = std::path::Path::new(PIN_ROOT);
        let _ignored = sshlb::loader::down(root, &self.iface);
        let _ignored = sshlb::loader::detach_pass(root, &self.pass_port);
        for f in &self.files {
            let _ignored = std::fs::remove_file(f);
        }
    }
}

/// Attaches the pass program to the bridge port (veth gotcha 2, docs/toolchain.md) and returns the
/// guard that undoes both it and the balancer on the topology's interface.
pub fn prepare_bridge(topo: &topo::Topo, files: Vec<PathBuf>) -> Detach {
    prepare_port(&topo.sw, &topo.lb_if, &topo.lb_port, files)
}

/// [`prepare_bridge`] for any balancer on the segment: `iface` is its interface, `port` that
/// interface's peer on the bridge in `sw`.
pub fn prepare_port(sw: &Netns, iface: &str, port: &str, files: Vec<PathBuf>) -> Detach {
    let pass_port = port.to_owned();
    sw.run(move || {
        sshlb::loader::attach_pass(std::path::Path::new(PIN_ROOT), &pass_port)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| panic!("pass program on the bridge port: {e}"));
    Detach { iface: iface.to_owned(), pass_port: port.to_owned(), files }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_fit_ifnamsiz() {
        let a = unique("lb");
        let b = unique("lb");
        assert_ne!(a, b);
        assert!(a.len() < 15, "{a} too long for an interface name");
    }

    #[test]
    fn parse_stats_reads_name_value_lines() {
        let parsed = parse_stats("pass_not_ip   3\nservice_hit  12\n(no packets seen yet)\n");
        assert_eq!(parsed, vec![("pass_not_ip".into(), 3), ("service_hit".into(), 12)]);
    }
}
