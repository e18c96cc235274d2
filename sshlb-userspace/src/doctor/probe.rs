//! Gathering the [`Facts`] the checks decide on. The interface is read through ioctls on a
//! socket of the caller's network namespace (not /sys/class/net, which shows the namespace the
//! sysfs was mounted from: under `nsenter --net` that is the host's); sysctls from /proc/sys
//! (per network namespace); where an address lives from `getifaddrs` and, for an address no
//! interface holds, the kernel's route lookup (`ip -j route get`, as `backend` runs `ip`).
//! Everything here only reads.

use std::{
    collections::BTreeMap,
    ffi::CString,
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    process::Command,
};

use super::checks::{AddrFacts, Channels, Facts, IfaceFacts, Offload, Route};
use crate::sys;

/// `SIOCETHTOOL` (linux/sockios.h).
const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// `ETHTOOL_GDRVINFO`: driver name and version.
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
/// `ETHTOOL_GFLAGS`: the `ETH_FLAG_*` offload flags.
const ETHTOOL_GFLAGS: u32 = 0x0000_0025;
/// `ETH_FLAG_LRO` in `ETHTOOL_GFLAGS`.
const ETH_FLAG_LRO: u32 = 1 << 15;
/// `ETHTOOL_GSTRINGS`: the names of a string set.
const ETHTOOL_GSTRINGS: u32 = 0x0000_001b;
/// `ETHTOOL_GSSET_INFO`: the sizes of string sets.
const ETHTOOL_GSSET_INFO: u32 = 0x0000_0037;
/// `ETHTOOL_GFEATURES`: the netdev feature bits (available, requested, active, never changed).
const ETHTOOL_GFEATURES: u32 = 0x0000_003a;
/// `ETHTOOL_GCHANNELS`: queue counts.
const ETHTOOL_GCHANNELS: u32 = 0x0000_003c;
/// `ETH_SS_FEATURES`: the string set naming the feature bits (`rx-gro-hw`, …).
const ETH_SS_FEATURES: u32 = 4;
/// `ETH_GSTRING_LEN`.
const GSTRING_LEN: usize = 32;

/// `struct ethtool_drvinfo` (linux/ethtool.h).
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ethtool_sset_info` asking for one set.
#[repr(C)]
struct SsetInfo {
    cmd: u32,
    reserved: u32,
    sset_mask: u64,
    len: u32,
}

/// `struct ethtool_channels`.
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the union as a pointer or an int.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: IfReqData,
}

#[repr(C)]
union IfReqData {
    ptr: *mut libc::c_void,
    mtu: libc::c_int,
    _pad: [u8; 24],
}

fn ifreq(name: &str) -> io::Result<IfReq> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let bytes = c.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: IfReqData { _pad: [0; 24] } };
    for (dst, src) in req.name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One ethtool command on `name`, `buf` being its struct (its first field the command).
fn ethtool<T>(sock: &OwnedFd, name: &str, buf: &mut T) -> io::Result<()> {
    ethtool_raw(sock, name, std::ptr::from_mut(buf).cast())
}

/// One ethtool command on `name` whose struct (ending in a flexible array) is at `buf`.
fn ethtool_raw(sock: &OwnedFd, name: &str, buf: *mut libc::c_void) -> io::Result<()> {
    let mut req = ifreq(name)?;
    req.data.ptr = buf;
    // SAFETY: req is a valid ifreq whose data points at a live struct of the command's type.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &raw mut req) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn mtu(sock: &OwnedFd, name: &str) -> io::Result<u32> {
    let mut req = ifreq(name)?;
    // SAFETY: req is a valid ifreq; SIOCGIFMTU writes the int member.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &raw mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFMTU filled the mtu member.
    Ok(unsafe { req.data.mtu } as u32)
}

fn driver(sock: &OwnedFd, name: &str) -> Option<String> {
    // SAFETY: DrvInfo is plain old data; all-zero is valid.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    ethtool(sock, name, &mut info).ok()?;
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(info.driver.len());
    let text = String::from_utf8_lossy(&info.driver[..end]).into_owned();
    (!text.is_empty()).then_some(text)
}

fn lro(sock: &OwnedFd, name: &str) -> Option<bool> {
    let mut value = EthtoolValue { cmd: ETHTOOL_GFLAGS, data: 0 };
    ethtool(sock, name, &mut value).ok()?;
    Some(value.data & ETH_FLAG_LRO != 0)
}

/// The feature `feature` (an `ethtool -k` name such as `rx-gro-hw`): on, and whether it can be
/// changed (`ethtool -k` prints `[fixed]` otherwise). `None` when the driver does not have it.
fn offload(sock: &OwnedFd, name: &str, feature: &str) -> Option<Offload> {
    let mut info =
        SsetInfo { cmd: ETHTOOL_GSSET_INFO, reserved: 0, sset_mask: 1 << ETH_SS_FEATURES, len: 0 };
    ethtool(sock, name, &mut info).ok()?;
    let count = info.len as usize;
    if info.sset_mask == 0 || count == 0 {
        return None;
    }
    // struct ethtool_gstrings: cmd, string_set, len, then len names of 32 bytes.
    let mut strings = vec![0u8; 12 + count * GSTRING_LEN];
    strings[0..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
    strings[4..8].copy_from_slice(&ETH_SS_FEATURES.to_ne_bytes());
    strings[8..12].copy_from_slice(&(count as u32).to_ne_bytes());
    ethtool_raw(sock, name, strings.as_mut_ptr().cast()).ok()?;
    let index = strings[12..].chunks(GSTRING_LEN).position(|raw| {
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        &raw[..end] == feature.as_bytes()
    })?;
    // struct ethtool_gfeatures: cmd, size, then size blocks of available, requested, active,
    // never_changed.
    let blocks = count.div_ceil(32);
    let mut features = vec![0u32; 2 + 4 * blocks];
    features[0] = ETHTOOL_GFEATURES;
    features[1] = blocks as u32;
    ethtool_raw(sock, name, features.as_mut_ptr().cast()).ok()?;
    let block = &features[2 + 4 * (index / 32)..][..4];
    let bit = 1u32 << (index % 32);
    Some(Offload {
        on: block[2] & bit != 0,
        // As ethtool decides `[fixed]`: not available to change, or never changed.
        fixed: block[0] & bit == 0 || block[3] & bit != 0,
    })
}

fn channels(sock: &OwnedFd, name: &str) -> Option<Channels> {
    let mut ch = EthtoolChannels { cmd: ETHTOOL_GCHANNELS, ..EthtoolChannels::default() };
    ethtool(sock, name, &mut ch).ok()?;
    Some(Channels { combined: ch.combined_count, max_combined: ch.max_combined })
}

/// `nr_cpu_ids`, the CPU count virtio_net sizes its XDP_TX queues by: one more than the
/// highest possible CPU (`/sys/devices/system/cpu/possible`, e.g. `0-3`). 0 when unknown.
fn possible_cpus() -> u32 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let last = text.trim().rsplit([',', '-']).next().and_then(|n| n.parse::<u32>().ok());
    last.map_or(0, |n| n + 1)
}

/// The sysctls the checks read for `iface`: what `up` sets (both families) and the reverse-path
/// filter and ARP replies, per interface and for `all`. Unreadable ones are left out.
fn sysctls(iface: &str) -> BTreeMap<String, String> {
    let mut keys: Vec<String> =
        crate::daemon::interface_sysctls(iface, true).into_iter().map(|(k, _)| k).collect();
    for scope in ["all", iface] {
        keys.push(format!("net.ipv4.conf.{scope}.rp_filter"));
        keys.push(format!("net.ipv4.conf.{scope}.arp_ignore"));
    }
    keys.into_iter()
        .filter_map(|key| {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            let value = std::fs::read_to_string(path).ok()?.trim().to_owned();
            Some((key, value))
        })
        .collect()
}

/// Where each of `addrs` lives: the interface holding it, else the kernel's route for it.
pub fn addr_facts(addrs: &[IpAddr]) -> Vec<AddrFacts> {
    let held = sys::all_interface_addrs();
    addrs
        .iter()
        .map(|&addr| {
            let owner = held.iter().find(|(_, a, _)| *a == addr).map(|(name, _, _)| name.clone());
            let route = if owner.is_some() { None } else { Some(route_get(addr)) };
            AddrFacts { addr, owner, route }
        })
        .collect()
}

/// `ip -j route get ADDR` in the caller's network namespace.
fn route_get(addr: IpAddr) -> Route {
    let out = match Command::new("ip").args(["-j", "route", "get", &addr.to_string()]).output() {
        Ok(out) => out,
        Err(e) => return Route { error: Some(format!("running ip(8): {e}")), ..Route::default() },
    };
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Route { error: Some(why), ..Route::default() };
    }
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let first = &parsed[0];
    let text = |key: &str| first[key].as_str().map(str::to_owned);
    Route {
        kind: text("type").unwrap_or_else(|| "unicast".to_owned()),
        dev: text("dev"),
        via: text("gateway"),
        error: None,
    }
}

fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname.
    if unsafe { libc::uname(&raw mut uts) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = uts.release.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The facts about this host and interface `iface` (in the caller's network namespace), with
/// the BPF filesystem expected at the parent of `pin_root`.
pub fn facts(iface: &str, pin_root: &Path) -> Facts {
    let bpffs = pin_root.parent().unwrap_or(pin_root);
    let iface_facts = sys::ifindex(iface).and_then(|_| {
        let sock = socket().ok()?;
        Some(IfaceFacts {
            driver: driver(&sock, iface),
            mtu: mtu(&sock, iface).ok()?,
            lro: lro(&sock, iface),
            gro_hw: offload(&sock, iface, "rx-gro-hw"),
            channels: channels(&sock, iface),
        })
    });
    Facts {
        kernel: kernel_release(),
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        bpffs: sys::is_bpffs(bpffs),
        bpffs_path: bpffs.display().to_string(),
        iface: iface_facts,
        iface_name: iface.to_owned(),
        cpus: possible_cpus(),
        sysctls: sysctls(iface),
    }
}
