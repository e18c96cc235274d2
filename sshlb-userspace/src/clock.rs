//! The data plane's clock, calibrated: how the kernel's `jiffies` map onto CLOCK_MONOTONIC.
//!
//! The balancer reads `bpf_jiffies64()` (one load once the verifier inlines it) scaled by the
//! tick's length and offset to CLOCK_MONOTONIC, both set in its `.rodata` at load time, instead
//! of calling a clock helper per packet. Neither is known to user space directly (the kernel's
//! `HZ` is a build option), so the loader measures them once per process with the
//! `sshlb-clock` probe: a one-instruction-pair XDP program run by `BPF_PROG_TEST_RUN` that
//! reports `jiffies` and `ktime_get_ns` together. `jiffies` advance by exactly one tick of
//! CLOCK_MONOTONIC each (the kernel's `TICK_NSEC`), so the mapping holds for the boot.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use aya::{
    programs::{TestRun as _, TestRunOptions, Xdp},
    EbpfLoader,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sshlb-clock"));

/// The probe's program name in its object.
const PROGRAM: &str = "sshlb_clock";
/// The `HZ` values Linux is built with on the architectures we run on.
const KNOWN_HZ: [u64; 4] = [100, 250, 300, 1000];
/// How long the probe watches ticks go by to measure their length: long enough that a few
/// microseconds' sampling jitter (more under emulation) is well under 1 %.
const WATCH: Duration = Duration::from_millis(20);
/// The probe gives up after this long (ticks stopped, or sampling far too slow).
const GIVE_UP: Duration = Duration::from_millis(200);

/// How `jiffies` map onto CLOCK_MONOTONIC nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jiffies {
    /// The kernel's `HZ`.
    pub hz: u64,
    /// Nanoseconds per jiffy (`TICK_NSEC`: `(10⁹ + HZ/2) / HZ`).
    pub tick_ns: u64,
    /// CLOCK_MONOTONIC at jiffy 0 (wrapping: `jiffies` start just below 2³², not at 0).
    pub base_ns: u64,
}

impl Jiffies {
    /// CLOCK_MONOTONIC of the tick that made `jiffies` current.
    pub const fn ns(&self, jiffies: u64) -> u64 {
        jiffies.wrapping_mul(self.tick_ns).wrapping_add(self.base_ns)
    }

    /// From two probe samples `(jiffies, ns)`, each taken right after a tick (the first sample
    /// to see a new value), at least a few ticks apart.
    pub fn from_ticks(first: (u64, u64), second: (u64, u64)) -> Result<Self, String> {
        let ticks = second.0.wrapping_sub(first.0);
        let elapsed = second.1.saturating_sub(first.1);
        if ticks == 0 || ticks > 1 << 20 || elapsed == 0 {
            return Err(format!("{ticks} ticks in {elapsed} ns"));
        }
        let measured = ticks as f64 * 1e9 / elapsed as f64;
        let hz = KNOWN_HZ
            .into_iter()
            .min_by(|a, b| (*a as f64 - measured).abs().total_cmp(&(*b as f64 - measured).abs()))
            .expect("KNOWN_HZ is not empty");
        if (hz as f64 - measured).abs() > hz as f64 * 0.05 {
            return Err(format!("ticks at {measured:.1} Hz, no known HZ"));
        }
        let tick_ns = (1_000_000_000 + hz / 2) / hz;
        Ok(Self { hz, tick_ns, base_ns: second.1.wrapping_sub(second.0.wrapping_mul(tick_ns)) })
    }
}

/// This boot's mapping, measured once per process; `None` when the probe could not run or
/// the ticks made no sense (the balancer then calls a clock helper, as before).
pub fn calibrated() -> Option<Jiffies> {
    static ONCE: OnceLock<Option<Jiffies>> = OnceLock::new();
    *ONCE.get_or_init(|| match calibrate() {
        Ok(jiffies) => {
            tracing::debug!("data-plane clock: jiffies at HZ={}", jiffies.hz);
            Some(jiffies)
        }
        Err(why) => {
            tracing::info!("data-plane clock: a helper call per packet ({why})");
            None
        }
    })
}

fn calibrate() -> Result<Jiffies, String> {
    if OBJECT.is_empty() {
        return Err("the clock probe was not built".into());
    }
    let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(|e| format!("loading the probe: {e}"))?;
    let probe: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or("the probe object has no program")?
        .try_into()
        .map_err(|e| format!("the probe is not XDP: {e}"))?;
    probe.load().map_err(|e| format!("verifying the probe: {e}"))?;
    let sample = || -> Result<(u64, u64), String> {
        let frame = [0u8; 64];
        let mut out = [0u8; 64];
        let opts = TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        probe.test_run(opts).map_err(|e| format!("running the probe: {e}"))?;
        let word = |i: usize| u64::from_ne_bytes(out[i..i + 8].try_into().expect("8 bytes"));
        Ok((word(0), word(8)))
    };
    let started = Instant::now();
    // The first sample after a tick, then the first after a tick at least WATCH later.
    let edge = |since: Option<(u64, u64)>| -> Result<(u64, u64), String> {
        let mut last = sample()?.0;
        loop {
            if started.elapsed() > GIVE_UP {
                return Err("no tick seen".into());
            }
            let (jiffies, ns) = sample()?;
            let far_enough =
                since.is_none_or(|(_, t)| ns.saturating_sub(t) >= WATCH.as_nanos() as u64);
            if jiffies != last && far_enough {
                return Ok((jiffies, ns));
            }
            last = jiffies;
        }
    };
    let first = edge(None)?;
    let second = edge(Some(first))?;
    let jiffies = Jiffies::from_ticks(first, second)?;
    // Checked against a fresh sample: the mapping must land within one tick of the truth.
    let (now_jiffies, now_ns) = sample()?;
    let lag = now_ns.wrapping_sub(jiffies.ns(now_jiffies)) as i64;
    if !(-(jiffies.tick_ns as i64) / 10..=jiffies.tick_ns as i64 * 2).contains(&lag) {
        return Err(format!("the mapping is {lag} ns off"));
    }
    Ok(jiffies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_give_the_kernels_hz_and_offset() {
        // HZ=250 (4 ms ticks), jiffies starting at 2³² − 300·HZ, the second sample 25 ticks on
        // and a few µs late.
        let j0 = (1u64 << 32) - 300 * 250;
        let first = (j0 + 10, 5_000_000_000);
        let second = (j0 + 35, 5_100_003_000);
        let j = Jiffies::from_ticks(first, second).expect("HZ=250");
        assert_eq!((j.hz, j.tick_ns), (250, 4_000_000));
        assert_eq!(j.ns(second.0), second.1);
        assert_eq!(j.ns(second.0 + 1), second.1 + 4_000_000);
        // HZ=300's tick is not a whole number of microseconds: TICK_NSEC rounds it.
        let j = Jiffies::from_ticks((0, 1_000_000), (30, 101_000_000)).expect("HZ=300");
        assert_eq!((j.hz, j.tick_ns), (300, 3_333_333));
        // Ticks at no known rate, or no ticks at all, are refused (a helper clock instead).
        assert!(Jiffies::from_ticks((0, 0), (7, 100_000_000)).is_err(), "70 Hz");
        assert!(Jiffies::from_ticks((5, 0), (5, 100_000_000)).is_err(), "no tick");
    }
}
