//! `cargo xtask bench dataplane`: the data plane's per-packet cost, measured by the kernel's own
//! BPF run-time accounting (`BPF_ENABLE_STATS`: `run_time_ns / run_cnt` of the program) while
//! real frames cross a veth into the program, next to a trivial XDP program (MAC swap +
//! XDP_TX) measured the same way in the same run. Prints a table and writes JSON. No
//! assertions: figures only.
//!
//! Frames are sent with an AF_PACKET socket from the veth's peer, bounded in count and time.

use std::{
    fmt::Write as _,
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::programs::XdpMode;
use etherparse::PacketBuilder;
use sshlb::{config, daemon, loader};
use sshlb_common::{family, flow_state, proto, v4_in_16, Flow, FlowKey};
use sshlb_tests::{Detach, Netns, PIN_ROOT};

const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const GEN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

fn main() -> Result<()> {
    let seconds: u64 = std::env::args().nth(1).map_or(Ok(2), |s| s.parse()).context("SECONDS")?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the data-plane benchmark needs root (namespaces, XDP, BPF stats)");
    }
    let ns = Netns::new("bench");
    ns.ip(&["link", "add", "bg0", "type", "veth", "peer", "name", "bl0"]);
    ns.ip(&["link", "set", "bl0", "address", "02:00:00:00:00:02"]);
    ns.ip(&["link", "set", "bg0", "address", "02:00:00:00:00:fe"]);
    for line in [
        "link set bg0 up",
        "link set bl0 up",
        "addr add 198.18.0.2/24 dev bl0",
        "route add default via 198.18.0.254 dev bl0",
        "neigh add 198.18.0.254 lladdr 02:00:00:00:00:fe dev bl0 nud permanent",
        "neigh add 198.18.0.11 lladdr 02:00:00:00:01:01 dev bl0 nud permanent",
        "neigh add 198.18.0.12 lladdr 02:00:00:00:01:02 dev bl0 nud permanent",
        "neigh add 198.18.0.13 lladdr 02:00:00:00:01:03 dev bl0 nud permanent",
    ] {
        ns.ip(&line.split_whitespace().collect::<Vec<_>>());
    }
    let ns_path = format!("/run/netns/{}", ns.name);
    enter(&ns_path)?;
    // XDP_TX out of bl0 lands on bg0: give it a program so native veth delivers it.
    loader::attach_pass(&PathBuf::from(PIN_ROOT), "bg0").context("pass program on bg0")?;
    // Detaches the balancer and the pass program at the end, also on error.
    let _cleanup = Detach { iface: "bl0".into(), pass_port: "bg0".into(), files: Vec::new() };
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;

    let mut results = Vec::new();
    for (label, prefill) in [("1k", 1_000u32), ("1M", 1_000_000u32)] {
        let text = "[agent]\nmax-flows = 1200000\n\n[[service]]\nname = \"git\"\nvip = \"198.18.0.100\"\nport = 22\n\
             [[service.backend]]\nname = \"b1\"\naddress = \"198.18.0.11\"\n\
             [[service.backend]]\nname = \"b2\"\naddress = \"198.18.0.12\"\n\
             [[service.backend]]\nname = \"b3\"\naddress = \"198.18.0.13\"\n\n\
             [[service]]\nname = \"git-dsr\"\nvip = \"198.18.0.100\"\nport = 2222\nmode = \"dsr\"\n\
             [[service.backend]]\nname = \"b1\"\naddress = \"198.18.0.11\"\nport = 2222\n\
             [[service.backend]]\nname = \"b2\"\naddress = \"198.18.0.12\"\nport = 2222\n";
        // The same DSR service again, protected: an allow list, 1000 deny prefixes in the trie,
        // and a per-source limit high enough never to refuse (so both runs forward every SYN).
        let deny: Vec<String> =
            (0..1000).map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256)).collect();
        let protected = format!(
            "\n[[service]]\nname = \"git-dsr-protected\"\nvip = \"198.18.0.100\"\nport = 2223\n\
             mode = \"dsr\"\nallow = [\"198.18.0.0/15\"]\ndeny = [{}]\n\
             [service.limit]\nrate = \"1000000/s\"\nburst = 100000\n\
             [[service.backend]]\nname = \"b1\"\naddress = \"198.18.0.11\"\nport = 2223\n\
             [[service.backend]]\nname = \"b2\"\naddress = \"198.18.0.12\"\nport = 2223\n",
            deny.join(", ")
        );
        let text = format!("{text}{protected}");
        let cfg = config::parse("bench.toml", &text).context("bench config")?;
        let mut balancer =
            daemon::start(&PathBuf::from(PIN_ROOT), "bl0", loader::AttachMode::Native, &cfg)
                .context("starting the balancer")?;
        let started = Instant::now();
        let attached = &mut balancer.attached;
        prefill_flows(&mut attached.dataplane, prefill)?;
        eprintln!("prefilled {prefill} flows in {:.1} s", started.elapsed().as_secs_f64());
        let sock = PacketSocket::open("bg0")?;
        let established = frames(1000, Some(0x10), 22);
        // Open the 1000 measured flows first (SYNs), then measure their ACKs.
        sock.send_all(&frames(1000, Some(0x02), 22), 1);
        let budget = Duration::from_secs(seconds);
        let dp = &mut attached.dataplane;
        results.push(measure(
            dp.program(),
            &sock,
            &established,
            budget,
            "established (nat)",
            label,
        )?);
        sock.send_all(&frames(1000, Some(0x02), 2222), 1);
        let established_dsr = frames(1000, Some(0x10), 2222);
        results.push(measure(
            dp.program(),
            &sock,
            &established_dsr,
            budget,
            "established (dsr)",
            label,
        )?);
        sock.send_all(&frames(1000, Some(0x02), 2223), 1);
        let established_protected = frames(1000, Some(0x10), 2223);
        results.push(measure(
            dp.program(),
            &sock,
            &established_protected,
            budget,
            "established (dsr, protected)",
            label,
        )?);
        // Each new-flow SYN is sent once: a repeat would follow the flow it created. DSR, so
        // NAT port allocation does not enter the comparison: the difference is admission.
        for (port, scenario) in [(2222, "new flow (dsr)"), (2223, "new flow (dsr, protected)")] {
            let syns: Vec<_> = frames(51_000, Some(0x02), port).into_iter().skip(1000).collect();
            results.push(measure_once(dp.program(), &sock, &syns, scenario, label)?);
        }
        // Each new-flow SYN is sent once: a repeat would follow the flow it created.
        let new_flows = frames(101_000, Some(0x02), 22).into_iter().skip(1000).collect::<Vec<_>>();
        results.push(measure_once(dp.program(), &sock, &new_flows, "new flow (nat)", label)?);
        let other = frames(1000, Some(0x10), 80);
        results.push(measure(dp.program(), &sock, &other, budget, "non-service", label)?);
        drop(balancer);
        loader::down(&PathBuf::from(PIN_ROOT), "bl0").context("down")?;
    }
    // The baseline on the same interface, same frames.
    let mut dp = loader::Dataplane::load().context("loading")?;
    let ifindex = sshlb::sys::ifindex("bl0").context("bl0")?;
    let baseline = dp.extra_program(loader::BASELINE_PROGRAM).context("baseline program")?;
    let link = baseline.attach_to_if_index(ifindex, XdpMode::Driver).context("attach baseline")?;
    let sock = PacketSocket::open("bg0")?;
    let established = frames(1000, Some(0x10), 22);
    let base = measure(
        baseline,
        &sock,
        &established,
        Duration::from_secs(seconds),
        "trivial (MAC swap + XDP_TX)",
        "-",
    )?;
    baseline.detach(link).context("detach baseline")?;
    report(&base, &results)
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
            dst: v4_in_16(VIP.octets()),
            sport_be: (1024 + (i & 0xff) as u16).to_be(),
            dport_be: 22u16.to_be(),
            proto: proto::TCP,
            family: family::V4,
            pad: 0,
        };
        let flow = Flow { last_seen_ns: now, state: flow_state::ESTABLISHED, ..Flow::default() };
        flows.insert(key, flow, 0).with_context(|| format!("prefilling flow {i}"))?;
    }
    Ok(())
}

/// `count` TCP segments from distinct clients 198.18.(64+i/250).(i%250) to VIP:`dport`.
fn frames(count: u32, flags: Option<u8>, dport: u16) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let src = [198, 18, 64 + (i / 250 / 250) as u8, ((i / 250) % 250) as u8];
            let src = [src[0], src[1], src[2], src[3].wrapping_add((i % 250) as u8)];
            let builder = PacketBuilder::ethernet2(GEN_MAC, LB_MAC)
                .ipv4(src, VIP.octets(), 64)
                .tcp(40000 + (i % 20000) as u16, dport, 1, 64240);
            let builder = match flags {
                Some(0x02) => builder.syn(),
                _ => builder.ack(1),
            };
            let mut out = Vec::new();
            builder.write(&mut out, &[]).expect("vec");
            out
        })
        .collect()
}

/// An AF_PACKET socket that injects frames into an interface.
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
}

impl PacketSocket {
    fn open(iface: &str) -> Result<Self> {
        let ifindex = sshlb::sys::ifindex(iface).context("interface")?;
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor we own.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; zeroed then filled.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            bail!("binding AF_PACKET to {iface}: {}", std::io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: frame is valid for its length.
        unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) > 0 }
    }

    fn send_all(&self, frames: &[Vec<u8>], rounds: u32) -> u64 {
        let mut sent = 0;
        for _ in 0..rounds {
            for f in frames {
                if self.send(f) {
                    sent += 1;
                }
            }
        }
        sent
    }
}

struct Figure {
    scenario: String,
    table: String,
    packets: u64,
    ns_per_packet: f64,
}

fn measure(
    program: &aya::programs::Xdp,
    sock: &PacketSocket,
    frames: &[Vec<u8>],
    budget: Duration,
    scenario: &str,
    table: &str,
) -> Result<Figure> {
    let before = program.info().context("program info")?;
    let started = Instant::now();
    // Bounded in count (each frame list at most 500 rounds) and in time.
    'outer: for _ in 0..500 {
        for f in frames {
            sock.send(f);
        }
        if started.elapsed() >= budget {
            break 'outer;
        }
    }
    let after = program.info().context("program info")?;
    let runs = after.run_count() - before.run_count();
    let ns = after.run_time().checked_sub(before.run_time()).unwrap().as_nanos() as f64;
    let figure = Figure {
        scenario: scenario.to_owned(),
        table: table.to_owned(),
        packets: runs,
        ns_per_packet: if runs == 0 { f64::NAN } else { ns / runs as f64 },
    };
    eprintln!("{scenario} ({table}): {runs} packets, {:.1} ns/packet", figure.ns_per_packet);
    Ok(figure)
}

/// Sends every frame exactly once and measures.
fn measure_once(
    program: &aya::programs::Xdp,
    sock: &PacketSocket,
    frames: &[Vec<u8>],
    scenario: &str,
    table: &str,
) -> Result<Figure> {
    let before = program.info().context("program info")?;
    sock.send_all(frames, 1);
    let after = program.info().context("program info")?;
    let runs = after.run_count() - before.run_count();
    let ns = after.run_time().checked_sub(before.run_time()).unwrap().as_nanos() as f64;
    let ns_per_packet = if runs == 0 { f64::NAN } else { ns / runs as f64 };
    eprintln!("{scenario} ({table}): {runs} packets, {ns_per_packet:.1} ns/packet");
    Ok(Figure {
        scenario: scenario.to_owned(),
        table: table.to_owned(),
        packets: runs,
        ns_per_packet,
    })
}

fn report(base: &Figure, results: &[Figure]) -> Result<()> {
    let mut table = String::new();
    writeln!(
        table,
        "{:<32} {:>6} {:>10} {:>10} {:>9}",
        "scenario", "table", "packets", "ns/packet", "vs trivial"
    )?;
    for f in std::iter::once(base).chain(results) {
        writeln!(
            table,
            "{:<32} {:>6} {:>10} {:>10.1} {:>8.2}x",
            f.scenario,
            f.table,
            f.packets,
            f.ns_per_packet,
            f.ns_per_packet / base.ns_per_packet
        )?;
    }
    print!("{table}");
    let json: Vec<String> = std::iter::once(base)
        .chain(results)
        .map(|f| {
            format!(
                "{{\"scenario\":\"{}\",\"table\":\"{}\",\"packets\":{},\"ns_per_packet\":{:.2},\"ratio_to_trivial\":{:.3}}}",
                f.scenario,
                f.table,
                f.packets,
                f.ns_per_packet,
                f.ns_per_packet / base.ns_per_packet
            )
        })
        .collect();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("dataplane.json");
    std::fs::write(&path, format!("[\n  {}\n]\n", json.join(",\n  ")))?;
    println!("written: {}", path.display());
    Ok(())
}
