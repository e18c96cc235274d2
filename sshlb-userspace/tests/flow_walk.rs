//! The connection-table walk (`sshlb::flows`) on the real data plane's `FLOWS` map, loaded but
//! not attached: a million entries, each seen exactly once by the batched walk and by the
//! per-entry fallback, and the per-backend counts `status` and `drain --wait` use.
//!
//! The maps are pinned (in a directory of this test's own, removed at the end) so that the real
//! `sshlb-agent flows` reads the same million entries from their pins, as an operator runs it.
//!
//! Prints the walk's and the command's durations (the figures in BENCHMARKS.md); asserts
//! nothing about speed.

use std::time::Instant;

use sshlb::{
    loader::{Dataplane, LoadOptions, LoaderError},
    plan::MapOp,
};
use sshlb_common::{flow_state, Backend, Flow, FlowKey};

/// Entries written: 2^20, the largest table `agent.max-flows` is tested with here.
const FLOWS: u32 = 1 << 20;

fn key(i: u32) -> FlowKey {
    let mut src = [0; 16];
    // 198.18.0.0/15 holds 2^17 addresses; the source port makes up the rest.
    let host = 0xC612_0000 | (i >> 3);
    src[..4].copy_from_slice(&host.to_be_bytes());
    let mut dst = [0; 16];
    dst[..4].copy_from_slice(&[198, 18, 0, 100]);
    FlowKey {
        src,
        dst,
        sport_be: (1024 + (i & 7) as u16).to_be(),
        dport_be: 22u16.to_be(),
        proto: 6,
        family: sshlb_common::family::V4,
        pad: 0,
    }
}

fn index(key: &FlowKey) -> u32 {
    let host = u32::from_be_bytes([key.src[0], key.src[1], key.src[2], key.src[3]]) & 0x1_ffff;
    (host << 3) | u32::from(u16::from_be(key.sport_be) - 1024)
}

#[test]
fn a_million_flows_each_seen_once_batched_and_iterating() {
    let required = std::env::var("SSHLB_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1");
    if !sshlb::sys::is_root() {
        assert!(!required, "the flow walk needs root (BPF maps)");
        eprintln!("SKIP: the flow walk needs root (BPF maps)");
        return;
    }
    let pins = Pins(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/sshlb-flow-walk-{}",
        std::process::id()
    )));
    let options = LoadOptions { max_flows: FLOWS, pin_dir: Some(pins.0.join(IFACE)) };
    std::fs::create_dir_all(pins.0.join(IFACE)).expect("pin directory");
    let mut dp = match Dataplane::load_with(&options) {
        Ok(dp) => dp,
        Err(err @ LoaderError::ObjectMissing) => {
            assert!(!required, "{err}");
            eprintln!("SKIP: {err}");
            return;
        }
        Err(err) => panic!("loading the data plane: {err}"),
    };
    let started = Instant::now();
    {
        let mut table = dp.flows();
        for i in 0..FLOWS {
            let state = if i % 5 == 0 { flow_state::FIN } else { flow_state::ESTABLISHED };
            let flow = Flow { backend_id: i % 7, service_id: i % 3, state, ..Flow::default() };
            table.insert(key(i), flow, 0).unwrap_or_else(|e| panic!("insert {i}: {e}"));
        }
    }
    eprintln!("filled {FLOWS} flows in {:?}", started.elapsed());

    let check = |seen: &[u8], what: &str| {
        #[expect(clippy::naive_bytecount, reason = "a test over 1M bytes, once")]
        let missing = seen.iter().filter(|&&n| n == 0).count();
        let twice = seen.iter().filter(|&&n| n > 1).count();
        assert_eq!(
            (missing, twice),
            (0, 0),
            "{what}: {missing} entries missed, {twice} seen twice"
        );
    };
    let mut seen = vec![0u8; FLOWS as usize];
    let mut wrong = 0;
    let started = Instant::now();
    let walked = dp
        .walk_flows(|k, f| {
            let i = index(k);
            seen[i as usize] += 1;
            wrong += u32::from(f.backend_id != i % 7);
        })
        .expect("batched walk");
    let batched_time = started.elapsed();
    assert!(walked.batched, "this kernel (5.6+) has BPF_MAP_LOOKUP_BATCH for hash maps");
    assert_eq!((walked.entries, wrong), (u64::from(FLOWS), 0));
    check(&seen, "batched");

    let mut seen = vec![0u8; FLOWS as usize];
    let started = Instant::now();
    let n = dp.walk_flows_iterating(|k, _| seen[index(k) as usize] += 1).expect("iterating walk");
    let iterating_time = started.elapsed();
    assert_eq!(n, u64::from(FLOWS));
    check(&seen, "iterating");

    let started = Instant::now();
    let active = dp.active_flows();
    let counting_time = started.elapsed();
    let expect = |b: u32, live: bool| {
        (0..FLOWS).filter(|i| i % 7 == b && (!live || i % 5 != 0)).count() as u64
    };
    for b in 0..7 {
        assert_eq!(active.per_backend[b as usize], expect(b, false), "backend {b}");
        assert_eq!(active.live_per_backend[b as usize], expect(b, true), "backend {b} live");
    }
    eprintln!(
        "walked {FLOWS} flows: batched {batched_time:?}, one at a time {iterating_time:?}; \
         active_flows (status, drain --wait) {counting_time:?}"
    );

    // `sshlb-agent flows` on the pinned table: backends 0-6 are b0-b6 of one service.
    let ops: Vec<MapOp> = (0..7u32)
        .map(|id| {
            let (addr, family) = sshlb_common::addr::to16([198, 18, 1, 10 + id as u8].into());
            let backend = Backend { addr, port_be: 22u16.to_be(), family, service_id: 0 };
            MapOp::SetBackend { id, backend }
        })
        .collect();
    dp.execute(&ops).expect("writing BACKENDS");
    let mut config =
        String::from("[[service]]\nname = \"git\"\nvip = \"198.18.0.100\"\nport = 22\n");
    for id in 0..7 {
        config.push_str(&format!(
            "[[service.backend]]\nname = \"b{id}\"\naddress = \"198.18.1.{}\"\n",
            10 + id
        ));
    }
    let config_path = Pins::config();
    std::fs::write(&config_path, config).expect("config");
    // $SSHLB_FLOWS_BIN times another build (BENCHMARKS.md's figure is a release build's).
    let bin = std::env::var_os("SSHLB_FLOWS_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_sshlb-agent").into(), std::path::PathBuf::from);
    eprintln!("timing {}", bin.display());
    let flows = |args: &[&str]| {
        let started = Instant::now();
        let out = std::process::Command::new(&bin)
            .args(["--pin-root", pins.0.to_str().expect("utf-8"), "--control", "/nonexistent"])
            .args(["flows", "--iface", IFACE, "--config", config_path.to_str().expect("utf-8")])
            .args(args)
            .output()
            .expect("sshlb-agent flows");
        let took = started.elapsed();
        assert!(out.status.success(), "flows {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        (out.stdout, took)
    };
    let (json, json_time) = flows(&["--json"]);
    let parsed: sshlb::flowview::Flows = serde_json::from_slice(&json).expect("flows --json");
    assert_eq!(parsed.flows.len(), FLOWS as usize);
    let b3 = parsed.flows.iter().filter(|r| r.backend.as_deref() == Some("b3")).count();
    assert_eq!(b3 as u64, expect(3, false), "rows named b3");
    drop(parsed);
    let (table, table_time) = flows(&[]);
    #[expect(clippy::naive_bytecount, reason = "a test over one output, once")]
    let lines = table.iter().filter(|&&c| c == b'\n').count();
    assert_eq!(lines, FLOWS as usize + 2, "header, one line per flow, the count");
    let (one, filtered_time) = flows(&["--json", "--backend", "b3", "--client", "198.18.0.0/24"]);
    let one: sshlb::flowview::Flows = serde_json::from_slice(&one).expect("filtered");
    // 198.18.0.0/24 holds hosts 0-255, i.e. flows 0..2048.
    let want = (0..2048u32).filter(|i| i % 7 == 3).count();
    assert_eq!(one.flows.len(), want, "filtered rows");
    eprintln!(
        "sshlb-agent flows over {FLOWS} pinned flows: --json {json_time:?} ({} MB), table \
         {table_time:?} ({} MB), --backend b3 --client 198.18.0.0/24 --json {filtered_time:?} \
         ({} rows)",
        json.len() >> 20,
        table.len() >> 20,
        one.flows.len()
    );
}

/// The interface name the pins are filed under (nothing is attached).
const IFACE: &str = "walk0";

/// This test's pin root; removed (pins and directories) when dropped, also on failure.
struct Pins(std::path::PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let dir = self.0.join(IFACE);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let _ignored = std::fs::remove_file(entry.path());
            }
        }
        let _ignored = std::fs::remove_dir(&dir);
        let _ignored = std::fs::remove_dir(&self.0);
        let _ignored = std::fs::remove_file(Self::config());
    }
}

impl Pins {
    /// The configuration naming the backends (not on the BPF filesystem: it takes no files).
    fn config() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("sshlb-flow-walk-{}.toml", std::process::id()))
    }
}
