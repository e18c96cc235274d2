//! The printed tables — each round, the mean over rounds, issue 11's targets as ratios, the
//! failover times, the run's duration — and `target/bench/lab.json`.

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::Result;
use serde_json::{json, Value};

use crate::{
    measure::{Losses, Row, Throughput},
    peers::Peer,
};

const ALL: [Peer; 7] = [
    Peer::Direct,
    Peer::SshlbNat,
    Peer::SshlbDsr,
    Peer::Haproxy,
    Peer::Dnat,
    Peer::DirectFar,
    Peer::SshlbTunnel,
];

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

/// "veth drops 624 tx / 0 rx (sw/p1 624 tx) · XDP drops 0 · retrans client 3, all 2451".
fn losses_text(losses: &Losses) -> String {
    let total = losses.path.total_drops();
    let mut text = format!("veth drops {} tx / {} rx", total.tx, total.rx);
    if !losses.path.drops.is_empty() {
        let links: Vec<String> =
            losses.path.drops.iter().map(|(link, d)| format!("{link} {}/{}", d.tx, d.rx)).collect();
        text += &format!(" ({})", links.join(", "));
    }
    match &losses.xdp_drops {
        None => text += " · XDP –",
        Some(drops) if drops.is_empty() => text += " · XDP drops 0",
        Some(drops) => {
            let named: Vec<String> = drops.iter().map(|(n, v)| format!("{n} {v}")).collect();
            text += &format!(" · XDP {}", named.join(", "));
        }
    }
    let client = losses.path.retrans.get("cl").copied().unwrap_or(0);
    let all: u64 = losses.path.retrans.values().sum();
    text + &format!(" · retrans client {client}, all hosts {all}")
}

fn losses_json(losses: &Losses) -> Value {
    let total = losses.path.total_drops();
    json!({
        "veth_tx_drops": total.tx,
        "veth_rx_drops": total.rx,
        "veth_drops_by_link": losses.path.drops.iter()
            .map(|(link, d)| (link.clone(), json!({"tx": d.tx, "rx": d.rx})))
            .collect::<serde_json::Map<_, _>>(),
        "xdp_drops": losses.xdp_drops.as_ref().map(|d| d.iter()
            .map(|(n, v)| ((*n).to_owned(), json!(v)))
            .collect::<serde_json::Map<_, _>>()),
        "retrans_client": losses.path.retrans.get("cl").copied().unwrap_or(0),
        "retrans_all_hosts": losses.path.retrans.values().sum::<u64>(),
    })
}

/// The figures of one table line: a round's row, or the mean of a peer's rows.
struct Line<'a> {
    peer: Peer,
    logins_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    ssh: f64,
    ssh_first_byte_ms: f64,
    ssh_losses: Option<&'a Losses>,
    iperf: f64,
    iperf_losses: Option<&'a Losses>,
    cpu_s_per_gb: f64,
}

impl<'a> Line<'a> {
    fn of(row: &'a Row) -> Self {
        Self {
            peer: row.peer,
            logins_per_s: row.logins_per_s,
            p50_ms: row.p50_ms,
            p99_ms: row.p99_ms,
            ssh: row.ssh.value,
            ssh_first_byte_ms: row.ssh_first_byte_ms,
            ssh_losses: Some(&row.ssh.losses),
            iperf: row.iperf.value,
            iperf_losses: Some(&row.iperf.losses),
            cpu_s_per_gb: row.cpu_s_per_gb,
        }
    }

    /// The mean over `rows` (NaN figures, i.e. failed runs, left out).
    fn mean(peer: Peer, rows: &[&Row]) -> Self {
        let mean = |f: &dyn Fn(&Row) -> f64| {
            let values: Vec<f64> = rows.iter().map(|r| f(r)).filter(|v| v.is_finite()).collect();
            if values.is_empty() {
                f64::NAN
            } else {
                values.iter().sum::<f64>() / values.len() as f64
            }
        };
        Self {
            peer,
            logins_per_s: mean(&|r| r.logins_per_s),
            p50_ms: mean(&|r| r.p50_ms),
            p99_ms: mean(&|r| r.p99_ms),
            ssh: mean(&|r| r.ssh.value),
            ssh_first_byte_ms: mean(&|r| r.ssh_first_byte_ms),
            ssh_losses: None,
            iperf: mean(&|r| r.iperf.value),
            iperf_losses: None,
            cpu_s_per_gb: mean(&|r| r.cpu_s_per_gb),
        }
    }
}

fn table(out: &mut String, lines: &[Line<'_>], totals: Option<&[Row]>) -> Result<()> {
    let base = lines.iter().find(|l| l.peer == Peer::Haproxy);
    let of_base =
        |f: fn(&Line<'_>) -> f64, v: f64| base.map_or_else(|| "-".into(), |b| ratio(v, f(b)));
    writeln!(
        out,
        "| peer | ssh logins/s | p50 ms | p99 ms | ssh bulk MB/s | its first byte ms | lost during ssh bulk | iperf3 Gbit/s | lost during iperf3 | CPU s per GB |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---|---:|---|---:|")?;
    for l in lines {
        // The mean table sums each peer's losses over its rounds.
        let summed = |pick: fn(&Row) -> &Throughput| {
            totals.map(|rows| {
                let mine: Vec<&Losses> =
                    rows.iter().filter(|r| r.peer == l.peer).map(|r| &pick(r).losses).collect();
                summed_text(&mine)
            })
        };
        let ssh_lost =
            l.ssh_losses.map(losses_text).or_else(|| summed(|r| &r.ssh)).unwrap_or_default();
        let iperf_lost =
            l.iperf_losses.map(losses_text).or_else(|| summed(|r| &r.iperf)).unwrap_or_default();
        writeln!(
            out,
            "| {} | {:.1} ({}) | {:.0} | {:.0} | {:.0} ({}) | {:.0} | {} | {:.2} ({}) | {} | {:.2} ({}) |",
            l.peer.label(),
            l.logins_per_s,
            of_base(|b| b.logins_per_s, l.logins_per_s),
            l.p50_ms,
            l.p99_ms,
            l.ssh,
            of_base(|b| b.ssh, l.ssh),
            l.ssh_first_byte_ms,
            ssh_lost,
            l.iperf,
            of_base(|b| b.iperf, l.iperf),
            iperf_lost,
            l.cpu_s_per_gb,
            of_base(|b| b.cpu_s_per_gb, l.cpu_s_per_gb),
        )?;
    }
    Ok(())
}

/// Losses summed over a peer's rounds.
fn summed_text(all: &[&Losses]) -> String {
    let (mut tx, mut rx, mut xdp, mut client, mut hosts, mut has_xdp) = (0, 0, 0, 0, 0, false);
    for l in all {
        let d = l.path.total_drops();
        tx += d.tx;
        rx += d.rx;
        if let Some(drops) = &l.xdp_drops {
            has_xdp = true;
            xdp += drops.iter().map(|(_, v)| v).sum::<u64>();
        }
        client += l.path.retrans.get("cl").copied().unwrap_or(0);
        hosts += l.path.retrans.values().sum::<u64>();
    }
    let xdp = if has_xdp { format!("XDP drops {xdp}") } else { "XDP –".into() };
    format!("Σ veth drops {tx} tx / {rx} rx · {xdp} · retrans client {client}, all hosts {hosts}")
}

/// Prints everything and writes the JSON.
pub fn report(rows: &[Row], failovers: &[(&str, String)], took: Duration) -> Result<()> {
    let mut out = String::new();
    let rounds = rows.iter().map(|r| r.round).max().unwrap_or(0);
    writeln!(
        out,
        "offloads off on every veth (TSO/GSO/GRO/TX csum): MTU-sized frames on every hop"
    )?;
    writeln!(out, "ratios in parentheses: to HAProxy in the same round")?;
    for round in 1..=rounds {
        writeln!(out, "\nround {round} (peers in the order they ran)")?;
        let lines: Vec<Line<'_>> = rows.iter().filter(|r| r.round == round).map(Line::of).collect();
        table(&mut out, &lines, None)?;
    }
    writeln!(out, "\nmean of {rounds} rounds (losses summed over the rounds)")?;
    let means: Vec<Line<'_>> = ALL
        .iter()
        .map(|peer| {
            let mine: Vec<&Row> = rows.iter().filter(|r| r.peer == *peer).collect();
            Line::mean(*peer, &mine)
        })
        .collect();
    table(&mut out, &means, Some(rows))?;
    targets(&mut out, &means)?;
    writeln!(out, "\nkilled backend out after (new connections reach only live backends):")?;
    for (peer, after) in failovers {
        writeln!(out, "  {peer}: {after}")?;
    }
    writeln!(out, "  netfilter DNAT: never (no health checks)")?;
    writeln!(out, "\nlab bench took {:.0} s", took.as_secs_f64())?;
    print!("{out}");

    let mut json_rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "round": r.round,
                "peer": r.peer.label(),
                "offloads": "off",
                "logins_per_s": r.logins_per_s,
                "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms,
                "ssh_mb_s": r.ssh.value,
                "ssh_first_byte_ms": r.ssh_first_byte_ms,
                "ssh_losses": losses_json(&r.ssh.losses),
                "iperf_gbit_s": r.iperf.value,
                "iperf_losses": losses_json(&r.iperf.losses),
                "cpu_s_per_gb": r.cpu_s_per_gb,
            })
        })
        .collect();
    json_rows.extend(means.iter().map(|m| {
        json!({
            "round": "mean",
            "peer": m.peer.label(),
            "logins_per_s": m.logins_per_s,
            "p50_ms": m.p50_ms,
            "p99_ms": m.p99_ms,
            "ssh_mb_s": m.ssh,
            "ssh_first_byte_ms": m.ssh_first_byte_ms,
            "iperf_gbit_s": m.iperf,
            "cpu_s_per_gb": m.cpu_s_per_gb,
        })
    }));
    json_rows.push(json!({
        "failover": failovers.iter().map(|(p, a)| ((*p).to_owned(), json!(a))).collect::<serde_json::Map<_, _>>(),
        "duration_s": took.as_secs_f64(),
    }));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("lab.json");
    let lines: Vec<String> = json_rows.iter().map(Value::to_string).collect();
    std::fs::write(&path, format!("[\n  {}\n]\n", lines.join(",\n  ")))?;
    println!("written: {}", path.display());
    Ok(())
}

/// Issue 11's lab targets, as ratios of the means.
fn targets(out: &mut String, means: &[Line<'_>]) -> Result<()> {
    let find = |p: Peer| means.iter().find(|l| l.peer == p);
    let (Some(haproxy), Some(dnat)) = (find(Peer::Haproxy), find(Peer::Dnat)) else {
        return Ok(());
    };
    writeln!(out, "\ntargets (issue 11), ratios of the means; '!' = not met:")?;
    let check = |value: f64, goal: f64, at_least: bool| {
        let met = if at_least { value >= goal } else { value <= goal };
        let sign = if at_least { '≥' } else { '≤' };
        format!("{value:.2}x ({sign} {goal:.1}{})", if met { "" } else { " !" })
    };
    if let (Some(l), Some(direct)) = (find(Peer::SshlbTunnel), find(Peer::DirectFar)) {
        // No target: the tunnel's cost, against its own path without a balancer.
        writeln!(
            out,
            "  sshlb tunnel (no target; to direct (far)): logins {} · ssh bulk {} · iperf3 {} · CPU s per GB {}",
            ratio(l.logins_per_s, direct.logins_per_s),
            ratio(l.ssh, direct.ssh),
            ratio(l.iperf, direct.iperf),
            ratio(l.cpu_s_per_gb, direct.cpu_s_per_gb),
        )?;
    }
    for peer in [Peer::SshlbNat, Peer::SshlbDsr] {
        let Some(l) = find(peer) else { continue };
        writeln!(
            out,
            "  {}: logins {} HAProxy · ssh bulk {} HAProxy · iperf3 {} HAProxy, {} DNAT · CPU s per GB {} HAProxy, {} DNAT",
            peer.label(),
            check(l.logins_per_s / haproxy.logins_per_s, 1.0, true),
            check(l.ssh / haproxy.ssh, 1.0, true),
            check(l.iperf / haproxy.iperf, 1.2, true),
            check(l.iperf / dnat.iperf, 1.0, true),
            check(l.cpu_s_per_gb / haproxy.cpu_s_per_gb, 1.0, false),
            check(l.cpu_s_per_gb / dnat.cpu_s_per_gb, 1.0, false),
        )?;
    }
    Ok(())
}
