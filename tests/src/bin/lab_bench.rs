//! `cargo xtask bench lab`: sshlb against the tools operators use instead, in one run, in the
//! same lab (same client, router, three OpenSSH backends): direct to one backend, sshlb full NAT,
//! sshlb DSR, HAProxy `mode tcp` (with `tcp-check expect string SSH-2.0-`, weights), and kernel
//! netfilter DNAT. Figures and ratios to HAProxy, printed and written as JSON; never asserted.
//!
//! Per peer: real SSH logins per second and p50/p99 login latency (fixed count and
//! concurrency), bulk throughput through one SSH session and with iperf3, host CPU per GB moved
//! (softirq of all CPUs plus the balancer's own process), and — for the ones with health checks —
//! how long a killed backend keeps getting new connections. Throughput runs twice: veth offloads
//! as they are, and off (MTU-sized packets, as on a real NIC).

use std::{
    fmt::Write as _,
    io::Read as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use sshlb::{config, loader};
use sshlb_tests::{
    agent::AgentThread,
    config::{BackendBuilder, ServiceBuilder},
    lab::Lab,
    topo::{BACKENDS, DSR4, VIP4},
    unique, wait_for, Detach, Netns, PIN_ROOT,
};

const HAPROXY_VIP: &str = "198.18.0.102";
const DNAT_VIP: &str = "198.18.0.103";
const LOGINS: usize = 40;
const CONCURRENCY: usize = 4;
const BULK_BYTES: u64 = 256 << 20;

#[derive(Clone, Debug, Default)]
struct Row {
    peer: String,
    logins_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    ssh_mb_s: f64,
    ssh_mb_s_no_offload: f64,
    iperf_gbit_s: f64,
    iperf_gbit_s_no_offload: f64,
    cpu_s_per_gb: f64,
    failover: String,
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab benchmark needs root");
    }
    let mut lab = Lab::build(&std::env::temp_dir().join(unique("bench")), true);
    for (ns, (_, _v4, _)) in lab.topo.backends.iter_mut().zip(BACKENDS) {
        ns.spawn("iperf3", &["-s", "-p", "5201"]);
    }
    for vip in [HAPROXY_VIP, DNAT_VIP] {
        lab.topo.lb.ip(&["addr", "add", &format!("{vip}/32"), "dev", &lab.topo.lb_if]);
    }
    // Every peer presents the backends' one host key: known_hosts names them all.
    let host_pub = std::fs::read_to_string(lab.files.path("host_key.pub"))?;
    let mut known = std::fs::read_to_string(lab.files.path("known_hosts"))?;
    for addr in BACKENDS.iter().map(|(_, v4, _)| *v4).chain([HAPROXY_VIP, DNAT_VIP]) {
        known += &format!("{addr} {host_pub}");
    }
    std::fs::write(lab.files.path("known_hosts"), known)?;
    let pass_port = lab.topo.lb_port.clone();
    lab.topo
        .sw
        .run(move || {
            loader::attach_pass(Path::new(PIN_ROOT), &pass_port).map_err(|e| e.to_string())
        })
        .map_err(anyhow::Error::msg)?;
    let _cleanup = Detach {
        iface: lab.topo.lb_if.clone(),
        pass_port: lab.topo.lb_port.clone(),
        files: Vec::new(),
    };
    let mut rows = Vec::new();

    // Direct to one backend (no balancer in the path).
    rows.push(measure(&lab, "direct (b1)", BACKENDS[0].1, None)?);

    // sshlb, full NAT and DSR.
    let control = PathBuf::from(format!("/run/sshlb/bench-{}.sock", lab.topo.lb_if));
    let mut built = lab.config_builder(&control.display().to_string());
    for (name, vip, mode) in [("nat4-iperf", VIP4, "nat"), ("dsr4-iperf", DSR4, "dsr")] {
        // iperf3 opens a control and a data connection that must meet the same server: every
        // peer sends iperf3 to b1 only (the path is what is measured, not the spread).
        let (b, v4, _) = BACKENDS[0];
        built = built.service(
            ServiceBuilder::new(name, vip, 5201)
                .mode(mode)
                .ring_size(4093)
                .health("expect", "")
                .health("interval", "1h")
                .backend(BackendBuilder::new(b, v4).port(5201)),
        );
    }
    let cfg = config::parse("bench.toml", &built.to_toml()).context("bench config")?;
    let agent = AgentThread::spawn(&lab.topo, &cfg, &control, None);
    wait_for(Duration::from_secs(10), || {
        let status = agent.status()?;
        status.services.iter().flat_map(|s| &s.backends).all(|b| b.health == "up").then_some(())
    })
    .context("backends never came up")?;
    let mut nat = measure(&lab, "sshlb nat", VIP4, None)?;
    nat.failover = failover(&mut lab, VIP4, 1);
    rows.push(nat);
    rows.push(measure(&lab, "sshlb dsr", DSR4, None)?);
    agent.stop();
    loader::down(Path::new(PIN_ROOT), &lab.topo.lb_if).context("down")?;

    // HAProxy mode tcp, as operators configure it, defaults and tuned checks.
    for (label, inter) in [("haproxy", "2s"), ("haproxy (tuned checks)", "250ms")] {
        let cfg_path = lab.files.path(&format!("haproxy-{inter}.cfg"));
        std::fs::write(&cfg_path, haproxy_config(inter))?;
        let pid = lab.topo.lb.spawn("haproxy", &["-db", "-f", cfg_path.to_str().context("path")?]);
        std::thread::sleep(Duration::from_millis(inter_ms(inter) * 3 + 500));
        let mut row = if label == "haproxy" {
            measure(&lab, label, HAPROXY_VIP, Some(pid))?
        } else {
            Row { peer: label.to_owned(), ..Row::default() }
        };
        row.failover = failover(&mut lab, HAPROXY_VIP, 1);
        // SAFETY: kill(2) on the haproxy we started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(300));
        rows.push(row);
    }

    // netfilter DNAT (+SNAT so replies come back through the one-armed balancer).
    dnat(&lab.topo.lb, true)?;
    let mut row = measure(&lab, "netfilter DNAT", DNAT_VIP, None)?;
    "never (no health checks)".clone_into(&mut row.failover);
    rows.push(row);
    dnat(&lab.topo.lb, false)?;

    report(&rows)
}

fn inter_ms(inter: &str) -> u64 {
    sshlb::config::parse_duration(inter).map_or(2000, |d| d.as_millis() as u64)
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

/// DNAT to b1/b2/b3 with weights 1:1:2 (statistic random), SNAT to the balancer's address.
fn dnat(ns: &Netns, add: bool) -> Result<()> {
    let target = |i: usize, port: &str| format!("{}:{port}", BACKENDS[i].1);
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
            &format!("{}:5201", BACKENDS[0].1),
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

fn ssh_args(lab: &Lab, target: &str, command: &str) -> Vec<String> {
    let mut args = lab.files.ssh_args();
    args.push(format!("root@{target}"));
    args.push(command.to_owned());
    args
}

fn run_ssh(lab: &Lab, target: &str, command: &str) -> Result<std::process::Child> {
    let args = ssh_args(lab, target, command);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok(lab
        .topo
        .client
        .command("ssh", &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?)
}

fn softirq_jiffies() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn process_jiffies(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // utime and stime are fields 14 and 15; after the ")" split they are at 11 and 12.
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn offloads(lab: &Lab, on: bool) {
    let state = if on { "on" } else { "off" };
    let mut all: Vec<(&Netns, String)> =
        vec![(&lab.topo.lb, lab.topo.lb_if.clone()), (&lab.topo.client, "cl0".into())];
    all.push((&lab.topo.router, "rt0".into()));
    all.push((&lab.topo.router, "rt1".into()));
    for ns in &lab.topo.backends {
        all.push((ns, "eth0".into()));
    }
    for (ns, ifname) in all {
        let _ = ns
            .command("ethtool", &["-K", &ifname, "gro", state, "gso", state, "tso", state])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn iperf(lab: &Lab, target: &str) -> Result<f64> {
    let out = lab
        .topo
        .client
        .command(
            "timeout",
            &[
                "20",
                "iperf3",
                "-c",
                target,
                "-p",
                "5201",
                "-t",
                "3",
                "-J",
                "--connect-timeout",
                "3000",
            ],
        )
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        eprintln!("  iperf3 via {target} gave no result");
        return Ok(f64::NAN);
    };
    let bps = json["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0);
    Ok(bps / 1e9)
}

/// One SSH session streaming BULK_BYTES: (MB/s, bytes received).
fn ssh_bulk(lab: &Lab, target: &str) -> Result<(f64, u64)> {
    let t0 = Instant::now();
    let mut child = run_ssh(lab, target, &format!("head -c {BULK_BYTES} /dev/zero"))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    child.wait()?;
    Ok((got as f64 / t0.elapsed().as_secs_f64() / 1e6, got))
}

fn measure(lab: &Lab, peer: &str, target: &str, process: Option<u32>) -> Result<Row> {
    eprintln!("measuring {peer} via {target}...");
    // SSH logins: LOGINS in total, CONCURRENCY at a time.
    let mut latencies = Vec::new();
    let started = Instant::now();
    for _ in 0..LOGINS / CONCURRENCY {
        let batch: Vec<_> =
            (0..CONCURRENCY).map(|_| (Instant::now(), run_ssh(lab, target, "true"))).collect();
        for (t0, child) in batch {
            let status = child?.wait()?;
            if status.success() {
                latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    eprintln!("  {} of {LOGINS} logins in {wall:.1} s", latencies.len());
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    // Bulk through one SSH session, with CPU accounting.
    let (soft0, proc0) = (softirq_jiffies(), process_jiffies(process));
    let (ssh_mb_s, got) = ssh_bulk(lab, target)?;
    eprintln!("  ssh bulk: {ssh_mb_s:.0} MB/s");
    let iperf_on = iperf(lab, target)?;
    eprintln!("  iperf3: {iperf_on:.2} Gbit/s");
    let (soft1, proc1) = (softirq_jiffies(), process_jiffies(process));
    // CPU per GB over the ssh bulk + iperf3 run (USER_HZ = 100).
    let moved_gb = got as f64 / 1e9 + iperf_on * 3.0 / 8.0;
    let cpu_s = ((soft1 - soft0) + (proc1 - proc0)) as f64 / 100.0;
    offloads(lab, false);
    let ssh_off = ssh_bulk(lab, target)?.0;
    let iperf_off = iperf(lab, target)?;
    offloads(lab, true);
    eprintln!("  offloads off: ssh {ssh_off:.0} MB/s, iperf3 {iperf_off:.2} Gbit/s");
    Ok(Row {
        peer: peer.to_owned(),
        logins_per_s: latencies.len() as f64 / wall,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        ssh_mb_s,
        ssh_mb_s_no_offload: ssh_off,
        iperf_gbit_s: iperf_on,
        iperf_gbit_s_no_offload: iperf_off,
        cpu_s_per_gb: cpu_s / moved_gb.max(1e-9),
        failover: "-".into(),
    })
}

/// Kills backend `victim`'s sshd and measures how long new connections to `target` keep
/// failing (reaching the dead backend); restarts it afterwards.
fn failover(lab: &mut Lab, target: &str, victim: usize) -> String {
    lab.sshds[victim].stop();
    let killed = Instant::now();
    let mut last_failure = None;
    let mut consecutive_ok = 0;
    while killed.elapsed() < Duration::from_secs(15) && consecutive_ok < 40 {
        let ok = lab.topo.client.run({
            let target = target.to_owned();
            move || sshlb_tests::topo::Conn::open_banner(&target, 22).is_ok()
        });
        if ok {
            consecutive_ok += 1;
        } else {
            consecutive_ok = 0;
            last_failure = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let (name, v4, _) = BACKENDS[victim];
    let ns = &lab.topo.backends[victim];
    lab.sshds[victim] = sshlb_tests::sshd::Sshd::start_with(
        ns,
        &sshlb_tests::sshd::SshdOptions {
            listen: vec!["0.0.0.0".into(), "::".into()],
            name: Some(name.to_owned()),
            host_key: Some(lab.files.path("host_key")),
            authorized_keys: Some(lab.files.path("authorized_keys")),
            ..Default::default()
        },
    );
    let _ = v4;
    std::thread::sleep(Duration::from_secs(2));
    match last_failure {
        Some(t) if consecutive_ok >= 40 => format!("{:.2} s", t.as_secs_f64()),
        Some(_) => "> 15 s".to_owned(),
        None => "0 s (no failed connection)".to_owned(),
    }
}

fn report(rows: &[Row]) -> Result<()> {
    let base = rows.iter().find(|r| r.peer == "haproxy").cloned().unwrap_or_default();
    let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}x", a / b) } else { "-".into() };
    let mut out = String::new();
    writeln!(
        out,
        "| peer | ssh logins/s | p50 ms | p99 ms | ssh bulk MB/s (offloads on / off) | iperf3 Gbit/s (offloads on / off) | CPU s per GB | killed backend out after |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|")?;
    for r in rows {
        if r.logins_per_s == 0.0 && r.peer.contains("tuned") {
            writeln!(out, "| {} | | | | | | | {} |", r.peer, r.failover)?;
            continue;
        }
        writeln!(
            out,
            "| {} | {:.1} ({}) | {:.0} | {:.0} | {:.0} / {:.0} ({} / {}) | {:.2} / {:.2} ({} / {}) | {:.2} ({}) | {} |",
            r.peer,
            r.logins_per_s,
            ratio(r.logins_per_s, base.logins_per_s),
            r.p50_ms,
            r.p99_ms,
            r.ssh_mb_s,
            r.ssh_mb_s_no_offload,
            ratio(r.ssh_mb_s, base.ssh_mb_s),
            ratio(r.ssh_mb_s_no_offload, base.ssh_mb_s_no_offload),
            r.iperf_gbit_s,
            r.iperf_gbit_s_no_offload,
            ratio(r.iperf_gbit_s, base.iperf_gbit_s),
            ratio(r.iperf_gbit_s_no_offload, base.iperf_gbit_s_no_offload),
            r.cpu_s_per_gb,
            ratio(r.cpu_s_per_gb, base.cpu_s_per_gb),
            r.failover,
        )?;
    }
    print!("{out}");
    let json: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"peer\":\"{}\",\"logins_per_s\":{:.3},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"ssh_mb_s\":{:.2},\"ssh_mb_s_no_offload\":{:.2},\"iperf_gbit_s\":{:.3},\"iperf_gbit_s_no_offload\":{:.3},\"cpu_s_per_gb\":{:.3},\"failover\":\"{}\"}}",
                r.peer, r.logins_per_s, r.p50_ms, r.p99_ms, r.ssh_mb_s, r.ssh_mb_s_no_offload, r.iperf_gbit_s, r.iperf_gbit_s_no_offload, r.cpu_s_per_gb, r.failover
            )
        })
        .collect();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("lab.json");
    std::fs::write(&path, format!("[\n  {}\n]\n", json.join(",\n  ")).replace("NaN", "null"))?;
    println!("written: {}", path.display());
    Ok(())
}
