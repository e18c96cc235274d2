//! Debian's side of the kernel matrix: a private apt configuration (its own sources and lists,
//! so other releases' packages can be fetched without touching the system's), QEMU from
//! bookworm-backports, and each kernel's cloud image package, resolved in its suite, downloaded
//! once and unpacked under the cache directory.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::Kernel;
use crate::cmd;

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

impl Kernel {
    /// The Debian suite whose `linux-image-cloud-amd64` is this kernel.
    fn suite(self) -> &'static str {
        match self {
            Self::K5_10 => "bullseye",
            Self::K6_1 => "bookworm",
            Self::K6_12 => "bookworm-backports",
            Self::K7 | Self::All => "sid",
        }
    }
}

/// A private apt configuration over `suites` (its own lists and cache under `dir`), so kernels
/// of other releases can be fetched without touching the system's sources.
fn private_apt(dir: &Path, suites: &[&str]) -> Result<PathBuf> {
    for sub in ["lists/partial", "cache/archives/partial", "parts"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    #[expect(clippy::format_collect, reason = "a few lines, built once")]
    let sources: String =
        suites.iter().map(|s| format!("deb [signed-by={KEYRING}] {MIRROR} {s} main\n")).collect();
    std::fs::write(dir.join("sources.list"), sources)?;
    let d = dir.display();
    let conf = format!(
        "Dir::State::Lists \"{d}/lists\";\nDir::Etc::SourceList \"{d}/sources.list\";\n\
         Dir::Etc::SourceParts \"{d}/parts\";\nDir::Cache \"{d}/cache\";\n\
         Acquire::Languages \"none\";\n"
    );
    let path = dir.join("apt.conf");
    std::fs::write(&path, conf)?;
    let fresh = dir.join("lists").read_dir().is_ok_and(|d| d.count() > 1);
    if !fresh {
        cmd::output(Command::new("apt-get").args(["-qq", "update"]).env("APT_CONFIG", &path))
            .context("updating the private package lists")?;
    }
    Ok(path)
}

/// QEMU 10 from bookworm-backports (bookworm's own 7.2 would remove the machine's qemu-utils).
pub fn ensure_qemu(root: &Path) -> Result<()> {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    if !crate::is_root() {
        bail!("qemu-system-x86_64 is missing; run `cargo xtask vm-test` as root to install it");
    }
    let apt = private_apt(&root.join("apt-qemu"), &["bookworm", "bookworm-backports"])?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "-t", "bookworm-backports"])
            .arg("qemu-system-x86")
            .env("APT_CONFIG", &apt)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing qemu-system-x86 from bookworm-backports")
}

/// Fetches (once) and unpacks the kernel; returns its directory.
pub fn fetch_kernel(root: &Path, k: Kernel) -> Result<PathBuf> {
    let apt =
        private_apt(&root.join("apt"), &["bullseye", "bookworm", "bookworm-backports", "sid"])?;
    let apt_cmd = |program: &str| {
        let mut c = Command::new(program);
        c.env("APT_CONFIG", &apt);
        c
    };
    // The meta package's version in this kernel's suite, then the image package it names.
    let madison = cmd::output(apt_cmd("apt-cache").args(["madison", "linux-image-cloud-amd64"]))?;
    let version = madison
        .lines()
        .find_map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            let suite = cols.get(2)?.split_whitespace().nth(1)?.split('/').next()?;
            (suite == k.suite()).then(|| cols[1].to_owned())
        })
        .with_context(|| format!("no linux-image-cloud-amd64 in {}", k.suite()))?;
    let dir = root.join(format!("kernel-{}-{version}", k.label()));
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let show = cmd::output(
        apt_cmd("apt-cache").args(["show", &format!("linux-image-cloud-amd64={version}")]),
    )?;
    let image = depends(&show)
        .into_iter()
        .find(|p| p.starts_with("linux-image-"))
        .context("the meta package names no linux-image package")?;
    let mut packages = vec![image.clone()];
    // Newer kernels split the image into binary and modules packages.
    let image_show = cmd::output(apt_cmd("apt-cache").args(["show", &image]))?;
    packages.extend(
        depends(&image_show)
            .into_iter()
            .filter(|p| p.starts_with("linux-binary-") || p.starts_with("linux-modules-")),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    println!("fetching kernel {} ({version}): {}", k.label(), packages.join(" "));
    cmd::output(apt_cmd("apt-get").arg("download").args(&packages).current_dir(&debs))
        .context("downloading the kernel")?;
    for deb in std::fs::read_dir(&debs)? {
        let deb = deb?.path();
        cmd::output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir.join("root")))?;
    }
    std::fs::remove_dir_all(&debs)?;
    std::fs::write(dir.join(".complete"), &version)?;
    Ok(dir)
}

/// Package names in the `Depends:` line of an `apt-cache show` record (first record).
fn depends(show: &str) -> Vec<String> {
    show.lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .map(|deps| {
            deps.split(',').filter_map(|d| d.split_whitespace().next()).map(str::to_owned).collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_lists_package_names() {
        let show = "Package: linux-image-cloud-amd64\nDepends: linux-image-6.1.0-31-cloud-amd64 (= 6.1.128-1), foo\n";
        assert_eq!(depends(show), vec!["linux-image-6.1.0-31-cloud-amd64", "foo"]);
    }
}
