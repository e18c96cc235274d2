//! `cargo xtask bench dataplane|agent|flood|lab`: benchmarks that print figures and ratios against a
//! peer measured in the same run (never timed assertions).
//!
//! `dataplane`: the XDP program's per-packet cost by the kernel's own BPF run-time accounting,
//! next to a trivial XDP program (MAC swap + XDP_TX) on the same veth, with each path's size
//! (xlated and JIT'd) and the memory per tracked flow. `lab`: sshlb against direct, HAProxy and
//! netfilter DNAT with offloads off on every hop, in interleaved rounds, with the drops and
//! retransmissions beside every throughput. `sshlb-tests`' `*-bench` binaries do the measuring;
//! this builds and runs them.

use anyhow::{ensure, Context as _, Result};

use crate::{build, cmd, setup};

/// Which benchmark to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Bench {
    /// ns/packet of the data plane vs a trivial XDP program, 1k and 1M flows in the table, IPv4
    /// and IPv6; program and path sizes; bytes per tracked flow.
    Dataplane,
    /// Maglev rebuild times and set-weight → kernel latency.
    Agent,
    /// New flows per second per core under a spoofed SYN flood while a real session streams:
    /// program time per packet, flows made and refused, the session's throughput before /
    /// during / after with drops and retransmits.
    Flood,
    /// sshlb vs direct, HAProxy and netfilter DNAT in the lab, offloads off, interleaved rounds:
    /// logins/s, latency, throughput beside drops and retransmits, CPU per GB, failover time;
    /// sshlb's tunnel mode beside the direct path to its far backend.
    Lab,
}

/// Runs `which` with `seconds` of traffic per scenario (`rounds`: the lab's interleaved rounds;
/// `quick`: the data plane's 1k table over IPv4 only).
pub fn bench(which: Bench, seconds: u64, rounds: usize, quick: bool) -> Result<()> {
    ensure!(crate::is_root(), "benchmarks need root (network namespaces, XDP, BPF statistics)");
    setup::setup()?;
    let mut cargo = build::cargo();
    let (bin, args) = match which {
        Bench::Dataplane => {
            let mut args = vec![seconds.to_string()];
            if quick {
                args.push("--quick".into());
            }
            ("dataplane-bench", args)
        }
        Bench::Agent => ("agent-bench", vec![]),
        Bench::Flood => ("flood-bench", vec![]),
        Bench::Lab => {
            // It drives the agent's library in-process; the far backend's `sshlb-agent backend
            // up` runs the binary, the release build.
            cargo.env("SSHLB_AGENT", build::build(true)?);
            ("lab-bench", vec![rounds.to_string()])
        }
    };
    cargo.args(["run", "--release", "--package", "sshlb-tests", "--bin", bin, "--"]);
    cargo.args(args);
    cmd::run(&mut cargo).with_context(|| format!("the {bin} benchmark failed"))?;
    Ok(())
}
