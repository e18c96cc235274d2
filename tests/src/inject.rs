//! Raw frame injection: an AF_PACKET socket that sends whole Ethernet frames out of an
//! interface (the data-plane benchmark's traffic, the namespace tests' spoofed floods).

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use etherparse::PacketBuilder;

use crate::{
    config::{ConfigBuilder, ServiceBuilder},
    topo::{Topo, DSR4, VIP4},
    Netns,
};

/// The MAC address of `iface` in `ns`.
pub fn mac_of(ns: &Netns, iface: &str) -> [u8; 6] {
    let out = ns.ip(&["-o", "link", "show", "dev", iface]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC address for {iface}: {text}"));
    let bytes: Vec<u8> =
        mac.split(':').map(|b| u8::from_str_radix(b, 16).expect("hex MAC byte")).collect();
    bytes.try_into().expect("6-byte MAC")
}

/// SYN number `i` of a spoofed flood (`macs`: source, destination): a source in 198.19.0.0/16
/// (`i`'s low 16 bits) and port (`i`'s next bits) to `vip`:22, checksums computed in full. Distinct
/// for the first 2^16 × 60,000 values of `i`.
pub fn spoofed_syn(i: u32, vip: Ipv4Addr, macs: ([u8; 6], [u8; 6])) -> Vec<u8> {
    let src = [198, 19, (i >> 8) as u8, i as u8];
    let port = 1024 + ((i >> 16) % 60_000) as u16;
    let builder = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src, vip.octets(), 64)
        .tcp(port, 22, i.wrapping_mul(2_654_435_761), 64240)
        .syn();
    let mut frame = Vec::new();
    builder.write(&mut frame, &[]).expect("writing to a Vec");
    frame
}

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

/// `config` with the two services a [`SynFlood`] aims at: `nat4` (full NAT on [`VIP4`]) and
/// `dsr4` (DSR on [`DSR4`]), port 22, on the topology's backends.
pub fn flood_targets(mut config: ConfigBuilder) -> ConfigBuilder {
    for (name, vip, mode) in [("nat4", VIP4, "nat"), ("dsr4", DSR4, "dsr")] {
        let service = ServiceBuilder::new(name, vip, 22).mode(mode);
        config = config.service(service.topo_backends(false, |_, b| b));
    }
    config
}

/// A spoofed SYN flood from the topology's router to the balancer's MAC, as routed traffic
/// arrives: SYN `first + n` of [`spoofed_syn`] is the `n`-th sent, three in four to the NAT
/// VIP ([`VIP4`]), one in four to the DSR VIP ([`DSR4`]).
pub struct SynFlood {
    /// SYNs per second (`None`: as fast as the sender goes).
    pub rate: Option<u32>,
    /// At most this many SYNs...
    pub max: u32,
    /// ...and for at most this long.
    pub within: Duration,
    /// The number of the first SYN (distinct flows across floods).
    pub first: u32,
}

impl SynFlood {
    /// Sends the flood from a thread in the router's namespace.
    pub fn spawn(self, topo: &Topo) -> Flooding {
        let macs = (mac_of(&topo.router, "rt0"), mac_of(&topo.lb, &topo.lb_if));
        let running = Arc::new(AtomicBool::new(true));
        let on = Arc::clone(&running);
        let thread = topo.router.spawn_thread(move || {
            let sock = PacketSocket::open("rt0").expect("AF_PACKET on rt0");
            let (nat, dsr): (Ipv4Addr, Ipv4Addr) =
                (VIP4.parse().expect("vip"), DSR4.parse().expect("vip"));
            let began = Instant::now();
            let mut sent = 0u32;
            while sent < self.max && began.elapsed() < self.within {
                let due = self
                    .rate
                    .map_or(self.max, |r| (began.elapsed().as_secs_f64() * f64::from(r)) as u32);
                if sent >= due {
                    thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let i = sent + self.first;
                let vip = if i % 4 == 3 { dsr } else { nat };
                if sock.send(&spoofed_syn(i, vip, macs)) {
                    sent += 1;
                }
            }
            on.store(false, Ordering::SeqCst);
            (sent, began.elapsed())
        });
        Flooding { running, thread }
    }
}

/// A [`SynFlood`] being sent.
pub struct Flooding {
    running: Arc<AtomicBool>,
    thread: thread::JoinHandle<(u32, Duration)>,
}

impl Flooding {
    /// A handle that tells another thread whether the flood is still being sent.
    pub fn watch(&self) -> FloodWatch {
        FloodWatch(Arc::clone(&self.running))
    }

    /// Waits for the end: how many SYNs went out and how long that took.
    pub fn join(self) -> (u32, Duration) {
        self.thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// See [`Flooding::watch`].
#[derive(Clone)]
pub struct FloodWatch(Arc<AtomicBool>);

impl FloodWatch {
    /// Whether the flood is still being sent.
    pub fn on(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
