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
    /// Why the fixtures ran without an `xdp_md` context (the kernel's test-run API takes
    /// none): their frames arrived on loopback, and a row expecting `XDP_TX` took a redirect.
    pub fixtures_without_context: Option<String>,
    /// Namespace tests passed and failed.
    pub namespace: Option<(u32, u32)>,
    /// Whole guest console, for the log.
    pub console: String,
}

impl Outcome {
    /// Passed: loaded, both suites reported, and every test that ran passed (on a kernel
    /// whose test-run API takes no context too: the fixtures then run without one).
    pub fn passed(&self) -> bool {
        self.rejected.is_none()
            && matches!(self.fixtures, Some((p, 0)) if p > 0)
            && matches!(self.namespace, Some((p, 0)) if p > 0)
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
            "loaded; fixtures {}{}; namespace {}",
            count(o.fixtures),
            if o.fixtures_without_context.is_some() { " (arriving on loopback)" } else { "" },
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
            let pair = Some(harness_counts(counts));
            match section {
                "fixtures" => o.fixtures = pair,
                "namespace" => o.namespace = pair,
                _ => {}
            }
        }
        if let Some(i) = line.find("SSHLB-FIXTURES-WITHOUT-CONTEXT: ") {
            let why = line[i + "SSHLB-FIXTURES-WITHOUT-CONTEXT: ".len()..].trim().to_owned();
            o.fixtures_without_context.get_or_insert(why);
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

/// One e2e test binary's run in the guest, from its marker lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct E2eRun {
    /// The test binary (`e2e_ssh`, ...).
    pub name: String,
    /// Its harness's passed and failed counts (`None`: it did not report).
    pub counts: Option<(u32, u32)>,
    /// Its exit code and the seconds it took (`None`: it never finished).
    pub exit: Option<(i32, u64)>,
}

impl E2eRun {
    /// Passed: finished with 0 and its harness counted passes and no failure.
    pub fn passed(&self) -> bool {
        matches!(self.exit, Some((0, _))) && matches!(self.counts, Some((p, 0)) if p > 0)
    }

    /// One line: counts, exit code and time, or why there are none.
    pub fn summary(&self) -> String {
        let counts = self.counts.map_or_else(
            || "did not report".to_owned(),
            |(p, f)| format!("{p} passed, {f} failed"),
        );
        match self.exit {
            Some((code, secs)) => format!("{counts} (exit {code}, {secs} s in the guest)"),
            None => format!("{counts} (never finished)"),
        }
    }
}

/// The passed/failed counts of a harness's `test result:` line.
fn harness_counts(counts: &str) -> (u32, u32) {
    let n = |word: &str| -> u32 {
        counts
            .split(';')
            .find_map(|part| part.trim().strip_suffix(word))
            .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    (n(" passed"), n(" failed"))
}

/// Reads an e2e guest's console: each binary between `SSHLB-VM e2e-begin NAME` and
/// `SSHLB-VM e2e-exit NAME CODE SECONDS`, with its harness's `test result:` line.
pub fn parse_e2e(console: &str) -> Vec<E2eRun> {
    let mut runs: Vec<E2eRun> = Vec::new();
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(i) = line.find("SSHLB-VM e2e-begin ") {
            let name = line[i + "SSHLB-VM e2e-begin ".len()..].trim().to_owned();
            runs.push(E2eRun { name, ..E2eRun::default() });
        } else if let Some(i) = line.find("SSHLB-VM e2e-exit ") {
            let words: Vec<&str> =
                line[i + "SSHLB-VM e2e-exit ".len()..].split_whitespace().collect();
            if let (Some(run), [name, code, secs]) = (runs.last_mut(), words.as_slice()) {
                if run.name == *name {
                    run.exit = code.parse().ok().zip(secs.parse().ok());
                }
            }
        } else if let Some(counts) = line.strip_prefix("test result: ") {
            if let Some(run) = runs.last_mut().filter(|r| r.exit.is_none()) {
                run.counts = Some(harness_counts(counts));
            }
        }
    }
    runs
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
            "SSHLB-VM release 5.10.0-32-cloud-amd64\nSSHLB-FIXTURES-WITHOUT-CONTEXT: too old\n\
             test result: ok. 6 passed; 0 failed\nSSHLB-VM fixtures-exit 0\n\
             test result: ok. 2 passed; 0 failed\n",
        );
        assert_eq!(old.fixtures_without_context.as_deref(), Some("too old"));
        assert!(old.passed(), "fixtures without a context count like the others");
        assert!(summary(&old).contains("fixtures 6 passed, 0 failed (arriving on loopback)"));
        let silent = parse_console(
            "SSHLB-VM release 5.10.0-32-cloud-amd64\nSSHLB-FIXTURES-WITHOUT-CONTEXT: too old\n\
             SSHLB-VM fixtures-exit 0\ntest result: ok. 2 passed; 0 failed\n",
        );
        assert!(!silent.passed(), "fixtures that never reported do not pass");
    }

    #[test]
    fn e2e_markers_and_harness_lines_decide_each_binary() {
        let console = "SSHLB-VM release 5.10.0-32-cloud-amd64\r\nSSHLB-VM e2e-begin e2e_ssh\r\n\
            running 1 test\r\ntest ssh_git ... ok\r\n\
            test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\r\n\
            SSHLB-VM e2e-exit e2e_ssh 0 41\r\nSSHLB-VM e2e-begin e2e_ops\r\n\
            test result: FAILED. 0 passed; 1 failed; 0 ignored\r\nSSHLB-VM e2e-exit e2e_ops 101 77\r\n\
            SSHLB-VM e2e-begin e2e_protect\r\n";
        let runs = parse_e2e(console);
        assert_eq!(runs.len(), 3);
        assert_eq!(
            runs[0],
            E2eRun { name: "e2e_ssh".into(), counts: Some((1, 0)), exit: Some((0, 41)) }
        );
        assert!(runs[0].passed());
        assert_eq!(runs[1].counts, Some((0, 1)));
        assert!(!runs[1].passed(), "a failed test fails its binary");
        assert_eq!(runs[2].exit, None, "a binary that never finished");
        assert!(!runs[2].passed());
        assert!(runs[2].summary().contains("never finished"));
        assert!(runs[0].summary().contains("1 passed, 0 failed (exit 0, 41 s"));
    }
}
