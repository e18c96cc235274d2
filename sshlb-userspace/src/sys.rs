//! Host facts the loader depends on: privileges, the BPF filesystem, interface names.

use std::{ffi::CString, io, path::Path};

/// `statfs` magic of the BPF filesystem (`BPF_FS_MAGIC` in `linux/magic.h`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether the process runs with uid 0 (loading XDP needs CAP_BPF + CAP_NET_ADMIN; we ask for root).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The kernel's index of interface `name`, or `None` when there is no such interface.
pub fn ifindex(name: &str) -> Option<u32> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: c_name is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Whether `path` is on a mounted BPF filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs is plain old data; zeroed is a valid initial value.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and buf is a valid, writable statfs.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &raw mut buf) };
    let magic = buf.f_type as i64;
    rc == 0 && magic == BPF_FS_MAGIC
}

/// Mounts the BPF filesystem at `path` unless one is already there (a fresh machine has none).
pub fn ensure_bpffs(path: &Path) -> io::Result<()> {
    if is_bpffs(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path)?;
    let target = CString::new(path.as_os_str().as_encoded_bytes())?;
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; data is null (no options).
    let rc = unsafe {
        libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The MTU of interface `name` (`None` when it does not exist).
pub fn interface_mtu(name: &str) -> Option<u16> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu")).ok()?;
    text.trim().parse::<u32>().ok().map(|mtu| u16::try_from(mtu).unwrap_or(u16::MAX))
}

/// The global addresses of interface `name` with their prefix lengths (link-local IPv6 is
/// skipped), in the kernel's order.
pub fn interface_addrs(name: &str) -> Vec<(std::net::IpAddr, u8)> {
    all_interface_addrs()
        .into_iter()
        .filter(|(ifname, _, _)| ifname == name)
        .map(|(_, addr, prefix)| (addr, prefix))
        .collect()
}

/// Every interface's global addresses as `(interface, address, prefix length)` (link-local
/// IPv6 is skipped), in the kernel's order.
#[expect(
    clippy::cast_ptr_alignment,
    reason = "getifaddrs hands out sockaddr storage aligned for the address family it names"
)]
pub fn all_interface_addrs() -> Vec<(String, std::net::IpAddr, u8)> {
    let mut found = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return found;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned; its strings and sockaddrs are
        // valid until freeifaddrs.
        unsafe {
            let ifa = &*cur;
            if !ifa.ifa_name.is_null() && !ifa.ifa_addr.is_null() && !ifa.ifa_netmask.is_null() {
                let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                        let mask = &*ifa.ifa_netmask.cast::<libc::sockaddr_in>();
                        let addr = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                        found.push((name, addr.into(), mask.sin_addr.s_addr.count_ones() as u8));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                        let mask = &*ifa.ifa_netmask.cast::<libc::sockaddr_in6>();
                        let addr = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                        let prefix: u32 =
                            mask.sin6_addr.s6_addr.iter().map(|b| b.count_ones()).sum();
                        if !addr.is_unicast_link_local() {
                            found.push((name, addr.into(), prefix as u8));
                        }
                    }
                    _ => {}
                }
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// Writes `value` to `/proc/sys/<key with dots as slashes>`, returning the previous value when it
/// changed (sysctls are per network namespace: this touches the caller's).
pub fn set_sysctl(key: &str, value: &str) -> io::Result<Option<String>> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    let old = std::fs::read_to_string(&path)?.trim().to_owned();
    if old == value {
        return Ok(None);
    }
    std::fs::write(&path, value)?;
    Ok(Some(old))
}

/// Sends one empty UDP datagram to `addr` port 9 (discard) so the kernel resolves the
/// neighbour: the data plane's FIB lookups then find a MAC instead of NO_NEIGH.
pub fn poke_neighbour(addr: std::net::IpAddr) {
    let bind: std::net::SocketAddr = match addr {
        std::net::IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        std::net::IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    if let Ok(sock) = std::net::UdpSocket::bind(bind) {
        // Best effort: an unreachable backend is the health checker's business, not ours.
        let _ignored = sock.send_to(&[], (addr, 9));
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns()` stamps flows with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
