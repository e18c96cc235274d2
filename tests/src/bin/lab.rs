//! `sshlb-lab run|up|down|status` (driven by `cargo xtask run` and `cargo xtask lab ...`): the
//! lab — client behind a router, the balancer with one interface, three OpenSSH backends —
//! with the real `sshlb-agent` balancing SSH and git across them. With `--balancers N` (N > 1)
//! it is the HA lab ([`sshlb_tests::ha`]): N balancers, each with its agent and BIRD, announcing
//! the DSR VIPs by BGP + BFD to the router, which spreads flows over them by ECMP.
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
    agent::AgentHandle,
    ha::{HaLab, NatPair, NAT4},
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
    let usage = "usage: sshlb-lab run [SECONDS] [--balancers N | --nat-pair] \
                 | up [--balancers N | --nat-pair] | down | status";
    match args.first().map(String::as_str) {
        Some("run") => {
            let (shape, rest) = shape_arg(&args[1..])?;
            let duration = match rest.as_slice() {
                [] => None,
                [secs] => Some(Duration::from_secs(secs.parse().map_err(|_| {
                    anyhow::anyhow!("run: SECONDS must be a whole number, got {secs:?}\n{usage}")
                })?)),
                _ => bail!("run: unexpected arguments {rest:?}\n{usage}"),
            };
            match shape {
                Shape::Balancers(1) => run(duration),
                Shape::Balancers(n) => run_ha(duration, n),
                Shape::NatPair => run_nat_pair(duration),
            }
        }
        Some("up") => {
            let (shape, rest) = shape_arg(&args[1..])?;
            if !rest.is_empty() {
                bail!("up: unexpected arguments {rest:?}\n{usage}");
            }
            up(shape)
        }
        Some("down") => down(),
        Some("status") => status(),
        _ => bail!("{usage}"),
    }
}

/// Which lab: N balancers (1: the plain lab; more: behind the ECMP router), or the full-NAT pair
/// behind keepalived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Balancers(u8),
    NatPair,
}

impl Shape {
    /// The arguments that ask `run` for this shape.
    fn args(self) -> Vec<String> {
        match self {
            Self::Balancers(n) => vec!["--balancers".into(), n.to_string()],
            Self::NatPair => vec!["--nat-pair".into()],
        }
    }
}

/// Takes `--balancers N` (1 to 8; default 1) or `--nat-pair` out of `args`; returns the shape and
/// the other arguments.
fn shape_arg(args: &[String]) -> Result<(Shape, Vec<String>)> {
    let mut balancers = None;
    let mut nat_pair = false;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = if arg == "--balancers" {
            it.next().context("--balancers needs a value: a number from 1 to 8")?.as_str()
        } else if let Some(v) = arg.strip_prefix("--balancers=") {
            v
        } else if arg == "--nat-pair" {
            nat_pair = true;
            continue;
        } else {
            rest.push(arg.clone());
            continue;
        };
        let n = value.parse::<u8>().ok().filter(|n| (1..=8).contains(n)).with_context(|| {
            format!("--balancers: expected a number from 1 to 8, got {value:?}")
        })?;
        balancers = Some(n);
    }
    match (balancers, nat_pair) {
        (Some(_), true) => bail!("--balancers and --nat-pair are two different labs: pick one"),
        (_, true) => Ok((Shape::NatPair, rest)),
        (n, false) => Ok((Shape::Balancers(n.unwrap_or(1)), rest)),
    }
}

/// Claims the state directory for this process (refused while another lab is up): its guard,
/// which removes it, and the agent binary to run.
fn claim() -> Result<(RemoveOnDrop, PathBuf)> {
    if state("pid").exists() {
        bail!("a lab is already up (or was not taken down): run `cargo xtask lab down` first");
    }
    std::fs::create_dir_all(STATE)?;
    std::fs::write(state("pid"), std::process::id().to_string())?;
    let guard = RemoveOnDrop(PathBuf::from(STATE));
    Ok((guard, agent_path()?))
}

/// Builds the lab, starts the agent, prints how to use it, waits for Ctrl-C/SIGTERM (or
/// `duration`), and tears everything down.
fn run(duration: Option<Duration>) -> Result<()> {
    let (_state, agent) = claim()?;
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
    serve(&banner, duration)
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

/// The HA lab: `balancers` balancers with their agents and BIRDs behind the ECMP router; the
/// same life cycle as [`run`].
fn run_ha(duration: Option<Duration>, balancers: u8) -> Result<()> {
    let (_state, agent) = claim()?;
    // AgentHandle runs the binary the tests build; the lab's own is the one xtask just built.
    std::env::set_var("SSHLB_AGENT", &agent);
    println!(
        "sshlb lab: building namespaces {PREFIX}-*, {balancers} balancers with BIRD, a router with \
         BIRD and ECMP, three OpenSSH backends, keys and a git repository..."
    );
    let ha = with_name_prefix(PREFIX, || HaLab::build(&state("files"), false, balancers));
    let nodes: Vec<_> = (0..ha.len()).map(|i| ha.node(i)).collect();
    let lines = |f: &dyn Fn(&sshlb_tests::ha::Node<'_>) -> String| -> String {
        nodes.iter().map(|n| f(n) + "\n").collect()
    };
    std::fs::write(state("iface"), lines(&|n| n.iface.to_owned()))?;
    std::fs::write(state("pass-port"), lines(&|n| n.port.to_owned()))?;
    let mut agents: Vec<AgentHandle<'_>> = (0..ha.len()).map(|i| ha.agent(i)).collect();
    let mut pids = Vec::new();
    for (i, agent) in agents.iter_mut().enumerate() {
        agent.write_config(&ha.config(i, agent.control()));
        pids.push(agent.up());
    }
    let controls: Vec<String> = agents.iter().map(|a| a.control().display().to_string()).collect();
    let controls = controls.join("\n") + "\n";
    std::fs::write(state("controls"), &controls)?;
    for agent in &agents {
        agent.wait_until_up();
    }
    let all: Vec<usize> = (0..ha.len()).collect();
    if !ha.wait_routed_over(DSR4, &all, Duration::from_secs(60)) {
        bail!(
            "the router did not route {DSR4} over every balancer: {:?}\n{}",
            ha.next_hops(DSR4),
            ha.router_protocols()
        );
    }
    let banner = usage_ha(&ha, &agents, &pids, &agent);
    serve(&banner, duration)
}

fn usage_ha(ha: &HaLab, agents: &[AgentHandle<'_>], pids: &[u32], agent: &Path) -> String {
    let f = &ha.lab.files;
    let sudo = if std::env::var_os("SUDO_USER").is_some() { "sudo " } else { "" };
    let client = &ha.lab.topo.client.name;
    let router = &ha.lab.topo.router.name;
    let ssh = format!(
        "ssh -i {} -o UserKnownHostsFile={}",
        f.path("client_key").display(),
        f.path("known_hosts").display()
    );
    let mut out = format!(
        "\nsshlb HA lab is up: {} balancers, each running sshlb-agent and BIRD (AS {}), announce the \
         direct-server-return VIPs {DSR4} and [{DSR6}] (port 22) by BGP with BFD to the router \
         ({router}, BIRD, AS {}), which spreads flows over them by ECMP on the L4 hash; backends \
         b1 b2 b3 run OpenSSH.\n\n\
         The router's route (one next hop per announcing balancer):\n  \
         {sudo}ip -n {router} route show {DSR4}\n  \
         {sudo}birdc -s {} show protocols\n\n\
         SSH and git through the VIP:\n  \
         {sudo}ip netns exec {client} {ssh} root@{DSR4} 'echo $SSH_CONNECTION'\n  \
         {sudo}ip netns exec {client} env GIT_SSH_COMMAND='{ssh}' git clone {} /tmp/sshlb-lab-clone\n\n\
         The balancers:\n",
        ha.len(),
        sshlb_tests::ha::BALANCER_AS,
        sshlb_tests::ha::ROUTER_AS,
        ha.router_bird.socket().display(),
        f.repo_url(DSR4),
    );
    for (i, (a, pid)) in agents.iter().zip(pids).enumerate() {
        let node = ha.node(i);
        out += &format!(
            "  lb{i} {} in {} (agent pid {pid}, BIRD pid {}):\n    {sudo}{} --control {} status\n",
            node.addr4,
            node.ns.name,
            ha.birds[i].pid().unwrap_or_default(),
            agent.display(),
            a.control().display(),
        );
    }
    let last = ha.len() - 1;
    let node = ha.node(last);
    out += &format!(
        "\nTry a failover: keep a session streaming\n  \
         {sudo}ip netns exec {client} {ssh} root@{DSR4} 'while sleep 0.2; do date +%T.%N; done'\n\
         then kill lb{last} hard — cut its link, SIGKILL its agent and BIRD:\n  \
         {sudo}ip -n {} link set {} down; {sudo}kill -9 {} {}\n\
         The router drops its next hop by BFD within ~0.3 s (`ip -n {router} route show {DSR4}`) and \
         the session goes on through a survivor, which sends its packets by the same ring to the \
         same backend. Or let a balancer leave cleanly:\n  \
         {sudo}{} --control {} maintenance on   (and: maintenance off)\n\n\
         Ctrl-C (or `cargo xtask lab down`) takes everything down.\n",
        node.ns.name,
        node.iface,
        pids[last],
        ha.birds[last].pid().unwrap_or_default(),
        agent.display(),
        agents[0].control().display(),
    );
    out
}

/// The full-NAT pair: two balancers with their agents, keepalived moving the NAT VIP and the
/// NAT address to the master; the same life cycle as [`run`].
fn run_nat_pair(duration: Option<Duration>) -> Result<()> {
    let (_state, agent) = claim()?;
    std::env::set_var("SSHLB_AGENT", &agent);
    println!(
        "sshlb lab: building namespaces {PREFIX}-*, two full-NAT balancers with keepalived, three \
         OpenSSH backends, keys and a git repository..."
    );
    let pair = with_name_prefix(PREFIX, || NatPair::build(&state("files"), false));
    let nodes = [pair.node(0), pair.node(1)];
    std::fs::write(state("iface"), format!("{}\n{}\n", nodes[0].iface, nodes[1].iface))?;
    std::fs::write(state("pass-port"), format!("{}\n{}\n", nodes[0].port, nodes[1].port))?;
    let mut agents: Vec<AgentHandle<'_>> = (0..2).map(|i| pair.agent(i)).collect();
    let mut pids = Vec::new();
    for agent in &mut agents {
        agent.write_config(&NatPair::config(agent.control()));
        pids.push(agent.up());
    }
    let controls: Vec<String> = agents.iter().map(|a| a.control().display().to_string()).collect();
    std::fs::write(state("controls"), controls.join("\n") + "\n")?;
    for agent in &agents {
        agent.wait_until_up();
    }
    if wait_for(Duration::from_secs(20), || pair.holds(0).then_some(())).is_none() {
        bail!("balancer 0 never became VRRP master:\n{}", pair.keepaliveds[0].log_text());
    }
    let f = &pair.lab.files;
    let sudo = if std::env::var_os("SUDO_USER").is_some() { "sudo " } else { "" };
    let client = &pair.lab.topo.client.name;
    let ssh = format!(
        "ssh -i {} -o UserKnownHostsFile={} -o ServerAliveInterval=1",
        f.path("client_key").display(),
        f.path("known_hosts").display()
    );
    let banner = format!(
        "\nsshlb NAT-pair lab is up: two full-NAT balancers ({} master, {} standby) with the same \
         configuration; keepalived (VRRP) holds the VIP {VIP4} and the NAT address {NAT4} on the \
         master and moves both to the standby when the master dies.\n\n\
         SSH through the VIP ($SSH_CONNECTION shows the NAT address):\n  \
         {sudo}ip netns exec {client} {ssh} root@{VIP4} 'echo $SSH_CONNECTION'\n\n\
         Try a failover: keep a session busy\n  \
         {sudo}ip netns exec {client} {ssh} root@{VIP4} 'while sleep 0.2; do date +%T.%N; done'\n\
         then kill the master hard — cut its link, SIGKILL its keepalived and agent:\n  \
         {sudo}ip -n {} link set {} down; {sudo}kill -9 {} {}\n\
         The standby takes both addresses within ~0.3 s and recovers the session's next segment to \
         the same backend with the same NAT port ({sudo}{} --control {} status).\n\n\
         Ctrl-C (or `cargo xtask lab down`) takes everything down.\n",
        nodes[0].ns.name,
        nodes[1].ns.name,
        nodes[0].ns.name,
        nodes[0].iface,
        pair.keepaliveds[0].pid().unwrap_or_default(),
        pids[0],
        agent.display(),
        agents[1].control().display(),
    );
    serve(&banner, duration)
}

/// Prints (and records for `lab status`) how to use the lab, says it is ready, and waits for
/// Ctrl-C/SIGTERM or `duration`; the caller's guards tear it down.
fn serve(banner: &str, duration: Option<Duration>) -> Result<()> {
    std::fs::write(state("usage"), banner)?;
    print!("{banner}");
    std::fs::write(state("ready"), "")?;
    wait_for_signal(duration);
    println!("sshlb lab: tearing down");
    Ok(())
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
fn up(shape: Shape) -> Result<()> {
    if state("pid").exists() {
        bail!("a lab is already up: `cargo xtask lab status`, or `cargo xtask lab down` first");
    }
    std::fs::create_dir_all("/run")?;
    let log = std::fs::File::create("/run/sshlb-lab.log")?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("run").args(shape.args());
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
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
    // One line per balancer (the HA lab has several).
    for iface in std::fs::read_to_string(state("iface")).unwrap_or_default().lines() {
        let _ = loader::down(Path::new(PIN_ROOT), iface.trim());
    }
    for port in std::fs::read_to_string(state("pass-port")).unwrap_or_default().lines() {
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
        // The HA lab lists its balancers' control sockets, one a line.
        let controls =
            std::fs::read_to_string(state("controls")).unwrap_or_else(|_| format!("{CONTROL}\n"));
        for control in controls.lines() {
            println!("== {control}");
            let out =
                Command::new(agent_path()?).args(["--control", control, "status"]).output()?;
            print!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
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
