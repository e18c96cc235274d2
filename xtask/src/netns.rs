//! Network namespaces and veth pairs for throwaway topologies (`cargo xtask run`, later `lab`):
//! creating and addressing them, building commands that run inside them, and deleting them again.
//! Every `ip` and `ethtool` call xtask makes goes through here.

use std::{ffi::OsStr, path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// Where `ip netns add` bind-mounts named namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
const MAX_IFNAME: usize = 15;

/// A named network namespace created by xtask. Dropping it deletes the namespace (and with it
/// every interface inside, including its end of a veth pair), so an error or panic between
/// creation and teardown cannot leave it behind.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` with its loopback up. Fails if it already exists.
    pub fn create(name: &str) -> Result<Self> {
        validate_name(name)?;
        if list()?.iter().any(|existing| existing == name) {
            bail!("network namespace {name} already exists");
        }
        cmd::output(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        let netns = Self { name: name.to_owned() };
        netns.link_up("lo")?;
        Ok(netns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, for `nsenter --net=` and `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// `ip -n <ns> <args>`, run silently.
    pub fn ip<I, S>(&self, args: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        cmd::output(Command::new("ip").arg("-n").arg(&self.name).args(args)).map(drop)
    }

    /// A command that runs `program` inside the namespace with `ip netns exec`. That also gives it
    /// a private mount namespace with a fresh sysfs, which hides `/sys/fs/bpf`: fine for tools,
    /// wrong for the agent (use [`Netns::enter_net`]).
    pub fn exec(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec"]).arg(&self.name).arg(program);
        command
    }

    /// A command that runs `program` in the namespace's network stack only
    /// (`nsenter --net=/run/netns/<ns>`), so `/sys/fs/bpf` and the pins made there stay the host's.
    pub fn enter_net(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net={}", self.path().display())).arg(program);
        command
    }

    /// Sets interface `dev` up.
    pub fn link_up(&self, dev: &str) -> Result<()> {
        self.ip(["link", "set", dev, "up"])
            .with_context(|| format!("setting {dev} up in namespace {}", self.name))
    }

    /// Adds address `cidr` (`198.18.0.1/24`, `fd00:5:1::1/64`) to `dev`. IPv6 addresses skip
    /// duplicate address detection so they are usable at once (the namespace is ours alone).
    pub fn add_addr(&self, dev: &str, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(args).with_context(|| format!("adding {cidr} to {dev} in namespace {}", self.name))
    }

    /// Whether an XDP program (native or generic) is attached to `dev`.
    pub fn xdp_attached(&self, dev: &str) -> Result<bool> {
        let link = cmd::output(
            Command::new("ip").arg("-n").arg(&self.name).args(["-details", "link", "show", dev]),
        )?;
        Ok(link.contains("prog/xdp"))
    }

    /// Turns TX checksum offload off on `dev`: an XDP redirect or XDP_TX loses a veth's partial
    /// checksum state and the receiver drops the segment (toolchain.md, veth gotcha 1).
    pub fn tx_offload_off(&self, dev: &str) -> Result<()> {
        cmd::output(self.exec("ethtool").args(["-K", dev, "tx", "off"]))
            .map(drop)
            .with_context(|| format!("turning TX offload off on {dev} in namespace {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = delete(&self.name) {
            eprintln!("xtask: warning: {err:#}");
        }
    }
}

/// Deletes namespace `name` (for namespaces no [`Netns`] owns, e.g. left by a killed process).
pub fn delete(name: &str) -> Result<()> {
    cmd::output(Command::new("ip").args(["netns", "del", name]))
        .map(drop)
        .with_context(|| format!("deleting network namespace {name}"))
}

/// Creates a veth pair: `a_dev` in `a` and its peer `b_dev` in `b`. Created inside the
/// namespaces directly, so the names cannot clash with interfaces of the host.
pub fn add_veth_pair(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> Result<()> {
    for dev in [a_dev, b_dev] {
        validate_ifname(dev)?;
    }
    a.ip(["link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b.name()])
        .with_context(|| format!("creating veth {}:{a_dev} <-> {}:{b_dev}", a.name(), b.name()))
}

/// Names of the existing named network namespaces (`ip netns list`).
pub fn list() -> Result<Vec<String>> {
    let out = cmd::output(Command::new("ip").args(["netns", "list"]))?;
    Ok(parse_list(&out))
}

/// Namespace names from `ip netns list` output (`name` or `name (id: 3)` per line).
fn parse_list(output: &str) -> Vec<String> {
    output.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_owned).collect()
}

/// A namespace name is a file name under [`NETNS_DIR`]: no slashes, no dots-only, no spaces.
fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        bail!("invalid network namespace name {name:?}: use letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// An interface name fits `IFNAMSIZ` and has no characters the kernel refuses.
fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name.chars().all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
    if !ok {
        bail!("invalid interface name {name:?}: at most {MAX_IFNAME} characters, no '/' or ':'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_netns_list_with_and_without_ids() {
        let out = "sshlb-run-client-42 (id: 1)\nsshlb-run-lb-42 (id: 0)\nplain\n\n";
        assert_eq!(parse_list(out), ["sshlb-run-client-42", "sshlb-run-lb-42", "plain"]);
        assert!(parse_list("").is_empty());
    }

    #[test]
    fn validates_namespace_and_interface_names() {
        validate_name("sshlb-run-lb-4242").expect("plain name is valid");
        for bad in ["", "..", "a/b", "has space"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        validate_ifname("lb0").expect("lb0 is valid");
        validate_ifname("fifteen-chars-x").expect("15 characters fit");
        for bad in ["", "sixteen-chars-xx", "a/b", "a:b", "a b"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn commands_enter_the_namespace_the_intended_way() {
        let netns = Netns { name: "sshlb-test-ns".into() };
        let agent = netns.enter_net("/bin/agent");
        assert_eq!(cmd::display(&agent), "nsenter --net=/run/netns/sshlb-test-ns /bin/agent");
        let tool = netns.exec("ethtool");
        assert_eq!(cmd::display(&tool), "ip netns exec sshlb-test-ns ethtool");
        // Not created by this test: nothing to delete.
        std::mem::forget(netns);
    }
}
