//! The agent's logs through the real binary: `--log-level` over `RUST_LOG`, and
//! `--log-format json` giving one JSON object per line.
//!
//! The event used is `up`'s warning that it runs without a configuration, which comes before
//! the root check: run as nobody, `up` logs it and then refuses, touching nothing.

use std::process::Output;

use sshlb_tests::{agent_binary, root_or_skip};

/// `sshlb-agent ARGS up lo` as nobody, with no configuration and `RUST_LOG` as given.
fn up_as_nobody(args: &[&str], rust_log: Option<&str>) -> Output {
    let absent =
        std::env::temp_dir().join(format!("sshlb-logging-{}-absent.toml", std::process::id()));
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(agent_binary())
        .args(args)
        .args(["up", "lo"])
        .env("SSHLB_CONFIG", absent)
        .env_remove("RUST_LOG");
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    let out = cmd.output().expect("spawn setpriv");
    assert!(!out.status.success(), "up as nobody must refuse: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("must run as root"), "{out:?}");
    out
}

fn warned(out: &Output) -> bool {
    String::from_utf8_lossy(&out.stderr).contains("only passes traffic")
}

#[test]
fn log_level_and_json_format() {
    // setpriv drops to nobody, which needs root.
    if !root_or_skip("log_level_and_json_format") {
        return;
    }
    assert!(warned(&up_as_nobody(&[], None)), "info is the default level");
    assert!(
        !warned(&up_as_nobody(&["--log-level", "error"], None)),
        "--log-level error hides warnings"
    );
    assert!(!warned(&up_as_nobody(&[], Some("error"))), "RUST_LOG=error hides warnings");
    assert!(
        warned(&up_as_nobody(&["--log-level", "warn"], Some("error"))),
        "the flag wins over RUST_LOG"
    );

    let out = up_as_nobody(&["--log-format", "json"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().find(|l| l.contains("only passes traffic")).expect("the warning");
    let event: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(event["level"], "WARN", "{event}");
    assert!(event["timestamp"].is_string(), "{event}");
    assert!(
        event["fields"]["message"].as_str().is_some_and(|m| m.contains("NO CONFIGURATION")),
        "{event}"
    );

    let out = std::process::Command::new(agent_binary())
        .args(["--log-level", "loud==", "check-config", "/nonexistent"])
        .output()
        .expect("spawn");
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && msg.contains("log filter \"loud==\""), "{msg}");
}
