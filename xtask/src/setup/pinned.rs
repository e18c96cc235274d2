//! A tool `cargo install`ed at one pinned version (`bpf-linker`, `cargo-fuzz`): whether that
//! version runs from PATH, and what to record once it has been installed.

use std::process::Command;

use anyhow::{Context as _, Result};

use super::{Outcome, Report};
use crate::cmd;

/// A tool whose binary, and the first word of its `--version` output, is `name`.
pub struct Pinned {
    /// Binary name.
    pub name: &'static str,
    /// The version setup installs.
    pub version: &'static str,
}

impl Pinned {
    /// The version in `NAME --version` output (`NAME 1.2.3`).
    pub fn parse_version<'a>(&self, output: &'a str) -> Option<&'a str> {
        output.trim().strip_prefix(self.name)?.split_whitespace().next()
    }

    /// `None` when the pinned version runs from PATH (recorded as already there); otherwise
    /// why it does not, `missing` when it does not run at all.
    pub fn check(&self, report: &mut Report, missing: &str) -> Option<String> {
        let found = cmd::probe(Command::new(self.name).arg("--version"));
        let (name, pinned) = (self.name, self.version);
        match found.as_deref().map(|out| self.parse_version(out)) {
            Some(Some(version)) if version == pinned => {
                report.record(name, Outcome::AlreadyThere(version.to_owned()));
                None
            }
            Some(Some(version)) => {
                Some(format!("{name} {version} is on PATH, sshlb needs {pinned}"))
            }
            Some(None) => Some(format!("`{name} --version` printed something unexpected")),
            None => Some(missing.to_owned()),
        }
    }

    /// After installing it: records the version that now runs from PATH.
    pub fn record_installed(&self, report: &mut Report) -> Result<()> {
        let after = cmd::output(Command::new(self.name).arg("--version")).with_context(|| {
            format!(
                "{} was installed but does not run from PATH; is $CARGO_HOME/bin (usually \
                 ~/.cargo/bin) on PATH?",
                self.name
            )
        })?;
        let version = self.parse_version(&after).unwrap_or(after.trim()).to_owned();
        report.record(self.name, Outcome::Installed(version));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_version_after_the_name() {
        let linker = Pinned { name: "bpf-linker", version: "0.13.0" };
        assert_eq!(linker.parse_version("bpf-linker 0.13.0\n"), Some("0.13.0"));
        assert_eq!(linker.parse_version("something else"), None);
        let fuzz = Pinned { name: "cargo-fuzz", version: "0.13.2" };
        assert_eq!(fuzz.parse_version("cargo-fuzz 0.13.2\n"), Some("0.13.2"));
        assert_eq!(fuzz.parse_version("cargo 1.95.0"), None);
    }
}
