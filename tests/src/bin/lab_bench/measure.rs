//! One peer's turn: real SSH logins (rate and latency), one SSH session's bulk throughput and an
//! iperf3 run, each throughput with what the path lost meanwhile (veth drops in every
//! namespace, the balancer's XDP drop counters, TCP retransmissions), and CPU per GB.

use std::{
    io::Read as _,
    path::Path,
    process::{Child, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result};
use sshlb_tests::{counters::Snapshot, lab::Lab, PIN_ROOT};

use crate::peers::Peer;

/// Logins per turn, and how many at a time.
const LOGINS: usize = 24;
const CONCURRENCY: usize = 4;
/// Bytes one SSH session streams.
const BULK_BYTES: u64 = 128 << 20;
/// iperf3's run time (s).
const IPERF_SECONDS: u32 = 3;

/// What the path lost during one throughput measurement.
#[derive(Clone, Debug, Default)]
pub struct Losses {
    /// Veth drops and retransmissions in every namespace (deltas).
    pub path: Snapshot,
    /// The balancer's XDP `drop_*` counters that grew (sshlb only).
    pub xdp_drops: Option<Vec<(&'static str, u64)>>,
}

/// A throughput figure and what was lost meanwhile.
#[derive(Clone, Debug, Default)]
pub struct Throughput {
    /// MB/s (ssh) or Gbit/s (iperf3); NaN when the run failed.
    pub value: f64,
    /// Losses over the run.
    pub losses: Losses,
}

/// One peer in one round.
#[derive(Clone, Debug)]
pub struct Row {
    /// Round number, from 1.
    pub round: usize,
    /// Who.
    pub peer: Peer,
    /// Successful logins per second.
    pub logins_per_s: f64,
    /// Login latency percentiles.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// One SSH session's stream, MB/s from its first byte to its last.
    pub ssh: Throughput,
    /// That session's start to its first byte (connection, key exchange, authentication,
    /// command start), ms: the setup the stream figure leaves out.
    pub ssh_first_byte_ms: f64,
    /// iperf3, Gbit/s.
    pub iperf: Throughput,
    /// Softirq time of all CPUs plus the balancer's own process, over ssh bulk + iperf3, per GB.
    pub cpu_s_per_gb: f64,
}

/// The balancer's XDP counters now, when sshlb is attached.
fn xdp_counters(lab: &Lab) -> Option<Vec<sshlb::stats::Counter>> {
    let map = sshlb::loader::pinned_stats(Path::new(PIN_ROOT), &lab.topo.lb_if).ok()?;
    sshlb::stats::read(&map).ok()
}

/// Runs `f` and returns its result with the losses over it.
fn with_losses<T>(lab: &Lab, f: impl FnOnce() -> Result<T>) -> Result<(T, Losses)> {
    let namespaces = lab.topo.namespaces();
    let (path0, xdp0) = (Snapshot::take(&namespaces), xdp_counters(lab));
    let out = f()?;
    let (path1, xdp1) = (Snapshot::take(&namespaces), xdp_counters(lab));
    let xdp_drops = xdp0.zip(xdp1).map(|(before, after)| {
        before
            .iter()
            .zip(&after)
            .filter(|(_, a)| a.name.starts_with("drop_"))
            .map(|(b, a)| (a.name, a.value.saturating_sub(b.value)))
            .filter(|(_, d)| *d > 0)
            .collect()
    });
    Ok((out, Losses { path: path1.since(&path0), xdp_drops }))
}

/// One turn of `peer`; `process` is the balancer's own process when it has one (HAProxy).
pub fn turn(lab: &Lab, round: usize, peer: Peer, process: Option<u32>) -> Result<Row> {
    let target = peer.target();
    eprintln!("round {round}: {} via {target}...", peer.label());
    let (logins_per_s, p50_ms, p99_ms) = logins(lab, target)?;
    let (soft0, proc0) = (softirq_jiffies(), process_jiffies(process));
    let cpus0 = cpu_jiffies();
    let ((ssh_mb_s, first_byte_ms, got), ssh_losses) = with_losses(lab, || ssh_bulk(lab, target))?;
    // Where the stream's work ran: on these 2 vCPUs every namespace's softirqs share them.
    eprintln!("  during ssh bulk: {}", cpu_busy(&cpus0, &cpu_jiffies()));
    let (iperf_gbit_s, iperf_losses) = with_losses(lab, || iperf(lab, target))?;
    let (soft1, proc1) = (softirq_jiffies(), process_jiffies(process));
    eprintln!(
        "  ssh bulk {ssh_mb_s:.0} MB/s (first byte after {first_byte_ms:.0} ms), iperf3 \
         {iperf_gbit_s:.2} Gbit/s"
    );
    // CPU per GB over the ssh bulk + iperf3 run (USER_HZ = 100).
    let iperf_gb =
        if iperf_gbit_s.is_nan() { 0.0 } else { iperf_gbit_s * f64::from(IPERF_SECONDS) / 8.0 };
    let moved_gb = got as f64 / 1e9 + iperf_gb;
    let cpu_s = ((soft1 - soft0) + (proc1 - proc0)) as f64 / 100.0;
    Ok(Row {
        round,
        peer,
        logins_per_s,
        p50_ms,
        p99_ms,
        ssh: Throughput { value: ssh_mb_s, losses: ssh_losses },
        ssh_first_byte_ms: first_byte_ms,
        iperf: Throughput { value: iperf_gbit_s, losses: iperf_losses },
        cpu_s_per_gb: cpu_s / moved_gb.max(1e-9),
    })
}

/// LOGINS real `ssh … true` logins, CONCURRENCY at a time: (logins/s, p50 ms, p99 ms).
fn logins(lab: &Lab, target: &str) -> Result<(f64, f64, f64)> {
    let mut latencies = Vec::new();
    let started = Instant::now();
    for _ in 0..LOGINS / CONCURRENCY {
        let batch: Vec<_> =
            (0..CONCURRENCY).map(|_| (Instant::now(), run_ssh(lab, target, "true"))).collect();
        for (t0, child) in batch {
            if child?.wait()?.success() {
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
    Ok((latencies.len() as f64 / wall, pct(0.5), pct(0.99)))
}

fn run_ssh(lab: &Lab, target: &str, command: &str) -> Result<Child> {
    Ok(lab
        .files
        .ssh_command(&lab.topo.client, target, &[], command)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?)
}

/// One SSH session streaming BULK_BYTES: (MB/s from the first byte to the last, ms from the
/// session's start to its first byte, bytes received). The stream is timed apart from the
/// setup: a session's login takes a few hundred ms here, a quarter of the whole at these rates,
/// and logins are measured on their own.
fn ssh_bulk(lab: &Lab, target: &str) -> Result<(f64, f64, u64)> {
    let t0 = Instant::now();
    let mut child = run_ssh(lab, target, &format!("head -c {BULK_BYTES} /dev/zero"))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
        // The stream starts with the first read's bytes: they count as received at once.
        first.get_or_insert((Instant::now(), n as u64));
    }
    child.wait()?;
    let Some((t1, first_read)) = first else { return Ok((f64::NAN, f64::NAN, 0)) };
    let streamed = (got - first_read) as f64 / t1.elapsed().as_secs_f64() / 1e6;
    Ok((streamed, (t1 - t0).as_secs_f64() * 1000.0, got))
}

/// iperf3 from the client through `target` to b1 for IPERF_SECONDS: Gbit/s received.
fn iperf(lab: &Lab, target: &str) -> Result<f64> {
    let seconds = IPERF_SECONDS.to_string();
    let args = [
        "20",
        "iperf3",
        "-c",
        target,
        "-p",
        "5201",
        "-t",
        &seconds,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    let out = lab.topo.client.command("timeout", &args).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        eprintln!("  iperf3 via {target} gave no result");
        return Ok(f64::NAN);
    };
    let bps = json["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0);
    Ok(bps / 1e9)
}

/// Per CPU, (busy, softirq, total) jiffies from `/proc/stat` (busy: all but idle and iowait).
fn cpu_jiffies() -> Vec<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, v.get(6).copied().unwrap_or(0), total)
        })
        .collect()
}

/// How busy each CPU was between two [`cpu_jiffies`] samples: "busy % (softirq %)" per CPU.
fn cpu_busy(before: &[(u64, u64, u64)], after: &[(u64, u64, u64)]) -> String {
    before
        .iter()
        .zip(after)
        .enumerate()
        .map(|(i, (b, a))| {
            let total = (a.2 - b.2).max(1) as f64;
            format!(
                "cpu{i} {:.0} % ({:.0} % softirq)",
                (a.0 - b.0) as f64 * 100.0 / total,
                (a.1 - b.1) as f64 * 100.0 / total
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Softirq jiffies of all CPUs (the sum of [`cpu_jiffies`]' per-CPU shares).
fn softirq_jiffies() -> u64 {
    cpu_jiffies().iter().map(|(_, softirq, _)| softirq).sum()
}

fn process_jiffies(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // utime and stime are fields 14 and 15; after the ")" split they are at 11 and 12.
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}
