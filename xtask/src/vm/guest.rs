//! What each kind of guest runs, built on the host with cargo (dynamically linked; the image
//! copies them in with their libraries): the kernel matrix's two test binaries, the e2e test
//! binaries with the agent, or the lab with the agent.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use super::{
    image::{Payload, Userland},
    Kernel,
};
use crate::cmd;

/// The matrix guest's script: fixtures, then namespace tests.
const MATRIX: &str = include_str!("matrix.sh");
/// The e2e guest's script: every binary in `/tests/e2e`.
const E2E: &str = include_str!("e2e.sh");
/// The lab guest's script: the lab, then a shell on the console.
const LAB: &str = include_str!("lab.sh");

/// The e2e tests the guest runs (all of tier 4). The waits of the test kit and the timeouts
/// and intervals the tests configure are stretched by `SSHLB_TEST_SLOWDOWN` under software
/// emulation (tests/src/lib.rs: slowdown), so what they assert stays what the host asserts.
pub const E2E_TESTS: [&str; 5] = ["e2e_ssh", "e2e_tunnel", "e2e_protect", "e2e_ops", "e2e_ha"];

/// A test (function) of one of [`E2E_TESTS`] that a kernel cannot run, and why.
pub struct Skip {
    /// The test binary holding it.
    pub binary: &'static str,
    /// The test function.
    pub name: &'static str,
    pub why: &'static str,
}

/// Tests that a kernel cannot run; the guest passes them to the harness as `--skip` and the
/// summary names those of the binaries that run.
pub fn e2e_skips(kernel: Kernel) -> Vec<Skip> {
    match kernel {
        Kernel::K5_10 => vec![Skip {
            binary: "e2e_ha",
            name: "sessions_and_a_clone_survive_a_dead_balancer_and_a_maintenance_behind_ecmp",
            why: "its router hashes ECMP by the headers (fib_multipath_hash_policy 3, Linux \
                 5.14+); 5.10's policies hash a forwarded segment by its socket's hash, which \
                 TCP re-draws",
        }],
        _ => Vec::new(),
    }
}

/// Where the agent goes in the guest (the lab's printed commands name it).
const AGENT_AT: &str = "/usr/local/bin/sshlb-agent";

/// The kernel matrix: the BPF packet fixtures (`sshlb-userspace/tests/fixtures`) and the
/// namespace tests (`tests/tests/balance.rs`: real TCP through the VIP, full NAT and DSR, IPv4
/// and IPv6, weighted spread, backend removal).
pub fn matrix() -> Result<Payload> {
    Ok(Payload {
        userland: Userland::Plain,
        script: MATRIX,
        files: vec![
            (test_executable("sshlb-userspace", "fixtures")?, "/tests/fixtures".to_owned()),
            (test_executable("sshlb-tests", "balance")?, "/tests/namespace".to_owned()),
        ],
    })
}

/// The e2e tier: `tests` (of [`E2E_TESTS`]) and the agent (some tests run its CLI).
pub fn e2e(tests: &[&str]) -> Result<Payload> {
    let mut files = vec![(crate::build::build(false)?, AGENT_AT.to_owned())];
    for test in tests {
        files.push((test_executable("sshlb-tests", test)?, format!("/tests/e2e/{test}")));
    }
    Ok(Payload { userland: Userland::Ssh, script: E2E, files })
}

/// The lab: `sshlb-lab` and the agent it runs.
pub fn lab() -> Result<Payload> {
    let (agent, lab) = crate::lab::build_lab()?;
    Ok(Payload {
        userland: Userland::Ssh,
        script: LAB,
        files: vec![(agent, AGENT_AT.to_owned()), (lab, "/usr/local/bin/sshlb-lab".to_owned())],
    })
}

/// Builds the integration test `test` of `package` and returns its executable.
fn test_executable(package: &str, test: &str) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let json = cmd::output(Command::new(&cargo).args([
        "test",
        "-p",
        package,
        "--test",
        test,
        "--no-run",
        "--message-format=json",
    ]))
    .with_context(|| format!("building the {test} tests"))?;
    json.lines()
        .filter(|l| l.contains(&format!("\"name\":\"{test}\"")))
        .filter_map(|l| l.split("\"executable\":\"").nth(1)?.split('"').next().map(PathBuf::from))
        .next_back()
        .with_context(|| format!("cargo named no executable for the {test} tests"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_scripts_print_the_markers_the_verdicts_read() {
        for marker in ["SSHLB-VM fixtures-exit", "SSHLB-VM namespace-exit"] {
            assert!(MATRIX.contains(marker), "matrix.sh does not print {marker:?}");
        }
        for marker in ["SSHLB-VM e2e-begin ", "SSHLB-VM e2e-exit "] {
            assert!(E2E.contains(marker), "e2e.sh does not print {marker:?}");
        }
        assert!(E2E.contains(AGENT_AT) && LAB.contains(AGENT_AT), "the agent's guest path");
        assert!(LAB.contains("SSHLB-VM lab-ready"), "run --vm waits for this line");
        assert!(E2E.contains("--skip $s"), "e2e.sh passes the kernel's skips to the harness");
    }

    #[test]
    fn skipped_tests_exist() {
        let sources = [("e2e_ha", include_str!("../../../tests/tests/e2e_ha.rs"))];
        for k in Kernel::All.expand() {
            for Skip { binary, name, why } in e2e_skips(k) {
                assert!(!why.is_empty());
                assert!(E2E_TESTS.contains(&binary), "{binary} is no e2e test binary");
                assert!(
                    sources
                        .iter()
                        .any(|(b, s)| *b == binary && s.contains(&format!("fn {name}()"))),
                    "{name} is no test of {binary}: a skip of a renamed test would skip nothing"
                );
            }
        }
    }
}
