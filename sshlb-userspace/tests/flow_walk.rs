//! The connection-table walk (`sshlb::flows`) on the real data plane's `FLOWS` map, loaded but
//! not attached: a million entries, each seen exactly once by the batched walk and by the
//! per-entry fallback, and the per-backend counts `status` and `drain --wait` use.
//!
//! Prints the walk's duration (the figure in BENCHMARKS.md); asserts nothing about speed.

use std::time::Instant;

use sshlb::loader::{Dataplane, LoadOptions, LoaderError};
use sshlb_common::{flow_state, Flow, FlowKey};

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
    let mut dp = match Dataplane::load_with(&LoadOptions { max_flows: FLOWS, ..Default::default() })
    {
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
}
