//! `cargo-fuzz`, the driver of the fuzz targets in `fuzz/` (they build and run with the nightly):
//! checked by running it, installed when missing with `cargo install --locked` at a pinned
//! version (0.13.2 builds on the machine's stable 1.95).

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use super::{pinned::Pinned, Mode, Report};
use crate::cmd;

/// The cargo-fuzz release `cargo xtask setup` installs.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// cargo-fuzz at [`CARGO_FUZZ_VERSION`].
const CARGO_FUZZ: Pinned = Pinned { name: "cargo-fuzz", version: CARGO_FUZZ_VERSION };

/// Checks that cargo-fuzz [`CARGO_FUZZ_VERSION`] runs from PATH; installs it in
/// [`Mode::Install`], fails saying why in [`Mode::CheckOnly`].
pub fn ensure_cargo_fuzz(report: &mut Report, mode: Mode) -> Result<()> {
    let Some(why) = CARGO_FUZZ.check(report, "cargo-fuzz is not on PATH") else {
        return Ok(());
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
    CARGO_FUZZ.record_installed(report)
}
