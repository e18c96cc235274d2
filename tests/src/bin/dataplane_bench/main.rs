//! `cargo xtask bench dataplane`: the data plane's per-packet cost, measured by the kernel's own
//! BPF run-time accounting (`BPF_ENABLE_STATS`: `run_time_ns / run_cnt` of the program) while
//! real frames cross a veth into the program, next to a trivial XDP program (MAC swap +
//! XDP_TX) measured the same way in the same run. Beside each scenario: the functions its
//! packets run through and their size (xlated and JIT'd, from `bpftool`); after the table, the
//! program's functions and the kernel's memory figure per tracked flow. Prints a table and
//! writes JSON. No assertions: figures only.
//!
//! Frames are sent with an AF_PACKET socket from the veth's peer, bounded in count and time.

mod frames;
mod introspect;
mod report;

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::programs::{Xdp, XdpMode};
use frames::{from_clients, Family, Segment};
use sshlb::{config, daemon, loader};
use sshlb_common::{family, flow_state, proto, v4_in_16, Flow, FlowKey};
use sshlb_tests::{inject::PacketSocket, Detach, Netns, PIN_ROOT};

/// Connection-table size: the 1M prefill plus every flow the scenarios open (≈ 320k: per
/// family 1,000 per established scenario, 50,000 per new DSR-like scenario, 30,000 new NAT),
/// with room to spare so that no new-flow scenario measures the table-full path.
pub const MAX_FLOWS: u32 = 1_400_000;
/// Flows each "established" and "reverse" scenario cycles through.
const FLOWS: u32 = 1000;
/// Distinct SYNs of the "new flow" scenarios, each sent once. Full NAT stays well inside the
/// default NAT port range (22,768 ports per backend, three backends): past it SYNs would measure
/// the port-exhaustion path instead (probes, then a drop).
const NEW_NAT: u32 = 30_000;
const NEW_DSR: u32 = 50_000;
/// Service ports: full NAT, DSR, protected DSR (IPv4 only), and a port no service has.
const NAT_PORT: u16 = 22;
const DSR_PORT: u16 = 2222;
const PROTECTED_PORT: u16 = 2223;
const TUNNEL_PORT: u16 = 2224;
const OTHER_PORT: u16 = 80;

/// One measured scenario.
pub struct Figure {
    /// Scenario name (stable: the JSON and BENCHMARKS.md use it).
    pub scenario: String,
    /// Prefilled table size ("1k", "1M", "-").
    pub table: String,
    /// Program runs counted.
    pub packets: u64,
    /// Run time per run.
    pub ns_per_packet: f64,
}

fn main() -> Result<()> {
    let seconds: u64 = std::env::args().nth(1).map_or(Ok(2), |s| s.parse()).context("SECONDS")?;
    // `--quick`: the 1k table over IPv4 only, for development loops.
    let quick = std::env::args().any(|a| a == "--quick");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the data-plane benchmark needs root (namespaces, XDP, BPF stats)");
    }
    let ns = Netns::new("bench");
    network(&ns);
    enter(&format!("/run/netns/{}", ns.name))?;
    // XDP_TX out of bl0 lands on bg0: give it a program so native veth delivers it.
    loader::attach_pass(&PathBuf::from(PIN_ROOT), "bg0").context("pass program on bg0")?;
    // Detaches the balancer and the pass program at the end, also on error.
    let _cleanup = Detach { iface: "bl0".into(), pass_port: "bg0".into(), files: Vec::new() };
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let budget = Duration::from_secs(seconds);

    let mut results = Vec::new();
    let mut sizes = None;
    let mut memory = None;
    let mut caches = Vec::new();
    // The trivial program before each table and after the last: a load that comes and goes
    // during the run (other builds on a shared machine) moves every figure, and the ratios are
    // taken to the mean of the three, whose spread is printed.
    let mut baselines = Vec::new();
    let tables: &[(&str, u32)] =
        if quick { &[("1k", 1_000)] } else { &[("1k", 1_000), ("1M", 1_000_000)] };
    for &(label, prefill) in tables {
        baselines.push(baseline(budget)?);
        for (program, scenario) in [
            (loader::FLOOR_PROGRAM, FLOOR),
            (loader::FLOOR_PARSED_PROGRAM, FLOOR_PARSED),
            (loader::FLOOR_INSERT_PROGRAM, FLOOR_INSERT),
        ] {
            results.push(floor(budget, prefill, label, program, scenario)?);
        }
        let cfg = config::parse("bench.toml", &bench_config()).context("bench config")?;
        let mut balancer =
            daemon::start(&PathBuf::from(PIN_ROOT), "bl0", loader::AttachMode::Native, &cfg)
                .context("starting the balancer")?;
        let dp = &mut balancer.attached.dataplane;
        let started = Instant::now();
        prefill_flows(dp, prefill)?;
        eprintln!("prefilled {prefill} flows in {:.1} s", started.elapsed().as_secs_f64());
        let info = dp.program().info().context("program info")?;
        if sizes.is_none() {
            sizes = Some(introspect::ProgramSize::of(&info));
        }
        let sock = PacketSocket::open("bg0")?;
        let families: &[Family] = if quick { &[Family::V4] } else { &[Family::V4, Family::V6] };
        for &family in families {
            scenarios(dp, &sock, family, budget, label, &mut results)?;
        }
        if Some(prefill) == tables.last().map(|(_, n)| *n) {
            // Read with the fullest table: for a map that allocates per entry, memlock grows.
            memory = Some(flow_maps(&info));
            caches = flow_caches(&info)?;
        }
        drop(balancer);
        loader::down(&PathBuf::from(PIN_ROOT), "bl0").context("down")?;
    }
    baselines.push(baseline(budget)?);
    let sizes = sizes.context("no table was measured")?;
    let memory = memory.context("no table was measured")?;
    report::report(&baselines, &results, &sizes, &memory)?;
    // The per-CPU flow caches do not grow with flows: what they hold on this machine.
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("CPU count")?;
    for m in &caches {
        println!(
            "{}: {} slots × {} B per CPU ({:.0} KiB), {} CPUs: {:.1} MiB (kernel's bytes_memlock), \
             whatever max-flows",
            m.name,
            m.max_entries,
            m.value_size,
            (m.max_entries * m.value_size) as f64 / 1024.0,
            cpus,
            m.bytes_memlock as f64 / f64::from(1u32 << 20)
        );
    }
    Ok(())
}

/// The trivial program (MAC swap + XDP_TX) on the balancer's interface, same frames as the
/// established scenarios; the interface must be free.
fn baseline(budget: Duration) -> Result<Figure> {
    let mut dp = loader::Dataplane::load().context("loading")?;
    let scenario = "trivial (MAC swap + XDP_TX)";
    let established = from_clients(Family::V4, 0..FLOWS, NAT_PORT, false);
    measure_peer(&mut dp, loader::BASELINE_PROGRAM, &established, Some(budget), scenario, "-")
}

/// Peer program `program` of `dp`'s object attached to the balancer's interface (which must be
/// free) for `frames` (as [`measure`] sends them), then detached.
fn measure_peer(
    dp: &mut loader::Dataplane,
    program: &str,
    frames: &[Vec<u8>],
    budget: Option<Duration>,
    scenario: &str,
    table: &str,
) -> Result<Figure> {
    let ifindex = sshlb::sys::ifindex("bl0").context("bl0")?;
    let peer = dp.extra_program(program).with_context(|| format!("program {program}"))?;
    let link = peer.attach_to_if_index(ifindex, XdpMode::Driver).context("attach")?;
    let sock = PacketSocket::open("bg0")?;
    let figure = measure(Target::Baseline(peer), &sock, frames, budget, scenario.into(), table)?;
    peer.detach(link).context("detach")?;
    Ok(figure)
}

/// Scenario names of [`floor`]'s programs.
pub const FLOOR: &str = "floor (one flow-table lookup)";
pub const FLOOR_PARSED: &str = "floor (parser + lookup)";
pub const FLOOR_INSERT: &str = "floor (lookup + insert)";

/// A floor program over a table of the balancer's size, prefilled like the balancer's with
/// `prefill` flows and holding the 1,000 flows the established scenarios send:
/// [`loader::FLOOR_PROGRAM`] (the trivial program plus one `FLOWS` lookup: what an established
/// packet costs in any design with such a connection table before it does anything else) or
/// [`loader::FLOOR_PARSED_PROGRAM`] (the same lookup after `sshlb`'s own parser). Its own copy
/// of the object, so the interface must be free.
fn floor(
    budget: Duration,
    prefill: u32,
    table: &str,
    program: &str,
    scenario: &str,
) -> Result<Figure> {
    let options = loader::LoadOptions { max_flows: MAX_FLOWS, ..Default::default() };
    let mut dp = loader::Dataplane::load_with(&options).context("loading")?;
    prefill_flows(&mut dp, prefill)?;
    for i in 0..FLOWS {
        let segment = frames::client_segment(Family::V4, i, NAT_PORT, false);
        let key = FlowKey::new(
            segment.src,
            segment.dst,
            segment.sport.to_be(),
            segment.dport.to_be(),
            proto::TCP,
            family::V4,
        );
        let flow = Flow { state: flow_state::ESTABLISHED, ..Flow::default() };
        dp.flows().insert(key, flow, 0).context("a measured flow")?;
    }
    if program == loader::FLOOR_INSERT_PROGRAM {
        // The new DSR scenario's SYNs, each once: each a miss and an insert.
        let syns = from_clients(Family::V4, FLOWS..FLOWS + NEW_DSR, DSR_PORT, true);
        return measure_peer(&mut dp, program, &syns, None, scenario, table);
    }
    let established = from_clients(Family::V4, 0..FLOWS, NAT_PORT, false);
    measure_peer(&mut dp, program, &established, Some(budget), scenario, table)
}

/// The bench network inside `ns`: bl0 (the balancer) ↔ bg0 (the generator, which is also the
/// router's and every neighbour's link), backends and router resolved permanently.
fn network(ns: &Netns) {
    ns.ip(&["link", "add", "bg0", "type", "veth", "peer", "name", "bl0"]);
    ns.ip(&["link", "set", "bl0", "address", "02:00:00:00:00:02"]);
    ns.ip(&["link", "set", "bg0", "address", "02:00:00:00:00:fe"]);
    let mut lines = vec![
        "link set bg0 up".to_owned(),
        "link set bl0 up".to_owned(),
        "addr add 198.18.0.2/24 dev bl0".to_owned(),
        "addr add fd00:18::2/64 dev bl0 nodad".to_owned(),
        "route add default via 198.18.0.254 dev bl0".to_owned(),
        "-6 route add default via fd00:18::fe dev bl0".to_owned(),
        // What the program sends back out lands on bg0: drop it there at once. Otherwise, with
        // the IPv6 forwarding the agent turns on, bg0 would forward it out of bl0 into bg0
        // again until its hop limit ran out (the program's own FIB lookups come in on bl0).
        "rule add iif bg0 blackhole".to_owned(),
        "-6 rule add iif bg0 blackhole".to_owned(),
        "neigh add 198.18.0.254 lladdr 02:00:00:00:00:fe dev bl0 nud permanent".to_owned(),
        "-6 neigh add fd00:18::fe lladdr 02:00:00:00:00:fe dev bl0 nud permanent".to_owned(),
    ];
    for b in 1..=3 {
        let mac = format!("02:00:00:00:01:0{b}");
        lines.push(format!("neigh add 198.18.0.1{b} lladdr {mac} dev bl0 nud permanent"));
        lines.push(format!("-6 neigh add fd00:18::1{b} lladdr {mac} dev bl0 nud permanent"));
    }
    for line in lines {
        ns.ip(&line.split_whitespace().collect::<Vec<_>>());
    }
}

/// Full NAT on port 22, DSR on 2222, the same DSR protected on 2223 (IPv4), each over IPv4 and
/// IPv6 VIPs with three (NAT) or two (DSR) backends.
fn bench_config() -> String {
    let mut text = format!(
        "[agent]\nmax-flows = {MAX_FLOWS}\nnat-v4 = \"198.18.0.2\"\nnat-v6 = \"fd00:18::2\"\n"
    );
    let service = |name: &str, vip: &str, port: u16, mode: &str, backends: &[&str]| {
        let mut s = format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {port}\nmode = \"{mode}\"\n"
        );
        for (i, address) in backends.iter().enumerate() {
            s += &format!(
                "[[service.backend]]\nname = \"b{}\"\naddress = \"{address}\"\nport = {port}\n",
                i + 1
            );
        }
        s
    };
    let v4 = ["198.18.0.11", "198.18.0.12", "198.18.0.13"];
    let v6 = ["fd00:18::11", "fd00:18::12", "fd00:18::13"];
    text += &service("git", "198.18.0.100", NAT_PORT, "nat", &v4);
    text += &service("git-dsr", "198.18.0.100", DSR_PORT, "dsr", &v4[..2]);
    text += &service("git-tunnel", "198.18.0.100", TUNNEL_PORT, "tunnel", &v4[..2]);
    text += &service("git6", "fd00:18::100", NAT_PORT, "nat", &v6);
    text += &service("git6-dsr", "fd00:18::100", DSR_PORT, "dsr", &v6[..2]);
    text += &service("git6-tunnel", "fd00:18::100", TUNNEL_PORT, "tunnel", &v6[..2]);
    // The same DSR service again, protected: an allow list, 1000 deny prefixes in the trie,
    // and a per-source limit high enough never to refuse (so both runs forward every SYN).
    let deny: Vec<String> =
        (0..1000).map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256)).collect();
    text += &service("git-dsr-protected", "198.18.0.100", PROTECTED_PORT, "dsr", &v4[..2])
        .replacen(
            "mode = \"dsr\"\n",
            &format!(
                "mode = \"dsr\"\nallow = [\"198.18.0.0/15\"]\ndeny = [{}]\n\
                 [service.limit]\nrate = \"1000000/s\"\nburst = 100000\n",
                deny.join(", ")
            ),
            1,
        );
    text
}

/// Every scenario of one address family, appended to `out`.
fn scenarios(
    dp: &mut loader::Dataplane,
    sock: &PacketSocket,
    family: Family,
    budget: Duration,
    table: &str,
    out: &mut Vec<Figure>,
) -> Result<()> {
    let name = |base: &str| format!("{base}{}", family.suffix());
    // Open the measured flows first (SYNs), then measure their ACKs.
    sock.send_all(&from_clients(family, 0..FLOWS, NAT_PORT, true));
    let acks = from_clients(family, 0..FLOWS, NAT_PORT, false);
    out.push(measure(
        Target::Balancer(dp),
        sock,
        &acks,
        Some(budget),
        name("established (nat)"),
        table,
    )?);
    // Backend → NAT address segments of the same flows, at the NAT ports the program chose.
    let replies = replies_to_nat(dp, family)?;
    out.push(measure(
        Target::Balancer(dp),
        sock,
        &replies,
        Some(budget),
        name("reverse (nat)"),
        table,
    )?);
    sock.send_all(&from_clients(family, 0..FLOWS, DSR_PORT, true));
    let acks = from_clients(family, 0..FLOWS, DSR_PORT, false);
    out.push(measure(
        Target::Balancer(dp),
        sock,
        &acks,
        Some(budget),
        name("established (dsr)"),
        table,
    )?);
    sock.send_all(&from_clients(family, 0..FLOWS, TUNNEL_PORT, true));
    let acks = from_clients(family, 0..FLOWS, TUNNEL_PORT, false);
    let scenario = name("established (tunnel)");
    out.push(measure(Target::Balancer(dp), sock, &acks, Some(budget), scenario, table)?);
    if family == Family::V4 {
        sock.send_all(&from_clients(family, 0..FLOWS, PROTECTED_PORT, true));
        let acks = from_clients(family, 0..FLOWS, PROTECTED_PORT, false);
        let scenario = name("established (dsr, protected)");
        out.push(measure(Target::Balancer(dp), sock, &acks, Some(budget), scenario, table)?);
    }
    // Each new-flow SYN is sent once: a repeat would follow the flow it created. DSR first, so
    // NAT port allocation does not enter the protected comparison: the difference is admission.
    let mut dsr_ports = vec![(DSR_PORT, "new flow (dsr)"), (TUNNEL_PORT, "new flow (tunnel)")];
    if family == Family::V4 {
        dsr_ports.push((PROTECTED_PORT, "new flow (dsr, protected)"));
    }
    for (port, scenario) in dsr_ports {
        let syns = from_clients(family, FLOWS..FLOWS + NEW_DSR, port, true);
        out.push(measure(Target::Balancer(dp), sock, &syns, None, name(scenario), table)?);
    }
    let syns = from_clients(family, FLOWS..FLOWS + NEW_NAT, NAT_PORT, true);
    out.push(measure(Target::Balancer(dp), sock, &syns, None, name("new flow (nat)"), table)?);
    let other = from_clients(family, 0..FLOWS, OTHER_PORT, false);
    out.push(measure(
        Target::Balancer(dp),
        sock,
        &other,
        Some(budget),
        name("non-service"),
        table,
    )?);
    Ok(())
}

/// ACKs from each backend to the NAT address, one per full-NAT flow of `family` to the NAT
/// service, read from `NAT_REVERSE` (NAT key → the client's flow): exactly the packets the reverse
/// path looks up.
fn replies_to_nat(dp: &mut loader::Dataplane, family: Family) -> Result<Vec<Vec<u8>>> {
    let mut frames = Vec::new();
    for entry in &dp.nat_reverse() {
        let (nat, flow) = entry.context("reading NAT_REVERSE")?;
        if nat.family != family.tag() || flow.client.dport_be != NAT_PORT.to_be() {
            continue;
        }
        let segment = Segment {
            family,
            src: nat.backend,
            dst: family.nat_addr(),
            sport: u16::from_be(nat.backend_port_be),
            dport: u16::from_be(nat.nat_port_be),
            syn: false,
        };
        frames.push(segment.frame());
    }
    if frames.is_empty() {
        bail!("NAT_REVERSE holds no {family:?} flow to port {NAT_PORT}: the SYNs created none");
    }
    Ok(frames)
}

fn enter(path: &str) -> Result<()> {
    let ns = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a valid namespace fd; the benchmark's main thread moves into it for good.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Synthetic established flows (spoofed clients 198.19.x.y) to fill the table to `count`.
fn prefill_flows(dp: &mut loader::Dataplane, count: u32) -> Result<()> {
    let mut flows = dp.flows();
    let now = sshlb::sys::monotonic_ns();
    for i in 0..count {
        let key = FlowKey {
            src: v4_in_16([198, 19, (i >> 16) as u8, (i >> 8) as u8]),
            dst: Family::V4.vip(),
            sport_be: (1024 + (i & 0xff) as u16).to_be(),
            dport_be: NAT_PORT.to_be(),
            proto: proto::TCP,
            family: family::V4,
            pad: 0,
        };
        let flow = Flow { last_seen_ns: now, state: flow_state::ESTABLISHED, ..Flow::default() };
        flows.insert(key, flow, 0).with_context(|| format!("prefilling flow {i}"))?;
    }
    Ok(())
}

/// The maps that grow with the connection table: those of the program created with
/// `max-flows` entries (today FLOWS and NAT_REVERSE), as the kernel accounts them.
fn flow_maps(info: &aya::programs::ProgramInfo) -> Result<Vec<introspect::MapMemory>> {
    program_maps(info, |map| map.max_entries == u64::from(MAX_FLOWS))
}

/// The program's per-CPU flow caches (`sshlb-ebpf`'s `cache.rs`), fixed in size.
fn flow_caches(info: &aya::programs::ProgramInfo) -> Result<Vec<introspect::MapMemory>> {
    program_maps(info, |map| map.name.ends_with("_CACHE") && map.name != "HOP_CACHE")
}

/// The maps of the program `keep` keeps, as the kernel accounts them.
fn program_maps(
    info: &aya::programs::ProgramInfo,
    keep: impl Fn(&introspect::MapMemory) -> bool,
) -> Result<Vec<introspect::MapMemory>> {
    let ids = info.map_ids().context("program map ids")?.context("kernel gives no map ids")?;
    let mut maps = Vec::new();
    for id in ids {
        let map = introspect::MapMemory::of(id)?;
        if keep(&map) {
            maps.push(map);
        }
    }
    Ok(maps)
}

/// What is measured: the balancer (whose outcome counters are read too) or the baseline.
enum Target<'a> {
    Balancer(&'a mut loader::Dataplane),
    Baseline(&'a Xdp),
}

impl Target<'_> {
    fn info(&mut self) -> Result<aya::programs::ProgramInfo> {
        let program: &Xdp = match self {
            Self::Balancer(dp) => dp.program(),
            Self::Baseline(program) => program,
        };
        program.info().context("program info")
    }

    /// The balancer's outcome counters (empty for the baseline).
    fn counters(&self) -> Vec<sshlb::stats::Counter> {
        match self {
            Self::Balancer(dp) => sshlb::stats::read(&dp.stats()).unwrap_or_default(),
            Self::Baseline(_) => Vec::new(),
        }
    }
}

/// Sends `frames` — for up to `budget` (at most 500 rounds), or once each when `None` — and
/// reads the program's run count and run time around it. Prints the outcome counters that
/// moved, so a scenario that does not take the path it names shows.
fn measure(
    mut target: Target<'_>,
    sock: &PacketSocket,
    frames: &[Vec<u8>],
    budget: Option<Duration>,
    scenario: String,
    table: &str,
) -> Result<Figure> {
    let (before, counters_before) = (target.info()?, target.counters());
    let started = Instant::now();
    match budget {
        None => {
            sock.send_all(frames);
        }
        Some(budget) => {
            for _ in 0..500 {
                sock.send_all(frames);
                if started.elapsed() >= budget {
                    break;
                }
            }
        }
    }
    let (after, counters_after) = (target.info()?, target.counters());
    let runs = after.run_count() - before.run_count();
    let ns = after.run_time().saturating_sub(before.run_time()).as_nanos() as f64;
    let ns_per_packet = if runs == 0 { f64::NAN } else { ns / runs as f64 };
    let moved: Vec<String> = counters_before
        .iter()
        .zip(&counters_after)
        .filter(|(b, a)| a.value > b.value)
        .map(|(b, a)| format!("{} {}", a.name, a.value - b.value))
        .collect();
    eprintln!(
        "{scenario} ({table}): {} frames, {runs} packets, {ns_per_packet:.1} ns/packet [{}]",
        frames.len(),
        moved.join(", ")
    );
    Ok(Figure { scenario, table: table.to_owned(), packets: runs, ns_per_packet })
}
