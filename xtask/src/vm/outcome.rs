//! What a guest's run found, read from its serial console: the marker lines `init.sh` prints,
//! the test harnesses' `test result:` lines, and the verifier's message when the program was
//! refused. QEMU's exit code is never consulted: it is 0 whatever the guest did.

/// What one kernel's run found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `uname -r` in the guest.
    pub release: String,
    /// Whether the program loaded; `Some(message)` with the verifier's words when it did not.
    pub rejected: Option<String>,
    /// Fixture tests passed and failed (`None`: they did not report).
    pub fixtures: Option<(u32, u32)>,
    /// Why the kernel cannot run the fixtures at all (its test-run API is too old).
    pub fixtures_unsupported: Option<String>,
    /// Namespace tests passed and failed.
    pub namespace: Option<(u32, u32)>,
    /// Whole guest console, for the log.
    pub console: String,
}

impl Outcome {
    /// Passed: loaded, both suites reported, and every test that ran passed. A kernel whose
    /// test-run API cannot run the fixtures passes on the namespace tests alone (real traffic
    /// through the attached program), and says so.
    pub fn passed(&self) -> bool {
        let fixtures_ok =
            self.fixtures_unsupported.is_some() || matches!(self.fixtures, Some((p, 0)) if p > 0);
        self.rejected.is_none() && fixtures_ok && matches!(self.namespace, Some((p, 0)) if p > 0)
    }
}

/// One line: loaded or rejected, fixtures and namespace tests passed/failed.
pub fn summary(o: &Outcome) -> String {
    let count = |c: Option<(u32, u32)>| {
        c.map_or_else(|| "did not report".to_owned(), |(p, f)| format!("{p} passed, {f} failed"))
    };
    match &o.rejected {
        Some(why) => format!("REJECTED: {why}"),
        None => format!(
            "loaded; fixtures {}; namespace {}",
            o.fixtures_unsupported
                .as_ref()
                .map_or_else(|| count(o.fixtures), |why| format!("not runnable ({why})")),
            count(o.namespace)
        ),
    }
}

/// Reads a guest console: the markers the init script prints and the test harnesses' lines.
pub fn parse_console(console: &str) -> Outcome {
    let mut o = Outcome { console: console.to_owned(), ..Outcome::default() };
    let mut section = "";
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        // Markers may follow terminal escapes QEMU's firmware printed on the same line.
        if let Some(i) = line.find("SSHLB-VM release ") {
            line[i + "SSHLB-VM release ".len()..].trim().clone_into(&mut o.release);
            section = "fixtures";
        } else if line.contains("SSHLB-VM fixtures-exit") {
            section = "namespace";
        } else if let Some(counts) = line.strip_prefix("test result: ") {
            let n = |word: &str| -> u32 {
                counts
                    .split(';')
                    .find_map(|part| part.trim().strip_suffix(word))
                    .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                    .unwrap_or(0)
            };
            let pair = Some((n(" passed"), n(" failed")));
            match section {
                "fixtures" => o.fixtures = pair,
                "namespace" => o.namespace = pair,
                _ => {}
            }
        }
        if let Some(i) = line.find("SSHLB-FIXTURES-UNSUPPORTED: ") {
            let why = line[i + "SSHLB-FIXTURES-UNSUPPORTED: ".len()..].trim().to_owned();
            o.fixtures_unsupported.get_or_insert(why);
        }
        if o.rejected.is_none() {
            if let Some(i) = line.find("Verifier output: ") {
                let mut why = line[i + "Verifier output: ".len()..].to_owned();
                why.truncate(300);
                o.rejected = Some(why);
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_markers_and_harness_lines_decide() {
        let console = "junk\r\n\x1b[2JSSHLB-VM release 6.1.0-31-cloud-amd64\r\nrunning 6 tests\r\n\
            test result: ok. 6 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\r\n\
            SSHLB-VM fixtures-exit 0\r\nrunning 2 tests\r\n\
            test result: FAILED. 1 passed; 1 failed; 0 ignored\r\nSSHLB-VM namespace-exit 1\r\n";
        let o = parse_console(console);
        assert_eq!(o.release, "6.1.0-31-cloud-amd64");
        assert_eq!(o.fixtures, Some((6, 0)));
        assert_eq!(o.namespace, Some((1, 1)));
        assert!(!o.passed());
        let rejected = parse_console(
            "SSHLB-VM release 5.10.0-32-cloud-amd64\nloading the data plane failed: \"... \
             Verifier output: R1 invalid mem access 'inv'\"\n",
        );
        assert!(rejected.rejected.as_deref().is_some_and(|w| w.starts_with("R1 invalid")));
        assert!(!parse_console("").passed(), "a silent guest never passes");
        let old = parse_console(
            "SSHLB-VM release 5.10.0-32-cloud-amd64\nSSHLB-FIXTURES-UNSUPPORTED: too old\n\
             test result: ok. 6 passed; 0 failed\nSSHLB-VM fixtures-exit 0\n\
             test result: ok. 2 passed; 0 failed\n",
        );
        assert_eq!(old.fixtures_unsupported.as_deref(), Some("too old"));
        assert!(old.passed(), "namespace tests alone carry a kernel that cannot run fixtures");
        assert!(summary(&old).contains("not runnable (too old)"));
    }
}
