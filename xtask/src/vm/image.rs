//! A guest's initramfs, as two gzip'd cpio archives the kernel unpacks one after the other:
//!
//! - the **userland**, built once from the machine's Debian packages and cached under the cache
//!   directory, keyed by those packages' versions: busybox, iproute2's `ip` and `ss`, `ethtool`,
//!   `nsenter` and, for the e2e tests and the lab, OpenSSH (`sshd`, `ssh`, `ssh-keygen`),
//!   `git`, BIRD, keepalived, `iptables` and `tc` — every binary with the libraries `ldd`
//!   names — plus the accounts sshd needs;
//! - the **payload**, packed for each boot: `/init`, the guest's script (`/guest.sh`), the
//!   kernel's modules (decompressed on the host) and the binaries it runs, with their libraries.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::cmd;

/// The guest's `/init`: mounts, module loads, the release marker, then `/guest.sh`, power off.
pub const INIT: &str = include_str!("init.sh");

/// Modules the tests need that Debian builds as modules (absent = built in); what each depends
/// on is read from the module itself and loaded first. `veth` and `bridge`: every test's
/// topology. `sch_tbf`: e2e_ha shapes the client's link. `nf_tables` with `nft_counter`
/// (a module on 5.10, built in on 7: every iptables-nft rule counts), `nft_compat` and `xt_tcpudp`:
/// e2e_ha's `iptables` (Debian's is the nft flavour) on the NAT pair.
const MODULES: [&str; 7] =
    ["veth", "bridge", "sch_tbf", "nf_tables", "nft_counter", "nft_compat", "xt_tcpudp"];

/// Bumped when the userland's layout changes, so cached archives of the old layout are rebuilt.
const USERLAND_LAYOUT: u32 = 3;

/// Which userland a guest gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Userland {
    /// busybox and the network tools: enough for the fixtures and the namespace tests.
    Plain,
    /// Plain plus OpenSSH's server and client, git and the HA tests' daemons: the e2e tests
    /// and the lab.
    Ssh,
}

impl Userland {
    /// Host binaries and where they go in the guest.
    fn binaries(self) -> Vec<(&'static str, &'static str)> {
        let mut list = vec![
            ("ip", "/sbin/ip"),
            ("ethtool", "/sbin/ethtool"),
            ("nsenter", "/sbin/nsenter"),
            ("ss", "/sbin/ss"),
        ];
        if self == Self::Ssh {
            // Where Debian has them: sshd re-executes itself by this absolute path, and a
            // session's `git-upload-pack` is looked up in sshd's default PATH (/usr/bin).
            list.extend([
                ("sshd", "/usr/sbin/sshd"),
                ("ssh", "/usr/bin/ssh"),
                ("ssh-keygen", "/usr/bin/ssh-keygen"),
                ("git", "/usr/bin/git"),
                // The HA tests: BIRD (the router and each balancer's BGP + BFD), keepalived
                // (VRRP on the NAT pair), iptables and tc on the balancers and the router.
                ("bird", "/usr/sbin/bird"),
                ("birdc", "/usr/sbin/birdc"),
                ("keepalived", "/usr/sbin/keepalived"),
                ("iptables", "/usr/sbin/iptables"),
                ("tc", "/sbin/tc"),
            ]);
        }
        list
    }

    /// The Debian packages those binaries come from: their versions key the cached archive.
    fn packages(self) -> &'static [&'static str] {
        match self {
            Self::Plain => &["busybox-static", "iproute2", "ethtool", "util-linux", "libc6"],
            Self::Ssh => &[
                "busybox-static",
                "iproute2",
                "ethtool",
                "util-linux",
                "libc6",
                "openssh-server",
                "openssh-client",
                "git",
                "libssl3",
                "bird2",
                "keepalived",
                "iptables",
            ],
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Ssh => "ssh",
        }
    }
}

/// What one boot's payload holds besides `/init` and the modules.
pub struct Payload {
    /// The userland underneath.
    pub userland: Userland,
    /// The guest's script, sourced by `/init` as `/guest.sh`.
    pub script: &'static str,
    /// Host files and the guest paths they are copied to (with their libraries).
    pub files: Vec<(PathBuf, String)>,
}

/// The first file under `dir` (depth first, symlinked dirs not followed) whose name `want`s.
pub fn find_file(dir: &Path, want: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
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

/// Copies `bin` into `root` at `at`, with every library `ldd` names (at their own paths).
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

/// Where `tool` is on the host.
fn host_tool(tool: &str) -> Result<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
        .with_context(|| format!("{tool} not found on the host (cargo xtask setup installs it)"))
}

/// Packs the tree at `dir` into a gzip'd newc cpio archive at `out`.
fn pack(dir: &Path, out: &Path) -> Result<()> {
    let script = format!(
        "cd '{}' && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
        dir.display(),
        out.display()
    );
    cmd::output(Command::new("sh").args(["-c", &script]))
        .with_context(|| format!("packing {}", dir.display()))?;
    Ok(())
}

/// A stable 64-bit FNV-1a hash (the cache key must not change between xtask builds).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The cache key of `userland`: its layout and the installed versions of its packages.
fn userland_key(userland: Userland) -> Result<String> {
    let versions = cmd::output(
        Command::new("dpkg-query")
            .args(["-W", "-f", "${Package}=${Version}\n"])
            .args(userland.packages()),
    )
    .context(
        "the guest's userland is built from Debian packages: cargo xtask setup installs them",
    )?;
    let text = format!("{USERLAND_LAYOUT}\n{}\n{versions}", userland.label());
    Ok(format!("{:016x}", fnv1a(text.as_bytes())))
}

/// Accounts and files OpenSSH and git expect: root with a home and a shell, sshd's
/// privilege-separation user and directory, and git's templates.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/bin/false\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// The cached userland archive for `userland` (built when its key is new); returns its path.
pub fn userland(cache: &Path, userland: Userland) -> Result<PathBuf> {
    let key = userland_key(userland)?;
    let archive = cache.join(format!("userland-{}-{key}.cpio.gz", userland.label()));
    if archive.exists() {
        return Ok(archive);
    }
    println!("building the guest's {} userland from the installed packages", userland.label());
    let dir = cache.join(format!("userland-{}", userland.label()));
    let _ = std::fs::remove_dir_all(&dir);
    for d in
        ["bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "tmp", "run", "dev", "etc", "root"]
    {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .context("busybox-static is needed (cargo xtask setup installs it)")?;
    for (tool, at) in userland.binaries() {
        add_binary(&dir, &host_tool(tool)?, at)?;
    }
    if userland == Userland::Ssh {
        std::fs::write(dir.join("etc/passwd"), PASSWD)?;
        std::fs::write(dir.join("etc/group"), GROUP)?;
        // iptables and BIRD name protocols (`-p tcp`).
        std::fs::copy("/etc/protocols", dir.join("etc/protocols"))
            .context("/etc/protocols (netbase)")?;
        // git runs its helpers by name: the ones a server and a client need, as links to git.
        for helper in ["git-upload-pack", "git-receive-pack", "git-upload-archive"] {
            std::os::unix::fs::symlink("git", dir.join("usr/bin").join(helper))?;
        }
        std::fs::create_dir_all(dir.join("usr/lib/git-core"))?;
        std::os::unix::fs::symlink("/usr/bin/git", dir.join("usr/lib/git-core/git"))?;
        // iptables' matches and targets (`-p tcp --dport`) are plugins it loads at run time.
        let xtables = std::fs::read_dir("/usr/lib")?
            .flatten()
            .map(|d| d.path().join("xtables"))
            .find(|p| p.is_dir())
            .context("iptables' plugin directory (/usr/lib/<arch>/xtables) is missing")?;
        let to = dir.join(xtables.strip_prefix("/").context("absolute")?);
        std::fs::create_dir_all(to.parent().context("path")?)?;
        cmd::output(Command::new("cp").arg("-r").arg(&xtables).arg(&to))?;
        let templates = Path::new("/usr/share/git-core/templates");
        if templates.is_dir() {
            std::fs::create_dir_all(dir.join("usr/share/git-core"))?;
            cmd::output(
                Command::new("cp").arg("-r").arg(templates).arg(dir.join("usr/share/git-core")),
            )?;
        }
    }
    let partial = archive.with_extension("partial");
    pack(&dir, &partial)?;
    std::fs::rename(&partial, &archive)?;
    std::fs::remove_dir_all(&dir)?;
    Ok(archive)
}

/// The raw (decompressed) module `name` of the kernel unpacked under `kroot`, `None` when the
/// kernel has it built in.
fn module_file(kroot: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let found = find_file(kroot, &|n| {
        n == format!("{name}.ko") || n == format!("{name}.ko.xz") || n == format!("{name}.ko.zst")
    });
    let Some(found) = found else { return Ok(None) };
    let raw = match found.extension().and_then(|e| e.to_str()) {
        Some("xz") => cmd::output_bytes(Command::new("xz").arg("-dc").arg(&found))?,
        Some("zst") => cmd::output_bytes(Command::new("zstd").arg("-dc").arg(&found))?,
        _ => std::fs::read(&found)?,
    };
    Ok(Some(raw))
}

/// The modules a module needs loaded before it: its `.modinfo`'s `depends=` entry (Debian's
/// package carries no `modules.dep`; `depmod` writes that at install time).
fn module_depends(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(b"depends="))
        .map(|deps| {
            String::from_utf8_lossy(deps)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// `wanted` and every module they depend on, each after its dependencies, as (name, raw
/// module); modules the kernel has built in are left out.
fn modules(kroot: &Path, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
    fn visit(
        kroot: &Path,
        name: &str,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        if !seen.insert(name.to_owned()) {
            return Ok(());
        }
        let Some(raw) = module_file(kroot, name)? else { return Ok(()) };
        for dep in module_depends(&raw) {
            visit(kroot, &dep, seen, out)?;
        }
        out.push((name.to_owned(), raw));
        Ok(())
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for name in wanted {
        visit(kroot, name, &mut seen, &mut out)?;
    }
    Ok(out)
}

/// Builds the initramfs for a boot of kernel `label` (unpacked under `kroot`) with `payload`:
/// the cached userland followed by a fresh payload archive. Returns the initramfs's path.
pub fn initramfs(cache: &Path, kroot: &Path, label: &str, payload: &Payload) -> Result<PathBuf> {
    let base = userland(cache, payload.userland)?;
    let dir = cache.join(format!("payload-{label}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("lib/modules"))?;
    for (host, at) in &payload.files {
        add_binary(&dir, host, at)?;
        // Debug info is most of a debug build's size (~130 MB a binary); backtraces keep the
        // symbols.
        let copied = dir.join(at.trim_start_matches('/'));
        cmd::output(Command::new("strip").arg("--strip-debug").arg(&copied))
            .context("stripping the guest's binaries (binutils)")?;
    }
    for (i, (name, raw)) in modules(kroot, &MODULES)?.into_iter().enumerate() {
        std::fs::write(dir.join(format!("lib/modules/{i:02}-{name}.ko")), raw)?;
    }
    std::fs::write(dir.join("init"), INIT)?;
    std::fs::write(dir.join("guest.sh"), payload.script)?;
    cmd::output(Command::new("chmod").arg("+x").arg(dir.join("init")))?;
    let packed = cache.join(format!("payload-{label}.cpio.gz"));
    pack(&dir, &packed)?;
    std::fs::remove_dir_all(&dir)?;
    // The kernel unpacks concatenated archives in order; later files win.
    let initrd = cache.join(format!("initrd-{label}.gz"));
    let mut all = std::fs::read(&base)?;
    all.extend(std::fs::read(&packed)?);
    std::fs::write(&initrd, all)?;
    std::fs::remove_file(&packed)?;
    Ok(initrd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_runs_the_guest_script_and_powers_off() {
        assert!(INIT.starts_with("#!/bin/busybox sh\n"), "the kernel runs /init by its shebang");
        assert!(INIT.contains("SSHLB-VM release "), "the verdict reads the release marker");
        assert!(INIT.contains(". /guest.sh"), "init must run the payload's script");
        assert!(INIT.trim_end().ends_with("poweroff -f"), "the guest must end QEMU");
    }

    #[test]
    fn module_dependencies_come_from_its_modinfo() {
        let raw = b"\x7fELF junk\0license=GPL\0depends=stp,llc\0vermagic=5.10\0";
        assert_eq!(module_depends(raw), vec!["stp", "llc"]);
        assert!(module_depends(b"\0depends=\0name=veth\0").is_empty());
        assert!(module_depends(b"no modinfo").is_empty());
    }

    #[test]
    fn userland_key_is_stable_and_tells_userlands_apart() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a's published value");
        assert!(Userland::Ssh.packages().contains(&"openssh-server"));
        assert!(Userland::Ssh.binaries().iter().any(|(_, at)| *at == "/usr/sbin/sshd"));
        assert!(!Userland::Plain.binaries().iter().any(|(t, _)| *t == "git"));
    }
}
