//! The test binaries a vm-test guest runs: built once on the host with cargo (dynamically
//! linked; `boot` copies them into each initramfs with their libraries).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::cmd;

/// The test binaries the guest runs.
pub struct Guest {
    /// The BPF packet-fixture test binary (`sshlb-userspace/tests/fixtures`).
    pub fixtures: PathBuf,
    /// The namespace test binary (`tests/tests/balance.rs`: real TCP through the VIP, full NAT
    /// and DSR, IPv4 and IPv6, weighted spread, backend removal).
    pub namespace: PathBuf,
}

/// Builds both test binaries and returns where they are.
pub fn build_guest() -> Result<Guest> {
    Ok(Guest {
        fixtures: test_executable("sshlb-userspace", "fixtures")?,
        namespace: test_executable("sshlb-tests", "balance")?,
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
