//! `bpf-linker`, the BPF target's linker: checked by running it (its RUNPATH points at the
//! nightly's lib dir, so a changed nightly breaks it), and built when missing with `cargo install`
//! against the nightly toolchain's own shared libLLVM (no Debian package has LLVM 22; see
//! `docs/toolchain.md`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::{pinned::Pinned, toolchain::RustcVersion, Mode, Report, NIGHTLY};
use crate::cmd;

/// The bpf-linker release that links with rustc's LLVM 22 (docs/toolchain.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// bpf-linker at [`BPF_LINKER_VERSION`].
const BPF_LINKER: Pinned = Pinned { name: "bpf-linker", version: BPF_LINKER_VERSION };

/// Checks that bpf-linker [`BPF_LINKER_VERSION`] runs from PATH; builds it against the
/// `nightly`'s libLLVM in [`Mode::Install`], fails saying why in [`Mode::CheckOnly`].
pub fn ensure_bpf_linker(report: &mut Report, mode: Mode, nightly: &RustcVersion) -> Result<()> {
    // Present only if it runs: its RUNPATH points at the nightly's lib dir, so a changed nightly
    // leaves a binary that cannot load its libLLVM.
    let missing = "bpf-linker is not on PATH or does not run (a bpf-linker built against an \
                   older nightly cannot load its libLLVM)";
    let Some(why) = BPF_LINKER.check(report, missing) else { return Ok(()) };
    if mode == Mode::CheckOnly {
        bail!("{why}; `cargo xtask setup` builds bpf-linker {BPF_LINKER_VERSION}");
    }
    println!("{why}: building bpf-linker {BPF_LINKER_VERSION} against the nightly's libLLVM");
    install_bpf_linker(nightly).context("could not install bpf-linker")?;
    BPF_LINKER.record_installed(report)
}

/// The nightly's shared libLLVM among the file names of its `lib` dir
/// (`libLLVM.so.22.1-rust-1.97.0-nightly`), as the recipe's `ls libLLVM.so.*-rust-*` picks it
/// (docs/toolchain.md).
fn find_libllvm<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names
        .into_iter()
        .filter(|name| name.starts_with("libLLVM.so.") && name.contains("-rust-"))
        .min()
}

/// The recipe in docs/toolchain.md: link bpf-linker against the nightly toolchain's own libLLVM
/// through a `libLLVM.so` symlink in a temporary directory.
fn install_bpf_linker(nightly: &RustcVersion) -> Result<()> {
    let sysroot =
        cmd::output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]))?;
    let sysroot = PathBuf::from(sysroot.trim());
    let lib_dir = sysroot.join("lib");
    let names: Vec<String> = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    let libllvm = find_libllvm(names.iter().map(String::as_str)).with_context(|| {
        format!(
            "no libLLVM.so.*-rust-* in {}: the nightly ships no shared LLVM?",
            lib_dir.display()
        )
    })?;
    let major = nightly
        .llvm_major()
        .with_context(|| format!("cannot read the LLVM major version from `{}`", nightly.llvm))?;

    let tmp = TempDir::create("sshlb-bpf-linker")?;
    let link = tmp.path().join("libLLVM.so");
    std::os::unix::fs::symlink(lib_dir.join(libllvm), &link)
        .with_context(|| format!("creating {}", link.display()))?;
    cmd::run(
        Command::new("cargo")
            .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}"), "--locked"])
            .args(["--no-default-features", "--features", &format!("llvm-{major}"), "--force"])
            .env("LLVM_PREFIX", &sysroot)
            .env("RUSTFLAGS", format!("-L native={}", tmp.path().display()))
            // Would override RUSTFLAGS; and run outside the workspace so its config stays out.
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .current_dir(tmp.path()),
    )
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create(prefix: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _stale = fs::remove_dir_all(&path);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _best_effort = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_nightly_libllvm_like_the_recipe() {
        let names = [
            "libLLVM-22-rust-1.97.0-nightly.so",
            "librustc_driver-b5a965480ee51f9a.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "rustlib",
        ];
        assert_eq!(find_libllvm(names), Some("libLLVM.so.22.1-rust-1.97.0-nightly"));
        assert_eq!(find_libllvm(["rustlib"]), None);
    }
}
