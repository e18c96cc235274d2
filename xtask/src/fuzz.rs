//! The cargo-fuzz targets in `fuzz/` (the agent's config parser and control protocol): the
//! bounded runs of the `fuzz` test tier and `cargo xtask fuzz TARGET --seconds N` for longer
//! ones by hand. Owns the target list and the one command line both use.
//!
//! Runs use the nightly (libFuzzer's instrumentation), `AYA_BUILD_SKIP=1` (the targets need no
//! BPF object) and no sanitizer by default: the code under test is safe Rust, where
//! AddressSanitizer finds nothing a panic does not, and skipping it halves the build.
//! New inputs go to `fuzz/corpus-new/TARGET` (ignored by git), so the committed seeds in
//! `fuzz/corpus/TARGET` stay as they are; crashes land in `fuzz/artifacts/TARGET`.

use std::process::Command;

use anyhow::{bail, Result};

use crate::{cmd, setup};

/// Every fuzz target (`fuzz/fuzz_targets/*.rs`).
pub const TARGETS: [&str; 2] = ["config_parse", "control_protocol"];

/// Seconds each target runs in the `fuzz` test tier.
pub const SUITE_SECONDS: u64 = 20;

/// How the fuzz targets are compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// Unoptimized (`--dev`): the suite's bounded runs. A cold build of the targets compiles the
    /// agent's whole dependency tree (russh's cryptography included) with coverage
    /// instrumentation; optimized, that took 7 of a fresh CI run's minutes, and a 20 s smoke run
    /// does not need the speed.
    Dev,
    /// Optimized (cargo-fuzz's default): long runs by hand.
    Release,
}

/// `cargo +nightly fuzz run TARGET` for `seconds`, from the workspace root, with `sanitizer`
/// (`none`, `address`, ...).
pub fn run_command(target: &str, seconds: u64, sanitizer: &str, build: Build) -> Command {
    let mut command = Command::new("rustup");
    command.args(["run", setup::NIGHTLY, "cargo", "fuzz", "run"]);
    if build == Build::Dev {
        command.arg("--dev");
    }
    command
        .args(["--sanitizer", sanitizer, target])
        .arg(format!("fuzz/corpus-new/{target}"))
        .arg(format!("fuzz/corpus/{target}"))
        .args(["--", &format!("-max_total_time={seconds}"), "-create_missing_dirs=1"])
        .current_dir(crate::workspace_root())
        // The outer cargo's compiler settings would pin stable's rustc.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env("AYA_BUILD_SKIP", "1");
    command
}

/// `cargo xtask fuzz TARGET --seconds N`: one target for longer than the suite runs it.
pub fn fuzz(target: &str, seconds: u64, sanitizer: &str) -> Result<()> {
    if !TARGETS.contains(&target) {
        bail!("no fuzz target {target:?}; the targets are {}", TARGETS.join(", "));
    }
    setup::check_cargo_fuzz()?;
    cmd::run(&mut run_command(target, seconds, sanitizer, Build::Release))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_a_source_and_seeds() {
        let root = crate::workspace_root().join("fuzz");
        for target in TARGETS {
            let source = root.join("fuzz_targets").join(format!("{target}.rs"));
            assert!(source.is_file(), "{} missing", source.display());
            let seeds = root.join("corpus").join(target);
            let count = std::fs::read_dir(&seeds).map_or(0, Iterator::count);
            assert!(count > 0, "no seeds in {}", seeds.display());
        }
    }

    #[test]
    fn runs_are_bounded_and_keep_the_seeds_apart() {
        let line = cmd::display(&run_command("config_parse", 20, "none", Build::Dev));
        assert!(
            line.contains(
                "rustup run nightly cargo fuzz run --dev --sanitizer none config_parse \
                 fuzz/corpus-new/config_parse fuzz/corpus/config_parse -- -max_total_time=20 \
                 -create_missing_dirs=1"
            ),
            "{line}"
        );
        assert!(line.contains("AYA_BUILD_SKIP=1"), "{line}");
        let by_hand = cmd::display(&run_command("config_parse", 60, "address", Build::Release));
        assert!(by_hand.contains("cargo fuzz run --sanitizer address config_parse"), "{by_hand}");
    }
}
