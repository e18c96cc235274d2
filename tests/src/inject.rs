//! Raw frame injection: an AF_PACKET socket that sends whole Ethernet frames out of an
//! interface (the data-plane benchmark's traffic, the namespace tests' spoofed floods).

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{bail, Context as _, Result};

/// An AF_PACKET socket that injects frames into an interface.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Binds to `iface` (in the current network namespace).
    pub fn open(iface: &str) -> Result<Self> {
        let ifindex = sshlb::sys::ifindex(iface).context("interface")?;
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; zeroed then filled.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            bail!("binding AF_PACKET to {iface}: {}", std::io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Sends one frame; whether the kernel took it.
    pub fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: frame is valid for its length.
        unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) > 0 }
    }

    /// Sends every frame once; how many the kernel took.
    pub fn send_all(&self, frames: &[Vec<u8>]) -> u64 {
        frames.iter().map(|f| u64::from(self.send(f))).sum()
    }
}
