//! Booting one kernel: the initramfs (busybox, iproute2's `ip`, `ethtool`, `nsenter`, the
//! modules the tests need, the test binaries with their libraries, and `init.sh` as `/init`),
//! packed with busybox cpio, then QEMU under TCG with the console on a pipe, bounded in time.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{guest::Guest, outcome::parse_console, Kernel, Outcome};
use crate::cmd;

/// The guest's `/init`: mounts, module loads, both test binaries, marker lines, power off.
const INIT: &str = include_str!("init.sh");

/// Modules the tests need that Debian builds as modules, in load order (absent = built in).
const MODULES: [&str; 4] = ["veth", "llc", "stp", "bridge"];

/// The first file under `dir` (depth first, symlinked dirs not followed) whose name `want`s.
fn find_file(dir: &Path, want: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() && !path.is_symlink() {
            if let Some(found) = find_file(&path, want) {
                return Some(found);
            }
        } else if want(&name) {
            return Some(path);
        }
    }
    None
}

/// Copies `bin` into `root` at the same path, with every library `ldd` names.
fn add_binary(root: &Path, bin: &Path, at: &str) -> Result<()> {
    let dest = root.join(at.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().context("path")?)?;
    std::fs::copy(bin, &dest).with_context(|| format!("copying {}", bin.display()))?;
    let ldd = cmd::output(Command::new("ldd").arg(bin)).unwrap_or_default();
    let libs: BTreeSet<&str> = ldd
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => l.split_whitespace().next().filter(|p| p.starts_with('/')),
            }
        })
        .filter(|p| p.starts_with('/'))
        .collect();
    for lib in libs {
        let target = root.join(lib.trim_start_matches('/'));
        if !target.exists() {
            std::fs::create_dir_all(target.parent().context("path")?)?;
            std::fs::copy(lib, &target).with_context(|| format!("copying {lib}"))?;
        }
    }
    Ok(())
}

/// Builds the initramfs for kernel directory `kdir` and boots it; parses the console.
pub fn boot(root: &Path, kdir: &Path, guest: &Guest, k: Kernel) -> Result<Outcome> {
    let kroot = kdir.join("root");
    let vmlinuz = find_file(&kroot, &|n| n.starts_with("vmlinuz"))
        .with_context(|| format!("no vmlinuz in {}", kroot.display()))?;
    let initrd = build_initramfs(root, &kroot, guest, k)?;
    let console = run_qemu(&vmlinuz, &initrd)?;
    Ok(parse_console(&console))
}

/// Assembles the initramfs tree for kernel `k` (unpacked under `kroot`) and packs it; returns
/// the packed file.
fn build_initramfs(root: &Path, kroot: &Path, guest: &Guest, k: Kernel) -> Result<PathBuf> {
    let initrd_dir = root.join(format!("initramfs-{}", k.label()));
    let _ = std::fs::remove_dir_all(&initrd_dir);
    for d in ["bin", "sbin", "proc", "sys", "tmp", "run", "dev", "lib/modules", "tests", "etc"] {
        std::fs::create_dir_all(initrd_dir.join(d))?;
    }
    std::fs::copy("/bin/busybox", initrd_dir.join("bin/busybox"))
        .context("busybox-static is needed (cargo xtask setup installs it)")?;
    // Real tools where busybox's would not do (veth pairs, offload settings, nsenter --net=).
    for tool in ["ip", "ethtool", "nsenter"] {
        let path = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .with_context(|| format!("{tool} not found on the host"))?;
        add_binary(&initrd_dir, &path, &format!("/sbin/{tool}"))?;
    }
    add_binary(&initrd_dir, &guest.fixtures, "/tests/fixtures")?;
    add_binary(&initrd_dir, &guest.namespace, "/tests/namespace")?;
    for (i, module) in MODULES.iter().enumerate() {
        let found = find_file(kroot, &|n| {
            n == format!("{module}.ko")
                || n == format!("{module}.ko.xz")
                || n == format!("{module}.ko.zst")
        });
        let Some(found) = found else { continue };
        let dest = initrd_dir.join(format!("lib/modules/{i}-{module}.ko"));
        match found.extension().and_then(|e| e.to_str()) {
            Some("xz") => {
                let raw = cmd::output_bytes(Command::new("xz").arg("-dc").arg(&found))?;
                std::fs::write(&dest, raw)?;
            }
            Some("zst") => {
                let raw = cmd::output_bytes(Command::new("zstd").arg("-dc").arg(&found))?;
                std::fs::write(&dest, raw)?;
            }
            _ => {
                std::fs::copy(&found, &dest)?;
            }
        }
    }
    std::fs::write(initrd_dir.join("init"), INIT)?;
    cmd::output(Command::new("chmod").arg("+x").arg(initrd_dir.join("init")))?;
    let initrd = root.join(format!("initrd-{}.gz", k.label()));
    let script = format!(
        "cd '{}' && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
        initrd_dir.display(),
        initrd.display()
    );
    cmd::output(Command::new("sh").args(["-c", &script])).context("packing the initramfs")?;
    Ok(initrd)
}

/// Boots `vmlinuz` with `initrd` under QEMU (TCG: KVM is not usable on these machines) and
/// returns the whole serial console; kills QEMU after 20 minutes.
fn run_qemu(vmlinuz: &Path, initrd: &Path) -> Result<String> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1536"])
        .args(["-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut all);
        all
    });
    let deadline = Instant::now() + Duration::from_secs(20 * 60);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_prints_every_marker_the_verdict_reads() {
        assert!(INIT.starts_with("#!/bin/busybox sh\n"), "the kernel runs /init by its shebang");
        for marker in ["SSHLB-VM release ", "SSHLB-VM fixtures-exit", "SSHLB-VM namespace-exit"] {
            assert!(INIT.contains(marker), "init.sh does not print {marker:?}");
        }
        assert!(INIT.trim_end().ends_with("poweroff -f"), "the guest must end QEMU");
    }
}
