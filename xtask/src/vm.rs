//! `cargo xtask vm-test [--kernel 5.10|6.1|6.12|7|all]`: the data plane's tests on the kernels
//! operators run, each booted under QEMU (software emulation; KVM is not usable on these
//! machines, see ../shared/notes/vm-tests.md).
//!
//! Per kernel: Debian's cloud kernel package is resolved in its suite and fetched (cached under
//! `~/.cache/sshlb/vm`), an initramfs is built with busybox, iproute2's `ip`, the `veth` module
//! and the test binaries (dynamically linked, with their libraries), and QEMU boots it. The guest
//! prints what it ran between marker lines on the serial console; the verdict is read from those
//! lines — never from QEMU's exit code, which is 0 whatever the guest did.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

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

    fn label(self) -> &'static str {
        match self {
            Self::K5_10 => "5.10",
            Self::K6_1 => "6.1",
            Self::K6_12 => "6.12",
            Self::K7 => "7",
            Self::All => "all",
        }
    }

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

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// What one kernel's run found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `uname -r` in the guest.
    pub release: String,
    /// Whether the program loaded; `Some(message)` with the verifier's words when it did not.
    pub rejected: Option<String>,
    /// Fixture tests passed and failed (`None`: they did not report).
    pub fixtures: Option<(u32, u32)>,
    /// Why the kernel cannot run the fixtures at all (its test-run API is too old).
    pub fixtures_unsupported: Option<String>,
    /// Namespace tests passed and failed.
    pub namespace: Option<(u32, u32)>,
    /// Whole guest console, for the log.
    pub console: String,
}

impl Outcome {
    /// Passed: loaded, both suites reported, and every test that ran passed. A kernel whose
    /// test-run API cannot run the fixtures passes on the namespace tests alone (real traffic
    /// through the attached program), and says so.
    pub fn passed(&self) -> bool {
        let fixtures_ok =
            self.fixtures_unsupported.is_some() || matches!(self.fixtures, Some((p, 0)) if p > 0);
        self.rejected.is_none() && fixtures_ok && matches!(self.namespace, Some((p, 0)) if p > 0)
    }
}

/// Runs the matrix for `kernel`, printing one line per kernel (and the console's tail for a
/// kernel that did not pass). Errors only when the machinery fails (fetching, building, QEMU).
pub fn vm_test(kernels: &[Kernel]) -> Result<Vec<(Kernel, Outcome)>> {
    let root = cache_dir()?;
    ensure_qemu(&root)?;
    let guest = build_guest()?;
    let mut results = Vec::new();
    for &k in kernels {
        let started = Instant::now();
        let outcome = fetch_kernel(&root, k)
            .and_then(|kdir| boot(&root, &kdir, &guest, k))
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
        write_readme_table(&readme_table(&results, &date))?;
    }
    let failed: Vec<&str> =
        results.iter().filter(|(_, o)| !o.passed()).map(|(k, _)| k.label()).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("vm-test failed on kernel(s) {}", failed.join(", "))
    }
}

const TABLE_START: &str = "<!-- supported-kernels:start -->";
const TABLE_END: &str = "<!-- supported-kernels:end -->";

fn write_readme_table(table: &str) -> Result<()> {
    let path = crate::workspace_root().join("README.md");
    let text = std::fs::read_to_string(&path)?;
    let (Some(a), Some(b)) = (text.find(TABLE_START), text.find(TABLE_END)) else {
        bail!("README.md has no {TABLE_START} … {TABLE_END} block");
    };
    let new = format!("{}{TABLE_START}\n{table}{}", &text[..a], &text[b..]);
    std::fs::write(&path, new)?;
    println!("README.md: supported-kernels table updated");
    Ok(())
}

/// One line: loaded or rejected, fixtures and namespace tests passed/failed.
pub fn summary(o: &Outcome) -> String {
    let count = |c: Option<(u32, u32)>| {
        c.map_or_else(|| "did not report".to_owned(), |(p, f)| format!("{p} passed, {f} failed"))
    };
    match &o.rejected {
        Some(why) => format!("REJECTED: {why}"),
        None => format!(
            "loaded; fixtures {}; namespace {}",
            o.fixtures_unsupported
                .as_ref()
                .map_or_else(|| count(o.fixtures), |why| format!("not runnable ({why})")),
            count(o.namespace)
        ),
    }
}

fn cache_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    let dir = base.join("sshlb").join("vm");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A private apt configuration over `suites` (its own lists and cache under `dir`), so kernels
/// of other releases can be fetched without touching the system's sources.
fn private_apt(dir: &Path, suites: &[&str]) -> Result<PathBuf> {
    for sub in ["lists/partial", "cache/archives/partial", "parts"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
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
    let fresh = dir.join("lists").read_dir().map(|d| d.count() > 1).unwrap_or(false);
    if !fresh {
        cmd::output(Command::new("apt-get").args(["-qq", "update"]).env("APT_CONFIG", &path))
            .context("updating the private package lists")?;
    }
    Ok(path)
}

/// QEMU 10 from bookworm-backports (bookworm's own 7.2 would remove the machine's qemu-utils).
fn ensure_qemu(root: &Path) -> Result<()> {
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
fn fetch_kernel(root: &Path, k: Kernel) -> Result<PathBuf> {
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
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            let suite = cols.get(2)?.split_whitespace().nth(1)?.split('/').next()?;
            (suite == k.suite()).then(|| cols[1].to_owned())
        })
        .next()
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

/// The test binaries the guest runs.
pub struct Guest {
    /// The BPF packet-fixture test binary (`sshlb-userspace/tests/fixtures`).
    fixtures: PathBuf,
    /// The namespace test binary (`tests/tests/balance.rs`: real TCP through the VIP, full NAT
    /// and DSR, IPv4 and IPv6, weighted spread, backend removal).
    namespace: PathBuf,
}

fn build_guest() -> Result<Guest> {
    Ok(Guest {
        fixtures: test_executable("sshlb-userspace", "fixtures")?,
        namespace: test_executable("sshlb-tests", "balance")?,
    })
}

/// Builds the integration test `test` of `package` and returns its executable.
fn test_executable(package: &str, test: &str) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let json = cmd::output(Command::new(&cargo).args([
        "test",
        "-p",
        package,
        "--test",
        test,
        "--no-run",
        "--message-format=json",
    ]))
    .with_context(|| format!("building the {test} tests"))?;
    json.lines()
        .filter(|l| l.contains(&format!("\"name\":\"{test}\"")))
        .filter_map(|l| l.split("\"executable\":\"").nth(1)?.split('"').next().map(PathBuf::from))
        .next_back()
        .with_context(|| format!("cargo named no executable for the {test} tests"))
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/sbin:/bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /run/netns /var
ln -s /run /var/run
for m in /lib/modules/*.ko; do insmod "$m"; done
ip link set lo up
echo "SSHLB-VM release $(uname -r)"
cd /tmp
SSHLB_REQUIRE_ROOT_TESTS=1 SSHLB_FIXTURES_ALLOW_OLD_KERNEL=1 RUST_BACKTRACE=0 /tests/fixtures --test-threads=1 2>&1
echo "SSHLB-VM fixtures-exit $?"
SSHLB_REQUIRE_ROOT_TESTS=1 RUST_BACKTRACE=0 /tests/namespace --test-threads=1 2>&1
echo "SSHLB-VM namespace-exit $?"
echo "SSHLB-VM done"
poweroff -f
"#;

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
fn boot(root: &Path, kdir: &Path, guest: &Guest, k: Kernel) -> Result<Outcome> {
    let kroot = kdir.join("root");
    let vmlinuz = find_file(&kroot, &|n| n.starts_with("vmlinuz"))
        .with_context(|| format!("no vmlinuz in {}", kroot.display()))?;
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
    // Modules the tests need that Debian builds as modules, in load order (absent = built in).
    for (i, module) in ["veth", "llc", "stp", "bridge"].iter().enumerate() {
        let found = find_file(&kroot, &|n| {
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

    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1536"])
        .args(["-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
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
    let console = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    Ok(parse_console(&console))
}

/// Reads a guest console: the markers the init script prints and the test harnesses' lines.
pub fn parse_console(console: &str) -> Outcome {
    let mut o = Outcome { console: console.to_owned(), ..Outcome::default() };
    let mut section = "";
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        // Markers may follow terminal escapes QEMU's firmware printed on the same line.
        if let Some(i) = line.find("SSHLB-VM release ") {
            o.release = line[i + "SSHLB-VM release ".len()..].trim().to_owned();
            section = "fixtures";
        } else if line.contains("SSHLB-VM fixtures-exit") {
            section = "namespace";
        } else if let Some(counts) = line.strip_prefix("test result: ") {
            let n = |word: &str| -> u32 {
                counts
                    .split(';')
                    .find_map(|part| part.trim().strip_suffix(word))
                    .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                    .unwrap_or(0)
            };
            let pair = Some((n(" passed"), n(" failed")));
            match section {
                "fixtures" => o.fixtures = pair,
                "namespace" => o.namespace = pair,
                _ => {}
            }
        }
        if let Some(i) = line.find("SSHLB-FIXTURES-UNSUPPORTED: ") {
            let why = line[i + "SSHLB-FIXTURES-UNSUPPORTED: ".len()..].trim().to_owned();
            o.fixtures_unsupported.get_or_insert(why);
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

/// The README's "Supported kernels" table from a full run.
pub fn readme_table(results: &[(Kernel, Outcome)], date: &str) -> String {
    let mut t = String::from("| kernel | Debian package | result | date |\n|---|---|---|---|\n");
    for (k, o) in results {
        let fixtures = match (&o.fixtures_unsupported, o.fixtures) {
            (Some(_), _) => {
                "not runnable here (test-run API has no xdp_md context before 5.13)".to_owned()
            }
            (None, Some((p, f))) => format!("{p}/{} passed", p + f),
            (None, None) => "did not report".to_owned(),
        };
        let namespace = o
            .namespace
            .map_or_else(|| "did not report".to_owned(), |(p, f)| format!("{p}/{} passed", p + f));
        let result = match &o.rejected {
            Some(_) => summary(o),
            None => format!(
                "{}: loads; fixtures {fixtures}; namespace tests {namespace}",
                if o.passed() { "**passes**" } else { "**FAILS**" }
            ),
        };
        let _ = writeln!(t, "| {} | {} | {} | {date} |", k.label(), o.release, result);
    }
    t
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
            "SSHLB-VM release 5.10.0-32-cloud-amd64\nSSHLB-FIXTURES-UNSUPPORTED: too old\n\
             test result: ok. 6 passed; 0 failed\nSSHLB-VM fixtures-exit 0\n\
             test result: ok. 2 passed; 0 failed\n",
        );
        assert_eq!(old.fixtures_unsupported.as_deref(), Some("too old"));
        assert!(old.passed(), "namespace tests alone carry a kernel that cannot run fixtures");
        assert!(summary(&old).contains("not runnable (too old)"));
    }

    #[test]
    fn depends_lists_package_names() {
        let show = "Package: linux-image-cloud-amd64\nDepends: linux-image-6.1.0-31-cloud-amd64 (= 6.1.128-1), foo\n";
        assert_eq!(depends(show), vec!["linux-image-6.1.0-31-cloud-amd64", "foo"]);
    }
}
