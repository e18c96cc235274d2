//! `cargo xtask run`: the agent on a throwaway two-namespace veth topology with a small traffic
//! generator, until Ctrl-C, SIGTERM or `--duration`. Owns the demo's addresses, the agent and
//! generator processes, signal handling, and the teardown that always runs (drop guards).

use std::{
    io,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicI32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{build, cmd, netns, netns::Netns, setup};

/// The balancer's namespace is this plus xtask's pid.
const LB_NS_PREFIX: &str = "sshlb-run-lb-";
/// The client's namespace is this plus xtask's pid.
const CLIENT_NS_PREFIX: &str = "sshlb-run-client-";
/// The balancer's end of the veth pair, in the lb namespace.
const LB_DEV: &str = "lb0";
/// The client's end of the veth pair, in the client namespace.
const CLIENT_DEV: &str = "cl0";
/// Addresses: IPv4 from the benchmarking range 198.18.0.0/15, IPv6 from a /48 in fd00::/8.
const LB_V4: &str = "198.18.0.1";
const CLIENT_V4: &str = "198.18.0.2";
const LB_V6: &str = "fd00:5:1::1";
const CLIENT_V6: &str = "fd00:5:1::2";
/// The port the agent is told is a service.
const SERVICE_PORT: u16 = 22;
/// A port that is not a service: its traffic passes untouched.
const OTHER_PORT: u16 = 80;
/// How often the agent prints its counters.
const STATS_INTERVAL_SECS: u64 = 2;
/// The agent's default pin root (`sshlb-agent --pin-root`); its pins for an interface live in
/// `<root>/<iface>`.
const PIN_ROOT: &str = "/sys/fs/bpf/sshlb";
/// How long the agent may take to load and attach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a child may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `cargo xtask run`: sets the machine up, builds the agent, and runs the demo topology until
/// Ctrl-C, SIGTERM or `duration`. Tears everything down on every way out.
pub fn run(duration: Option<Duration>) -> Result<()> {
    ensure!(
        crate::is_root(),
        "`cargo xtask run` must run as root: it creates network namespaces and loads an XDP program"
    );
    setup::setup()?;
    let agent_bin = build::build(false)?;
    let pin_dir = Path::new(PIN_ROOT).join(LB_DEV);
    clean_up_after_killed_runs(&agent_bin, &pin_dir)?;

    signals::install()?;
    let pid = std::process::id();
    // Declared first, dropped last: the namespaces outlive the processes running inside them.
    let lb = Netns::create(&format!("{LB_NS_PREFIX}{pid}"))?;
    let client = Netns::create(&format!("{CLIENT_NS_PREFIX}{pid}"))?;
    wire(&lb, &client)?;
    let mut agent = Agent::start(&agent_bin, &lb, pin_dir)?;
    agent.wait_attached()?;
    let traffic = Traffic::start(&client)?;
    println!("{}", banner(lb.name(), client.name(), duration));

    let reason = wait_for_stop(&mut agent, duration)?;
    println!("xtask: stopping ({reason}); cleaning up");
    drop(traffic);
    agent.stop()?;
    let names = [lb.name().to_owned(), client.name().to_owned()];
    drop(client);
    drop(lb);
    let left: Vec<String> = netns::list()?.into_iter().filter(|ns| names.contains(ns)).collect();
    ensure!(left.is_empty(), "network namespaces still exist after cleanup: {left:?}");
    println!("xtask: cleaned up: agent stopped, XDP detached from {LB_DEV}, namespaces deleted");
    Ok(())
}

/// A run that was SIGKILLed could not clean up: its namespaces stay (its agent and generator
/// got SIGTERM from the kernel) and so do the pins for `lb0`. Removes both when the run that made
/// them is gone; fails clearly if `lb0` is pinned by something else.
fn clean_up_after_killed_runs(agent_bin: &Path, pin_dir: &Path) -> Result<()> {
    let mut killed_runs = false;
    let mut live_runs = Vec::new();
    for name in netns::list()? {
        let Some(owner) = run_namespace_owner(&name) else { continue };
        if Path::new("/proc").join(owner.to_string()).exists() {
            live_runs.push(owner);
            continue;
        }
        println!(
            "xtask: removing namespace {name}, left by a killed `cargo xtask run` (pid {owner})"
        );
        netns::delete(&name)?;
        killed_runs = true;
    }
    if pin_dir.exists() && killed_runs && live_runs.is_empty() {
        println!(
            "xtask: detaching the data plane a killed run left pinned at {}",
            pin_dir.display()
        );
        cmd::run(Command::new(agent_bin).args(["down", LB_DEV]))?;
    }
    ensure!(
        !pin_dir.exists(),
        "{} exists: a data plane is pinned for {LB_DEV} by {}; `{} down {LB_DEV}` removes it",
        pin_dir.display(),
        match live_runs.first() {
            Some(pid) => format!("a running `cargo xtask run` (pid {pid})"),
            None => "something other than `cargo xtask run`".to_owned(),
        },
        agent_bin.display()
    );
    Ok(())
}

/// The pid of the `cargo xtask run` that named namespace `name`, if it is one of ours.
fn run_namespace_owner(name: &str) -> Option<u32> {
    [LB_NS_PREFIX, CLIENT_NS_PREFIX]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .and_then(|pid| pid.parse().ok())
}

/// Joins the namespaces with the veth pair and gives both ends their addresses.
fn wire(lb: &Netns, client: &Netns) -> Result<()> {
    netns::add_veth_pair(lb, LB_DEV, client, CLIENT_DEV)?;
    for (ns, dev, v4, v6) in
        [(lb, LB_DEV, LB_V4, LB_V6), (client, CLIENT_DEV, CLIENT_V4, CLIENT_V6)]
    {
        ns.add_addr(dev, &format!("{v4}/24"))?;
        ns.add_addr(dev, &format!("{v6}/64"))?;
        ns.tx_offload_off(dev)?;
        ns.link_up(dev)?;
    }
    Ok(())
}

/// Why the demo stopped.
fn wait_for_stop(agent: &mut Agent<'_>, duration: Option<Duration>) -> Result<String> {
    let deadline = duration.map(|d| Instant::now() + d);
    loop {
        if let Some(signal) = signals::received() {
            return Ok(signals::name(signal).to_owned());
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            let secs = duration.unwrap_or_default().as_secs();
            return Ok(format!("--duration {secs} elapsed"));
        }
        if let Some(status) = agent.exited()? {
            bail!("sshlb-agent exited unexpectedly ({status})");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The running `sshlb-agent up`. Dropping it stops the agent and detaches the data plane.
struct Agent<'ns> {
    child: Child,
    binary: PathBuf,
    lb: &'ns Netns,
    pin_dir: PathBuf,
    stopped: bool,
}

impl<'ns> Agent<'ns> {
    /// Starts `sshlb-agent up lb0` in the lb namespace's network stack only (`nsenter --net`):
    /// under `ip netns exec` its pins would land in a private sysfs and vanish with it.
    fn start(binary: &Path, lb: &'ns Netns, pin_dir: PathBuf) -> Result<Self> {
        // Services without backends (the lab with sshd backends replaces this demo): their SYNs
        // are counted as drop_no_backend, everything else passes.
        let config = std::env::temp_dir().join(format!("sshlb-run-{}.toml", std::process::id()));
        std::fs::write(
            &config,
            format!(
                "[agent]\nnat-v4 = \"{LB_V4}\"\nnat-v6 = \"{LB_V6}\"\n\n\
                 [[service]]\nname = \"demo4\"\nvip = \"{LB_V4}\"\nport = {SERVICE_PORT}\n\n\
                 [[service]]\nname = \"demo6\"\nvip = \"{LB_V6}\"\nport = {SERVICE_PORT}\n"
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let mut command = lb.enter_net(binary);
        command
            .args(["up", LB_DEV, "--stats-interval", &STATS_INTERVAL_SECS.to_string()])
            .arg("--config")
            .arg(&config);
        own_process_group_dying_with_us(&mut command);
        println!("$ {}", cmd::display(&command));
        let child = command.spawn().context("starting sshlb-agent")?;
        Ok(Self { child, binary: binary.to_owned(), lb, pin_dir, stopped: false })
    }

    /// Waits until the XDP program shows up on `lb0`, failing if the agent exits first.
    fn wait_attached(&mut self) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < ATTACH_TIMEOUT {
            if let Some(status) = self.exited()? {
                bail!("sshlb-agent exited before attaching to {LB_DEV} ({status}); see its output");
            }
            if let Some(signal) = signals::received() {
                bail!("interrupted by {} while the agent was attaching", signals::name(signal));
            }
            if self.lb.xdp_attached(LB_DEV)? {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!("sshlb-agent did not attach to {LB_DEV} within {} s", ATTACH_TIMEOUT.as_secs())
    }

    /// The agent's exit status if it has exited.
    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait().context("checking on sshlb-agent")
    }

    /// Stops the agent and detaches the data plane, reporting failures.
    fn stop(mut self) -> Result<()> {
        self.stopped = true;
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let stopped = terminate(&mut self.child, false, "sshlb-agent");
        // The agent leaves the program attached and pinned on exit by design; `down` detaches it.
        let detached = if self.pin_dir.exists() {
            cmd::run(self.lb.enter_net(&self.binary).args(["down", LB_DEV]))
                .context("detaching the data plane")
        } else {
            Ok(())
        };
        stopped.and(detached)
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        if !self.stopped {
            if let Err(err) = self.shutdown() {
                eprintln!("xtask: warning: {err:#}");
            }
        }
    }
}

/// The traffic generator loop in the client namespace; killed (whole process group) on drop.
struct Traffic {
    child: Child,
}

impl Traffic {
    fn start(client: &Netns) -> Result<Self> {
        let mut command = client.exec("bash");
        command.args(["-c", &traffic_script()]).stdout(Stdio::null()).stderr(Stdio::null());
        own_process_group_dying_with_us(&mut command);
        let child = command.spawn().context("starting the traffic generator")?;
        Ok(Self { child })
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        if let Err(err) = terminate(&mut self.child, true, "traffic generator") {
            eprintln!("xtask: warning: {err:#}");
        }
    }
}

/// The generator: every second one ping per family and one TCP connect per port and family, all
/// at once, each bounded to 1 s. Nothing answers on the ports (connects are refused or dropped):
/// the point is the packets the data plane counts.
fn traffic_script() -> String {
    let mut probes = String::new();
    for (ping, addr) in [("ping -4", LB_V4), ("ping -6", LB_V6)] {
        probes.push_str(&format!("  {ping} -c 1 -W 1 {addr} &\n"));
        for port in [SERVICE_PORT, OTHER_PORT] {
            probes.push_str(&format!("  timeout 1 bash -c '</dev/tcp/{addr}/{port}' &\n"));
        }
    }
    format!("while true; do\n{probes}  sleep 1\n  wait\ndone\n")
}

/// What the generator's packets show up as, by counter name (`sshlb_common::stats::NAMES`).
const EXPECTED_COUNTERS: &[(&str, &str)] = &[
    ("drop_no_backend", "the :22 connects: TCP to a service, which has no backends in this demo"),
    ("pass_not_service", "the :80 connects: TCP to a port that is not a service"),
    ("pass_not_tcp", "pings, IPv6 neighbour discovery"),
    ("pass_not_ip", "ARP"),
    ("pass_ipv6_ext_header", "MLD reports (hop-by-hop header) as the links come up"),
];

/// What is running and what the counters mean.
fn banner(lb: &str, client: &str, duration: Option<Duration>) -> String {
    let mut text = format!(
        "\n\
         sshlb run: sshlb-agent is attached to {LB_DEV} (namespace {lb})\n\
         \x20 {LB_DEV} {LB_V4}/24 {LB_V6}/64  <-- veth -->  {CLIENT_DEV} {CLIENT_V4}/24 \
         {CLIENT_V6}/64 (namespace {client})\n\
         \x20 services: {LB_V4}:{SERVICE_PORT} and [{LB_V6}]:{SERVICE_PORT}, no backends yet\n\
         \x20 traffic: every second the client pings {LB_V4} and {LB_V6} and connects to ports \
         {SERVICE_PORT} and {OTHER_PORT} of each\n\
         \x20   (nothing answers there, so the connects fail; that is expected)\n\
         \x20 every {STATS_INTERVAL_SECS} s the agent prints its non-zero counters, one per \
         outcome for packets arriving on {LB_DEV}:\n"
    );
    for (name, meaning) in EXPECTED_COUNTERS {
        text.push_str(&format!("    {name:<20}  {meaning}\n"));
    }
    text.push_str("    other drop_*          malformed frames: should stay at 0\n");
    match duration {
        Some(d) => {
            text.push_str(&format!("Stops by itself after {} s, or on Ctrl-C.\n", d.as_secs()))
        }
        None => text.push_str("Stop with Ctrl-C.\n"),
    }
    text
}

/// Puts a child in its own process group, so a terminal's Ctrl-C reaches only xtask, which then
/// stops the children in order; and asks the kernel to SIGTERM it if xtask dies without cleaning
/// up (SIGKILL), so nothing keeps running unowned.
fn own_process_group_dying_with_us(command: &mut Command) {
    command.process_group(0).stdin(Stdio::null());
    let die_with_parent = || {
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on the calling process.
        let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
        if rc == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: the hook runs between fork and exec and calls only prctl, which is
    // async-signal-safe and allocates nothing.
    unsafe { command.pre_exec(die_with_parent) };
}

/// Sends SIGTERM (to the child's whole process group if `group`), waits up to [`STOP_TIMEOUT`],
/// then SIGKILLs. Reaps the child either way.
fn terminate(child: &mut Child, group: bool, what: &str) -> Result<()> {
    if child.try_wait().with_context(|| format!("checking on the {what}"))?.is_some() {
        return Ok(());
    }
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    let target = if group { -pid } else { pid };
    // SAFETY: kill has no memory preconditions; `target` is our child (or its process group),
    // which has not been reaped, so the pid cannot have been reused.
    unsafe { libc::kill(target, libc::SIGTERM) };
    let started = Instant::now();
    while started.elapsed() < STOP_TIMEOUT {
        if child.try_wait().with_context(|| format!("waiting for the {what}"))?.is_some() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "xtask: warning: the {what} ignored SIGTERM for {} s; killing it",
        STOP_TIMEOUT.as_secs()
    );
    child.kill().with_context(|| format!("killing the {what}"))?;
    child.wait().with_context(|| format!("reaping the {what}"))?;
    Ok(())
}

/// SIGINT/SIGTERM handling for `run`: the handler only records the signal; the main loop polls it
/// and tears down in order.
mod signals {
    use super::*;

    /// The last signal received, 0 for none.
    static RECEIVED: AtomicI32 = AtomicI32::new(0);

    extern "C" fn record(signal: libc::c_int) {
        RECEIVED.store(signal, Ordering::SeqCst);
    }

    /// Installs the handler for SIGINT and SIGTERM.
    pub(super) fn install() -> Result<()> {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: all-zero is a valid sigaction (empty mask, no flags); the handler only does
            // an atomic store, which is async-signal-safe.
            let rc = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = record as extern "C" fn(libc::c_int) as libc::sighandler_t;
                libc::sigaction(signal, &action, std::ptr::null_mut())
            };
            if rc == -1 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("installing the {} handler", name(signal)));
            }
        }
        Ok(())
    }

    /// The signal received since [`install`], if any.
    pub(super) fn received() -> Option<libc::c_int> {
        match RECEIVED.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }

    /// A signal's name for messages.
    pub(super) fn name(signal: libc::c_int) -> &'static str {
        match signal {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            _ => "signal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_script_covers_both_families_and_both_ports() {
        let script = traffic_script();
        for needle in [
            "ping -4 -c 1 -W 1 198.18.0.1",
            "ping -6 -c 1 -W 1 fd00:5:1::1",
            "</dev/tcp/198.18.0.1/22",
            "</dev/tcp/198.18.0.1/80",
            "</dev/tcp/fd00:5:1::1/22",
            "</dev/tcp/fd00:5:1::1/80",
            "sleep 1\n  wait",
        ] {
            assert!(script.contains(needle), "missing {needle:?} in:\n{script}");
        }
        let status = Command::new("bash").args(["-n", "-c", &script]).status().expect("bash runs");
        assert!(status.success(), "script does not parse:\n{script}");
    }

    #[test]
    fn addresses_stay_in_the_benchmarking_and_ula_ranges() {
        for v4 in [LB_V4, CLIENT_V4] {
            let addr: std::net::Ipv4Addr = v4.parse().expect("IPv4 literal");
            assert_eq!(addr.octets()[..2], [198, 18], "{v4} outside 198.18.0.0/15");
        }
        for v6 in [LB_V6, CLIENT_V6] {
            let addr: std::net::Ipv6Addr = v6.parse().expect("IPv6 literal");
            assert_eq!(addr.octets()[0], 0xfd, "{v6} outside fd00::/8");
        }
    }

    #[test]
    fn banner_names_counters_the_data_plane_has() {
        for (name, _) in EXPECTED_COUNTERS {
            assert!(
                sshlb_common::stats::NAMES.contains(name),
                "banner explains counter {name}, which sshlb_common::stats no longer has"
            );
        }
    }

    #[test]
    fn recognises_only_its_own_namespaces() {
        assert_eq!(run_namespace_owner("sshlb-run-lb-4242"), Some(4242));
        assert_eq!(run_namespace_owner("sshlb-run-client-17"), Some(17));
        assert_eq!(run_namespace_owner("sshlb-test-lb-17"), None);
        assert_eq!(run_namespace_owner("sshlb-run-lb-x"), None);
    }

    #[test]
    fn banner_names_the_namespaces_and_how_it_stops() {
        let text = banner("sshlb-run-lb-7", "sshlb-run-client-7", Some(Duration::from_secs(8)));
        assert!(text.contains("namespace sshlb-run-lb-7"), "{text}");
        assert!(text.contains("namespace sshlb-run-client-7"), "{text}");
        assert!(text.contains("    pass_ipv6_ext_header  MLD"), "{text}");
        assert!(text.contains("    drop_no_backend       the :22 connects"), "{text}");
        assert!(text.contains("after 8 s"), "{text}");
        assert!(banner("a", "b", None).contains("Ctrl-C"));
    }
}
