//! The checks as decisions over gathered [`Facts`] (sans-IO): each names what it looked at,
//! its [`Level`], what it found and, unless it passed, the fix.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

pub use super::report::{Check, Level, Report};

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
    /// `nr_cpu_ids` (one more than the highest possible CPU); 0 when unknown.
    pub cpus: u32,
    /// The sysctls read (`up`'s, `rp_filter`, `arp_ignore`; see `probe`), by dotted name.
    pub sysctls: BTreeMap<String, String>,
}

/// An offload feature as `ethtool -k` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// Active.
    pub on: bool,
    /// Cannot be changed (`[fixed]`).
    pub fixed: bool,
}

/// Queue counts as `ethtool -l` shows them (combined channels only: what virtio_net has).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Channels {
    /// Combined queues in use.
    pub combined: u32,
    /// Combined queues the device offers.
    pub max_combined: u32,
}

/// Where one address lives on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrFacts {
    /// The address.
    pub addr: IpAddr,
    /// The interface holding it, if one does.
    pub owner: Option<String>,
    /// The kernel's route to it (looked up only when no interface holds it).
    pub route: Option<Route>,
}

/// One route lookup's answer (`ip route get`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// `local`, `unicast`, `unreachable`, … (empty when the lookup failed).
    pub kind: String,
    /// Output device.
    pub dev: Option<String>,
    /// Gateway.
    pub via: Option<String>,
    /// Why the lookup failed (`Network is unreachable`).
    pub error: Option<String>,
}

impl Route {
    /// `"via 198.18.0.254 dev eth0"`, `"local dev lo"`, or the error.
    pub fn describe(&self) -> String {
        if let Some(error) = &self.error {
            return error.clone();
        }
        let mut out = self.kind.clone();
        if let Some(via) = &self.via {
            let _ = write!(out, " via {via}");
        }
        if let Some(dev) = &self.dev {
            let _ = write!(out, " dev {dev}");
        }
        out
    }
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
    /// Hardware GRO (`rx-gro-hw`; `None`: the driver has no such feature).
    pub gro_hw: Option<Offload>,
    /// Queue counts (`None`: the driver does not say).
    pub channels: Option<Channels>,
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
    checks.push(gro_hw(iface, dev, native));
    if dev.driver.as_deref() == Some("virtio_net") {
        checks.push(virtio_queues(iface, dev, facts, native));
    }
    Report { interface: iface.clone(), mode: mode.to_owned(), checks }
}

/// Drivers that turn hardware GRO off themselves when a native XDP program attaches.
const GRO_HW_SELF_OFF: &[&str] = &["virtio_net", "bnxt_en", "qede"];

/// Hardware GRO merges segments into frames larger than a page, which single-buffer XDP cannot
/// take. Drivers differ: mlx5 refuses the attach ("can't set XDP with HW-GRO/LRO"), bnxt, qede
/// and virtio_net (when the device lets the guest control offloads) turn it off themselves;
/// virtio_net whose device does not (the feature is `[fixed]` on) refuses native XDP ("Can't set
/// XDP while host is implementing GRO_HW/CSUM"). Generic XDP turns it off when it attaches
/// (`dev_disable_gro_hw`), unless it is fixed.
fn gro_hw(iface: &str, dev: &IfaceFacts, native: bool) -> Check {
    let driver = dev.driver.as_deref().unwrap_or("unknown");
    let off_fix = format!("`ethtool -K {iface} rx-gro-hw off`");
    let host_side = "turn the guest offloads off on the hypervisor (QEMU: `-device \
         virtio-net-pci,…,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off`, or offer \
         ctrl_guest_offloads so the guest can; Firecracker has no such switch)";
    let Some(gro) = dev.gro_hw.filter(|g| g.on) else {
        let found = if dev.gro_hw.is_some() {
            "hardware GRO (rx-gro-hw) off"
        } else {
            "the driver has no hardware GRO"
        };
        return Check::new("gro-hw", Level::Pass, found.to_owned(), None);
    };
    match (native, gro.fixed) {
        (true, true) if driver == "virtio_net" => Check::new(
            "gro-hw",
            Level::Fail,
            format!(
                "hardware GRO (rx-gro-hw) is on and fixed on {iface}: the virtio device offers \
                 guest TSO/ECN/UFO without letting the guest turn them off, and virtio_net \
                 refuses native XDP (\"Can't set XDP while host is implementing GRO_HW/CSUM\")"
            ),
            Some(format!("{host_side}, or run `up {iface} --xdp-mode generic`")),
        ),
        (true, true) => Check::new(
            "gro-hw",
            Level::Warn,
            format!(
                "hardware GRO (rx-gro-hw) is on and cannot be turned off on {iface} ({driver}): \
                 the driver may refuse native XDP or hand it merged frames"
            ),
            Some(format!("if the attach is refused, run `up {iface} --xdp-mode generic`")),
        ),
        (true, false) if GRO_HW_SELF_OFF.contains(&driver) => Check::new(
            "gro-hw",
            Level::Pass,
            format!("hardware GRO on; {driver} turns it off when XDP attaches"),
            None,
        ),
        (true, false) if driver == "mlx5_core" => Check::new(
            "gro-hw",
            Level::Fail,
            format!(
                "hardware GRO (rx-gro-hw) is on for {iface}: mlx5 refuses native XDP with it \
                 (\"can't set XDP with HW-GRO/LRO\")"
            ),
            Some(off_fix),
        ),
        (true, false) => Check::new(
            "gro-hw",
            Level::Warn,
            format!(
                "hardware GRO (rx-gro-hw) is on for {iface} ({driver}): some drivers refuse \
                 native XDP with it (mlx5), others turn it off themselves"
            ),
            Some(off_fix),
        ),
        (false, false) => Check::new(
            "gro-hw",
            Level::Pass,
            "hardware GRO on; generic XDP turns it off when it attaches".to_owned(),
            None,
        ),
        (false, true) => Check::new(
            "gro-hw",
            Level::Warn,
            format!(
                "hardware GRO (rx-gro-hw) is on and fixed on {iface}: generic XDP cannot turn \
                 it off, so the program sees merged frames larger than the MTU (it takes each \
                 as one packet; sshlb's tests run without hardware GRO)"
            ),
            Some(host_side.to_owned()),
        ),
    }
}

/// The kernel from which virtio_net attaches XDP without a TX queue per CPU ("XDP_TX and
/// XDP_REDIRECT will operate in a slower locked tx mode"); older ones refuse (ENOMEM).
pub const VIRTIO_LOCKED_TX_KERNEL: (u32, u32) = (5, 13);

/// virtio_net gives native XDP_TX a queue pair per CPU of its own, on top of those in use: it
/// needs `combined + nr_cpu_ids <= max_combined`.
fn virtio_queues(iface: &str, dev: &IfaceFacts, facts: &Facts, native: bool) -> Check {
    if !native {
        return Check::new(
            "queues",
            Level::Pass,
            "generic XDP transmits through the interface's own queues".to_owned(),
            None,
        );
    }
    let (Some(ch), cpus) = (dev.channels, facts.cpus) else {
        return Check::new(
            "queues",
            Level::Warn,
            format!("virtio_net on {iface} did not report its queues"),
            Some(format!("check `ethtool -l {iface}`: XDP_TX needs one queue per CPU")),
        );
    };
    let need = ch.combined + cpus;
    if cpus == 0 || need <= ch.max_combined {
        return Check::new(
            "queues",
            Level::Pass,
            format!(
                "{} of {} combined queues in use, {cpus} CPU(s): XDP_TX gets a queue per CPU",
                ch.combined, ch.max_combined
            ),
            None,
        );
    }
    let fix = if ch.max_combined > cpus {
        format!(
            "`ethtool -L {iface} combined {}`, leaving a queue per CPU to XDP_TX",
            ch.max_combined - cpus
        )
    } else {
        format!(
            "give the VM at least {} queue pairs on the hypervisor, {} to keep one per CPU for \
             the stack too (QEMU: `-netdev tap,…,queues={} -device virtio-net-pci,mq=on,\
             vectors={}`), then `ethtool -L {iface} combined {cpus}`",
            cpus + 1,
            2 * cpus,
            2 * cpus,
            4 * cpus + 2
        )
    };
    let shortfall = format!(
        "virtio_net on {iface} has {} combined queue(s) of {} in use and {cpus} CPU(s): native \
         XDP_TX needs {need} (a queue per CPU besides those in use)",
        ch.combined, ch.max_combined
    );
    if kernel_version(&facts.kernel).is_some_and(|v| v < VIRTIO_LOCKED_TX_KERNEL) {
        Check::new(
            "queues",
            Level::Fail,
            format!("{shortfall}, and before Linux 5.13 the attach then fails"),
            Some(fix),
        )
    } else {
        Check::new(
            "queues",
            Level::Warn,
            format!("{shortfall}; XDP_TX then shares the queues under a lock (slower)"),
            Some(fix),
        )
    }
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
            iface: Some(IfaceFacts {
                driver: Some("ixgbe".into()),
                mtu: 1500,
                lro: Some(false),
                gro_hw: Some(Offload { on: false, fixed: false }),
                channels: Some(Channels { combined: 2, max_combined: 8 }),
            }),
            iface_name: "eth0".into(),
            cpus: 2,
            sysctls: BTreeMap::new(),
        }
    }

    fn dev(facts: &mut Facts) -> &mut IfaceFacts {
        facts.iface.as_mut().expect("iface")
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
        assert_eq!(names, ["kernel", "btf", "bpffs", "interface", "mtu", "lro", "gro-hw"]);
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
    fn hardware_gro_fails_or_warns_as_the_driver_would_refuse() {
        /// (driver, on, fixed, mode, expected level, words of the fix or finding).
        type Case = (&'static str, bool, bool, AttachMode, Level, &'static str);
        let cases: [Case; 9] = [
            ("virtio_net", true, true, AttachMode::Native, Level::Fail, "guest_tso4=off"),
            ("virtio_net", true, false, AttachMode::Native, Level::Pass, "turns it off"),
            ("bnxt_en", true, false, AttachMode::Native, Level::Pass, "turns it off"),
            ("mlx5_core", true, false, AttachMode::Native, Level::Fail, "rx-gro-hw off"),
            ("ice", true, false, AttachMode::Native, Level::Warn, "rx-gro-hw off"),
            ("ice", true, true, AttachMode::Native, Level::Warn, "--xdp-mode generic"),
            ("mlx5_core", true, false, AttachMode::Generic, Level::Pass, "generic XDP turns"),
            ("virtio_net", true, true, AttachMode::Generic, Level::Warn, "guest_tso4=off"),
            ("mlx5_core", false, false, AttachMode::Native, Level::Pass, "off"),
        ];
        for (driver, on, fixed, mode, want, words) in cases {
            let mut facts = good();
            dev(&mut facts).driver = Some(driver.into());
            dev(&mut facts).gro_hw = Some(Offload { on, fixed });
            let report = check(&facts, mode);
            let c = report.checks.iter().find(|c| c.name == "gro-hw").expect("gro-hw");
            assert_eq!(c.level, want, "{driver} {on} {fixed} {mode:?}: {c:?}");
            let text = format!("{} {}", c.found, c.fix.as_deref().unwrap_or(""));
            assert!(text.contains(words), "{driver} {on} {fixed} {mode:?}: {c:?}");
            assert_eq!(report.fatal().is_some(), want == Level::Fail);
        }
        let mut facts = good();
        dev(&mut facts).gro_hw = None;
        assert_eq!(level(&check(&facts, AttachMode::Native), "gro-hw"), Level::Pass);
    }

    #[test]
    fn virtio_needs_a_tx_queue_per_cpu_for_xdp() {
        let virtio = |combined, max_combined, cpus, kernel: &str| {
            let mut facts = good();
            facts.kernel = kernel.into();
            facts.cpus = cpus;
            dev(&mut facts).driver = Some("virtio_net".into());
            dev(&mut facts).channels = Some(Channels { combined, max_combined });
            facts
        };
        let queues = |facts: &Facts, mode| {
            check(facts, mode).checks.into_iter().find(|c| c.name == "queues").expect("queues")
        };
        // Enough: 2 in use + 2 CPUs <= 4.
        assert_eq!(queues(&virtio(2, 4, 2, "6.1.0"), AttachMode::Native).level, Level::Pass);
        // 4 in use of 4: lower the count to leave 2 for XDP_TX.
        let c = queues(&virtio(4, 4, 2, "6.1.0"), AttachMode::Native);
        assert_eq!(c.level, Level::Warn, "{c:?}");
        assert!(c.found.contains("needs 6") && c.found.contains("under a lock"), "{c:?}");
        assert_eq!(
            c.fix.as_deref(),
            Some("`ethtool -L eth0 combined 2`, leaving a queue per CPU to XDP_TX")
        );
        // One queue for two CPUs (this machine's own NIC): only the hypervisor can help.
        let c = queues(&virtio(1, 1, 2, "6.18.0"), AttachMode::Native);
        assert_eq!(c.level, Level::Warn);
        assert!(c.fix.as_deref().is_some_and(|f| f.contains("at least 3 queue pairs")), "{c:?}");
        // Before 5.13 virtio_net refuses the attach instead.
        let c = queues(&virtio(1, 1, 2, "5.10.0-32-amd64"), AttachMode::Native);
        assert_eq!(c.level, Level::Fail, "{c:?}");
        // Generic mode does not use XDP queues; other drivers are not checked.
        assert_eq!(queues(&virtio(1, 1, 2, "5.10.0"), AttachMode::Generic).level, Level::Pass);
        assert!(check(&good(), AttachMode::Native).checks.iter().all(|c| c.name != "queues"));
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
        assert!(text.ends_with("1 failed, 0 warning(s), 7 check(s)\n"), "{text}");
        let json = serde_json::to_value(check(&facts, AttachMode::Native)).expect("json");
        assert_eq!(json["checks"][4]["level"], "fail");
        assert_eq!(json["checks"][0]["name"], "kernel");
        assert!(json["checks"][0].get("fix").is_none());
    }
}
