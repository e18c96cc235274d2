//! Health checks through the tunnel: a tunnel-mode backend is usable only if what the data plane
//! sends it — an encapsulated segment for the VIP — reaches its sshd. The banner check goes to
//! the backend's own address and proves sshd runs; this one proves the rest: the backend's
//! decapsulation program is attached, accepts our address, holds the VIP, and the service port
//! answers on it.
//!
//! One probe: a TCP SYN from the balancer's address to VIP:port, encapsulated as the data plane
//! does (IP-in-IP through a raw socket of protocol 4 / 41, whose header the kernel adds; GUE
//! through a UDP socket to the GUE port), then the backend's SYN-ACK (sent straight back, as the
//! VIP) read off a raw TCP socket. The balancer's kernel, which has no such connection, answers
//! the SYN-ACK with a RST, so the backend keeps no half-open state.

use std::{
    hash::{BuildHasher as _, Hasher as _},
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use crate::kill::{self, flags};

/// What to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelCheck {
    /// The service's VIP and port.
    pub vip: SocketAddr,
    /// The backend's own address (the outer destination).
    pub backend: IpAddr,
    /// The balancer's address (outer and inner source).
    pub source: IpAddr,
    /// GUE's UDP port; `None` for IP-in-IP.
    pub gue_port: Option<u16>,
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelCheckError {
    /// A socket could not be opened or used (the agent needs CAP_NET_RAW).
    #[error("through the tunnel: {0}")]
    Io(#[from] io::Error),
    /// No SYN-ACK in time: the backend does not decapsulate for us, lacks the VIP, or nothing
    /// listens on the port.
    #[error("through the tunnel: no answer from {0} within {1:?} (is `sshlb-agent backend up` running there, with this VIP and balancer prefix?)")]
    NoAnswer(SocketAddr, Duration),
    /// The backend answered with a RST: the tunnel works, the port is closed on the VIP.
    #[error("through the tunnel: {0} refused the connection")]
    Refused(SocketAddr),
}

/// Runs one probe (blocking; at most `timeout`).
pub fn probe(check: &TunnelCheck, timeout: Duration) -> Result<(), TunnelCheckError> {
    let v6 = check.vip.is_ipv6();
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    let listen = kill::raw_socket(domain, libc::IPPROTO_TCP)?;
    set_receive_timeout(&listen, Duration::from_millis(50))?;
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let sport = 49_152 + (random % 16_384) as u16;
    let seq = (random >> 32) as u32;
    let from = SocketAddr::new(check.source, sport);
    let syn = kill::segment(from, check.vip, seq, 0, flags::SYN, None);
    match check.gue_port {
        Some(port) => {
            let udp = UdpSocket::bind(SocketAddr::new(check.source, 0))?;
            udp.send_to(&syn, SocketAddr::new(check.backend, port))?;
        }
        None => {
            let proto = if v6 { libc::IPPROTO_IPV6 } else { libc::IPPROTO_IPIP };
            let out = kill::raw_socket(domain, proto)?;
            // The outer source must be the balancer's own address (the backend accepts tunnels
            // from its prefix only); left alone, the kernel may pick a VIP held on the interface.
            bind(&out, check.source)?;
            send(&out, check.backend, &syn)?;
        }
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        let Some((src, tcp)) = receive(&listen, &mut buf, v6)? else { continue };
        if src != check.vip.ip() || tcp.len() < 20 {
            continue;
        }
        let (s, d) = (u16::from_be_bytes([tcp[0], tcp[1]]), u16::from_be_bytes([tcp[2], tcp[3]]));
        let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
        if s != check.vip.port() || d != sport || ack != seq.wrapping_add(1) {
            continue;
        }
        let bits = tcp[13];
        if bits & (flags::SYN | flags::ACK) == flags::SYN | flags::ACK {
            return Ok(());
        }
        if bits & flags::RST != 0 {
            return Err(TunnelCheckError::Refused(check.vip));
        }
    }
    Err(TunnelCheckError::NoAnswer(check.vip, timeout))
}

fn set_receive_timeout(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: libc::suseconds_t::try_from(timeout.as_micros()).unwrap_or(50_000),
    };
    // SAFETY: setsockopt with a valid timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            libc::socklen_t::try_from(size_of::<libc::timeval>()).expect("small"),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn bind(fd: &OwnedFd, addr: IpAddr) -> io::Result<()> {
    let (sa, len) = sockaddr(addr);
    // SAFETY: `sa` holds a socket address of `len` bytes of the socket's family.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `addr` (port 0) as a socket address of its family, and its length.
fn sockaddr(addr: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        IpAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let sa = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            // SAFETY: as above, for a sockaddr_in6.
            let sa = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = v6.octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, libc::socklen_t::try_from(len).expect("small"))
}

fn send(fd: &OwnedFd, to: IpAddr, packet: &[u8]) -> io::Result<()> {
    let (sa, len) = sockaddr(to);
    kill::send_to(fd, packet, (&raw const sa).cast(), len as usize).map(drop)
}

/// One TCP segment off the raw socket: its source address and its TCP bytes (`None` on a
/// receive timeout or a packet too short to read).
fn receive<'b>(
    fd: &OwnedFd,
    buf: &'b mut [u8],
    v6: bool,
) -> io::Result<Option<(IpAddr, &'b [u8])>> {
    // SAFETY: all-zero is a valid sockaddr_storage; recvfrom writes at most its size.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(size_of_val(&from)).expect("small");
    // SAFETY: `buf` is writable for its length; `from` for `len` bytes.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&raw mut from).cast(),
            &raw mut len,
        )
    };
    let Ok(n) = usize::try_from(n) else {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {
                Ok(None)
            }
            _ => Err(err),
        };
    };
    let packet = &buf[..n];
    if v6 {
        // IPv6 raw sockets deliver the transport header only; the source is in `from`.
        // SAFETY: the kernel filled a sockaddr_in6 for an AF_INET6 socket.
        let sa = unsafe { *(&raw const from).cast::<libc::sockaddr_in6>() };
        return Ok(Some((IpAddr::from(sa.sin6_addr.s6_addr), packet)));
    }
    // IPv4 raw sockets deliver the IP header too.
    let Some(&first) = packet.first() else { return Ok(None) };
    let ihl = usize::from(first & 0x0f) * 4;
    if packet.len() < ihl.max(20) {
        return Ok(None);
    }
    let src = IpAddr::from([packet[12], packet[13], packet[14], packet[15]]);
    Ok(Some((src, &packet[ihl..])))
}
