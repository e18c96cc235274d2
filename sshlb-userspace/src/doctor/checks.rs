//! The checks as decisions over gathered [`Facts`] (sans-IO): each names what it looked at,
//! its [`Level`], what it found and, unless it passed, the fix.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::loader::AttachMode;

/// The largest MTU native XDP takes without multi-buffer support with 4 KiB pages: a frame
/// and its headroom (256 B) and `skb_shared_info` (320 B) must fit in one page (veth's own
/// limit is 3506; drivers differ by a few bytes, this is the common lower bound).
pub const MAX_NATIVE_MTU: u32 = 3498;

/// The oldest kernel the data plane loads on (the vm-test matrix: 5.10, 6.1, 6.12, 7).
pub const OLDEST_KERNEL: (u32, u32) = (5, 10);

/// What the checks look at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// `uname -r`.
    pub kernel: String,
    /// Whether `/sys/kernel/btf/vmlinux` exists.
    pub btf: bool,
    /// Whether the pin root's parent is a mounted BPF filesystem.
    pub bpffs: bool,
    /// The pin root's parent (for the message).
    pub bpffs_path: String,
    /// The interface; `None` when there is no interface of that name here.
    pub iface: Option<IfaceFacts>,
    /// The interface's name as asked.
    pub iface_name: String,
}

/// What the checks know about the interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IfaceFacts {
    /// Driver (`ethtool -i`); `None` when the driver does not say.
    pub driver: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// Large receive offload on (`None`: the driver does not say).
    pub lro: Option<bool>,
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Pass,
    /// Works, but something will likely go wrong (or was not checked).
    Warn,
    /// Will not work: `up` refuses.
    Fail,
}

impl Level {
    /// The word printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        }
    }
}

/// One check's outcome (`doctor --json` prints a list of these; fields are only ever added).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked (`kernel`, `btf`, `bpffs`, `interface`, `veth`, `mtu`, `lro`).
    pub name: String,
    /// Pass, warn or fail.
    pub level: Level,
    /// What was found.
    pub found: String,
    /// What to do about it (none when it passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(name: &str, level: Level, found: String, fix: Option<String>) -> Self {
        Self { name: name.to_owned(), level, found, fix }
    }
}

/// All the checks' outcomes, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The interface checked.
    pub interface: String,
    /// The attach mode checked for.
    pub mode: String,
    /// One per check.
    pub checks: Vec<Check>,
}

impl Report {
    /// The failed checks, as `up` refuses with them: `"name: found; fix"` each.
    pub fn fatal(&self) -> Option<String> {
        let failed: Vec<String> =
            self.checks.iter().filter(|c| c.level == Level::Fail).map(Check::line).collect();
        (!failed.is_empty()).then(|| failed.join("\n"))
    }

    /// The warnings, one line each.
    pub fn warnings(&self) -> Vec<String> {
        self.checks.iter().filter(|c| c.level == Level::Warn).map(Check::line).collect()
    }

    /// The worst level found.
    pub fn worst(&self) -> Level {
        self.checks.iter().map(|c| c.level).max().unwrap_or(Level::Pass)
    }

    /// The table for people.
    pub fn render(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = format!("sshlb doctor: {} ({} XDP)\n", self.interface, self.mode);
        for c in &self.checks {
            let _ = writeln!(out, "{:<4}  {:<width$}  {}", c.level.as_str(), c.name, c.found);
            if let Some(fix) = &c.fix {
                let _ = writeln!(out, "{:<4}  {:<width$}  fix: {fix}", "", "");
            }
        }
        let (fails, warns) = (
            self.checks.iter().filter(|c| c.level == Level::Fail).count(),
            self.checks.iter().filter(|c| c.level == Level::Warn).count(),
        );
        let _ = writeln!(out, "{fails} failed, {warns} warning(s), {} check(s)", self.checks.len());
        out
    }
}

impl Check {
    /// `"name: found; fix"`.
    pub fn line(&self) -> String {
        match &self.fix {
            Some(fix) => format!("{}: {}; {fix}", self.name, self.found),
            None => format!("{}: {}", self.name, self.found),
        }
    }
}

/// `"6.18.0-1-amd64"` → `(6, 18)`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The configuration's checks: it parses (`config` is the parse result, its error text
/// otherwise), and its full-NAT port range stays clear of the kernel's ephemeral range
/// (`local_port_range` as /proc/sys/net/ipv4/ip_local_port_range reads).
pub fn config_checks(
    path: &str,
    config: Result<&crate::config::Config, &str>,
    local_port_range: &str,
) -> Vec<Check> {
    match config {
        Err(why) => vec![Check::new(
            "config",
            Level::Fail,
            why.to_owned(),
            Some(format!("fix {path} (`sshlb-agent check-config {path}`)")),
        )],
        Ok(config) => {
            let mut checks = vec![Check::new(
                "config",
                Level::Pass,
                format!("{path}: {} service(s)", config.services.len()),
                None,
            )];
            let overlap =
                crate::daemon::port_range_overlap(config.agent.nat_ports, local_port_range);
            checks.push(match overlap {
                Some(warning) => Check::new(
                    "nat-ports",
                    Level::Warn,
                    warning,
                    Some("set agent.nat-ports below 32768 (default 10000-32767)".to_owned()),
                ),
                None => Check::new(
                    "nat-ports",
                    Level::Pass,
                    format!(
                        "agent.nat-ports {}-{} clear of the ephemeral range",
                        config.agent.nat_ports.0, config.agent.nat_ports.1
                    ),
                    None,
                ),
            });
            checks
        }
    }
}

/// Every check for attaching to the interface of `facts` in `mode`.
pub fn check(facts: &Facts, mode: AttachMode) -> Report {
    let native = mode == AttachMode::Native;
    let mode = if native { "native" } else { "generic" };
    let iface = &facts.iface_name;
    let mut checks = Vec::new();
    checks.push(match kernel_version(&facts.kernel) {
        Some(v) if v >= OLDEST_KERNEL => Check::new(
            "kernel",
            Level::Pass,
            format!("Linux {} (5.10 or newer; tested: 5.10, 6.1, 6.12, 7)", facts.kernel),
            None,
        ),
        Some(_) => Check::new(
            "kernel",
            Level::Fail,
            format!(
                "Linux {} is older than 5.10, where the data plane does not load",
                facts.kernel
            ),
            Some("run sshlb on Linux 5.10 or newer".to_owned()),
        ),
        None => Check::new(
            "kernel",
            Level::Warn,
            format!("kernel release {:?} not understood", facts.kernel),
            Some("check that this is Linux 5.10 or newer".to_owned()),
        ),
    });
    checks.push(if facts.btf {
        Check::new("btf", Level::Pass, "/sys/kernel/btf/vmlinux present".to_owned(), None)
    } else {
        Check::new(
            "btf",
            Level::Warn,
            "no /sys/kernel/btf/vmlinux: the kernel has no BTF".to_owned(),
            Some(
                "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's are); tools such as \
                 bpftool show less without it"
                    .to_owned(),
            ),
        )
    });
    checks.push(if facts.bpffs {
        Check::new(
            "bpffs",
            Level::Pass,
            format!("BPF filesystem mounted at {}", facts.bpffs_path),
            None,
        )
    } else {
        Check::new(
            "bpffs",
            Level::Warn,
            format!("no BPF filesystem at {}", facts.bpffs_path),
            Some(format!(
                "`up` mounts it; to keep pins across reboots' early boot add \
                 `bpffs {} bpf defaults 0 0` to /etc/fstab",
                facts.bpffs_path
            )),
        )
    });
    let Some(dev) = &facts.iface else {
        checks.push(Check::new(
            "interface",
            Level::Fail,
            format!("no such interface: {iface:?} in this network namespace"),
            Some("name an existing interface (`ip link`)".to_owned()),
        ));
        return Report { interface: iface.clone(), mode: mode.to_owned(), checks };
    };
    let driver = dev.driver.as_deref().unwrap_or("unknown");
    checks.push(Check::new(
        "interface",
        Level::Pass,
        format!("{iface}: driver {driver}, MTU {}", dev.mtu),
        None,
    ));
    if dev.driver.as_deref() == Some("veth") {
        checks.push(if native {
            Check::new(
                "veth",
                Level::Warn,
                format!(
                    "{iface} is a veth in native mode: the frames sshlb sends back out of it \
                     (XDP_TX) reach its peer only when the peer runs an XDP program, otherwise \
                     they vanish without a counter"
                ),
                Some(format!(
                    "attach an XDP_PASS program to the peer (`sshlb-agent xdp-pass PEER` in the \
                     peer's namespace), or run `up {iface} --xdp-mode generic`"
                )),
            )
        } else {
            Check::new("veth", Level::Pass, format!("{iface} is a veth in generic mode"), None)
        });
    }
    checks.push(if native && dev.mtu > MAX_NATIVE_MTU {
        Check::new(
            "mtu",
            Level::Fail,
            format!(
                "MTU {} is larger than native XDP takes without multi-buffer ({MAX_NATIVE_MTU} \
                 with 4 KiB pages): the attach fails or large frames are dropped",
                dev.mtu
            ),
            Some(format!(
                "`ip link set {iface} mtu {MAX_NATIVE_MTU}` (or lower), or `--xdp-mode generic`"
            )),
        )
    } else {
        Check::new("mtu", Level::Pass, format!("MTU {} fits {mode} XDP", dev.mtu), None)
    });
    checks.push(match dev.lro {
        Some(true) if native => Check::new(
            "lro",
            Level::Fail,
            format!("large receive offload is on for {iface}: native XDP refuses merged frames"),
            Some(format!("`ethtool -K {iface} lro off`")),
        ),
        Some(true) => Check::new(
            "lro",
            Level::Warn,
            format!("large receive offload is on for {iface} (generic mode turns it off)"),
            Some(format!("`ethtool -K {iface} lro off` to keep it off after sshlb")),
        ),
        Some(false) => Check::new("lro", Level::Pass, "large receive offload off".to_owned(), None),
        None => Check::new(
            "lro",
            Level::Pass,
            "the driver has no large receive offload".to_owned(),
            None,
        ),
    });
    Report { interface: iface.clone(), mode: mode.to_owned(), checks }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Facts {
        Facts {
            kernel: "6.18.0-1-amd64".into(),
            btf: true,
            bpffs: true,
            bpffs_path: "/sys/fs/bpf".into(),
            iface: Some(IfaceFacts { driver: Some("ixgbe".into()), mtu: 1500, lro: Some(false) }),
            iface_name: "eth0".into(),
        }
    }

    fn level(report: &Report, name: &str) -> Level {
        report.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no {name}")).level
    }

    #[test]
    fn a_good_host_passes_everything() {
        let report = check(&good(), AttachMode::Native);
        assert_eq!(report.worst(), Level::Pass, "{}", report.render());
        assert_eq!(report.fatal(), None);
        let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["kernel", "btf", "bpffs", "interface", "mtu", "lro"]);
    }

    #[test]
    fn each_broken_fact_fails_or_warns_with_its_fix() {
        /// (check, how the facts are broken, mode, expected level, words of the fix).
        type Case = (&'static str, fn(&mut Facts), AttachMode, Level, &'static str);
        let cases: [Case; 9] = [
            (
                "kernel",
                |f| f.kernel = "4.19.0-27-amd64".into(),
                AttachMode::Native,
                Level::Fail,
                "Linux 5.10 or newer",
            ),
            ("kernel", |f| f.kernel = "weird".into(), AttachMode::Native, Level::Warn, "5.10"),
            ("btf", |f| f.btf = false, AttachMode::Native, Level::Warn, "CONFIG_DEBUG_INFO_BTF"),
            ("bpffs", |f| f.bpffs = false, AttachMode::Native, Level::Warn, "/etc/fstab"),
            ("interface", |f| f.iface = None, AttachMode::Native, Level::Fail, "ip link"),
            (
                "mtu",
                |f| f.iface.as_mut().expect("iface").mtu = 9000,
                AttachMode::Native,
                Level::Fail,
                "mtu 3498",
            ),
            (
                "lro",
                |f| f.iface.as_mut().expect("iface").lro = Some(true),
                AttachMode::Native,
                Level::Fail,
                "lro off",
            ),
            (
                "lro",
                |f| f.iface.as_mut().expect("iface").lro = Some(true),
                AttachMode::Generic,
                Level::Warn,
                "lro off",
            ),
            (
                "veth",
                |f| f.iface.as_mut().expect("iface").driver = Some("veth".into()),
                AttachMode::Native,
                Level::Warn,
                "xdp-pass PEER",
            ),
        ];
        for (name, breaks, mode, want, fix) in cases {
            let mut facts = good();
            breaks(&mut facts);
            let report = check(&facts, mode);
            let c = report.checks.iter().find(|c| c.name == name).expect("the check");
            assert_eq!(c.level, want, "{name}: {}", report.render());
            assert!(c.fix.as_deref().is_some_and(|f| f.contains(fix)), "{name}: {c:?}");
            assert_eq!(report.fatal().is_some(), want == Level::Fail, "{name}");
        }
    }

    #[test]
    fn generic_mode_takes_what_native_refuses() {
        let mut facts = good();
        let dev = facts.iface.as_mut().expect("iface");
        dev.mtu = 9000;
        dev.driver = Some("veth".into());
        let generic = check(&facts, AttachMode::Generic);
        assert_eq!((level(&generic, "mtu"), level(&generic, "veth")), (Level::Pass, Level::Pass));
        let native = check(&facts, AttachMode::Native);
        assert_eq!((level(&native, "mtu"), level(&native, "veth")), (Level::Fail, Level::Warn));
        let fatal = native.fatal().expect("fatal");
        assert!(fatal.starts_with("mtu: MTU 9000 is larger than native XDP takes"), "{fatal}");
        assert!(native.warnings()[0].starts_with("veth: eth0 is a veth in native mode"));
        assert_eq!(kernel_version("5.10.0-32-cloud-amd64"), Some((5, 10)));
    }

    #[test]
    fn the_configuration_is_checked_with_its_port_range() {
        let cfg = crate::config::parse("t.toml", "[agent]\nnat-ports = \"40000-50000\"\n")
            .expect("valid");
        let checks = config_checks("t.toml", Ok(&cfg), "32768\t60999\n");
        assert_eq!(checks[0].level, Level::Pass);
        assert_eq!(checks[1].level, Level::Warn, "{checks:?}");
        assert!(checks[1].found.contains("overlaps net.ipv4.ip_local_port_range 32768-60999"));
        let checks = config_checks("t.toml", Err("t.toml:3: bad"), "");
        assert_eq!((checks.len(), checks[0].level), (1, Level::Fail));
        assert!(checks[0].fix.as_deref().is_some_and(|f| f.contains("check-config t.toml")));
    }

    #[test]
    fn the_report_renders_each_check_and_its_fix() {
        let mut facts = good();
        facts.iface.as_mut().expect("iface").mtu = 9000;
        let text = check(&facts, AttachMode::Native).render();
        assert!(text.starts_with("sshlb doctor: eth0 (native XDP)\n"), "{text}");
        assert!(text.contains("\nFAIL  mtu        MTU 9000"), "{text}");
        assert!(text.contains("fix: `ip link set eth0 mtu 3498`"), "{text}");
        assert!(text.ends_with("1 failed, 0 warning(s), 6 check(s)\n"), "{text}");
        let json = serde_json::to_value(check(&facts, AttachMode::Native)).expect("json");
        assert_eq!(json["checks"][4]["level"], "fail");
        assert_eq!(json["checks"][0]["name"], "kernel");
        assert!(json["checks"][0].get("fix").is_none());
    }
}
