//! The README's "Supported kernels" table: built from a full matrix run and written between its
//! marker comments, so the table always says what the last full run found.

use std::fmt::Write as _;

use anyhow::{bail, Result};

use super::{outcome::summary, Kernel, Outcome};

const TABLE_START: &str = "<!-- supported-kernels:start -->";
const TABLE_END: &str = "<!-- supported-kernels:end -->";

/// Writes `table` between the README's marker comments, replacing what was there.
pub fn write_readme_table(table: &str) -> Result<()> {
    let path = crate::workspace_root().join("README.md");
    let text = std::fs::read_to_string(&path)?;
    let (Some(a), Some(b)) = (text.find(TABLE_START), text.find(TABLE_END)) else {
        bail!("README.md has no {TABLE_START} … {TABLE_END} block");
    };
    let new = format!("{}{TABLE_START}\n{table}{}", &text[..a], &text[b..]);
    std::fs::write(&path, new)?;
    println!("README.md: supported-kernels table updated");
    Ok(())
}

/// The README's "Supported kernels" table from a full run.
pub fn readme_table(results: &[(Kernel, Outcome)], date: &str) -> String {
    let mut t = String::from("| kernel | Debian package | result | date |\n|---|---|---|---|\n");
    for (k, o) in results {
        let fixtures = match (&o.fixtures_without_context, o.fixtures) {
            (Some(_), Some((p, f))) => {
                format!("{p}/{} passed arriving on loopback (no xdp_md context before 5.13)", p + f)
            }
            (None, Some((p, f))) => format!("{p}/{} passed", p + f),
            (_, None) => "did not report".to_owned(),
        };
        let namespace = o
            .namespace
            .map_or_else(|| "did not report".to_owned(), |(p, f)| format!("{p}/{} passed", p + f));
        let result = match &o.rejected {
            Some(_) => summary(o),
            None => format!(
                "{}: loads; fixtures {fixtures}; namespace tests {namespace}",
                if o.passed() { "**passes**" } else { "**FAILS**" }
            ),
        };
        let _ = writeln!(t, "| {} | {} | {} | {date} |", k.label(), o.release, result);
    }
    t
}
