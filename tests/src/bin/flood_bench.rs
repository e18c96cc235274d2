//! `cargo xtask bench flood`: the new-flow rate the data plane sustains per core under a spoofed
//! SYN flood, while a real TCP session keeps streaming through the same balancer.
//!
//! The one-armed lab topology (offloads off: MTU-sized frames on every hop), sshlb attached in
//! native mode with a full-NAT and a DSR VIP. A client streams an echo session through the NAT
//! VIP for the whole run; after 2 s the router injects SYNs from spoofed sources in
//! 198.19.0.0/16 for 3 s (three in four to the NAT VIP) — once paced at 20,000/s (the
//! attack of issue 12), once as fast as one AF_PACKET sender goes —,
//! and a second client thread tries a real connection every 100 ms. Printed: the flood's rate
//! as sent and as the program handled it, the program's own time per packet (BPF run-time
//! accounting) and what that makes per core, the flows made and refused, the session's
//! throughput before / during / after with the path's drops and retransmits, and the real
//! connections that got through. The peer is the same program's cost per packet of the session
//! alone, measured in the same run before the flood.

use std::{
    io::{Read as _, Write as _},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use sshlb_tests::{
    config::ConfigBuilder,
    counters::Snapshot,
    inject::{flood_targets, SynFlood},
    inproc::Balancer,
    topo::{Conn, Topo, VIP4},
};

/// Phases of the run.
const BEFORE: Duration = Duration::from_secs(2);
const FLOOD: Duration = Duration::from_secs(3);
const AFTER: Duration = Duration::from_secs(2);
/// Upper bound on the flood's size, whatever the sender's speed.
const MAX_SYNS: u32 = 3_000_000;
/// The echo session's write size.
const CHUNK: usize = 32 * 1024;

/// What the program did over a window: packets, its own run time, counters.
struct Window {
    runs: u64,
    run_ns: u64,
    counters: Vec<sshlb::stats::Counter>,
    new_flows: u64,
}

fn window(balancer: &mut Balancer) -> Result<Window> {
    let info = balancer.dataplane().program().info().context("program info")?;
    let dp = balancer.dataplane();
    let new_flows = (0..2).map(|id| dp.service_traffic(id).map_or(0, |t| t.new_flows)).sum();
    Ok(Window {
        runs: info.run_count(),
        run_ns: info.run_time().as_nanos() as u64,
        counters: sshlb::stats::read(&dp.stats()).unwrap_or_default(),
        new_flows,
    })
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the flood benchmark needs root (namespaces, XDP, BPF stats)");
    }
    let topo = Topo::new(22);
    topo.offloads_off();
    let cfg = flood_targets(ConfigBuilder::new().agent("max-flows", "1048576"));
    let config = cfg.parse("flood-bench.toml");
    let mut balancer = Balancer::start(&topo, &config);
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;

    for rate in [Some(20_000), None] {
        phase(&topo, &mut balancer, rate)?;
    }
    Ok(())
}

/// One run: the session alone, then the flood at `rate` SYNs/s (`None`: as fast as the sender
/// goes), then the session alone again; prints the figures.
fn phase(topo: &Topo, balancer: &mut Balancer, rate: Option<u32>) -> Result<()> {
    let start = Instant::now();
    let total = BEFORE + FLOOD + AFTER;
    let first = window(balancer)?;
    // The real session: echo CHUNK-sized writes for the whole run, stamping each round trip.
    let session = topo.client.spawn_thread(move || -> Vec<(Duration, usize)> {
        let Ok(mut conn) = Conn::open(VIP4, 22) else { return Vec::new() };
        let mut reader = conn.stream.try_clone().expect("clone");
        let data = vec![0x5a_u8; CHUNK];
        let mut back = vec![0u8; CHUNK];
        let mut stamps = Vec::new();
        while start.elapsed() < total {
            if conn.stream.write_all(&data).is_err() || reader.read_exact(&mut back).is_err() {
                break;
            }
            stamps.push((start.elapsed(), CHUNK));
        }
        stamps
    });
    thread::sleep(BEFORE);

    let losses_before = Snapshot::take(&topo.namespaces());
    let before = window(balancer)?;
    // Distinct flows across phases: the second phase starts where the first ended.
    let offset = u32::try_from(before.runs).unwrap_or(0);
    let flood = SynFlood { rate, max: MAX_SYNS, within: FLOOD, first: offset }.spawn(topo);
    let flooding = flood.watch();
    let tries = topo.client.spawn_thread(move || {
        let mut results = Vec::new();
        while flooding.on() {
            let ok = Conn::open(VIP4, 22).and_then(|mut c| c.echo(b"hello\n")).unwrap_or(false);
            results.push(ok);
            thread::sleep(Duration::from_millis(100));
        }
        results
    });
    let (sent, flood_took) = flood.join();
    let during = window(balancer)?;
    let losses = Snapshot::take(&topo.namespaces()).since(&losses_before);
    let tries = tries.join().expect("tries thread");
    let stamps = session.join().expect("session thread");
    let after = window(balancer)?;

    // The peer: the same program's cost per packet of the session alone, before the flood.
    let quiet_ns = (before.run_ns - first.run_ns) as f64 / (before.runs - first.runs).max(1) as f64;
    let runs = during.runs - before.runs;
    let ns_per_packet = (during.run_ns - before.run_ns) as f64 / runs.max(1) as f64;
    let new_flows = during.new_flows - before.new_flows;
    let moved: Vec<String> = before
        .counters
        .iter()
        .zip(&during.counters)
        .filter(|(b, d)| d.value > b.value)
        .map(|(b, d)| format!("{} {}", d.name, d.value - b.value))
        .collect();
    let flood_from = BEFORE.as_secs_f64();
    let flood_to = flood_from + flood_took.as_secs_f64();
    let mbps = |from: f64, to: f64| {
        let bytes: usize =
            stamps.iter().filter(|(t, _)| (from..to).contains(&t.as_secs_f64())).map(|s| s.1).sum();
        bytes as f64 / (to - from) / 1e6
    };
    let (tx, rx) = losses.drops.values().fold((0, 0), |(t, r), d| (t + d.tx, r + d.rx));
    let retrans_client = losses.retrans.get("cl").copied().unwrap_or(0);
    let ok = tries.iter().filter(|&&b| b).count();
    let paced = rate
        .map_or("as fast as one AF_PACKET sender goes".to_owned(), |r| format!("paced at {r}/s"));
    println!("\nspoofed SYN flood through sshlb (NAT 3/4, DSR 1/4), {paced}");
    println!(
        "  flood: {sent} SYNs in {:.2} s = {:.0}/s sent; the program ran {runs} times meanwhile \
         ({:.0}/s)",
        flood_took.as_secs_f64(),
        f64::from(sent) / flood_took.as_secs_f64(),
        runs as f64 / flood_took.as_secs_f64()
    );
    println!(
        "  program time {ns_per_packet:.0} ns/packet during the flood → {:.0} packets/s per core \
         of program time; {new_flows} new flows ({:.0}/s)",
        1e9 / ns_per_packet,
        new_flows as f64 / flood_took.as_secs_f64()
    );
    println!(
        "  peer: the session's own packets cost {quiet_ns:.0} ns/packet before the flood \
         (flood packets {:.2}× that)",
        ns_per_packet / quiet_ns
    );
    println!("  counters moved: {}", moved.join(", "));
    println!(
        "  session through the NAT VIP: {:.1} MB/s before, {:.1} MB/s during, {:.1} MB/s after \
         (echo round trips of {} KiB)",
        mbps(0.0, flood_from),
        mbps(flood_from, flood_to),
        mbps(flood_to, total.as_secs_f64()),
        CHUNK / 1024
    );
    println!(
        "  during the flood: veth drops {tx} tx / {rx} rx; client retransmits {retrans_client}; \
         real connections {ok}/{} got through",
        tries.len()
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "flood",
            "rate": rate,
            "syns_sent": sent,
            "seconds": flood_took.as_secs_f64(),
            "program_runs": runs,
            "ns_per_packet": ns_per_packet,
            "quiet_ns_per_packet": quiet_ns,
            "new_flows": new_flows,
            "session_mb_s": [mbps(0.0, flood_from), mbps(flood_from, flood_to),
                             mbps(flood_to, total.as_secs_f64())],
            "veth_drops_tx": tx,
            "retrans_client": retrans_client,
            "connections_ok": ok,
            "connections_tried": tries.len(),
            "flows_after": after.new_flows,
        })
    );
    Ok(())
}
