//! `cargo xtask vm-test [--kernel 5.10|6.1|6.12|7|all]`: the data plane's tests on the kernels
//! operators run, each booted under QEMU (software emulation; KVM is not usable on these
//! machines, see docs/vm-tests.md).
//!
//! Per kernel: Debian's cloud kernel package is resolved in its suite and fetched (cached under
//! `~/.cache/sshlb/vm`; [`debian`]), an initramfs is built with busybox, iproute2's `ip`, the
//! `veth` module and the test binaries ([`guest`]; dynamically linked, with their libraries), and
//! QEMU boots it ([`boot`]). The guest's `/init` (`vm/init.sh`, embedded) prints what it ran
//! between marker lines on the serial console; the verdict is read from those lines
//! ([`outcome`]) — never from QEMU's exit code, which is 0 whatever the guest did. A full run
//! can rewrite the README's table ([`readme`]).
//!
//! This module owns the matrix itself: which kernels, the cache directory, and the loop that
//! fetches, boots and reports each one.

mod boot;
mod debian;
mod guest;
mod outcome;
mod readme;

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};

use outcome::{summary, Outcome};
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

/// Runs the matrix for `kernel`, printing one line per kernel (and the console's tail for a
/// kernel that did not pass). Errors only when the machinery fails (fetching, building, QEMU).
pub fn vm_test(kernels: &[Kernel]) -> Result<Vec<(Kernel, Outcome)>> {
    let root = cache_dir()?;
    debian::ensure_qemu(&root)?;
    let guest = guest::build_guest()?;
    let mut results = Vec::new();
    for &k in kernels {
        let started = Instant::now();
        let outcome = debian::fetch_kernel(&root, k)
            .and_then(|kdir| boot::boot(&root, &kdir, &guest, k))
            .with_context(|| format!("kernel {}", k.label()))?;
        let log = root.join(format!("console-{}.log", k.label()));
        std::fs::write(&log, &outcome.console).context("writing the console log")?;
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
        eprintln!("--- kernel {} console (last 40 lines) ---", k.label());
        let lines: Vec<&str> = o.console.lines().collect();
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("{line}");
        }
    }
    Ok(results)
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
