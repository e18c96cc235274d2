//! `cargo xtask build`: checks the BPF toolchain, builds `sshlb-agent` (whose build script builds
//! and embeds the XDP program), and knows where cargo puts it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context as _, Result};

use crate::{cmd, setup};

/// The agent binary's name (`[[bin]]` of `sshlb-userspace`).
pub const AGENT_BIN: &str = "sshlb-agent";

/// Builds `sshlb-agent` after checking that the BPF object can be built; returns its path.
pub fn build(release: bool) -> Result<PathBuf> {
    setup::check_bpf_toolchain()?;
    let mut cargo = cargo();
    cargo.args(["build", "--package", "sshlb-userspace"]);
    if release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo).context("building sshlb-agent failed")?;
    let agent = profile_dir(release)?.join(AGENT_BIN);
    ensure!(agent.is_file(), "cargo built sshlb-agent but {} does not exist", agent.display());
    Ok(agent)
}

/// A `cargo` command run from the workspace root. Uses the cargo that runs xtask when known, and
/// drops `AYA_BUILD_SKIP`: everything xtask builds or tests must embed the real BPF object.
pub fn cargo() -> Command {
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.current_dir(crate::workspace_root()).env_remove("AYA_BUILD_SKIP");
    cargo
}

/// Cargo's output directory for the debug or release profile: a sibling of the directory this
/// xtask binary was built into, so `CARGO_TARGET_DIR`, `build.target-dir` and `--target` layouts
/// all resolve the way cargo resolved them for xtask.
fn profile_dir(release: bool) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    sibling_profile_dir(&exe, release)
        .with_context(|| format!("{} is not inside a cargo target directory", exe.display()))
}

fn sibling_profile_dir(exe: &Path, release: bool) -> Option<PathBuf> {
    let profiles = exe.parent()?.parent()?;
    Some(profiles.join(if release { "release" } else { "debug" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_lands_beside_xtask_in_the_chosen_profile() {
        let exe = Path::new("/src/sshlb/target/debug/xtask");
        assert_eq!(
            sibling_profile_dir(exe, true),
            Some(PathBuf::from("/src/sshlb/target/release"))
        );
        assert_eq!(sibling_profile_dir(exe, false), Some(PathBuf::from("/src/sshlb/target/debug")));
    }
}
