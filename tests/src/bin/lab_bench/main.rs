//! `cargo xtask bench lab`: sshlb against the tools operators use instead, in one run, in the
//! same lab (same client, router, three OpenSSH backends): direct to one backend, sshlb full NAT,
//! sshlb DSR, HAProxy `mode tcp` (with `tcp-check expect string SSH-2.0-`, weights), and kernel
//! netfilter DNAT; and sshlb's IP-in-IP tunnel mode to a backend in another subnet beside the
//! direct path to that backend. Figures and ratios to HAProxy (and, for iperf3, netfilter; for
//! the tunnel, its direct path), printed and written as JSON; never asserted.
//!
//! Offloads are off on every veth of every hop (TSO, GSO, GRO, TX checksum), so frames are
//! MTU-sized everywhere, as on a real NIC without them. The peers take turns in interleaved
//! rounds (each round runs every peer once, the order rotated per round), so a slow stretch of a
//! shared machine hits all of them; each round is printed, then the mean. Per turn: real SSH
//! logins per second and p50/p99 latency, bulk throughput through one SSH session and with
//! iperf3 — each beside the frames dropped on every veth, the balancer's XDP drop counters and
//! the TCP retransmissions meanwhile — and host CPU per GB moved. Then, once, how long a killed
//! backend keeps getting new connections (the peers with health checks).

mod measure;
mod peers;
mod report;

use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use peers::{dnat, failover, FarBackend, Haproxy, Peer, Sshlb, DNAT_VIP, HAPROXY_VIP};
use sshlb_tests::{
    lab::Lab,
    topo::{BACKENDS, FAR4, VIP4},
    unique, Detach,
};

/// Rounds of turns (every peer once per round) unless the first argument says otherwise.
const ROUNDS: usize = 2;

/// HAProxy's health-check interval as operators leave it (`check inter 2s`); sshlb's checks
/// run at the same interval during the throughput turns.
const HAPROXY_CHECK_INTERVAL: &str = "2s";

/// A turn: one peer, or sshlb's three modes back to back (one agent start for all).
const TURNS: [&[Peer]; 5] = [
    &[Peer::Direct],
    &[Peer::SshlbNat, Peer::SshlbDsr, Peer::SshlbTunnel],
    &[Peer::Haproxy],
    &[Peer::Dnat],
    &[Peer::DirectFar],
];

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab benchmark needs root");
    }
    let rounds: usize =
        std::env::args().nth(1).map_or(Ok(ROUNDS), |s| s.parse()).context("ROUNDS")?;
    anyhow::ensure!(rounds >= 2, "at least two interleaved rounds (got {rounds})");
    let started = Instant::now();
    let mut lab = Lab::build(&std::env::temp_dir().join(unique("bench")), true);
    for ns in &mut lab.topo.backends {
        ns.spawn("iperf3", &["-s", "-p", "5201"]);
    }
    let nat_iperf_port = peers::NAT_IPERF_PORT.to_string();
    lab.topo.backends[0].spawn("iperf3", &["-s", "-p", &nat_iperf_port]);
    let _far = FarBackend::start(&mut lab)?;
    for vip in [HAPROXY_VIP, DNAT_VIP] {
        lab.topo.lb.ip(&["addr", "add", &format!("{vip}/32"), "dev", &lab.topo.lb_if]);
    }
    // Every peer presents the backends' one host key: known_hosts names them all.
    let host_pub = std::fs::read_to_string(lab.files.path("host_key.pub"))?;
    let mut known = std::fs::read_to_string(lab.files.path("known_hosts"))?;
    for addr in BACKENDS.iter().map(|(_, v4, _)| *v4).chain([HAPROXY_VIP, DNAT_VIP, FAR4]) {
        known += &format!("{addr} {host_pub}");
    }
    std::fs::write(lab.files.path("known_hosts"), known)?;
    let _cleanup: Detach = sshlb_tests::prepare_bridge(&lab.topo, Vec::new());
    lab.topo.offloads_off();

    // HAProxy runs throughout (it only holds its own VIP); sshlb and DNAT only for their turns,
    // so no XDP program or NAT rule sits in another peer's path.
    let haproxy = Haproxy::start(&mut lab, HAPROXY_CHECK_INTERVAL)?;
    let mut rows = Vec::new();
    for round in 1..=rounds {
        for i in 0..TURNS.len() {
            let turn = TURNS[(i + round - 1) % TURNS.len()];
            match turn[0] {
                Peer::SshlbNat => {
                    let sshlb = Sshlb::start(&lab, HAPROXY_CHECK_INTERVAL, true, true)?;
                    // Alternate which mode goes first, too.
                    let mut modes = turn.to_vec();
                    if round % 2 == 0 {
                        modes.reverse();
                    }
                    for peer in modes {
                        rows.push(measure::turn(&lab, round, peer, None)?);
                    }
                    sshlb.stop()?;
                }
                Peer::Haproxy => {
                    rows.push(measure::turn(&lab, round, Peer::Haproxy, Some(haproxy.pid))?);
                }
                Peer::Dnat => {
                    dnat(&lab.topo.lb, true)?;
                    rows.push(measure::turn(&lab, round, Peer::Dnat, None)?);
                    dnat(&lab.topo.lb, false)?;
                }
                peer => rows.push(measure::turn(&lab, round, peer, None)?),
            }
        }
    }

    // Failover, once: sshlb (interval 250ms, fall 3), HAProxy as configured (2s) and tuned.
    eprintln!("failover...");
    // A failover that cannot be measured is reported as such: the rounds' figures stand.
    let sshlb_failover = match Sshlb::start(&lab, "250ms", false, false) {
        Ok(sshlb) => {
            let after = failover(&mut lab, VIP4, 1);
            sshlb.stop()?;
            after
        }
        Err(e) => format!("not measured ({e:#})"),
    };
    let mut failovers = vec![("sshlb nat, checks interval 250ms", sshlb_failover)];
    failovers.push(("haproxy, checks inter 2s", failover(&mut lab, HAPROXY_VIP, 1)));
    haproxy.stop();
    let tuned = Haproxy::start(&mut lab, "250ms")?;
    failovers.push(("haproxy, checks inter 250ms", failover(&mut lab, HAPROXY_VIP, 1)));
    tuned.stop();
    report::report(&rows, &failovers, started.elapsed()).context("report")
}
