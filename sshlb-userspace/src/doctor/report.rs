//! The doctor's report: each check's name, [`Level`], what it found and the fix, rendered as a
//! table for people or serialized for `--json` (fields are only ever added).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Pass,
    /// Works, but something will likely go wrong (or was not checked).
    Warn,
    /// Will not work: `up` refuses.
    Fail,
}

impl Level {
    /// The word printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        }
    }
}

/// One check's outcome (`doctor --json` prints a list of these; fields are only ever added).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked (`kernel`, `btf`, `bpffs`, `interface`, `veth`, `mtu`, `lro`,
    /// `gro-hw`, `queues`, `sysctls`, `rp_filter`, `config`, `nat-ports`, `vip ADDR`,
    /// `backend SERVICE/NAME`, `host-keys SERVICE`).
    pub name: String,
    /// Pass, warn or fail.
    pub level: Level,
    /// What was found.
    pub found: String,
    /// What to do about it (none when it passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    /// A check's outcome.
    pub fn new(name: &str, level: Level, found: String, fix: Option<String>) -> Self {
        Self { name: name.to_owned(), level, found, fix }
    }
}

/// All the checks' outcomes, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The interface checked.
    pub interface: String,
    /// The attach mode checked for.
    pub mode: String,
    /// One per check.
    pub checks: Vec<Check>,
}

impl Report {
    /// The failed checks, as `up` refuses with them: `"name: found; fix"` each.
    pub fn fatal(&self) -> Option<String> {
        let failed: Vec<String> =
            self.checks.iter().filter(|c| c.level == Level::Fail).map(Check::line).collect();
        (!failed.is_empty()).then(|| failed.join("\n"))
    }

    /// The warnings, one line each.
    pub fn warnings(&self) -> Vec<String> {
        self.checks.iter().filter(|c| c.level == Level::Warn).map(Check::line).collect()
    }

    /// The worst level found.
    pub fn worst(&self) -> Level {
        self.checks.iter().map(|c| c.level).max().unwrap_or(Level::Pass)
    }

    /// The table for people.
    pub fn render(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = format!("sshlb doctor: {} ({} XDP)\n", self.interface, self.mode);
        for c in &self.checks {
            let _ = writeln!(out, "{:<4}  {:<width$}  {}", c.level.as_str(), c.name, c.found);
            if let Some(fix) = &c.fix {
                let _ = writeln!(out, "{:<4}  {:<width$}  fix: {fix}", "", "");
            }
        }
        let (fails, warns) = (
            self.checks.iter().filter(|c| c.level == Level::Fail).count(),
            self.checks.iter().filter(|c| c.level == Level::Warn).count(),
        );
        let _ = writeln!(out, "{fails} failed, {warns} warning(s), {} check(s)", self.checks.len());
        out
    }
}

impl Check {
    /// `"name: found; fix"`.
    pub fn line(&self) -> String {
        match &self.fix {
            Some(fix) => format!("{}: {}; {fix}", self.name, self.found),
            None => format!("{}: {}", self.name, self.found),
        }
    }
}
