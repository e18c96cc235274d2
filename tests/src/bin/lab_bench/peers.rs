//! The peers in the lab and how each is brought up and taken down: sshlb (the agent in-process,
//! full NAT, DSR and IP-in-IP tunnel services), HAProxy `mode tcp` as operators configure it, and
//! netfilter DNAT. Direct (no balancer) needs nothing; the tunnel's backend sits in another
//! subnet behind the router and runs `sshlb-agent backend up` ([`FarBackend`]).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use sshlb::{config, loader};
use sshlb_tests::{
    agent::AgentThread,
    agent_binary,
    config::{BackendBuilder, ConfigBuilder, ServiceBuilder},
    lab::{sshd_options, Lab},
    sshd::Sshd,
    topo::{Conn, BACKENDS, DSR4, FAR4, LB4, TUN4, VIP4},
    unique, wait_for, Netns, PIN_ROOT,
};

/// b1's second iperf3 server, for sshlb's full-NAT iperf3 service.
pub const NAT_IPERF_PORT: u16 = 5202;

/// HAProxy's and netfilter's VIPs (on the balancer's interface, next to sshlb's).
pub const HAPROXY_VIP: &str = "198.18.0.104";
pub const DNAT_VIP: &str = "198.18.0.105";

/// One way from the client to the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Straight to b1, no balancer.
    Direct,
    /// sshlb, full NAT.
    SshlbNat,
    /// sshlb, direct server return.
    SshlbDsr,
    /// Straight to the far backend (the tunnel's), no balancer.
    DirectFar,
    /// sshlb, IP-in-IP tunnel to the far backend.
    SshlbTunnel,
    /// HAProxy `mode tcp`.
    Haproxy,
    /// netfilter DNAT + SNAT in the balancer's namespace.
    Dnat,
}

impl Peer {
    /// The name printed and written to JSON.
    pub fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct (b1)",
            Self::SshlbNat => "sshlb nat",
            Self::SshlbDsr => "sshlb dsr",
            Self::DirectFar => "direct (far)",
            Self::SshlbTunnel => "sshlb tunnel",
            Self::Haproxy => "haproxy",
            Self::Dnat => "netfilter DNAT",
        }
    }

    /// The address the client connects to.
    pub fn target(self) -> &'static str {
        match self {
            Self::Direct => BACKENDS[0].1,
            Self::SshlbNat => VIP4,
            Self::SshlbDsr => DSR4,
            Self::DirectFar => FAR4,
            Self::SshlbTunnel => TUN4,
            Self::Haproxy => HAPROXY_VIP,
            Self::Dnat => DNAT_VIP,
        }
    }
}

/// sshlb on the lab's balancer: the measured IPv4 SSH services (full NAT and DSR, the lab's,
/// with health checks every `interval`; IP-in-IP to the far backend when `tunnel`), optionally
/// iperf3 ones, all backends up. Stopped and
/// detached by [`Self::stop`], so no XDP program sits on the balancer's interface while another
/// peer is measured.
pub struct Sshlb {
    agent: AgentThread,
    iface: String,
}

impl Sshlb {
    /// Starts the agent and waits (10 s) until every backend is up. Every check is a connection
    /// an sshd forks for: throughput turns use HAProxy's interval (2 s), so both peers load the
    /// backends alike; the lab's 250 ms are for the failover measurement.
    ///
    /// `iperf` adds the iperf3 services (unchecked after the first probe: an iperf3 server
    /// serves one client at a time, and a probe is one).
    pub fn start(lab: &Lab, interval: &str, iperf: bool, tunnel: bool) -> Result<Self> {
        let control = PathBuf::from(format!("/run/sshlb/bench-{}.sock", lab.topo.lb_if));
        let mut built = ConfigBuilder::new().control(&control);
        for (name, vip, mode) in [("nat4", VIP4, "nat"), ("dsr4", DSR4, "dsr")] {
            built = built
                .service(Lab::ssh_service(name, vip, mode, false).health("interval", interval));
        }
        if tunnel {
            built = built.service(
                ServiceBuilder::new("tun4", TUN4, 22)
                    .mode("tunnel")
                    .raw("encap = \"ipip\"")
                    .health("interval", interval)
                    .backend(BackendBuilder::new("far1", FAR4)),
            );
        }
        let (b1, b1_v4, _) = BACKENDS[0];
        let mut iperf_services = Vec::new();
        if iperf {
            // Full NAT rewrites the port: its own iperf3 server on b1 (5202), so each server
            // meets one first probe (a second one, waiting behind the first on a one-client
            // server, was seen to fail, and the next comes an hour later).
            iperf_services.push(("nat4-iperf", VIP4, "nat", b1, b1_v4, NAT_IPERF_PORT));
            iperf_services.push(("dsr4-iperf", DSR4, "dsr", b1, b1_v4, 5201));
            if tunnel {
                iperf_services.push(("tun4-iperf", TUN4, "tunnel", "far1", FAR4, 5201));
            }
        }
        for (name, vip, mode, b, addr, port) in iperf_services {
            // iperf3 opens a control and a data connection that must meet the same server:
            // every peer sends iperf3 to one backend only (the path is what is measured, not
            // the spread): b1, or the far backend through the tunnel.
            let mut service = ServiceBuilder::new(name, vip, 5201)
                .mode(mode)
                .ring_size(4093)
                .health("expect", "")
                .health("interval", "1h")
                .backend(BackendBuilder::new(b, addr).port(port));
            if mode == "tunnel" {
                service = service.raw("encap = \"ipip\"");
            }
            built = built.service(service);
        }
        let cfg = config::parse("bench.toml", &built.to_toml()).context("bench config")?;
        let agent = AgentThread::spawn(&lab.topo, &cfg, &control, None);
        let mut last = None;
        // 30 s: the two iperf3 services' first probes reach the same one-client iperf3 server
        // at once, and the second is answered only once the first lets go (seen: one still
        // "unknown" after 10 s).
        let up = wait_for(Duration::from_secs(30), || {
            let status = agent.status()?;
            let all_up = status.services.iter().flat_map(|s| &s.backends).all(|b| b.health == "up");
            last = Some(status);
            all_up.then_some(())
        });
        let this = Self { agent, iface: lab.topo.lb_if.clone() };
        if up.is_none() {
            let seen = last.map_or_else(
                || "the control socket never answered".to_owned(),
                |status| {
                    let health: Vec<String> = status
                        .services
                        .iter()
                        .flat_map(|s| {
                            s.backends
                                .iter()
                                .map(move |b| format!("{}/{} {}", s.name, b.name, b.health))
                        })
                        .collect();
                    health.join(", ")
                },
            );
            this.stop()?;
            bail!("sshlb's backends never all came up within 30 s: {seen}");
        }
        Ok(this)
    }

    /// Stops the agent and takes the data plane off the interface.
    pub fn stop(self) -> Result<()> {
        self.agent.stop();
        loader::down(Path::new(PIN_ROOT), &self.iface).context("down")?;
        Ok(())
    }
}

/// The tunnel's backend: a namespace behind the router (not on the balancer's segment; it stays
/// in the lab's topology, so its veths count towards the path's drops) with an sshd holding the
/// lab's host key, an iperf3 server, and `sshlb-agent backend up` accepting IP-in-IP from the
/// balancer's address only; [`Drop`] runs `backend down` (the namespace goes with the lab).
pub struct FarBackend {
    /// The agent binary (resolved once, so dropping never builds or panics).
    agent: PathBuf,
    netns: String,
    iface: String,
    pins: PathBuf,
    _sshd: Sshd,
}

impl FarBackend {
    /// Adds the far backend to the lab's topology and sets it up (offloads are turned off by
    /// the caller with the rest of the lab's).
    pub fn start(lab: &mut Lab) -> Result<Self> {
        let iface = unique("tb");
        lab.topo.add_far_backend("far", &iface);
        let ns = lab.topo.far.last_mut().context("the far backend")?;
        let sshd = Sshd::start_with(ns, &sshd_options(&lab.files, "far1"));
        ns.spawn("iperf3", &["-s", "-p", "5201"]);
        let pins = PathBuf::from(PIN_ROOT).with_file_name(unique("sshlb-backend"));
        let this = Self { agent: agent_binary(), netns: ns.name.clone(), iface, pins, _sshd: sshd };
        let lb = format!("{LB4}/32");
        let out = this.backend(&["up", &this.iface, "--vip", TUN4, "--balancer", &lb])?;
        if !out.status.success() {
            bail!("backend up: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(this)
    }

    /// `sshlb-agent backend ARGS --backend-pins PINS` in the far backend's namespace.
    fn backend(&self, args: &[&str]) -> Result<std::process::Output> {
        let pins = self.pins.to_str().context("pin path")?;
        let mut command = sshlb_tests::Netns::command_in(&self.netns, &self.agent, &["backend"]);
        command.args(args).args(["--backend-pins", pins]);
        Ok(command.output()?)
    }
}

impl Drop for FarBackend {
    fn drop(&mut self) {
        let _ = self.backend(&["down", &self.iface]);
        let _ = std::fs::remove_dir(&self.pins);
    }
}

/// A running HAProxy in the balancer's namespace (killed by PID on [`Self::stop`], or with
/// the namespace).
pub struct Haproxy {
    /// Its PID (its CPU time counts towards its CPU per GB).
    pub pid: u32,
}

impl Haproxy {
    /// Starts HAProxy with health checks every `inter` and waits until they have run.
    pub fn start(lab: &mut Lab, inter: &str) -> Result<Self> {
        let cfg_path = lab.files.path(&format!("haproxy-{inter}.cfg"));
        std::fs::write(&cfg_path, haproxy_config(inter))?;
        let pid = lab.topo.lb.spawn("haproxy", &["-db", "-f", cfg_path.to_str().context("path")?]);
        let inter_ms = config::parse_duration(inter).map_or(2000, |d| d.as_millis() as u64);
        std::thread::sleep(Duration::from_millis(inter_ms * 3 + 500));
        Ok(Self { pid })
    }

    /// SIGTERM, then a moment to let go of its sockets.
    pub fn stop(self) {
        // SAFETY: kill(2) on the haproxy this process started.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn haproxy_config(inter: &str) -> String {
    let mut cfg = format!(
        "global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\n\
         frontend ssh\n  bind {HAPROXY_VIP}:22\n  default_backend ssh\n\
         backend ssh\n  balance roundrobin\n  option tcp-check\n  tcp-check expect string SSH-2.0-\n"
    );
    for (name, v4, _) in BACKENDS {
        let weight = if name == "b3" { 200 } else { 100 };
        cfg +=
            &format!("  server {name} {v4}:22 weight {weight} check inter {inter} fall 3 rise 2\n");
    }
    cfg += &format!("\nfrontend iperf\n  bind {HAPROXY_VIP}:5201\n  default_backend iperf\nbackend iperf\n  balance roundrobin\n");
    // iperf3 to b1 only, unchecked (its server serves one client at a time; a probe is one).
    cfg += &format!("  server b1 {}:5201\n", BACKENDS[0].1);
    cfg
}

fn iptables(ns: &Netns, add: bool, args: &[&str]) -> Result<()> {
    let mut full = vec!["-t", "nat", if add { "-A" } else { "-D" }];
    full.extend_from_slice(args);
    let out = ns.command("iptables", &full).output()?;
    if !out.status.success() && add {
        bail!("iptables {full:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Adds (or removes) DNAT to b1/b2/b3 with weights 1:1:2 (statistic random) and SNAT to the
/// balancer's address, in `ns`.
pub fn dnat(ns: &Netns, add: bool) -> Result<()> {
    let target = |i: usize, port: &str| format!("{}:{port}", BACKENDS[i].1);
    let iperf_to = target(0, "5201");
    iptables(
        ns,
        add,
        &[
            "PREROUTING",
            "-d",
            DNAT_VIP,
            "-p",
            "tcp",
            "--dport",
            "5201",
            "-j",
            "DNAT",
            "--to-destination",
            &iperf_to,
        ],
    )?;
    // 1:1:2 by successive random matches: b1 takes 1/4, b2 1/3 of the rest, b3 what is left.
    for (i, probability) in [(0, Some("0.25")), (1, Some("0.3333")), (2, None)] {
        let to = target(i, "22");
        let mut rule = vec!["PREROUTING", "-d", DNAT_VIP, "-p", "tcp", "--dport", "22"];
        if let Some(p) = probability {
            rule.extend(["-m", "statistic", "--mode", "random", "--probability", p]);
        }
        rule.extend(["-j", "DNAT", "--to-destination", &to]);
        iptables(ns, add, &rule)?;
    }
    iptables(
        ns,
        add,
        &[
            "POSTROUTING",
            "-d",
            "198.18.0.0/24",
            "-s",
            "198.18.2.0/24",
            "-j",
            "SNAT",
            "--to-source",
            "198.18.0.2",
        ],
    )?;
    Ok(())
}

/// Kills backend `victim`'s sshd and measures how long new connections to `target` keep
/// failing (reaching the dead backend); restarts it afterwards.
pub fn failover(lab: &mut Lab, target: &str, victim: usize) -> String {
    lab.sshds[victim].stop();
    let killed = Instant::now();
    let mut last_failure = None;
    let mut consecutive_ok = 0;
    let (mut probes, mut failures) = (0, 0);
    while killed.elapsed() < Duration::from_secs(15) && consecutive_ok < 40 {
        let ok = lab.topo.client.run({
            let target = target.to_owned();
            move || Conn::open_banner(&target, 22).is_ok()
        });
        probes += 1;
        if ok {
            consecutive_ok += 1;
        } else {
            failures += 1;
            consecutive_ok = 0;
            last_failure = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    eprintln!("  failover via {target}: {probes} connections, {failures} failed");
    lab.restart_sshd(victim);
    std::thread::sleep(Duration::from_secs(2));
    match last_failure {
        Some(t) if consecutive_ok >= 40 => format!("{:.2} s", t.as_secs_f64()),
        Some(_) => "> 15 s".to_owned(),
        None => "0 s (no failed connection)".to_owned(),
    }
}
