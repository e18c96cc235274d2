//! `cargo xtask lab up|down|status` and `cargo xtask run`: build the agent and the lab binary
//! (`sshlb-tests`' `sshlb-lab`), then hand over to it. The lab itself — namespaces, OpenSSH
//! backends, keys, the git repository, the agent — lives in `tests/src/lab.rs`.

use std::{path::PathBuf, time::Duration};

use anyhow::{ensure, Context as _, Result};

use crate::{build, cmd, setup};

/// What to do with the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Build it and leave it running in the background.
    Up,
    /// Stop it and remove everything it made (also after a crash).
    Down,
    /// Say whether it runs, and show the balancer's status.
    Status,
}

/// Builds the agent and the lab binary; returns the lab binary's path.
fn prepare() -> Result<PathBuf> {
    ensure!(crate::is_root(), "the lab needs root (network namespaces, XDP): run it with sudo");
    setup::setup()?;
    Ok(build_lab()?.1)
}

/// Builds the agent and the lab binary (setup already done); returns both paths.
pub fn build_lab() -> Result<(PathBuf, PathBuf)> {
    let agent = build::build(false)?;
    let mut cargo = build::cargo();
    cargo.args(["build", "--package", "sshlb-tests", "--bin", "sshlb-lab"]);
    cmd::run(&mut cargo).context("building the lab")?;
    let lab = agent.with_file_name("sshlb-lab");
    ensure!(lab.is_file(), "built the lab but {} does not exist", lab.display());
    Ok((agent, lab))
}

/// The lab's shape as `sshlb-lab run|up` takes it: `--balancers N` or `--nat-pair`.
pub fn shape(balancers: u8, nat_pair: bool) -> Vec<String> {
    if nat_pair {
        vec!["--nat-pair".to_owned()]
    } else {
        vec!["--balancers".to_owned(), balancers.to_string()]
    }
}

/// `cargo xtask lab ACTION` (`shape`, from [`shape`], applies to `up`).
pub fn lab(action: Action, shape: Vec<String>) -> Result<()> {
    let lab = prepare()?;
    let mut command = std::process::Command::new(&lab);
    let verb = match action {
        Action::Up => "up",
        Action::Down => "down",
        Action::Status => "status",
    };
    command.arg(verb);
    if action == Action::Up {
        command.args(shape);
    }
    cmd::run(&mut command).with_context(|| format!("lab {verb}"))
}

/// `cargo xtask run`: the lab in the foreground with its balancer(s), until Ctrl-C (or
/// `duration`).
pub fn run(duration: Option<Duration>, shape: Vec<String>) -> Result<()> {
    let lab = prepare()?;
    let mut command = std::process::Command::new(&lab);
    command.arg("run").args(shape);
    if let Some(d) = duration {
        command.arg(d.as_secs().to_string());
    }
    // Ctrl-C reaches the lab (same process group) and it tears down; xtask only waits.
    // SAFETY: ignoring SIGINT in xtask itself; the child resets dispositions on exec.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = command.status().context("starting the lab")?;
    ensure!(status.success(), "the lab exited with {status}");
    Ok(())
}
