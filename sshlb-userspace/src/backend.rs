//! The backend side of tunnel mode (`sshlb-agent backend up|down|status IFACE`): our own
//! decapsulation program (`sshlb-decap`, XDP) on the backend's interface, the VIPs on `lo`, and
//! the sysctls a host answering for an address it does not announce needs. No tunnel module
//! (`ipip`, `fou`, `ip6_tunnel`) is needed: many kernels lack them.
//!
//! Why XDP rather than TC: the outer headers come off before the kernel allocates anything, the
//! same attach and pinning code as the balancer's serves, and a veth or NIC without native XDP
//! still gets it in generic mode. The program is pinned with its maps, so `up` again (an upgrade,
//! a changed VIP list) swaps it in place and sessions carry on. What `up` changed on the host is
//! recorded in a state file so `down` undoes exactly that.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        Xdp,
    },
    EbpfLoader,
};
use serde::{Deserialize, Serialize};
use sshlb_common::{
    addr::{from16, to16},
    stats::decap::{COUNT, NAMES},
    tunnel::{decap_maps, DecapConfig, DecapSource, DECAP_PREFIX_BASE},
    OwnAddr,
};

use crate::{
    loader::{self, AttachMode},
    protection::Cidr,
    sys,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sshlb-decap"));

/// The program's name in the object.
const PROGRAM: &str = "sshlb_decap";
/// Default root of the backend side's pins (one directory per interface).
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/sshlb-backend";
/// Where `up` records what it changed, per interface.
const STATE_DIR: &str = "/run/sshlb";
const PIN_LINK: &str = "link";
const MAPS: [&str; 4] =
    [decap_maps::SOURCES, decap_maps::VIPS, decap_maps::CONFIG, decap_maps::STATS];

/// What `backend up` sets up.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The interface tunnel packets arrive on.
    pub iface: String,
    /// The VIPs this backend serves (put on `lo`; the only inner destinations accepted).
    pub vips: Vec<IpAddr>,
    /// Where tunnel packets may come from: the balancers' addresses or prefixes.
    pub balancers: Vec<Cidr>,
    /// GUE's UDP port (the balancers' `agent.gue-port`).
    pub gue_port: u16,
    /// XDP attach mode.
    pub mode: AttachMode,
}

/// What `up` changed on the host, to be undone by `down`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// VIPs this agent added to `lo` (ones already there are left alone).
    added: Vec<IpAddr>,
    /// `(sysctl, value before the first up)`.
    sysctls: Vec<(String, String)>,
}

/// Everything that can go wrong on the backend side.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Loading, attaching or pinning failed.
    #[error(transparent)]
    Loader(Box<loader::LoaderError>),
    /// A map could not be opened, read or written.
    #[error("{what}: {source}")]
    Map {
        /// Which map and operation.
        what: String,
        /// The cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// A host change (address, sysctl, state file) failed.
    #[error("{what}: {source}")]
    Host {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
}

impl From<loader::LoaderError> for BackendError {
    fn from(err: loader::LoaderError) -> Self {
        Self::Loader(Box::new(err))
    }
}

fn map_err(what: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> BackendError {
    let what = what.into();
    move |source| BackendError::Map { what, source }
}

fn host_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
    let what = what.into();
    move |source| BackendError::Host { what, source }
}

/// The pin directory of `iface`.
pub fn pin_dir(pin_root: &Path, iface: &str) -> PathBuf {
    pin_root.join(iface)
}

fn state_path(iface: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("backend-{iface}.json"))
}

/// The sysctls a tunnel backend needs on `iface`: it answers as the VIPs but must not claim them
/// on the link (ARP), and the decapsulated packets come from clients that are routed elsewhere
/// (loose reverse-path filtering).
pub fn sysctls(iface: &str) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    for scope in ["all", iface] {
        out.push((format!("net.ipv4.conf.{scope}.arp_ignore"), "1"));
        out.push((format!("net.ipv4.conf.{scope}.arp_announce"), "2"));
        out.push((format!("net.ipv4.conf.{scope}.rp_filter"), "2"));
    }
    out
}

/// Checks the arguments (sans-IO).
pub fn validate(setup: &Setup) -> Result<(), BackendError> {
    if setup.vips.is_empty() {
        return Err(BackendError::Usage("give at least one --vip".to_owned()));
    }
    if setup.balancers.is_empty() {
        return Err(BackendError::Usage(
            "give at least one --balancer prefix: tunnel packets from anywhere else are dropped"
                .to_owned(),
        ));
    }
    if setup.gue_port == 0 {
        return Err(BackendError::Usage("--gue-port must be 1-65535".to_owned()));
    }
    if let Some(wide) = setup.balancers.iter().find(|c| c.len == 0) {
        return Err(BackendError::Usage(format!(
            "--balancer {}/0 would accept tunnel packets from anyone (an open relay)",
            wide.addr
        )));
    }
    Ok(())
}

/// Attaches (or updates) the decapsulation program on `setup.iface`, writes its maps, puts the
/// VIPs on `lo` and sets the sysctls.
pub fn up(pin_root: &Path, setup: &Setup) -> Result<(), BackendError> {
    validate(setup)?;
    if OBJECT.is_empty() {
        return Err(loader::LoaderError::ObjectMissing.into());
    }
    if !sys::is_root() {
        return Err(loader::LoaderError::NotRoot.into());
    }
    let ifindex = sys::ifindex(&setup.iface)
        .ok_or_else(|| loader::LoaderError::NoSuchInterface(setup.iface.clone()))?;
    let bpffs = pin_root.parent().unwrap_or(pin_root);
    sys::ensure_bpffs(bpffs)
        .map_err(|source| loader::LoaderError::Bpffs { path: bpffs.to_owned(), source })?;
    let dir = pin_dir(pin_root, &setup.iface);
    fs::create_dir_all(&dir).map_err(host_err(format!("creating {}", dir.display())))?;
    let mut decap = Decap::load(setup, Some(&dir))?;
    let program = decap.program();
    let link_path = dir.join(PIN_LINK);
    if link_path.exists() {
        // Already attached: swap this binary's program into the pinned link.
        let pinned =
            PinnedLink::from_pin(&link_path).map_err(|e| loader::LoaderError::OpenPinned {
                what: "XDP link",
                path: link_path.clone(),
                source: Box::new(e),
            })?;
        let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(pinned)).map_err(|e| {
            loader::LoaderError::OpenPinned {
                what: "XDP link",
                path: link_path.clone(),
                source: Box::new(e),
            }
        })?;
        program.attach_to_link(link).map_err(|source| loader::LoaderError::Attach {
            iface: setup.iface.clone(),
            mode: setup.mode,
            hint: ": replacing the pinned program failed",
            source,
        })?;
    } else if let Err(err) =
        loader::attach_pinned(program, &setup.iface, ifindex, setup.mode, &link_path)
    {
        remove_pins(&dir);
        return Err(err.into());
    }
    configure_host(setup)
}

/// The decapsulation program, loaded (not attached) with its maps written.
pub struct Decap {
    ebpf: aya::Ebpf,
}

impl Decap {
    /// Loads the embedded object — its maps pinned in `pins` (opened when they exist) or
    /// private — and writes `setup`'s prefixes, VIPs and GUE port into them.
    pub fn load(setup: &Setup, pins: Option<&Path>) -> Result<Self, BackendError> {
        if OBJECT.is_empty() {
            return Err(loader::LoaderError::ObjectMissing.into());
        }
        let mut loader = EbpfLoader::new();
        if let Some(dir) = pins {
            for name in MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(OBJECT).map_err(loader::LoaderError::from)?;
        write_maps(&mut ebpf, setup)?;
        let mut decap = Self { ebpf };
        loader::load_xdp(decap.program()).map_err(loader::LoaderError::Load)?;
        Ok(decap)
    }

    /// The XDP program.
    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM)
            .expect("the object defines sshlb_decap")
            .try_into()
            .expect("sshlb_decap is an XDP program")
    }

    /// Every counter, summed over CPUs, in index order.
    pub fn counters(&self) -> Result<Vec<u64>, BackendError> {
        let map = self.ebpf.map(decap_maps::STATS).expect("the object defines DECAP_STATS");
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(map_err("DECAP_STATS"))?;
        read_counters(&stats)
    }
}

fn read_counters<T: std::borrow::Borrow<MapData>>(
    stats: &PerCpuArray<T, u64>,
) -> Result<Vec<u64>, BackendError> {
    (0..COUNT)
        .map(|i| {
            let per_cpu = stats.get(&i, 0).map_err(map_err("reading DECAP_STATS"))?;
            Ok(per_cpu.iter().sum())
        })
        .collect()
}

/// Replaces the maps' contents with `setup`'s.
fn write_maps(ebpf: &mut aya::Ebpf, setup: &Setup) -> Result<(), BackendError> {
    let mut sources: LpmTrie<_, DecapSource, u32> = LpmTrie::try_from(
        ebpf.map_mut(decap_maps::SOURCES).expect("the object defines DECAP_SOURCES"),
    )
    .map_err(map_err("DECAP_SOURCES"))?;
    let stale: Vec<_> = sources.keys().filter_map(Result::ok).collect();
    let wanted: Vec<_> = setup.balancers.iter().map(source_key).collect();
    for (key, cidr) in wanted.iter().zip(&setup.balancers) {
        let what = format!("adding balancer {}/{}", cidr.addr, cidr.len);
        sources.insert(key, 1, 0).map_err(map_err(what))?;
    }
    let same = |a: &Key<DecapSource>, b: &Key<DecapSource>| {
        a.prefix_len() == b.prefix_len() && a.data() == b.data()
    };
    for key in stale.iter().filter(|k| !wanted.iter().any(|w| same(w, k))) {
        let _gone = sources.remove(key);
    }
    let mut vips: HashMap<_, OwnAddr, u32> =
        HashMap::try_from(ebpf.map_mut(decap_maps::VIPS).expect("the object defines DECAP_VIPS"))
            .map_err(map_err("DECAP_VIPS"))?;
    let stale: Vec<_> = vips.keys().filter_map(Result::ok).collect();
    let wanted: Vec<OwnAddr> = setup.vips.iter().map(|ip| own(*ip)).collect();
    for key in &wanted {
        vips.insert(key, 1, 0).map_err(map_err("adding a VIP"))?;
    }
    for key in stale.iter().filter(|k| !wanted.contains(k)) {
        let _gone = vips.remove(key);
    }
    let mut config: Array<_, DecapConfig> =
        Array::try_from(ebpf.map_mut(decap_maps::CONFIG).expect("the object defines DECAP_CONFIG"))
            .map_err(map_err("DECAP_CONFIG"))?;
    config
        .set(0, DecapConfig { gue_port_be: setup.gue_port.to_be(), pad: 0 }, 0)
        .map_err(map_err("writing DECAP_CONFIG"))
}

fn source_key(cidr: &Cidr) -> Key<DecapSource> {
    let (addr, fam) = to16(cidr.addr);
    let len = u32::from(cidr.len).min(if cidr.addr.is_ipv4() { 32 } else { 128 });
    Key::new(DECAP_PREFIX_BASE + len, DecapSource { family: fam, pad8: 0, pad16: 0, addr })
}

fn own(ip: IpAddr) -> OwnAddr {
    let (addr, fam) = to16(ip);
    OwnAddr::new(addr, fam)
}

/// VIPs on `lo`, sysctls; the state file records the first `up`'s originals.
fn configure_host(setup: &Setup) -> Result<(), BackendError> {
    let path = state_path(&setup.iface);
    let mut state: State = fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let on_lo: Vec<IpAddr> = sys::interface_addrs("lo").into_iter().map(|(a, _)| a).collect();
    for vip in &setup.vips {
        if on_lo.contains(vip) {
            continue;
        }
        ip_addr("add", *vip)?;
        if !state.added.contains(vip) {
            state.added.push(*vip);
        }
    }
    // VIPs dropped from the list since the last `up`.
    let (keep, gone): (Vec<_>, Vec<_>) =
        state.added.iter().partition(|vip| setup.vips.contains(vip));
    for vip in gone {
        let _ignored = ip_addr("del", vip);
    }
    state.added = keep;
    for (key, value) in sysctls(&setup.iface) {
        if let Some(old) =
            sys::set_sysctl(&key, value).map_err(host_err(format!("setting {key}")))?
        {
            if !state.sysctls.iter().any(|(k, _)| *k == key) {
                state.sysctls.push((key, old));
            }
        }
    }
    fs::create_dir_all(STATE_DIR).map_err(host_err(format!("creating {STATE_DIR}")))?;
    let json = serde_json::to_vec_pretty(&state).expect("the state serializes");
    fs::write(&path, json).map_err(host_err(format!("writing {}", path.display())))
}

/// `ip addr add|del VIP/32|128 dev lo`.
fn ip_addr(op: &str, vip: IpAddr) -> Result<(), BackendError> {
    let prefix = if vip.is_ipv4() { 32 } else { 128 };
    let out = Command::new("ip")
        .args(["addr", op, &format!("{vip}/{prefix}"), "dev", "lo"])
        .output()
        .map_err(host_err("running ip(8)"))?;
    if !out.status.success() {
        return Err(BackendError::Host {
            what: format!("ip addr {op} {vip}/{prefix} dev lo"),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        });
    }
    Ok(())
}

/// Detaches the program from `iface`, removes its pins, the VIPs `up` added and restores the
/// sysctls it changed.
pub fn down(pin_root: &Path, iface: &str) -> Result<(), BackendError> {
    if !sys::is_root() {
        return Err(loader::LoaderError::NotRoot.into());
    }
    let dir = pin_dir(pin_root, iface);
    if !dir.is_dir() {
        return Err(
            loader::LoaderError::NotAttached { iface: iface.to_owned(), pin_dir: dir }.into()
        );
    }
    let link_path = dir.join(PIN_LINK);
    if link_path.exists() {
        let link =
            PinnedLink::from_pin(&link_path).map_err(|e| loader::LoaderError::OpenPinned {
                what: "XDP link",
                path: link_path.clone(),
                source: Box::new(e),
            })?;
        drop(link.unpin().map_err(host_err(format!("unpinning {}", link_path.display())))?);
    }
    remove_pins(&dir);
    let path = state_path(iface);
    if let Some(state) =
        fs::read(&path).ok().and_then(|bytes| serde_json::from_slice::<State>(&bytes).ok())
    {
        for vip in &state.added {
            let _ignored = ip_addr("del", *vip);
        }
        for (key, old) in &state.sysctls {
            let _ignored = sys::set_sysctl(key, old);
        }
    }
    let _ignored = fs::remove_file(&path);
    Ok(())
}

fn remove_pins(dir: &Path) {
    for name in MAPS.iter().chain([&PIN_LINK]) {
        let _ignored = fs::remove_file(dir.join(name));
    }
    let _ignored = fs::remove_dir(dir);
}

/// What `backend status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The interface.
    pub iface: String,
    /// Balancer prefixes accepted.
    pub balancers: Vec<String>,
    /// VIPs decapsulated for.
    pub vips: Vec<IpAddr>,
    /// GUE port.
    pub gue_port: u16,
    /// Counter name → value (summed over CPUs).
    pub counters: Vec<(String, u64)>,
}

/// Reads the pinned maps of `iface`.
pub fn status(pin_root: &Path, iface: &str) -> Result<Status, BackendError> {
    let dir = pin_dir(pin_root, iface);
    if !dir.join(PIN_LINK).exists() {
        return Err(
            loader::LoaderError::NotAttached { iface: iface.to_owned(), pin_dir: dir }.into()
        );
    }
    let open = |name: &str| {
        MapData::from_pin(dir.join(name)).map_err(map_err(format!("opening pinned {name}")))
    };
    let stats: PerCpuArray<_, u64> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(open(decap_maps::STATS)?))
            .map_err(map_err("DECAP_STATS"))?;
    let counters = NAMES.iter().map(|n| (*n).to_owned()).zip(read_counters(&stats)?).collect();
    let sources: LpmTrie<_, DecapSource, u32> =
        LpmTrie::try_from(aya::maps::Map::LpmTrie(open(decap_maps::SOURCES)?))
            .map_err(map_err("DECAP_SOURCES"))?;
    let balancers = sources
        .keys()
        .filter_map(Result::ok)
        .map(|k| {
            let data = k.data();
            let ip = from16(data.family, &data.addr);
            format!("{ip}/{}", k.prefix_len() - DECAP_PREFIX_BASE)
        })
        .collect();
    let vips_map: HashMap<_, OwnAddr, u32> =
        HashMap::try_from(aya::maps::Map::HashMap(open(decap_maps::VIPS)?))
            .map_err(map_err("DECAP_VIPS"))?;
    let vips = vips_map.keys().filter_map(Result::ok).map(|k| from16(k.family, &k.addr)).collect();
    let config: Array<_, DecapConfig> =
        Array::try_from(aya::maps::Map::Array(open(decap_maps::CONFIG)?))
            .map_err(map_err("DECAP_CONFIG"))?;
    let gue_port =
        u16::from_be(config.get(&0, 0).map_err(map_err("reading DECAP_CONFIG"))?.gue_port_be);
    Ok(Status { iface: iface.to_owned(), balancers, vips, gue_port, counters })
}

/// `backend status` as text.
pub fn render(status: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let vips: Vec<String> = status.vips.iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "sshlb-decap on {}: GUE port {}", status.iface, status.gue_port);
    let _ = writeln!(out, "  VIPs:      {}", vips.join(", "));
    let _ = writeln!(out, "  balancers: {}", status.balancers.join(", "));
    for (name, value) in &status.counters {
        let _ = writeln!(out, "  {name:<22} {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(vips: &[&str], balancers: &[&str]) -> Setup {
        Setup {
            iface: "eth0".to_owned(),
            vips: vips.iter().map(|v| v.parse().expect("ip")).collect(),
            balancers: balancers.iter().map(|b| b.parse().expect("cidr")).collect(),
            gue_port: 6080,
            mode: AttachMode::Native,
        }
    }

    #[test]
    fn arguments_are_checked() {
        assert!(validate(&setup(&["198.18.0.100"], &["198.18.0.0/24"])).is_ok());
        let no_vip = validate(&setup(&[], &["198.18.0.0/24"])).expect_err("no vip");
        assert!(no_vip.to_string().contains("--vip"), "{no_vip}");
        let open = validate(&setup(&["198.18.0.100"], &[])).expect_err("no balancer");
        assert!(open.to_string().contains("--balancer"), "{open}");
        let relay = validate(&setup(&["198.18.0.100"], &["0.0.0.0/0"])).expect_err("/0");
        assert!(relay.to_string().contains("open relay"), "{relay}");
    }

    #[test]
    fn sysctls_cover_all_and_the_interface() {
        let keys: Vec<String> = sysctls("eth0").into_iter().map(|(k, _)| k).collect();
        for key in ["net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.eth0.rp_filter"] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn source_keys_carry_the_prefix_length() {
        let key = source_key(&"198.18.0.0/24".parse().expect("cidr"));
        assert_eq!(key.prefix_len(), DECAP_PREFIX_BASE + 24);
        assert_eq!(key.data().family, sshlb_common::family::V4);
        let key = source_key(&"fd00:1::/64".parse().expect("cidr"));
        assert_eq!(key.prefix_len(), DECAP_PREFIX_BASE + 64);
    }
}
