//! The Debian packages the tests, the lab, the benchmarks and the vm-test guests use: which are
//! installed (`dpkg-query`), and `apt-get install` of the missing ones (as root).

use std::{collections::BTreeMap, process::Command};

use anyhow::{bail, Context as _, Result};

use super::{Outcome, Report};
use crate::cmd;

/// Debian packages the tests, the lab and the benchmarks run.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",       // ip: namespaces, veths, addresses, routes
    "ethtool",        // veth TX checksum offload off (docs/toolchain.md, veth gotcha 1)
    "openssh-server", // sshd backends in the end-to-end tests
    "openssh-client", // ssh through the balancer
    "git",            // git over ssh through the balancer
    "bird2",          // BGP speaker of the HA lab: the router and every balancer announcing VIPs
    "keepalived",     // VRRP for the full-NAT active/standby pair
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
    "binutils",       // strip: the vm guests' binaries without their debug info
    "netbase",        // /etc/protocols, copied into the vm guests (iptables' `-p tcp`)
    "prometheus",     // promtool: checking and unit-testing contrib/prometheus's alert rules
    "systemd",        // systemd-analyze verify/security on the packaged sshlb@.service
    "man-db",         // man: the packaged man pages render (systemd-analyze checks Documentation=)
    "tmux",           // a real terminal for `sshlb-agent top`'s test (send-keys, capture-pane)
];

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

/// Records every package of [`DEBIAN_PACKAGES`]; installs the missing ones with apt-get (root
/// only: otherwise fails with the command to run).
pub fn ensure_packages(report: &mut Report) -> Result<()> {
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
}
