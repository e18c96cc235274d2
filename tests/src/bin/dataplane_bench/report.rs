//! The printed tables and `target/bench/dataplane.json`: per scenario its cost, its ratio to the
//! trivial program, issue 11's target for it, and the functions its packets run through with
//! their size; then the program's functions; then memory per tracked flow.

use std::{fmt::Write as _, path::PathBuf};

use anyhow::Result;
use serde_json::{json, Value};

use crate::{
    introspect::{demangle, MapMemory, ProgramSize},
    Figure, MAX_FLOWS,
};

/// Issue 11's target for a scenario (ratio to the trivial program), by name without " v6".
fn target(scenario: &str) -> Option<f64> {
    match scenario.trim_end_matches(" v6") {
        "established (nat)" | "reverse (nat)" => Some(3.0),
        "established (dsr)" => Some(2.5),
        "non-service" => Some(1.3),
        "new flow (nat)" => Some(8.0),
        "new flow (dsr)" => Some(6.0),
        _ => None,
    }
}

/// Issue 11's memory target: bytes per tracked flow over every map that grows with flows.
const BYTES_PER_FLOW_TARGET: f64 = 160.0;

/// The functions a scenario's packets run through (static: read from the source, not traced),
/// by name or path suffix as BTF names them. The entry point is the program's name. The flow
/// lookup, the NAT rewrite and a next-hop cache hit are inlined into `forward`/`reverse`; the
/// first packet to a next hop also runs `routed` (a cache miss), which the steady state does
/// not. A name the object no longer has is printed as missing.
fn path(scenario: &str) -> &'static [&'static str] {
    const ENTRY: &str = sshlb::loader::PROGRAM;
    match scenario.trim_end_matches(" v6") {
        "established (nat)" | "established (dsr)" | "established (dsr, protected)" => {
            &[ENTRY, "parse_into", "forward"]
        }
        "established (tunnel)" => &[ENTRY, "parse_into", "forward", "encapsulate"],
        "new flow (tunnel)" => &[ENTRY, "parse_into", "forward", "create", "encapsulate"],
        "reverse (nat)" | "non-service" => &[ENTRY, "parse_into", "reverse"],
        "new flow (nat)" | "new flow (dsr)" => &[ENTRY, "parse_into", "forward", "create"],
        "new flow (dsr, protected)" => &[ENTRY, "parse_into", "forward", "create", "admit"],
        _ => &[],
    }
}

/// A scenario's path resolved against the program: found functions' summed sizes, and the
/// names the object lacks.
struct PathSize {
    xlated_insns: u64,
    jited_insns: Option<u64>,
    jited_bytes: u64,
    found: Vec<String>,
    missing: Vec<&'static str>,
}

fn path_size(scenario: &str, sizes: &ProgramSize) -> PathSize {
    let mut out = PathSize {
        xlated_insns: 0,
        jited_insns: Some(0),
        jited_bytes: 0,
        found: Vec::new(),
        missing: Vec::new(),
    };
    for wanted in path(scenario) {
        match sizes.function(wanted) {
            Some(f) => {
                out.xlated_insns += f.xlated_insns;
                out.jited_insns = out.jited_insns.zip(f.jited_insns).map(|(a, b)| a + b);
                out.jited_bytes += f.jited_bytes;
                out.found.push((*wanted).to_owned());
            }
            None => out.missing.push(wanted),
        }
    }
    out
}

/// Prints everything and writes the JSON.
pub fn report(
    baselines: &[Figure],
    results: &[Figure],
    sizes: &Result<ProgramSize>,
    memory: &Result<Vec<MapMemory>>,
) -> Result<()> {
    let mut out = String::new();
    let mut rows: Vec<Value> = Vec::new();
    let samples: Vec<f64> = baselines.iter().map(|b| b.ns_per_packet).collect();
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let base = &Figure {
        scenario: baselines[0].scenario.clone(),
        table: "-".to_owned(),
        packets: baselines.iter().map(|b| b.packets).sum(),
        ns_per_packet: mean,
    };
    let (lo, hi) = samples.iter().fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    writeln!(
        out,
        "trivial program measured {} times (before each table, after the last): {} ns; ratios are to their mean, {mean:.1} ns (spread {:.0} %)",
        samples.len(),
        samples.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", "),
        (hi - lo) / mean * 100.0
    )?;
    writeln!(
        out,
        "{:<30} {:>5} {:>8} {:>9} {:>10} {:>7}  {:>20}  path (functions)",
        "scenario", "table", "packets", "ns/packet", "vs trivial", "target", "xlated/JIT insns/B"
    )?;
    for f in std::iter::once(base).chain(results) {
        let ratio = f.ns_per_packet / base.ns_per_packet;
        let goal = target(&f.scenario);
        let goal_text = goal.map_or_else(String::new, |t| {
            format!("≤{t:.1}x{}", if ratio <= t { "" } else { " !" })
        });
        let mut row = json!({
            "scenario": f.scenario,
            "table": f.table,
            "packets": f.packets,
            "ns_per_packet": round(f.ns_per_packet, 2),
            "ratio_to_trivial": round(ratio, 3),
            "target_ratio": goal,
        });
        let (size_text, path_text) = match sizes {
            Ok(sizes) if !path(&f.scenario).is_empty() => {
                let p = path_size(&f.scenario, sizes);
                row["path"] = json!(p.found);
                row["path_missing"] = json!(p.missing);
                row["path_xlated_insns"] = json!(p.xlated_insns);
                row["path_jited_insns"] = json!(p.jited_insns);
                row["path_jited_bytes"] = json!(p.jited_bytes);
                let mut names = p.found.join(" → ");
                for m in &p.missing {
                    names += &format!(" [{m}: not in the object]");
                }
                let jited = p.jited_insns.map_or_else(|| "-".to_owned(), |n| n.to_string());
                (format!("{} / {jited} / {}", p.xlated_insns, p.jited_bytes), names)
            }
            _ => (String::new(), String::new()),
        };
        writeln!(
            out,
            "{:<30} {:>5} {:>8} {:>9.1} {:>9.2}x {:>7}  {:>20}  {}",
            f.scenario, f.table, f.packets, f.ns_per_packet, ratio, goal_text, size_text, path_text
        )?;
        rows.push(row);
    }
    writeln!(
        out,
        "(target: issue 11's ratio to trivial, '!' = not met; path size = xlated instructions / JIT'd instructions / JIT'd bytes of the \
         path's functions, static sizes, not instructions executed)"
    )?;
    flatness(&mut out, results)?;
    beyond_floor(&mut out, results, base.ns_per_packet)?;
    out += "\n";
    match sizes {
        Ok(sizes) => {
            program_table(&mut out, sizes)?;
            rows.push(json!({ "program": program_json(sizes) }));
        }
        Err(e) => writeln!(out, "program size: unavailable ({e:#})")?,
    }
    out += "\n";
    match memory {
        Ok(maps) => {
            memory_table(&mut out, maps)?;
            rows.push(json!({ "memory": memory_json(maps) }));
        }
        Err(e) => writeln!(out, "memory per flow: unavailable ({e:#})")?,
    }
    print!("{out}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("dataplane.json");
    rows.push(json!({ "trivial_samples_ns": samples }));
    let lines: Vec<String> = rows.iter().map(Value::to_string).collect();
    std::fs::write(&path, format!("[\n  {}\n]\n", lines.join(",\n  ")))?;
    println!("written: {}", path.display());
    Ok(())
}

/// Per table, what each IPv4 established and reverse scenario costs beyond the floors (the
/// trivial program plus one lookup in a connection table of the same size and fill,
/// [`crate::FLOOR`]; the same after `sshlb`'s parser, [`crate::FLOOR_PARSED`]): the lookup is
/// what any design with a connection table pays, the parser what validating the headers costs,
/// the rest the balancer's own work. New flows likewise against [`crate::FLOOR_INSERT`].
fn beyond_floor(out: &mut String, results: &[Figure], trivial_ns: f64) -> Result<()> {
    let tables: Vec<&str> =
        results.iter().filter(|f| f.scenario == crate::FLOOR).map(|f| f.table.as_str()).collect();
    for table in tables {
        let ns = |scenario: &str| {
            results
                .iter()
                .find(|f| f.table == table && f.scenario == scenario)
                .map(|f| f.ns_per_packet)
        };
        let (Some(lookup), Some(parsed)) = (ns(crate::FLOOR), ns(crate::FLOOR_PARSED)) else {
            continue;
        };
        // Each IPv4 scenario of this table whose name starts with one of `kinds`, with what it
        // costs beyond `floor` ns.
        let beyond = |kinds: &[&str], floor: f64| {
            results
                .iter()
                .filter(|f| f.table == table && !f.scenario.ends_with(" v6"))
                .filter(|f| kinds.iter().any(|k| f.scenario.starts_with(k)))
                .map(|f| {
                    let own = f.ns_per_packet - floor;
                    format!("{} {own:.0} ns ({:.2}x trivial)", f.scenario, own / trivial_ns)
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            out,
            "{table} table: the lookup floor is {:.2}x trivial, the parser adds {:.0} ns ({:.2}x); \
             beyond parser + lookup: {}",
            lookup / trivial_ns,
            parsed - lookup,
            (parsed - lookup) / trivial_ns,
            beyond(&["established", "reverse"], parsed)
        )?;
        // New flows against the insert floor (a lookup that misses, then an insert), with
        // the parser's share added: the rest is the service lookup, the backend choice and,
        // for full NAT, the port claimed in the reverse table.
        if let Some(insert) = ns(crate::FLOOR_INSERT) {
            let floor = insert + (parsed - lookup);
            writeln!(
                out,
                "{table} table: lookup + insert is {:.2}x trivial ({:.2}x with the parser); \
                 new flows beyond it: {}",
                insert / trivial_ns,
                floor / trivial_ns,
                beyond(&["new flow"], floor)
            )?;
        }
    }
    Ok(())
}

/// Each scenario's cost with the 1M table over its cost with the 1k table (flat = about 1).
fn flatness(out: &mut String, results: &[Figure]) -> Result<()> {
    let pairs: Vec<String> = results
        .iter()
        .filter(|f| f.table == "1k")
        .filter_map(|small| {
            let large = results.iter().find(|f| f.table == "1M" && f.scenario == small.scenario)?;
            Some(format!("{} {:.2}x", small.scenario, large.ns_per_packet / small.ns_per_packet))
        })
        .collect();
    if !pairs.is_empty() {
        writeln!(out, "1M table vs 1k: {}", pairs.join(", "))?;
    }
    Ok(())
}

/// `x` rounded to `digits` decimals (NaN becomes JSON null).
fn round(x: f64, digits: i32) -> Value {
    let scale = 10f64.powi(digits);
    json!((x * scale).round() / scale)
}

fn program_table(out: &mut String, sizes: &ProgramSize) -> Result<()> {
    writeln!(
        out,
        "program {} (id {}): functions, as BTF names them",
        sshlb::loader::PROGRAM,
        sizes.id
    )?;
    writeln!(
        out,
        "{:<48} {:>13} {:>10} {:>10}",
        "function", "xlated insns", "JIT insns", "JIT bytes"
    )?;
    for f in &sizes.functions {
        let jit_insns = f.jited_insns.map_or_else(|| "-".to_owned(), |n| n.to_string());
        writeln!(
            out,
            "{:<48} {:>13} {:>10} {:>10}",
            demangle(&f.name),
            f.xlated_insns,
            jit_insns,
            f.jited_bytes
        )?;
    }
    if let Some(note) = &sizes.jit_note {
        writeln!(out, "(JIT instruction counts unavailable: {note})")?;
    }
    let verified = sizes.verified_insns.map_or_else(String::new, |v| format!(" ({v} verified)"));
    writeln!(
        out,
        "{:<48} {:>13} {:>10} {:>10}{verified}",
        "total",
        sizes.xlated_insns,
        sizes.functions.iter().map(|f| f.jited_insns.unwrap_or(0)).sum::<u64>(),
        sizes.jited_bytes
    )?;
    Ok(())
}

fn program_json(sizes: &ProgramSize) -> Value {
    json!({
        "id": sizes.id,
        "xlated_insns": sizes.xlated_insns,
        "jited_bytes": sizes.jited_bytes,
        "verified_insns": sizes.verified_insns,
        "functions": sizes.functions.iter().map(|f| json!({
            "name": demangle(&f.name),
            "xlated_insns": f.xlated_insns,
            "jited_insns": f.jited_insns,
            "jited_bytes": f.jited_bytes,
        })).collect::<Vec<_>>(),
    })
}

fn memory_table(out: &mut String, maps: &[MapMemory]) -> Result<()> {
    writeln!(out, "memory: maps sized by agent.max-flows ({MAX_FLOWS}), kernel's bytes_memlock")?;
    writeln!(
        out,
        "{:<16} {:>12} {:>14} {:>12}  key + value (ours) / kernel's share",
        "map", "max_entries", "bytes_memlock", "B per flow"
    )?;
    for m in maps {
        let prealloc = if m.flags & 1 == 0 { "" } else { "  (no prealloc: grows with entries)" };
        let per_entry = m.per_entry();
        let ours = m.key_size.next_multiple_of(8) + m.value_size.next_multiple_of(8);
        writeln!(
            out,
            "{:<16} {:>12} {:>14} {:>12.1}  {} + {} / {:.1}{prealloc}",
            m.name,
            m.max_entries,
            m.bytes_memlock,
            per_entry,
            m.key_size,
            m.value_size,
            per_entry - ours as f64,
        )?;
    }
    // A direct-server-return or tunnel flow has an entry in FLOWS only; a full-NAT flow one in
    // each map (the reply path's index by NAT port).
    if let Some(flows) = maps.iter().find(|m| m.name == "FLOWS") {
        writeln!(
            out,
            "per flow by mode: dsr / tunnel {:.1} B (FLOWS only), full NAT {:.1} B (every map above)",
            flows.per_entry(),
            memory_totals(maps).0
        )?;
    }
    let (per_flow, total) = memory_totals(maps);
    writeln!(
        out,
        "{:<16} {:>12} {:>14} {:>12.1}  (target ≤ {BYTES_PER_FLOW_TARGET:.0} B per flow; {:.1} MiB at max-flows)",
        "total",
        MAX_FLOWS,
        total,
        per_flow,
        total as f64 / f64::from(1u32 << 20)
    )?;
    Ok(())
}

/// (bytes per flow summed over the maps, bytes in all of them).
fn memory_totals(maps: &[MapMemory]) -> (f64, u64) {
    let per_flow = maps.iter().map(MapMemory::per_entry).sum();
    (per_flow, maps.iter().map(|m| m.bytes_memlock).sum())
}

fn memory_json(maps: &[MapMemory]) -> Value {
    let (per_flow, total) = memory_totals(maps);
    json!({
        "max_flows": MAX_FLOWS,
        "bytes_per_flow": round(per_flow, 1),
        "bytes_per_flow_target": BYTES_PER_FLOW_TARGET,
        "bytes_at_max_flows": total,
        "maps": maps.iter().map(|m| json!({
            "name": m.name,
            "max_entries": m.max_entries,
            "bytes_memlock": m.bytes_memlock,
            "bytes_per_flow": round(m.per_entry(), 1),
            "key_size": m.key_size,
            "value_size": m.value_size,
        })).collect::<Vec<_>>(),
    })
}
