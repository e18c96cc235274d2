//! `cargo xtask vm-test [--kernel 5.10|6.1|6.12|7|all] [--e2e]` and `cargo xtask run --vm`:
//! sshlb on the kernels operators run, each booted under QEMU (KVM when usable, software
//! emulation otherwise — always on these machines, see docs/vm-tests.md).
//!
//! Per kernel: Debian's cloud kernel package is resolved in its suite and fetched (cached under
//! `~/.cache/sshlb/vm`; [`debian`]); the initramfs is a cached userland built from the
//! machine's Debian packages plus a payload of the kernel's modules and our binaries
//! ([`image`], [`guest`]); QEMU boots it ([`boot`]). The guest's `/init` (`vm/init.sh`) runs the
//! payload's script: the kernel matrix (`matrix.sh`: packet fixtures, namespace tests), the e2e
//! tests (`e2e.sh`: real sshd, ssh, git and the agent) or the lab with a shell on the console
//! (`lab.sh`). Verdicts are read from marker lines on the serial console ([`outcome`]) — never
//! from QEMU's exit code, which is 0 whatever the guest did. A full matrix run can rewrite the
//! README's table ([`readme`]).
//!
//! This module owns the three entry points: which kernels, the cache directory, and the loops
//! that fetch, boot and report.

mod boot;
mod debian;
mod guest;
mod image;
mod outcome;
mod readme;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use boot::Machine;
use outcome::{parse_console, parse_e2e, summary, Outcome};
use readme::readme_table;

use crate::cmd;

/// A kernel of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernel {
    /// Debian 11 (bullseye): 5.10.
    #[value(name = "5.10")]
    K5_10,
    /// Debian 12 (bookworm) and many clouds: 6.1.
    #[value(name = "6.1")]
    K6_1,
    /// Debian 12 backports: 6.12.
    #[value(name = "6.12")]
    K6_12,
    /// The newest Debian kernel (sid): 7.x.
    #[value(name = "7")]
    K7,
    /// Every kernel above.
    All,
}

impl Kernel {
    /// The kernels this stands for, oldest first.
    pub fn expand(self) -> Vec<Self> {
        match self {
            Self::All => vec![Self::K5_10, Self::K6_1, Self::K6_12, Self::K7],
            one => vec![one],
        }
    }

    /// The name on the command line, in file names and in the README's table.
    fn label(self) -> &'static str {
        match self {
            Self::K5_10 => "5.10",
            Self::K6_1 => "6.1",
            Self::K6_12 => "6.12",
            Self::K7 => "7",
            Self::All => "all",
        }
    }
}

/// The kernel matrix's guest: one vCPU is enough for its netlink- and syscall-bound tests.
const MATRIX_MACHINE: Machine = Machine { cpus: 1, memory_mib: 1536, append: String::new() };

/// Fetches kernel `k` and builds its initramfs with `payload`; returns `vmlinuz` and the
/// initramfs.
fn prepare_boot(root: &Path, k: Kernel, payload: &image::Payload) -> Result<(PathBuf, PathBuf)> {
    let kdir = debian::fetch_kernel(root, k)?;
    let vmlinuz = boot::vmlinuz(&kdir)?;
    let initrd = image::initramfs(root, &kdir.join("root"), k.label(), payload)?;
    Ok((vmlinuz, initrd))
}

/// Writes a guest's console to `console-<name>.log` in the cache directory; returns the path.
fn save_console(root: &Path, name: &str, console: &str) -> Result<PathBuf> {
    let log = root.join(format!("console-{name}.log"));
    std::fs::write(&log, console).context("writing the console log")?;
    Ok(log)
}

/// Prints the last `n` lines of a guest's console to stderr.
fn print_tail(what: &str, console: &str, n: usize) {
    eprintln!("--- {what} console (last {n} lines) ---");
    let lines: Vec<&str> = console.lines().collect();
    for line in &lines[lines.len().saturating_sub(n)..] {
        eprintln!("{line}");
    }
}

/// Runs the matrix for `kernel`, printing one line per kernel (and the console's tail for a
/// kernel that did not pass). Errors only when the machinery fails (fetching, building, QEMU).
pub fn vm_test(kernels: &[Kernel]) -> Result<Vec<(Kernel, Outcome)>> {
    let root = cache_dir()?;
    debian::ensure_qemu(&root)?;
    let payload = guest::matrix()?;
    let mut results = Vec::new();
    for &k in kernels {
        let started = Instant::now();
        let console = prepare_boot(&root, k, &payload)
            .and_then(|(vmlinuz, initrd)| {
                boot::run_captured(
                    &vmlinuz,
                    &initrd,
                    &MATRIX_MACHINE,
                    Duration::from_secs(20 * 60),
                    false,
                )
            })
            .with_context(|| format!("kernel {}", k.label()))?;
        let outcome = parse_console(&console);
        let log = save_console(&root, k.label(), &outcome.console)?;
        println!(
            "kernel {:<5} {:<28} {}  ({:.0} s, console: {})",
            k.label(),
            outcome.release,
            summary(&outcome),
            started.elapsed().as_secs_f64(),
            log.display()
        );
        results.push((k, outcome));
    }
    for (k, o) in results.iter().filter(|(_, o)| !o.passed()) {
        print_tail(&format!("kernel {}", k.label()), &o.console, 40);
    }
    Ok(results)
}

/// The e2e guest: two vCPUs (TCG runs each on a host thread; sshd, ssh, git and the agent run
/// side by side) and room for the lab's repository and clones in `/tmp`.
const E2E_MACHINE: Machine = Machine { cpus: 2, memory_mib: 2048, append: String::new() };

/// `cargo xtask vm-test --e2e [--test NAME…]`: the e2e tests ([`guest::E2E_TESTS`], or the
/// ones `only` names) inside each kernel's guest, their output shown as it comes; one line per
/// test binary and kernel. Fails unless every binary passed on every kernel.
pub fn e2e(kernel: Kernel, only: &[String]) -> Result<()> {
    let tests: Vec<&str> = if only.is_empty() {
        guest::E2E_TESTS.to_vec()
    } else {
        let unknown: Vec<&str> =
            only.iter().map(String::as_str).filter(|t| !guest::E2E_TESTS.contains(t)).collect();
        ensure!(
            unknown.is_empty(),
            "no e2e test {} (the e2e tests: {})",
            unknown.join(", "),
            guest::E2E_TESTS.join(", ")
        );
        guest::E2E_TESTS.iter().copied().filter(|t| only.iter().any(|o| o == t)).collect()
    };
    crate::setup::setup()?;
    let root = cache_dir()?;
    debian::ensure_qemu(&root)?;
    let payload = guest::e2e(&tests)?;
    let mut failed = Vec::new();
    let mut lines = Vec::new();
    for k in kernel.expand() {
        let started = Instant::now();
        let skips: Vec<guest::Skip> =
            guest::e2e_skips(k).into_iter().filter(|s| tests.contains(&s.binary)).collect();
        let skip_names: Vec<&str> = skips.iter().map(|s| s.name).collect();
        let mut append = format!("sshlb_slowdown={}", boot::slowdown());
        if !skips.is_empty() {
            append += &format!(" sshlb_skip={}", skip_names.join(","));
        }
        let machine = Machine { append, ..E2E_MACHINE };
        println!("kernel {}: booting the e2e guest ({})", k.label(), tests.join(", "));
        let console = prepare_boot(&root, k, &payload)
            .and_then(|(vmlinuz, initrd)| {
                boot::run_captured(&vmlinuz, &initrd, &machine, Duration::from_secs(120 * 60), true)
            })
            .with_context(|| format!("kernel {}", k.label()))?;
        let log = save_console(&root, &format!("e2e-{}", k.label()), &console)?;
        let release = parse_console(&console).release;
        let runs = parse_e2e(&console);
        for &test in &tests {
            let run = runs.iter().find(|r| r.name == test);
            let line = run.map_or_else(|| "did not run".to_owned(), outcome::E2eRun::summary);
            if !run.is_some_and(outcome::E2eRun::passed) {
                failed.push(format!("{test} on {}", k.label()));
            }
            lines.push(format!("kernel {:<5} {:<28} {test:<11} {line}", k.label(), release));
        }
        for skip in &skips {
            let (binary, name, why) = (skip.binary, skip.name, skip.why);
            lines.push(format!("kernel {:<5} not run here: {binary} {name} — {why}", k.label()));
        }
        lines.push(format!(
            "kernel {:<5} boot to power-off {:.0} s (console: {})",
            k.label(),
            started.elapsed().as_secs_f64(),
            log.display()
        ));
        if runs.len() < tests.len() {
            print_tail(&format!("kernel {}", k.label()), &console, 40);
        }
    }
    println!();
    for line in &lines {
        println!("{line}");
    }
    ensure!(failed.is_empty(), "vm-test --e2e failed: {}", failed.join(", "));
    Ok(())
}

/// `cargo xtask run --vm`: the lab inside kernel `kernel`'s guest, its commands printed on the
/// console and a shell in the guest to run them; Ctrl-C ends QEMU. With `duration` the lab
/// stops by itself after that long and no shell is started (the console is shown, not read).
pub fn run_lab(kernel: Kernel, duration: Option<Duration>) -> Result<()> {
    ensure!(kernel != Kernel::All, "run --vm boots one kernel: pick one with --kernel");
    crate::setup::setup()?;
    let root = cache_dir()?;
    debian::ensure_qemu(&root)?;
    let payload = guest::lab()?;
    let (vmlinuz, initrd) = prepare_boot(&root, kernel, &payload)?;
    println!(
        "booting kernel {} with the lab (console below; under TCG the lab needs about a minute)",
        kernel.label()
    );
    let slowdown = format!("sshlb_slowdown={}", boot::slowdown());
    let Some(duration) = duration else {
        let machine = Machine { append: slowdown, ..E2E_MACHINE };
        return boot::run_interactive(&vmlinuz, &initrd, &machine);
    };
    let append = format!("{slowdown} sshlb_duration={}", duration.as_secs());
    let machine = Machine { append, ..E2E_MACHINE };
    let limit = duration + Duration::from_secs(10 * 60);
    let console = boot::run_captured(&vmlinuz, &initrd, &machine, limit, true)?;
    save_console(&root, &format!("lab-{}", kernel.label()), &console)?;
    if !console.contains("SSHLB-VM lab-ready") {
        bail!("the lab did not come up in the guest (console above)");
    }
    Ok(())
}

/// `cargo xtask vm-test`: runs the matrix; with `update_readme` (and every kernel) rewrites the
/// README's "Supported kernels" table from the results — also when a kernel failed, so the
/// table says how. Fails unless every kernel passed.
pub fn run(kernel: Kernel, update_readme: bool) -> Result<()> {
    if update_readme && kernel != Kernel::All {
        bail!("--update-readme needs --kernel all: the table lists every kernel");
    }
    crate::setup::setup()?;
    matrix(&kernel.expand(), update_readme)
}

/// Runs the matrix for `kernels` (setup already done), optionally rewrites the README's table,
/// and fails unless every kernel passed. `cargo xtask test` calls this once for its kernels.
pub fn matrix(kernels: &[Kernel], update_readme: bool) -> Result<()> {
    let results = vm_test(kernels)?;
    if update_readme {
        let date = cmd::output(Command::new("date").arg("+%Y-%m-%d"))?.trim().to_owned();
        readme::write_readme_table(&readme_table(&results, &date))?;
    }
    let failed: Vec<&str> =
        results.iter().filter(|(_, o)| !o.passed()).map(|(k, _)| k.label()).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("vm-test failed on kernel(s) {}", failed.join(", "))
    }
}

/// Installs QEMU when it is missing (`cargo xtask setup`).
pub fn ensure_qemu() -> Result<()> {
    debian::ensure_qemu(&cache_dir()?)
}

/// `$XDG_CACHE_HOME/sshlb/vm` (or `~/.cache/sshlb/vm`), created if missing: kernels, package
/// lists, initramfs trees and console logs.
fn cache_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    let dir = base.join("sshlb").join("vm");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
