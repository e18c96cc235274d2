//! `cargo xtask test`: the one command that proves the project works, and exactly what CI runs.
//! Owns the list of tiers (setup, formatting, both clippy runs, unit tests, bounded fuzzing of the
//! config parser and control protocol, BPF packet fixtures with the frame fuzzer,
//! namespace/end-to-end tests), how each is invoked, root handling, and the summary table.

use std::{
    fmt::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{build::cargo, cmd, setup};

/// Set for the test runs when xtask runs as root: tests that need root then fail instead of
/// skipping when something they need is missing.
const REQUIRE_ROOT_TESTS: &str = "SSHLB_REQUIRE_ROOT_TESTS";

/// How a tier ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Ran and passed.
    Pass,
    /// Ran without root: its tests printed "SKIP: needs root" and returned.
    SkippedNotRoot,
    /// Left out by `--quick`.
    SkippedQuick,
    /// Ran and failed.
    Failed,
    /// Not reached: an earlier tier failed.
    NotRun,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::SkippedNotRoot => "skip (not root)",
            Outcome::SkippedQuick => "skip (--quick)",
            Outcome::Failed => "FAIL",
            Outcome::NotRun => "not run",
        }
    }
}

/// What a tier does.
enum Step {
    /// `cargo xtask setup`, in process.
    Setup,
    /// Commands run in order from the workspace root.
    Commands(Vec<Command>),
    /// `cargo xtask vm-test` for these kernels, in process (root only: it may install QEMU).
    Vm(Vec<crate::vm::Kernel>),
    /// `cargo xtask vm-test --e2e --kernel K --test …` for these tests, in process (root only).
    VmE2e(crate::vm::Kernel, &'static [&'static str]),
    /// `cargo xtask deb` (debug build) and its check, in process (root only: the unit is
    /// verified in a private mount namespace).
    Deb,
}

/// One line of the summary table.
struct Tier {
    name: &'static str,
    /// Its tests only really run as root (they skip otherwise).
    needs_root: bool,
    /// Left out by `--quick`.
    lint_or_setup: bool,
    step: Step,
}

/// The tiers in the order they run. `root` adds [`REQUIRE_ROOT_TESTS`] to the test runs.
fn tiers(root: bool) -> Vec<Tier> {
    let test_cargo = |args: &[&str]| {
        let mut command = cargo();
        command.args(args);
        if root {
            command.env(REQUIRE_ROOT_TESTS, "1");
        }
        command
    };
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    let mut clippy = cargo();
    clippy.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    vec![
        Tier { name: "setup", needs_root: false, lint_or_setup: true, step: Step::Setup },
        Tier {
            name: "fmt",
            needs_root: false,
            lint_or_setup: false,
            step: Step::Commands(vec![fmt]),
        },
        Tier {
            name: "clippy (host crates)",
            needs_root: false,
            lint_or_setup: true,
            step: Step::Commands(vec![clippy]),
        },
        Tier {
            name: "clippy (BPF crate)",
            needs_root: false,
            lint_or_setup: true,
            step: Step::Commands(vec![bpf_clippy()]),
        },
        Tier {
            name: "unit tests",
            needs_root: false,
            lint_or_setup: false,
            step: Step::Commands(vec![
                test_cargo(&["test", "--workspace", "--exclude", "sshlb-tests", "--lib", "--bins"]),
                test_cargo(&["test", "--package", "sshlb-common"]),
            ]),
        },
        Tier {
            name: "fuzz (config, control protocol)",
            needs_root: false,
            lint_or_setup: false,
            step: Step::Commands(
                crate::fuzz::TARGETS
                    .iter()
                    .map(|t| {
                        crate::fuzz::run_command(
                            t,
                            crate::fuzz::SUITE_SECONDS,
                            "none",
                            crate::fuzz::Build::Dev,
                        )
                    })
                    .collect(),
            ),
        },
        Tier {
            name: "bpf fixtures",
            needs_root: true,
            lint_or_setup: false,
            step: Step::Commands(vec![test_cargo(&[
                "test",
                "--package",
                "sshlb-userspace",
                "--test",
                "fixtures",
                "--test",
                "bird",
                "--test",
                "flow_walk",
            ])]),
        },
        Tier {
            name: "alert rules (promtool)",
            needs_root: false,
            lint_or_setup: false,
            step: Step::Commands(promtool()),
        },
        Tier { name: "package (deb)", needs_root: true, lint_or_setup: false, step: Step::Deb },
        Tier {
            name: "namespace/e2e",
            needs_root: true,
            lint_or_setup: false,
            step: Step::Commands(vec![test_cargo(&[
                "test",
                "--package",
                "sshlb-tests",
                "--",
                "--test-threads=2",
            ])]),
        },
        Tier {
            // The oldest supported, Debian 13's (whose verifier once refused the program while
            // 5.10, 6.1 and 7 took it) and the newest.
            name: "kernel matrix (5.10, 6.12, newest)",
            needs_root: true,
            lint_or_setup: false,
            step: Step::Vm(vec![
                crate::vm::Kernel::K5_10,
                crate::vm::Kernel::K6_12,
                crate::vm::Kernel::K7,
            ]),
        },
        Tier {
            // The oldest kernel's verifier is the weakest (its pruning once removed the tunnel
            // path's too-big answer as dead code, which an end-to-end login showed first) and
            // its fixtures run without an ingress context, so real ssh and git through every
            // mode and a tunnel run there on every submission. About two minutes; the whole
            // e2e tier on 5.10 and 7 (some 13) is run by hand (README).
            name: "e2e in the 5.10 guest (e2e_ssh, e2e_tunnel)",
            needs_root: true,
            lint_or_setup: false,
            step: Step::VmE2e(crate::vm::Kernel::K5_10, &["e2e_ssh", "e2e_tunnel"]),
        },
    ]
}

/// `promtool check rules` and `promtool test rules` on contrib/prometheus (the rules' unit tests
/// use the agent's real metric names; `tests/tests/contrib.rs` checks those against a scrape).
fn promtool() -> Vec<Command> {
    let dir = crate::workspace_root().join("contrib").join("prometheus");
    [["check", "rules", "sshlb.rules.yml"], ["test", "rules", "sshlb.rules.test.yml"]]
        .into_iter()
        .map(|args| {
            let mut command = Command::new("promtool");
            command.args(args).current_dir(&dir);
            command
        })
        .collect()
}

/// Clippy for the BPF crate on its own target with nightly, as aya-build builds it. The outer
/// cargo's `RUSTC`/`RUSTC_WORKSPACE_WRAPPER` would pin stable's rustc, so they are removed.
fn bpf_clippy() -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", setup::NIGHTLY, "cargo", "clippy", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        .current_dir(crate::workspace_root().join("sshlb-ebpf"))
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("AYA_BUILD_SKIP");
    command
}

/// `cargo xtask test`: runs every tier in order (all but setup and clippy with `quick`), stops at
/// the first failure, and prints a summary table.
pub fn test(quick: bool) -> Result<()> {
    let started = Instant::now();
    let root = crate::is_root();
    let mut tiers = tiers(root);
    let count = tiers.len();
    let mut results: Vec<(&'static str, Outcome, Option<Duration>)> = Vec::new();
    let mut failure = None;
    for (index, tier) in tiers.iter_mut().enumerate() {
        if failure.is_some() {
            results.push((tier.name, Outcome::NotRun, None));
            continue;
        }
        if quick && tier.lint_or_setup {
            results.push((tier.name, Outcome::SkippedQuick, None));
            continue;
        }
        println!("\n==> [{}/{count}] {}", index + 1, tier.name);
        let tier_started = Instant::now();
        let result = match &mut tier.step {
            Step::Setup => setup::setup().map(drop),
            Step::Commands(commands) => commands.iter_mut().try_for_each(cmd::run),
            // Both need root (QEMU's install, the unit's private mount namespace).
            Step::Vm(_) | Step::VmE2e(..) | Step::Deb if !root => Ok(()),
            Step::Vm(kernels) => crate::vm::matrix(kernels, false),
            Step::VmE2e(kernel, tests) => {
                let tests: Vec<String> = tests.iter().map(|t| (*t).to_owned()).collect();
                crate::vm::e2e(*kernel, &tests)
            }
            Step::Deb => crate::deb::deb(true).and_then(|deb| crate::deb::check(&deb)),
        };
        let elapsed = tier_started.elapsed();
        let outcome = match &result {
            Ok(()) if tier.needs_root && !root => Outcome::SkippedNotRoot,
            Ok(()) => Outcome::Pass,
            Err(_) => Outcome::Failed,
        };
        println!("<== {}: {} in {}", tier.name, outcome.label(), secs(elapsed));
        if let Err(err) = result {
            failure = Some((tier.name, err));
        }
        results.push((tier.name, outcome, Some(elapsed)));
    }
    println!("\n{}", summary(&results, started.elapsed()));
    let skipped: Vec<&str> = results
        .iter()
        .filter(|(_, outcome, _)| *outcome == Outcome::SkippedNotRoot)
        .map(|(name, _, _)| *name)
        .collect();
    if !skipped.is_empty() {
        println!("skipped tiers (not root): {}", skipped.join(", "));
    }
    if let Some((name, err)) = failure {
        bail!("tier `{name}` failed: {err:#}");
    }
    Ok(())
}

/// The summary table: one row per tier with its outcome and wall time, then the total.
fn summary(results: &[(&str, Outcome, Option<Duration>)], total: Duration) -> String {
    let name_width = results.iter().map(|(name, _, _)| name.len()).max().unwrap_or(0).max(5);
    let label_width =
        results.iter().map(|(_, outcome, _)| outcome.label().len()).max().unwrap_or(0).max(6);
    let mut out = String::new();
    let mut row = |name: &str, result: &str, time: &str| {
        let _infallible = writeln!(out, "{name:<name_width$}  {result:<label_width$}  {time:>8}");
    };
    row("tier", "result", "time");
    for (name, outcome, elapsed) in results {
        row(name, outcome.label(), &elapsed.map_or_else(|| "-".to_owned(), secs));
    }
    row("total", "", &secs(total));
    out
}

fn secs(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_run_exactly_the_documented_commands() {
        let lines = |root: bool| -> Vec<(&'static str, Vec<String>)> {
            tiers(root)
                .iter()
                .map(|tier| {
                    let commands = match &tier.step {
                        Step::Setup => vec!["setup".to_owned()],
                        Step::Commands(commands) => commands.iter().map(cmd::display).collect(),
                        Step::Vm(kernels) => vec![format!("vm-test {kernels:?}")],
                        Step::VmE2e(kernel, tests) => {
                            vec![format!("vm-test --e2e {kernel:?} {tests:?}")]
                        }
                        Step::Deb => vec!["deb --debug --check".to_owned()],
                    };
                    (tier.name, commands)
                })
                .collect()
        };
        let root = lines(true);
        let names: Vec<_> = root.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "setup",
                "fmt",
                "clippy (host crates)",
                "clippy (BPF crate)",
                "unit tests",
                "fuzz (config, control protocol)",
                "bpf fixtures",
                "alert rules (promtool)",
                "package (deb)",
                "namespace/e2e",
                "kernel matrix (5.10, 6.12, newest)",
                "e2e in the 5.10 guest (e2e_ssh, e2e_tunnel)"
            ]
        );
        let all = root.iter().flat_map(|(_, c)| c).cloned().collect::<Vec<_>>().join("\n");
        for needle in [
            "fmt --all --check",
            "clippy --workspace --all-targets -- -D warnings",
            "rustup run nightly cargo clippy --release --target bpfel-unknown-none -Z \
             build-std=core -- -D warnings",
            "SSHLB_REQUIRE_ROOT_TESTS=1 ",
            "test --workspace --exclude sshlb-tests --lib --bins",
            "test --package sshlb-common",
            "rustup run nightly cargo fuzz run --dev --sanitizer none config_parse \
             fuzz/corpus-new/config_parse fuzz/corpus/config_parse -- -max_total_time=20",
            "rustup run nightly cargo fuzz run --dev --sanitizer none control_protocol \
             fuzz/corpus-new/control_protocol fuzz/corpus/control_protocol -- \
             -max_total_time=20",
            "test --package sshlb-userspace --test fixtures",
            "test --package sshlb-tests -- --test-threads=2",
            "vm-test [K5_10, K6_12, K7]",
            "vm-test --e2e K5_10 [\"e2e_ssh\", \"e2e_tunnel\"]",
            "promtool check rules sshlb.rules.yml",
            "promtool test rules sshlb.rules.test.yml",
            "deb --debug --check",
        ] {
            assert!(all.contains(needle), "no {needle:?} in:\n{all}");
        }
        let not_root = lines(false);
        let all = not_root.iter().flat_map(|(_, c)| c).cloned().collect::<Vec<_>>().join("\n");
        assert!(!all.contains(REQUIRE_ROOT_TESTS), "not root must not require root tests:\n{all}");
    }

    #[test]
    fn only_bpf_namespace_and_vm_tiers_need_root_and_quick_keeps_the_tests() {
        for tier in tiers(false) {
            assert_eq!(
                tier.needs_root,
                matches!(
                    tier.name,
                    "bpf fixtures"
                        | "package (deb)"
                        | "namespace/e2e"
                        | "kernel matrix (5.10, 6.12, newest)"
                        | "e2e in the 5.10 guest (e2e_ssh, e2e_tunnel)"
                ),
                "{}",
                tier.name
            );
            assert_eq!(
                tier.lint_or_setup,
                tier.name == "setup" || tier.name.starts_with("clippy"),
                "{}",
                tier.name
            );
        }
    }

    #[test]
    fn summary_table_lists_outcomes_and_times() {
        let results = [
            ("setup", Outcome::SkippedQuick, None),
            ("fmt", Outcome::Pass, Some(Duration::from_millis(260))),
            ("bpf fixtures", Outcome::SkippedNotRoot, Some(Duration::from_secs(3))),
            ("namespace/e2e", Outcome::NotRun, None),
        ];
        let table = summary(&results, Duration::from_millis(12_340));
        assert_eq!(
            table,
            "tier           result               time\n\
             setup          skip (--quick)          -\n\
             fmt            pass                0.3 s\n\
             bpf fixtures   skip (not root)     3.0 s\n\
             namespace/e2e  not run                 -\n\
             total                             12.3 s\n"
        );
    }
}
