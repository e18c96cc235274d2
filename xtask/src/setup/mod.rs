//! `cargo xtask setup`: checks for, and installs where it can, everything a fresh Debian 12 machine
//! needs to build, lint and test sshlb — the rustup toolchains and components, `bpf-linker` built
//! against the nightly's own libLLVM (recipe in `shared/notes/toolchain.md`), and the Debian
//! packages the tests and the lab use. Idempotent, and fast when everything is there: it only
//! asks `rustup`, `dpkg-query` and `bpf-linker` questions unless something is missing.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// The channel that builds the BPF crate (`-Z build-std=core`). Always this undated name: a dated
/// nightly is not installed on these machines and cannot be fetched (`RUSTUP_AUTO_INSTALL=0`).
pub const NIGHTLY: &str = "nightly";
/// The channel that builds every host crate.
const STABLE: &str = "stable";
/// The bpf-linker release that links with rustc's LLVM 22 (toolchain.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Rustup components as (toolchain, component): `rust-src` for `-Z build-std=core`, clippy and
/// rustfmt for the lint steps of `cargo xtask test` (clippy on nightly lints the BPF crate).
const FULL_COMPONENTS: &[(&str, &str)] =
    &[(NIGHTLY, "rust-src"), (STABLE, "clippy"), (STABLE, "rustfmt"), (NIGHTLY, "clippy")];
/// The components the BPF build itself needs.
const BPF_COMPONENTS: &[(&str, &str)] = &[(NIGHTLY, "rust-src")];

/// Debian packages the tests, the lab and the benchmarks run.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",       // ip: namespaces, veths, addresses, routes
    "ethtool",        // veth TX checksum offload off (toolchain.md, veth gotcha 1)
    "openssh-server", // sshd backends in the end-to-end tests
    "openssh-client", // ssh through the balancer
    "git",            // git over ssh through the balancer
    "haproxy",        // the baseline balancer the benchmarks compare against
    "iperf3",         // throughput benchmarks
    "bpftool",        // inspecting programs, maps and per-program run time
    "iptables",       // firewall/NAT rules in the lab topologies
    "tcpdump",        // packet captures when a test fails
    "procps",         // sysctl, ps
    "psmisc",         // fuser, pstree
    "iputils-ping",   // ping in `cargo xtask run`'s traffic generator (not on a fresh machine)
    "busybox-static", // the vm-test guests' /init and tools
    "xz-utils",       // decompressing newer kernels' modules for the vm-test guests
];

/// Whether a missing piece is installed or only reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Install what is missing (`cargo xtask setup`).
    Install,
    /// Fail naming what is missing (`cargo xtask build`).
    CheckOnly,
}

/// What setup found or did for one piece.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Present before setup ran; carries its version.
    AlreadyThere(String),
    /// Installed by this run; carries its version.
    Installed(String),
}

/// The pieces setup looked at, in order, each printed as it is recorded.
#[derive(Debug, Default)]
pub struct Report {
    pieces: Vec<(String, Outcome)>,
}

impl Report {
    fn record(&mut self, piece: impl Into<String>, outcome: Outcome) {
        let piece = piece.into();
        println!("{}", piece_line(&piece, &outcome));
        self.pieces.push((piece, outcome));
    }

    /// One line saying how many pieces were checked, which were installed, and how long it took.
    pub fn summary(&self, elapsed: Duration) -> String {
        let installed: Vec<&str> = self
            .pieces
            .iter()
            .filter(|(_, outcome)| matches!(outcome, Outcome::Installed(_)))
            .map(|(piece, _)| piece.as_str())
            .collect();
        let total = self.pieces.len();
        let secs = elapsed.as_secs_f64();
        if installed.is_empty() {
            format!("setup: ready, all {total} pieces already there ({secs:.1} s)")
        } else {
            format!(
                "setup: ready, {} already there, {} installed: {} ({secs:.1} s)",
                total - installed.len(),
                installed.len(),
                installed.join(", ")
            )
        }
    }
}

fn piece_line(piece: &str, outcome: &Outcome) -> String {
    match outcome {
        Outcome::AlreadyThere(version) => format!("already there: {piece} ({version})"),
        Outcome::Installed(version) if version.is_empty() => format!("installed: {piece}"),
        Outcome::Installed(version) => format!("installed: {piece} ({version})"),
    }
}

/// `cargo xtask setup`: checks every piece, installs what is missing, prints one line per piece
/// and a summary. Fails naming the piece that is missing and cannot be installed.
pub fn setup() -> Result<Report> {
    let started = Instant::now();
    let mut report = Report::default();
    let toolchains = ensure_toolchains(&mut report, &[STABLE, NIGHTLY])?;
    ensure_components(&mut report, Mode::Install, FULL_COMPONENTS, &toolchains)?;
    ensure_bpf_linker(&mut report, Mode::Install, &toolchains[NIGHTLY])?;
    ensure_packages(&mut report)?;
    println!("{}", report.summary(started.elapsed()));
    Ok(report)
}

/// Checks, without installing anything, that the BPF crate can be built: the nightly toolchain,
/// its `rust-src`, and a working `bpf-linker`. Fails naming what is missing.
pub fn check_bpf_toolchain() -> Result<()> {
    let mut report = Report::default();
    let toolchains = ensure_toolchains(&mut report, &[NIGHTLY])?;
    ensure_components(&mut report, Mode::CheckOnly, BPF_COMPONENTS, &toolchains)?;
    ensure_bpf_linker(&mut report, Mode::CheckOnly, &toolchains[NIGHTLY])
}

/// A toolchain's compiler, from `rustc -vV`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RustcVersion {
    /// `release:` line, e.g. `1.97.0-nightly`.
    release: String,
    /// `LLVM version:` line, e.g. `22.1.4`.
    llvm: String,
    /// `host:` line, e.g. `x86_64-unknown-linux-gnu`: the suffix of target-specific components.
    host: String,
}

impl RustcVersion {
    fn parse(verbose_version: &str) -> Option<Self> {
        let field = |name: &str| {
            verbose_version
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|value| value.trim().to_owned())
        };
        Some(Self {
            release: field("release:")?,
            llvm: field("LLVM version:")?,
            host: field("host:")?,
        })
    }

    /// The LLVM major version (`22` for `22.1.4`): selects bpf-linker's `llvm-N` feature.
    fn llvm_major(&self) -> Option<u32> {
        self.llvm.split('.').next()?.parse().ok()
    }
}

/// Whether `rustup toolchain list` output has the undated `channel` toolchain for some host
/// (`nightly-x86_64-unknown-linux-gnu`), not just a dated one (`nightly-2026-05-19-...`).
fn toolchain_listed(list: &str, channel: &str) -> bool {
    list.lines().filter_map(|line| line.split_whitespace().next()).any(|name| {
        name == channel
            || name
                .strip_prefix(channel)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|host| host.starts_with(|c: char| !c.is_ascii_digit()))
    })
}

fn ensure_toolchains(
    report: &mut Report,
    channels: &[&'static str],
) -> Result<BTreeMap<&'static str, RustcVersion>> {
    let list = cmd::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage the toolchains; install it from https://rustup.rs")?;
    let mut versions = BTreeMap::new();
    for &channel in channels {
        if !toolchain_listed(&list, channel) {
            bail!(
                "the rustup toolchain `{channel}` is missing; setup does not install toolchains \
                 (use the undated channel name, not a dated one): run `rustup toolchain install \
                 {channel} --profile minimal`, then `cargo xtask setup` again"
            );
        }
        let verbose = cmd::output(Command::new("rustup").args(["run", channel, "rustc", "-vV"]))
            .with_context(|| format!("the `{channel}` toolchain's rustc does not run"))?;
        let version = RustcVersion::parse(&verbose).with_context(|| {
            format!("unexpected `rustc -vV` output from the `{channel}` toolchain:\n{verbose}")
        })?;
        report.record(
            format!("{channel} toolchain"),
            Outcome::AlreadyThere(format!("rustc {}, LLVM {}", version.release, version.llvm)),
        );
        versions.insert(channel, version);
    }
    Ok(versions)
}

/// Whether `rustup component list --installed` output has `component`, listed with the
/// toolchain's `host` (`clippy-x86_64-unknown-linux-gnu`) or bare (`rust-src`).
fn component_installed(list: &str, component: &str, host: &str) -> bool {
    let with_host = format!("{component}-{host}");
    list.lines().map(str::trim).any(|line| line == component || line == with_host)
}

fn ensure_components(
    report: &mut Report,
    mode: Mode,
    wanted: &[(&'static str, &str)],
    toolchains: &BTreeMap<&'static str, RustcVersion>,
) -> Result<()> {
    let mut installed_lists: BTreeMap<&str, String> = BTreeMap::new();
    for &(toolchain, component) in wanted {
        let list = match installed_lists.get(toolchain) {
            Some(list) => list,
            None => {
                let list = cmd::output(Command::new("rustup").args([
                    "component",
                    "list",
                    "--toolchain",
                    toolchain,
                    "--installed",
                ]))?;
                installed_lists.entry(toolchain).or_insert(list)
            }
        };
        let piece = format!("{component} for {toolchain}");
        let rustc = &toolchains[toolchain];
        let version = rustc.release.clone();
        if component_installed(list, component, &rustc.host) {
            report.record(piece, Outcome::AlreadyThere(version));
            continue;
        }
        if mode == Mode::CheckOnly {
            bail!("{piece} is missing; `cargo xtask setup` installs it");
        }
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            component,
            "--toolchain",
            toolchain,
        ]))
        .with_context(|| format!("could not install {piece}"))?;
        report.record(piece, Outcome::Installed(version));
    }
    Ok(())
}

/// The version in `bpf-linker --version` output (`bpf-linker 0.13.0`).
fn parse_bpf_linker_version(output: &str) -> Option<&str> {
    output.trim().strip_prefix("bpf-linker")?.split_whitespace().next()
}

fn ensure_bpf_linker(report: &mut Report, mode: Mode, nightly: &RustcVersion) -> Result<()> {
    const PIECE: &str = "bpf-linker";
    // Present only if it runs: its RUNPATH points at the nightly's lib dir, so a changed nightly
    // leaves a binary that cannot load its libLLVM.
    let found = cmd::probe(Command::new(PIECE).arg("--version"));
    let why = match found.as_deref().map(parse_bpf_linker_version) {
        Some(Some(version)) if version == BPF_LINKER_VERSION => {
            report.record(PIECE, Outcome::AlreadyThere(version.to_owned()));
            return Ok(());
        }
        Some(Some(version)) => {
            format!("bpf-linker {version} is on PATH, sshlb needs {BPF_LINKER_VERSION}")
        }
        Some(None) => "`bpf-linker --version` printed something unexpected".to_owned(),
        None => "bpf-linker is not on PATH or does not run (a bpf-linker built against an \
                 older nightly cannot load its libLLVM)"
            .to_owned(),
    };
    if mode == Mode::CheckOnly {
        bail!("{why}; `cargo xtask setup` builds bpf-linker {BPF_LINKER_VERSION}");
    }
    println!("{why}: building bpf-linker {BPF_LINKER_VERSION} against the nightly's libLLVM");
    install_bpf_linker(nightly).context("could not install bpf-linker")?;
    let after = cmd::output(Command::new(PIECE).arg("--version")).context(
        "bpf-linker was installed but does not run from PATH; is $CARGO_HOME/bin \
         (usually ~/.cargo/bin) on PATH?",
    )?;
    let version = parse_bpf_linker_version(&after).unwrap_or(after.trim()).to_owned();
    report.record(PIECE, Outcome::Installed(version));
    Ok(())
}

/// The nightly's shared libLLVM among the file names of its `lib` dir
/// (`libLLVM.so.22.1-rust-1.97.0-nightly`), as toolchain.md's `ls libLLVM.so.*-rust-*` picks it.
fn find_libllvm<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names
        .into_iter()
        .filter(|name| name.starts_with("libLLVM.so.") && name.contains("-rust-"))
        .min()
}

/// toolchain.md's recipe: link bpf-linker against the nightly toolchain's own libLLVM through a
/// `libLLVM.so` symlink in a temporary directory.
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

/// Installed packages and their versions from
/// `dpkg-query -W -f='${Package}\t${Status}\t${Version}\n'`; packages in any other state (removed,
/// config files only, half-installed) are left out.
fn parse_dpkg_query(output: &str) -> BTreeMap<&str, &str> {
    output
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let package = fields.next()?;
            let status = fields.next()?;
            let version = fields.next().unwrap_or("");
            let package = package.split(':').next().unwrap_or(package);
            (status == "install ok installed").then_some((package, version))
        })
        .collect()
}

/// The packages of `wanted` that are not in `installed`, in `wanted`'s order.
fn missing_packages<'a>(installed: &BTreeMap<&str, &str>, wanted: &[&'a str]) -> Vec<&'a str> {
    wanted.iter().copied().filter(|package| !installed.contains_key(package)).collect()
}

const DPKG_FORMAT: &str = "${Package}\t${Status}\t${Version}\n";

fn installed_packages() -> Result<String> {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f", DPKG_FORMAT])).with_context(|| {
        format!(
            "setup supports Debian 12 (dpkg); on another system install these yourself: {}",
            DEBIAN_PACKAGES.join(" ")
        )
    })
}

fn ensure_packages(report: &mut Report) -> Result<()> {
    let before = installed_packages()?;
    let installed = parse_dpkg_query(&before);
    let missing = missing_packages(&installed, DEBIAN_PACKAGES);
    for package in DEBIAN_PACKAGES.iter().filter(|p| !missing.contains(p)) {
        report.record(*package, Outcome::AlreadyThere(installed[package].to_owned()));
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !crate::is_root() {
        bail!(
            "missing Debian packages: {list}. Installing them needs root: run `cargo xtask setup` \
             as root, or `apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
             --no-install-recommends {list}` as root"
        );
    }
    println!("missing Debian packages: {list}");
    cmd::run(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("could not install Debian packages: {list}"))?;

    let after = installed_packages()?;
    let installed = parse_dpkg_query(&after);
    let still_missing = missing_packages(&installed, &missing);
    if !still_missing.is_empty() {
        bail!("apt-get finished but these packages are still not installed: {still_missing:?}");
    }
    for package in &missing {
        report.record(*package, Outcome::Installed(installed[package].to_owned()));
    }
    if missing.contains(&"haproxy") {
        note_haproxy_service();
    }
    Ok(())
}

/// Debian starts and enables `haproxy.service` on install where systemd runs. The lab starts its
/// own haproxy instances on other addresses, so it may stay; say so instead of surprising anyone.
/// Plain containers have no systemd, which is fine too.
fn note_haproxy_service() {
    let active = cmd::probe(Command::new("systemctl").args(["is-active", "--quiet", "haproxy"]));
    if active.is_some() {
        println!(
            "note: Debian started haproxy.service; sshlb's lab runs its own haproxy instances and \
             does not need it (`systemctl disable --now haproxy` stops it)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rustc_verbose_version() {
        let text = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
                    host: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        let version = RustcVersion::parse(text).expect("complete -vV output");
        assert_eq!(version.release, "1.97.0-nightly");
        assert_eq!(version.llvm, "22.1.4");
        assert_eq!(version.llvm_major(), Some(22));
        assert_eq!(version.host, "x86_64-unknown-linux-gnu");
        assert_eq!(RustcVersion::parse("rustc 1.95.0\n"), None, "no release line");
    }

    #[test]
    fn toolchain_listed_wants_the_undated_channel() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-2026-05-19-x86_64-unknown-linux-gnu\n\
                    1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(toolchain_listed(list, "stable"));
        assert!(!toolchain_listed(list, "nightly"), "a dated nightly is not `nightly`");
        assert!(toolchain_listed("nightly-aarch64-unknown-linux-gnu\n", "nightly"));
        assert!(!toolchain_listed("no installed toolchains\n", "nightly"));
    }

    #[test]
    fn component_installed_matches_with_or_without_target() {
        let list = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrust-src\n\
                    rust-std-x86_64-unknown-linux-gnu\n";
        let host = "x86_64-unknown-linux-gnu";
        assert!(component_installed(list, "clippy", host));
        assert!(component_installed(list, "rust-src", host));
        assert!(!component_installed(list, "rustfmt", host));
        assert!(!component_installed(list, "rust", host), "rust-src/rust-std are not rust");
        assert!(!component_installed(list, "clippy", "aarch64-unknown-linux-gnu"));
    }

    #[test]
    fn parses_bpf_linker_version() {
        assert_eq!(parse_bpf_linker_version("bpf-linker 0.13.0\n"), Some("0.13.0"));
        assert_eq!(parse_bpf_linker_version("something else"), None);
    }

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

    #[test]
    fn dpkg_query_parsing_keeps_only_installed_packages() {
        let out = "iproute2\tinstall ok installed\t6.1.0-3\n\
                   haproxy\tdeinstall ok config-files\t2.6.12-1\n\
                   libc6:amd64\tinstall ok installed\t2.36-9\n\
                   garbage line\n";
        let installed = parse_dpkg_query(out);
        assert_eq!(installed.get("iproute2"), Some(&"6.1.0-3"));
        assert_eq!(installed.get("libc6"), Some(&"2.36-9"), "architecture suffix dropped");
        assert!(!installed.contains_key("haproxy"), "config files only is not installed");
        assert_eq!(
            missing_packages(&installed, &["haproxy", "iproute2", "iptables"]),
            ["haproxy", "iptables"]
        );
    }

    #[test]
    fn package_list_has_no_duplicates_and_covers_the_brief() {
        use std::collections::BTreeSet;
        let unique: BTreeSet<_> = DEBIAN_PACKAGES.iter().collect();
        assert_eq!(unique.len(), DEBIAN_PACKAGES.len(), "duplicate in DEBIAN_PACKAGES");
        for package in ["iproute2", "ethtool", "openssh-server", "bpftool", "haproxy", "psmisc"] {
            assert!(DEBIAN_PACKAGES.contains(&package), "{package} missing");
        }
    }

    #[test]
    fn lines_and_summary_read_as_documented() {
        let version = |v: &str| v.to_owned();
        assert_eq!(
            piece_line("iproute2", &Outcome::AlreadyThere(version("6.1.0-3"))),
            "already there: iproute2 (6.1.0-3)"
        );
        assert_eq!(
            piece_line("iptables", &Outcome::Installed(String::new())),
            "installed: iptables"
        );
        let mut report = Report::default();
        report.pieces.push(("git".into(), Outcome::AlreadyThere(version("2.39"))));
        report.pieces.push(("tcpdump".into(), Outcome::AlreadyThere(version("4.99"))));
        assert_eq!(
            report.summary(Duration::from_millis(420)),
            "setup: ready, all 2 pieces already there (0.4 s)"
        );
        report.pieces.push(("iptables".into(), Outcome::Installed(version("1.8.9-2"))));
        assert_eq!(
            report.summary(Duration::from_secs(31)),
            "setup: ready, 2 already there, 1 installed: iptables (31.0 s)"
        );
    }
}
