//! `sshlb-lab run|up|down|status` (driven by `cargo xtask run` and `cargo xtask lab ...`): the
//! lab — client behind a router, the balancer with one interface, three OpenSSH backends —
//! with the real `sshlb-agent` balancing SSH and git across them.
//!
//! `run` holds the lab in the foreground until Ctrl-C; `up` starts `run` in the background;
//! `down` stops it and removes everything the lab made, also after a crash (namespaces are named
//! `sshlb-lab-*`, pins and files are found from the state directory).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use sshlb::loader;
use sshlb_tests::{
    lab::Lab,
    topo::{DSR4, DSR6, VIP4, VIP6},
    wait_for, with_name_prefix,
};

const STATE: &str = "/run/sshlb-lab";
const PREFIX: &str = "sshlb-lab";
const CONTROL: &str = "/run/sshlb/lab.sock";
const PIN_ROOT: &str = "/sys/fs/bpf/sshlb";

fn state(name: &str) -> PathBuf {
    Path::new(STATE).join(name)
}

fn agent_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SSHLB_AGENT") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("exe dir")?.join("sshlb-agent");
    if !path.exists() {
        bail!("sshlb-agent not found next to {} (build it: cargo xtask build)", exe.display());
    }
    Ok(path)
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab needs root (network namespaces, XDP)");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => run(args.get(1).and_then(|s| s.parse().ok()).map(Duration::from_secs)),
        Some("up") => up(),
        Some("down") => down(),
        Some("status") => status(),
        _ => bail!("usage: sshlb-lab run [SECONDS] | up | down | status"),
    }
}

/// Builds the lab, starts the agent, prints how to use it, waits for Ctrl-C/SIGTERM (or
/// `duration`), and tears everything down.
fn run(duration: Option<Duration>) -> Result<()> {
    if state("pid").exists() {
        bail!("a lab is already up (or was not taken down): run `cargo xtask lab down` first");
    }
    std::fs::create_dir_all(STATE)?;
    std::fs::write(state("pid"), std::process::id().to_string())?;
    let _state = RemoveOnDrop(PathBuf::from(STATE));
    let agent = agent_path()?;
    println!("sshlb lab: building namespaces {PREFIX}-*, three OpenSSH backends, keys and a git repository...");
    let mut lab = with_name_prefix(PREFIX, || Lab::build(&state("files"), false));
    std::fs::write(state("iface"), &lab.topo.lb_if)?;
    std::fs::write(state("pass-port"), &lab.topo.lb_port)?;
    let pass_port = lab.topo.lb_port.clone();
    let attached = lab.topo.sw.run(move || {
        loader::attach_pass(Path::new(PIN_ROOT), &pass_port).map_err(|e| e.to_string())
    });
    attached.map_err(anyhow::Error::msg).context("XDP pass program on the bridge port")?;
    let _pins = Pins { iface: lab.topo.lb_if.clone(), pass_port: lab.topo.lb_port.clone() };
    let config = state("sshlb.toml");
    std::fs::write(&config, lab.config(CONTROL))?;
    let log = state("agent.log");
    let iface = lab.topo.lb_if.clone();
    let agent_str = agent.to_str().context("agent path")?.to_owned();
    let config_str = config.to_str().context("config path")?.to_owned();
    lab.topo.lb.spawn_logged(&agent_str, &["up", &iface, "--config", &config_str], &log);
    let started = wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(&log).ok().filter(|t| t.contains("attached to")).map(|_| ())
    });
    if started.is_none() {
        bail!("sshlb-agent did not start:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    let banner = usage(&lab, &agent, &iface);
    std::fs::write(state("usage"), &banner)?;
    print!("{banner}");
    std::fs::write(state("ready"), "")?;
    wait_for_signal(duration);
    println!("sshlb lab: tearing down");
    Ok(())
}

fn usage(lab: &Lab, agent: &Path, iface: &str) -> String {
    let f = &lab.files;
    // Show `sudo` only to someone who used it to get here.
    let sudo = if std::env::var_os("SUDO_USER").is_some() { "sudo " } else { "" };
    let client = &lab.topo.client.name;
    let ssh = format!(
        "ssh -i {} -o UserKnownHostsFile={}",
        f.path("client_key").display(),
        f.path("known_hosts").display()
    );
    format!(
        "\nsshlb lab is up: balancer on {iface} (namespace {lb}), backends b1 b2 b3 running OpenSSH.\n\
         VIPs: full NAT {VIP4} and [{VIP6}], direct server return {DSR4} and [{DSR6}] (port 22).\n\n\
         SSH through the balancer (run several times: $SSH_CONNECTION shows which backend answered):\n  \
         {sudo}ip netns exec {client} {ssh} root@{VIP4} 'echo $SSH_CONNECTION'\n  \
         {sudo}ip netns exec {client} {ssh} root@{DSR6} 'echo $SSH_CONNECTION'\n\n\
         git through the balancer:\n  \
         {sudo}ip netns exec {client} env GIT_SSH_COMMAND='{ssh}' git clone {} /tmp/sshlb-lab-clone\n\n\
         The balancer:\n  \
         {sudo}{agent} --control {CONTROL} status\n  \
         {sudo}{agent} --control {CONTROL} drain nat4/b3\n  \
         {sudo}{agent} stats {iface}\n\n\
         Agent log: {}\nCtrl-C (or `cargo xtask lab down`) takes everything down.\n",
        f.repo_url(VIP4),
        state("agent.log").display(),
        agent = agent.display(),
        lb = lab.topo.lb.name,
    )
}

fn wait_for_signal(duration: Option<Duration>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM");
        let sleep = tokio::time::sleep(duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            () = sleep => {}
        }
    });
}

/// Starts `run` in the background and waits until the lab is ready.
fn up() -> Result<()> {
    if state("pid").exists() {
        bail!("a lab is already up: `cargo xtask lab status`, or `cargo xtask lab down` first");
    }
    std::fs::create_dir_all("/run")?;
    let log = std::fs::File::create("/run/sshlb-lab.log")?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("run").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // SAFETY: setsid in the child before exec: it leaves our session so it outlives us.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().context("starting the lab")?;
    let started = Instant::now();
    while !state("ready").exists() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the lab did not come up; see /run/sshlb-lab.log");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    print!("{}", std::fs::read_to_string(state("usage")).unwrap_or_default());
    Ok(())
}

/// Stops a running lab and removes whatever a crashed one left.
fn down() -> Result<()> {
    if let Some(pid) =
        std::fs::read_to_string(state("pid")).ok().and_then(|p| p.trim().parse::<i32>().ok())
    {
        // SAFETY: kill(2) on the lab's own PID, recorded by it.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let gone = wait_for(Duration::from_secs(20), || {
            // SAFETY: signal 0 only probes.
            (unsafe { libc::kill(pid, 0) } != 0).then_some(())
        });
        if gone.is_none() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // Whatever survived a crash: pins, namespaces (killing their processes), files.
    if let Ok(iface) = std::fs::read_to_string(state("iface")) {
        let _ = loader::down(Path::new(PIN_ROOT), iface.trim());
    }
    if let Ok(port) = std::fs::read_to_string(state("pass-port")) {
        let _ = loader::detach_pass(Path::new(PIN_ROOT), port.trim());
    }
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(&format!("{PREFIX}-")) {
            let _ = Command::new("ip").args(["netns", "pids", name]).output().map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill(2) on processes inside the lab's own namespace.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            });
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
    let _ = std::fs::remove_dir_all(STATE);
    let _ = std::fs::remove_file(CONTROL);
    println!("sshlb lab: down (namespaces, processes, pins and files removed)");
    Ok(())
}

fn status() -> Result<()> {
    let Some(pid) = std::fs::read_to_string(state("pid")).ok() else {
        println!("sshlb lab: not up");
        return Ok(());
    };
    // SAFETY: signal 0 only probes.
    let alive = unsafe { libc::kill(pid.trim().parse().unwrap_or(0), 0) } == 0;
    println!(
        "sshlb lab: pid {} {}",
        pid.trim(),
        if alive { "running" } else { "gone (run `cargo xtask lab down`)" }
    );
    if alive {
        let out = Command::new(agent_path()?).args(["--control", CONTROL, "status"]).output()?;
        print!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Detaches the balancer and the bridge-port program when the lab ends.
struct Pins {
    iface: String,
    pass_port: String,
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = loader::down(Path::new(PIN_ROOT), &self.iface);
        let _ = loader::detach_pass(Path::new(PIN_ROOT), &self.pass_port);
    }
}
