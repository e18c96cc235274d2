//! Gathering the [`Facts`] the checks decide on. The interface is read through ioctls on a
//! socket of the caller's network namespace (not /sys/class/net, which shows the namespace the
//! sysfs was mounted from: under `nsenter --net` that is the host's).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use super::checks::{Facts, IfaceFacts};
use crate::sys;

/// `SIOCETHTOOL` (linux/sockios.h).
const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// `ETHTOOL_GDRVINFO`: driver name and version.
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
/// `ETHTOOL_GFLAGS`: the `ETH_FLAG_*` offload flags.
const ETHTOOL_GFLAGS: u32 = 0x0000_0025;
/// `ETH_FLAG_LRO` in `ETHTOOL_GFLAGS`.
const ETH_FLAG_LRO: u32 = 1 << 15;

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
    let mut req = ifreq(name)?;
    req.data.ptr = std::ptr::from_mut(buf).cast();
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
        })
    });
    Facts {
        kernel: kernel_release(),
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        bpffs: sys::is_bpffs(bpffs),
        bpffs_path: bpffs.display().to_string(),
        iface: iface_facts,
        iface_name: iface.to_owned(),
    }
}
