//! `cargo xtask setup`: checks for, and installs where it can, everything a fresh Debian 12 machine
//! needs to build, lint and test sshlb — the rustup toolchains and components ([`toolchain`]),
//! `bpf-linker` built against the nightly's own libLLVM ([`bpf_linker`]; recipe in
//! `docs/toolchain.md`), `cargo-fuzz` for the fuzz targets ([`cargo_fuzz`]; [`pinned`] checks
//! both pinned tools), the Debian packages the tests and the lab use ([`packages`]), and QEMU
//! from bookworm-backports for the vm tiers.
//! Idempotent, and fast when everything is there: it only asks `rustup`, `dpkg-query` and
//! `bpf-linker` questions unless something is missing.
//!
//! This module owns the order of the checks and the report of what each one found or did.

mod bpf_linker;
mod cargo_fuzz;
mod packages;
mod pinned;
mod toolchain;

use std::time::{Duration, Instant};

use anyhow::Result;

use bpf_linker::ensure_bpf_linker;
use cargo_fuzz::ensure_cargo_fuzz;
use packages::ensure_packages;
pub use toolchain::NIGHTLY;
use toolchain::{ensure_components, ensure_toolchains, BPF_COMPONENTS, FULL_COMPONENTS, STABLE};

/// Whether a missing piece is installed or only reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Install what is missing (`cargo xtask setup`).
    Install,
    /// Fail naming what is missing (`cargo xtask build`).
    CheckOnly,
}

/// What setup found or did for one piece.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Present before setup ran; carries its version.
    AlreadyThere(String),
    /// Installed by this run; carries its version.
    Installed(String),
}

/// The pieces setup looked at, in order, each printed as it is recorded.
#[derive(Debug, Default)]
pub struct Report {
    pieces: Vec<(String, Outcome)>,
}

impl Report {
    fn record(&mut self, piece: impl Into<String>, outcome: Outcome) {
        let piece = piece.into();
        println!("{}", piece_line(&piece, &outcome));
        self.pieces.push((piece, outcome));
    }

    /// One line saying how many pieces were checked, which were installed, and how long it took.
    pub fn summary(&self, elapsed: Duration) -> String {
        let installed: Vec<&str> = self
            .pieces
            .iter()
            .filter(|(_, outcome)| matches!(outcome, Outcome::Installed(_)))
            .map(|(piece, _)| piece.as_str())
            .collect();
        let total = self.pieces.len();
        let secs = elapsed.as_secs_f64();
        if installed.is_empty() {
            format!("setup: ready, all {total} pieces already there ({secs:.1} s)")
        } else {
            format!(
                "setup: ready, {} already there, {} installed: {} ({secs:.1} s)",
                total - installed.len(),
                installed.len(),
                installed.join(", ")
            )
        }
    }
}

fn piece_line(piece: &str, outcome: &Outcome) -> String {
    match outcome {
        Outcome::AlreadyThere(version) => format!("already there: {piece} ({version})"),
        Outcome::Installed(version) if version.is_empty() => format!("installed: {piece}"),
        Outcome::Installed(version) => format!("installed: {piece} ({version})"),
    }
}

/// `cargo xtask setup`: checks every piece, installs what is missing, prints one line per piece
/// and a summary. Fails naming the piece that is missing and cannot be installed.
pub fn setup() -> Result<Report> {
    let started = Instant::now();
    let mut report = Report::default();
    let toolchains = ensure_toolchains(&mut report, &[STABLE, NIGHTLY])?;
    ensure_components(&mut report, Mode::Install, FULL_COMPONENTS, &toolchains)?;
    ensure_bpf_linker(&mut report, Mode::Install, &toolchains[NIGHTLY])?;
    ensure_cargo_fuzz(&mut report, Mode::Install)?;
    ensure_packages(&mut report)?;
    ensure_qemu(&mut report)?;
    println!("{}", report.summary(started.elapsed()));
    Ok(report)
}

/// QEMU for the vm tiers (`vm-test`, `vm-test --e2e`, `run --vm`): `qemu-system-x86` from
/// bookworm-backports, installed through the vm module's private apt configuration.
fn ensure_qemu(report: &mut Report) -> Result<()> {
    let version = || {
        let out =
            crate::cmd::probe(std::process::Command::new("qemu-system-x86_64").arg("--version"))?;
        out.split_whitespace().skip_while(|w| *w != "version").nth(1).map(str::to_owned)
    };
    let piece = "qemu-system-x86 (bookworm-backports)";
    if let Some(v) = version() {
        report.record(piece, Outcome::AlreadyThere(v));
        return Ok(());
    }
    if !crate::is_root() {
        // Only the vm tiers need it, and those run as root (the test tiers skip them otherwise).
        println!("missing: {piece}; installing it needs root (only the vm tiers use it)");
        return Ok(());
    }
    crate::vm::ensure_qemu()?;
    report.record(piece, Outcome::Installed(version().unwrap_or_default()));
    Ok(())
}

/// Checks, without installing anything, that cargo-fuzz is there (for `cargo xtask fuzz`).
pub fn check_cargo_fuzz() -> Result<()> {
    ensure_cargo_fuzz(&mut Report::default(), Mode::CheckOnly)
}

/// Checks, without installing anything, that the BPF crate can be built: the nightly toolchain,
/// its `rust-src`, and a working `bpf-linker`. Fails naming what is missing.
pub fn check_bpf_toolchain() -> Result<()> {
    let mut report = Report::default();
    let toolchains = ensure_toolchains(&mut report, &[NIGHTLY])?;
    ensure_components(&mut report, Mode::CheckOnly, BPF_COMPONENTS, &toolchains)?;
    ensure_bpf_linker(&mut report, Mode::CheckOnly, &toolchains[NIGHTLY])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_summary_read_as_documented() {
        let version = |v: &str| v.to_owned();
        assert_eq!(
            piece_line("iproute2", &Outcome::AlreadyThere(version("6.1.0-3"))),
            "already there: iproute2 (6.1.0-3)"
        );
        assert_eq!(
            piece_line("iptables", &Outcome::Installed(String::new())),
            "installed: iptables"
        );
        let mut report = Report::default();
        report.pieces.push(("git".into(), Outcome::AlreadyThere(version("2.39"))));
        report.pieces.push(("tcpdump".into(), Outcome::AlreadyThere(version("4.99"))));
        assert_eq!(
            report.summary(Duration::from_millis(420)),
            "setup: ready, all 2 pieces already there (0.4 s)"
        );
        report.pieces.push(("iptables".into(), Outcome::Installed(version("1.8.9-2"))));
        assert_eq!(
            report.summary(Duration::from_secs(31)),
            "setup: ready, 2 already there, 1 installed: iptables (31.0 s)"
        );
    }
}
