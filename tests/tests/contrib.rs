//! contrib/prometheus/sshlb.rules.yml and contrib/grafana/sshlb.json name only metrics the
//! agent really exports: every `sshlb_*` name they use is a family (or a histogram's series) in
//! a real scrape of a running agent, and every `outcome` they match is one of its
//! `sshlb_packets_total` outcomes. (`promtool check rules` / `test rules` run in their own tier.)

use std::collections::BTreeSet;

use sshlb_tests::{
    agent::{scrape_metrics, AgentHandle},
    config::{ConfigBuilder, ServiceBuilder},
    topo::{Topo, VIP4},
    wait_for,
};

const RULES: &str = include_str!("../../contrib/prometheus/sshlb.rules.yml");
const RULE_TESTS: &str = include_str!("../../contrib/prometheus/sshlb.rules.test.yml");
const DASHBOARD: &str = include_str!("../../contrib/grafana/sshlb.json");

/// Series Prometheus itself records per target (not the agent's).
const PROMETHEUS_OWN: [&str; 1] = ["up"];

/// Every `sshlb_…` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("sshlb_") {
        let tail = &rest[at..];
        let end =
            tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        // Part of a longer word (e.g. a path such as contrib/sshlb_x) is not a name.
        let before = rest[..at].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Every value or regex alternative matched against the `outcome` label in `text`.
fn outcome_matchers(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("outcome=") {
        let tail = text[i + "outcome=".len()..].trim_start_matches('~');
        let Some(tail) = tail.strip_prefix('"').or_else(|| tail.strip_prefix("\\\"")) else {
            continue;
        };
        let end = tail.find(['"', '\\']).unwrap_or(tail.len());
        found.extend(tail[..end].split('|').map(str::to_owned));
    }
    found
}

/// The `expr` strings of every panel target in the dashboard.
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if let ("expr" | "definition", Some(s)) = (k.as_str(), v.as_str()) {
                        out.push(s.to_owned());
                    }
                    walk(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("sshlb.json is JSON");
    let mut out = Vec::new();
    walk(&dashboard, &mut out);
    out
}

#[test]
fn every_metric_the_rules_and_dashboard_name_is_in_a_real_scrape() {
    let Some(topo) =
        Topo::for_test("every_metric_the_rules_and_dashboard_name_is_in_a_real_scrape")
    else {
        return;
    };
    let mut agent = AgentHandle::new(&topo);
    agent.start(
        ConfigBuilder::new().service(
            ServiceBuilder::new("git", VIP4, 22)
                .ring_size(251)
                .fast_connect_checks()
                .topo_backends(false, |_, b| b),
        ),
    );
    let scrape = wait_for(std::time::Duration::from_secs(10), || {
        let text = scrape_metrics(&topo.lb).ok()?;
        text.contains("sshlb_backend_health").then_some(text)
    })
    .expect("a scrape of the agent's /metrics");

    // Families (from `# TYPE`) and the series histograms add.
    let mut exported = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
        exported.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                exported.insert(format!("{name}{suffix}"));
            }
        }
    }
    let outcomes: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("sshlb_packets_total{outcome=\""))
        .filter_map(|l| l.split('"').next())
        .map(str::to_owned)
        .collect();
    assert!(outcomes.contains("drop_flow_table_full"), "{scrape}");

    let exprs = dashboard_exprs();
    assert!(exprs.len() > 20, "the dashboard has {} queries", exprs.len());
    let dashboard = exprs.join("\n");
    for (what, text) in [("rules", RULES), ("rule tests", RULE_TESTS), ("dashboard", &dashboard)] {
        let names = metric_names(text);
        assert!(names.len() > 5, "{what}: only {names:?}");
        let unknown: Vec<_> = names.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(unknown.is_empty(), "{what} name metrics the agent does not export: {unknown:?}");
        for matcher in outcome_matchers(text) {
            let known = match matcher.strip_suffix(".*") {
                Some(prefix) => outcomes.iter().any(|o| o.starts_with(prefix)),
                None => outcomes.contains(&matcher),
            };
            assert!(known, "{what} match outcome {matcher:?}, not one of {outcomes:?}");
        }
    }
    // The rules use Prometheus's own `up` and nothing else that is not the agent's.
    assert!(RULES.contains("up{job=\"sshlb\"}"));
    for own in PROMETHEUS_OWN {
        assert!(!exported.contains(own), "{own} is Prometheus's, not the agent's");
    }
}

#[test]
fn the_name_scanners_find_names_and_outcomes() {
    let text = r#"rate(sshlb_packets_total{outcome=~"drop_a|drop_b"}[5m]) / sshlb_x_y and contrib/xsshlb_z
        {"expr": "sum(sshlb_q{outcome=\"fwd_nat\"})"}"#;
    let names: Vec<String> = metric_names(text).into_iter().collect();
    assert_eq!(names, ["sshlb_packets_total", "sshlb_q", "sshlb_x_y"]);
    let outcomes: Vec<String> = outcome_matchers(text).into_iter().collect();
    assert_eq!(outcomes, ["drop_a", "drop_b", "fwd_nat"]);
}
