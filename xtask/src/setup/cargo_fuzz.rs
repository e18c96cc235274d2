//! `cargo-fuzz`, the driver of the fuzz targets in `fuzz/` (they build and run with the nightly):
//! checked by running it, installed when missing with `cargo install --locked` at a pinned
//! version (0.13.2 builds on the machine's stable 1.95).

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use super::{Mode, Outcome, Report};
use crate::cmd;

/// The cargo-fuzz release `cargo xtask setup` installs.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The version in `cargo-fuzz --version` output (`cargo-fuzz 0.13.2`).
fn parse_cargo_fuzz_version(output: &str) -> Option<&str> {
    output.trim().strip_prefix("cargo-fuzz")?.split_whitespace().next()
}

/// Checks that cargo-fuzz [`CARGO_FUZZ_VERSION`] runs from PATH; installs it in
/// [`Mode::Install`], fails saying why in [`Mode::CheckOnly`].
pub fn ensure_cargo_fuzz(report: &mut Report, mode: Mode) -> Result<()> {
    const PIECE: &str = "cargo-fuzz";
    let found = cmd::probe(Command::new(PIECE).arg("--version"));
    let why = match found.as_deref().map(parse_cargo_fuzz_version) {
        Some(Some(version)) if version == CARGO_FUZZ_VERSION => {
            report.record(PIECE, Outcome::AlreadyThere(version.to_owned()));
            return Ok(());
        }
        Some(Some(version)) => {
            format!("cargo-fuzz {version} is on PATH, sshlb uses {CARGO_FUZZ_VERSION}")
        }
        Some(None) => "`cargo-fuzz --version` printed something unexpected".to_owned(),
        None => "cargo-fuzz is not on PATH".to_owned(),
    };
    if mode == Mode::CheckOnly {
        bail!("{why}; `cargo xtask setup` installs cargo-fuzz {CARGO_FUZZ_VERSION}");
    }
    println!("{why}: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    cmd::run(
        Command::new("cargo")
            .args(["install", &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"), "--locked", "--force"])
            // Outside the workspace, so its config and toolchain settings stay out.
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .current_dir(std::env::temp_dir()),
    )
    .context("could not install cargo-fuzz")?;
    let after = cmd::output(Command::new(PIECE).arg("--version")).context(
        "cargo-fuzz was installed but does not run from PATH; is $CARGO_HOME/bin \
         (usually ~/.cargo/bin) on PATH?",
    )?;
    let version = parse_cargo_fuzz_version(&after).unwrap_or(after.trim()).to_owned();
    report.record(PIECE, Outcome::Installed(version));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cargo_fuzz_version() {
        assert_eq!(parse_cargo_fuzz_version("cargo-fuzz 0.13.2\n"), Some("0.13.2"));
        assert_eq!(parse_cargo_fuzz_version("cargo 1.95.0"), None);
    }
}
