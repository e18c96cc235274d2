//! `cargo xtask bench agent`: control-plane figures — Maglev ring build time for 10, 100 and
//! 1,000 backends at 65,537 slots, and the time from a weight change to the new ring being in
//! the kernel (re-plan + ring write + flip), full write versus writing only changed slots.
//! Figures only, no assertions.

use std::{fmt::Write as _, path::PathBuf, time::Instant};

use anyhow::{bail, Context as _, Result};
use sshlb::{
    loader::Dataplane,
    maglev::{build_ring, RingMember},
};
use sshlb_common::{proto, ServiceKey};

const RING: u32 = 65537;

fn members(n: u32, heavy: Option<u32>) -> (Vec<String>, Vec<u32>) {
    let keys = (0..n).map(|i| format!("198.18.{}.{}:22", 1 + i / 250, 1 + i % 250)).collect();
    let weights = (0..n).map(|i| if Some(i) == heavy { 200 } else { 100 }).collect();
    (keys, weights)
}

fn ring(keys: &[String], weights: &[u32]) -> Vec<u32> {
    let m: Vec<_> = keys
        .iter()
        .zip(weights)
        .zip(0u32..)
        .map(|((key, &weight), id)| RingMember { id, key, weight })
        .collect();
    build_ring(&m, RING).expect("ring")
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the agent benchmark needs root (it loads the data plane's maps)");
    }
    let mut out = String::new();
    let mut json = Vec::new();
    writeln!(out, "{:<44} {:>12}", "figure", "value")?;
    for n in [10u32, 100, 1000] {
        let (keys, weights) = members(n, None);
        let runs = 5;
        let started = Instant::now();
        for _ in 0..runs {
            std::hint::black_box(ring(&keys, &weights));
        }
        let ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(runs);
        writeln!(
            out,
            "{:<44} {:>9.2} ms",
            format!("Maglev build, {n} backends, {RING} slots"),
            ms
        )?;
        json.push(format!("{{\"figure\":\"maglev_build_ms\",\"backends\":{n},\"value\":{ms:.3}}}"));
    }
    let mut dp = Dataplane::load().context("loading the data plane")?;
    let key = ServiceKey::v4([198, 18, 0, 100], 22, proto::TCP);
    for n in [10u32, 100, 1000] {
        let (keys, weights) = members(n, None);
        let before = ring(&keys, &weights);
        dp.publish_service(&key, 0, 0, &before).context("publish")?;
        dp.publish_service(&key, 0, 0, &before).context("publish")?;
        // set-weight: one backend doubles; time = rebuild + write changed slots + flip.
        let (_, heavier) = members(n, Some(0));
        let started = Instant::now();
        let after = ring(&keys, &heavier);
        dp.publish_service(&key, 0, 0, &after).context("publish")?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        writeln!(
            out,
            "{:<44} {:>9.2} ms",
            format!("set-weight -> kernel, {n} backends ({moved} slots)"),
            ms
        )?;
        json.push(format!("{{\"figure\":\"set_weight_to_kernel_ms\",\"backends\":{n},\"slots_changed\":{moved},\"value\":{ms:.3}}}"));
    }
    // A cold write of every slot, for comparison (what a fresh agent or takeover does once).
    let (keys, weights) = members(100, None);
    let full = ring(&keys, &weights);
    let mut fresh = Dataplane::load().context("loading")?;
    let started = Instant::now();
    fresh.publish_service(&key, 0, 0, &full).context("publish")?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    writeln!(out, "{:<44} {:>9.2} ms", format!("full ring write ({RING} slots)"), ms)?;
    json.push(format!("{{\"figure\":\"full_ring_write_ms\",\"value\":{ms:.3}}}"));
    print!("{out}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("agent.json");
    std::fs::write(&path, format!("[\n  {}\n]\n", json.join(",\n  ")))?;
    println!("written: {}", path.display());
    Ok(())
}
