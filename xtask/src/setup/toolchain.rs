//! The rustup side of setup: the `stable` and `nightly` toolchains (checked, never installed:
//! the machine provides them), what their compilers are (`rustc -vV`: release, LLVM, host), and
//! the rustup components the build and the lint steps need (installed when missing).

use std::{collections::BTreeMap, process::Command};

use anyhow::{bail, Context as _, Result};

use super::{Mode, Outcome, Report};
use crate::cmd;

/// The channel that builds the BPF crate (`-Z build-std=core`). Always this undated name: a dated
/// nightly is not installed on these machines and cannot be fetched (`RUSTUP_AUTO_INSTALL=0`).
pub const NIGHTLY: &str = "nightly";
/// The channel that builds every host crate.
pub const STABLE: &str = "stable";
/// Rustup components as (toolchain, component): `rust-src` for `-Z build-std=core`, clippy and
/// rustfmt for the lint steps of `cargo xtask test` (clippy on nightly lints the BPF crate).
pub const FULL_COMPONENTS: &[(&str, &str)] =
    &[(NIGHTLY, "rust-src"), (STABLE, "clippy"), (STABLE, "rustfmt"), (NIGHTLY, "clippy")];
/// The components the BPF build itself needs.
pub const BPF_COMPONENTS: &[(&str, &str)] = &[(NIGHTLY, "rust-src")];

/// A toolchain's compiler, from `rustc -vV`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RustcVersion {
    /// `release:` line, e.g. `1.97.0-nightly`.
    pub release: String,
    /// `LLVM version:` line, e.g. `22.1.4`.
    pub llvm: String,
    /// `host:` line, e.g. `x86_64-unknown-linux-gnu`: the suffix of target-specific components.
    host: String,
}

impl RustcVersion {
    fn parse(verbose_version: &str) -> Option<Self> {
        let field = |name: &str| {
            verbose_version
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|value| value.trim().to_owned())
        };
        Some(Self {
            release: field("release:")?,
            llvm: field("LLVM version:")?,
            host: field("host:")?,
        })
    }

    /// The LLVM major version (`22` for `22.1.4`): selects bpf-linker's `llvm-N` feature.
    pub fn llvm_major(&self) -> Option<u32> {
        self.llvm.split('.').next()?.parse().ok()
    }
}

/// Whether `rustup toolchain list` output has the undated `channel` toolchain for some host
/// (`nightly-x86_64-unknown-linux-gnu`), not just a dated one (`nightly-2026-05-19-...`).
fn toolchain_listed(list: &str, channel: &str) -> bool {
    list.lines().filter_map(|line| line.split_whitespace().next()).any(|name| {
        name == channel
            || name
                .strip_prefix(channel)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|host| host.starts_with(|c: char| !c.is_ascii_digit()))
    })
}

/// Checks that each of `channels` is installed (undated) and records its compiler; fails with
/// the `rustup` command to run when one is missing.
pub fn ensure_toolchains(
    report: &mut Report,
    channels: &[&'static str],
) -> Result<BTreeMap<&'static str, RustcVersion>> {
    let list = cmd::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage the toolchains; install it from https://rustup.rs")?;
    let mut versions = BTreeMap::new();
    for &channel in channels {
        if !toolchain_listed(&list, channel) {
            bail!(
                "the rustup toolchain `{channel}` is missing; setup does not install toolchains \
                 (use the undated channel name, not a dated one): run `rustup toolchain install \
                 {channel} --profile minimal`, then `cargo xtask setup` again"
            );
        }
        let verbose = cmd::output(Command::new("rustup").args(["run", channel, "rustc", "-vV"]))
            .with_context(|| format!("the `{channel}` toolchain's rustc does not run"))?;
        let version = RustcVersion::parse(&verbose).with_context(|| {
            format!("unexpected `rustc -vV` output from the `{channel}` toolchain:\n{verbose}")
        })?;
        report.record(
            format!("{channel} toolchain"),
            Outcome::AlreadyThere(format!("rustc {}, LLVM {}", version.release, version.llvm)),
        );
        versions.insert(channel, version);
    }
    Ok(versions)
}

/// Whether `rustup component list --installed` output has `component`, listed with the
/// toolchain's `host` (`clippy-x86_64-unknown-linux-gnu`) or bare (`rust-src`).
fn component_installed(list: &str, component: &str, host: &str) -> bool {
    let with_host = format!("{component}-{host}");
    list.lines().map(str::trim).any(|line| line == component || line == with_host)
}

/// Checks each (toolchain, component) of `wanted`; installs the missing ones in
/// [`Mode::Install`], fails naming the first missing one in [`Mode::CheckOnly`].
pub fn ensure_components(
    report: &mut Report,
    mode: Mode,
    wanted: &[(&'static str, &str)],
    toolchains: &BTreeMap<&'static str, RustcVersion>,
) -> Result<()> {
    let mut installed_lists: BTreeMap<&str, String> = BTreeMap::new();
    for &(toolchain, component) in wanted {
        let list = if let Some(list) = installed_lists.get(toolchain) {
            list
        } else {
            let list = cmd::output(Command::new("rustup").args([
                "component",
                "list",
                "--toolchain",
                toolchain,
                "--installed",
            ]))?;
            installed_lists.entry(toolchain).or_insert(list)
        };
        let piece = format!("{component} for {toolchain}");
        let rustc = &toolchains[toolchain];
        let version = rustc.release.clone();
        if component_installed(list, component, &rustc.host) {
            report.record(piece, Outcome::AlreadyThere(version));
            continue;
        }
        if mode == Mode::CheckOnly {
            bail!("{piece} is missing; `cargo xtask setup` installs it");
        }
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            component,
            "--toolchain",
            toolchain,
        ]))
        .with_context(|| format!("could not install {piece}"))?;
        report.record(piece, Outcome::Installed(version));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rustc_verbose_version() {
        let text = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
                    host: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        let version = RustcVersion::parse(text).expect("complete -vV output");
        assert_eq!(version.release, "1.97.0-nightly");
        assert_eq!(version.llvm, "22.1.4");
        assert_eq!(version.llvm_major(), Some(22));
        assert_eq!(version.host, "x86_64-unknown-linux-gnu");
        assert_eq!(RustcVersion::parse("rustc 1.95.0\n"), None, "no release line");
    }

    #[test]
    fn toolchain_listed_wants_the_undated_channel() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-2026-05-19-x86_64-unknown-linux-gnu\n\
                    1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(toolchain_listed(list, "stable"));
        assert!(!toolchain_listed(list, "nightly"), "a dated nightly is not `nightly`");
        assert!(toolchain_listed("nightly-aarch64-unknown-linux-gnu\n", "nightly"));
        assert!(!toolchain_listed("no installed toolchains\n", "nightly"));
    }

    #[test]
    fn component_installed_matches_with_or_without_target() {
        let list = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrust-src\n\
                    rust-std-x86_64-unknown-linux-gnu\n";
        let host = "x86_64-unknown-linux-gnu";
        assert!(component_installed(list, "clippy", host));
        assert!(component_installed(list, "rust-src", host));
        assert!(!component_installed(list, "rustfmt", host));
        assert!(!component_installed(list, "rust", host), "rust-src/rust-std are not rust");
        assert!(!component_installed(list, "clippy", "aarch64-unknown-linux-gnu"));
    }
}
