//! A one-armed balancer topology in namespaces: a bridge (the L2 segment) joining the balancer,
//! three backends and a router; a client behind the router.
//!
//! ```text
//!  client 198.18.2.10 ── router 198.18.2.1 | 198.18.0.254 ──┐
//!                                                      [bridge]── lb 198.18.0.2 (+VIPs)
//!                                  b1 .11, b2 .12, b3 .13 ──┘
//! ```
//! IPv6 mirrors it: segment fd00:10::/64, client side fd00:20::/64. Backends run a tiny TCP
//! server that first sends its name, then echoes everything back, so a test knows which backend
//! it reached and can verify every byte end to end.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use crate::{run, unique, Netns};

/// Segment addresses.
pub const LB4: &str = "198.18.0.2";
pub const LB6: &str = "fd00:10::2";
pub const VIP4: &str = "198.18.0.100";
pub const VIP6: &str = "fd00:10::100";
/// VIPs for direct-server-return services (backends own them on loopback).
pub const DSR4: &str = "198.18.0.101";
pub const DSR6: &str = "fd00:10::101";
/// VIPs for tunnel-mode services (IP-in-IP over IPv4 and IPv6, GUE over IPv4): their backends
/// sit in another subnet ([`Topo::add_far_backend`]).
pub const TUN4: &str = "198.18.0.102";
pub const TUN6: &str = "fd00:10::102";
pub const GUE4: &str = "198.18.0.103";
/// A far backend's addresses (behind the router, not on the balancer's segment).
pub const FAR4: &str = "198.18.6.10";
pub const FAR6: &str = "fd00:60::10";
pub const CLIENT4: &str = "198.18.2.10";
/// The router's addresses on the segment.
pub const ROUTER4: &str = "198.18.0.254";
pub const ROUTER6: &str = "fd00:10::fe";
pub const CLIENT6: &str = "fd00:20::10";
/// Backends: (name, IPv4, IPv6).
pub const BACKENDS: [(&str, &str, &str); 3] = [
    ("b1", "198.18.0.11", "fd00:10::11"),
    ("b2", "198.18.0.12", "fd00:10::12"),
    ("b3", "198.18.0.13", "fd00:10::13"),
];

/// Another balancer on the segment, next to [`Topo::lb`] (the HA labs run several): its
/// namespace, its interface (named uniquely: pins are keyed by it), that interface's bridge-side
/// peer, and its own segment addresses. Dropping it deletes its namespace.
pub struct Peer {
    /// Its namespace.
    pub ns: Netns,
    /// Its interface on the segment.
    pub iface: String,
    /// The bridge-side peer of `iface` (needs an XDP program for XDP_TX in native mode).
    pub port: String,
    /// Its own IPv4 address on the segment (no prefix length).
    pub addr4: String,
    /// Its own IPv6 address on the segment.
    pub addr6: String,
}

/// The topology. Dropping it stops the servers and deletes every namespace.
pub struct Topo {
    pub sw: Netns,
    pub lb: Netns,
    pub router: Netns,
    pub client: Netns,
    pub backends: Vec<Netns>,
    /// Backends in another subnet ([`Self::add_far_backend`]).
    pub far: Vec<Netns>,
    /// The balancer's interface name (unique per test: pins are keyed by it).
    pub lb_if: String,
    /// The bridge-side peer of `lb_if` (needs an XDP program for XDP_TX in native mode).
    pub lb_port: String,
    stop: Arc<AtomicBool>,
    servers: Vec<thread::JoinHandle<()>>,
}

fn set(ns: &Netns, key: &str, value: &str) {
    run(&mut ns.command("sysctl", &["-qw", &format!("{key}={value}")]));
}

impl Topo {
    /// The topology with servers on port 22, when `test` may run ([`crate::root_or_skip`]);
    /// `None` (the test said it skips) otherwise.
    pub fn for_test(test: &str) -> Option<Self> {
        crate::root_or_skip(test).then(|| Self::new(22))
    }

    /// Builds the network and starts a server on port `port` in every backend.
    pub fn new(port: u16) -> Self {
        let sw = Netns::new("sw");
        // No multicast snooping: neighbour discovery must reach every port without depending on
        // MLD reports the hosts send before their addresses are ready.
        sw.ip(&["link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]);
        sw.ip(&["link", "set", "br0", "up"]);
        let lb = Netns::new("lb");
        let router = Netns::new("rt");
        let client = Netns::new("cl");
        let lb_if = unique("lb");
        let lb_port = unique("p");
        let mut topo = Self {
            sw,
            lb,
            router,
            client,
            backends: Vec::new(),
            far: Vec::new(),
            lb_if: lb_if.clone(),
            lb_port: lb_port.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        };
        topo.plug_balancer(&topo.lb, &lb_if, &lb_port, LB4, LB6);

        let rt_port = unique("p");
        topo.plug(&topo.router, "rt0", &rt_port, &["198.18.0.254/24", "fd00:10::fe/64"]);
        crate::veth(
            &topo.router,
            "rt1",
            &["198.18.2.1/24", "fd00:20::1/64"],
            &topo.client,
            "cl0",
            &[&format!("{CLIENT4}/24"), &format!("{CLIENT6}/64")],
        );
        set(&topo.router, "net.ipv4.ip_forward", "1");
        set(&topo.router, "net.ipv6.conf.all.forwarding", "1");
        topo.client.ip(&["route", "add", "default", "via", "198.18.2.1"]);
        topo.client.ip(&["-6", "route", "add", "default", "via", "fd00:20::1"]);

        for (name, v4, v6) in BACKENDS {
            let ns = Netns::new(name);
            let port_name = unique("p");
            topo.plug(&ns, "eth0", &port_name, &[&format!("{v4}/24"), &format!("{v6}/64")]);
            // Direct server return: the backend owns the VIPs on loopback but must not answer
            // ARP/ND for them (only the balancer does), and replies to clients via the router.
            ns.ip(&["addr", "add", &format!("{DSR4}/32"), "dev", "lo"]);
            ns.ip(&["addr", "add", &format!("{DSR6}/128"), "dev", "lo", "nodad"]);
            set(&ns, "net.ipv4.conf.all.arp_ignore", "1");
            set(&ns, "net.ipv4.conf.all.arp_announce", "2");
            ns.ip(&["route", "add", "default", "via", "198.18.0.254"]);
            ns.ip(&["-6", "route", "add", "default", "via", "fd00:10::fe"]);
            // [::] then takes IPv6 only, next to the IPv4 listener on the same port.
            set(&ns, "net.ipv6.bindv6only", "1");
            let server = serve(&ns, name, port, Arc::clone(&topo.stop));
            topo.servers.extend(server);
            topo.backends.push(ns);
        }
        topo
    }

    /// Plugs balancer `index` (1, 2, …: [`Self::lb`] is number 0) into the segment at
    /// 198.18.0.(2 + index) / fd00:10::(2 + index), owning the VIPs and routing via the router,
    /// exactly as [`Self::lb`] does. The caller owns it (and drops it before the topology).
    pub fn add_balancer(&self, index: u8) -> Peer {
        assert!((1..=8).contains(&index), "balancer index {index} outside 1..=8");
        let ns = Netns::new(&format!("lb{index}"));
        let (iface, port) = (unique("lb"), unique("p"));
        let host = 2 + index;
        let (addr4, addr6) = (format!("198.18.0.{host}"), format!("fd00:10::{host:x}"));
        self.plug_balancer(&ns, &iface, &port, &addr4, &addr6);
        Peer { ns, iface, port, addr4, addr6 }
    }

    /// A balancer's link: its own addresses plus the VIPs (it answers ARP/ND for them), and
    /// the router as its default route (towards the clients).
    fn plug_balancer(&self, ns: &Netns, iface: &str, port: &str, addr4: &str, addr6: &str) {
        self.plug(ns, iface, port, &[&format!("{addr4}/24"), &format!("{addr6}/64")]);
        for vip in [VIP4, DSR4, TUN4, GUE4] {
            ns.ip(&["addr", "add", &format!("{vip}/32"), "dev", iface]);
        }
        for vip in [VIP6, DSR6, TUN6] {
            ns.ip(&["addr", "add", &format!("{vip}/128"), "dev", iface, "nodad"]);
        }
        ns.ip(&["route", "add", "default", "via", ROUTER4]);
        ns.ip(&["-6", "route", "add", "default", "via", ROUTER6]);
    }

    /// Adds a backend in another subnet, behind a third router interface (198.18.6.0/24,
    /// fd00:60::/64; the backend at [`FAR4`]/[`FAR6`] on interface `iface`), for tunnel mode.
    /// Nothing else is set up in it: `sshlb-agent backend up` does the rest.
    pub fn add_far_backend(&mut self, name: &str, iface: &str) -> &Netns {
        let ns = Netns::new(name);
        let rt_if = unique("rf");
        crate::veth(
            &self.router,
            &rt_if,
            &["198.18.6.1/24", "fd00:60::1/64"],
            &ns,
            iface,
            &[&format!("{FAR4}/24"), &format!("{FAR6}/64")],
        );
        ns.ip(&["route", "add", "default", "via", "198.18.6.1"]);
        ns.ip(&["-6", "route", "add", "default", "via", "fd00:60::1"]);
        set(&ns, "net.ipv6.bindv6only", "1");
        self.far.push(ns);
        self.far.last().expect("just pushed")
    }

    /// Every namespace of the topology: switch, balancer, router, client, backends.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut all = vec![&self.sw, &self.lb, &self.router, &self.client];
        all.extend(&self.backends);
        all.extend(&self.far);
        all
    }

    /// Turns segmentation and receive offloads (and TX checksum offload) off on every veth of
    /// every namespace, bridge ports included, so frames are MTU-sized on every hop, as on a
    /// real NIC without TSO/GRO.
    pub fn offloads_off(&self) {
        for ns in self.namespaces() {
            for link in crate::counters::veths(ns) {
                let args = ["-K", &link, "tso", "off", "gso", "off", "gro", "off", "tx", "off"];
                run(ns.command("ethtool", &args).stdout(std::process::Stdio::null()));
            }
        }
    }

    /// A veth from `ns` (`ifname`, with `addrs`) to the bridge (`port`), offloads off.
    fn plug(&self, ns: &Netns, ifname: &str, port: &str, addrs: &[&str]) {
        run(&mut crate::cmd(
            "ip",
            &[
                "link",
                "add",
                ifname,
                "netns",
                &ns.name,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                &self.sw.name,
            ],
        ));
        self.sw.ip(&["link", "set", port, "master", "br0", "up"]);
        crate::bring_up(ns, ifname, addrs);
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for server in self.servers.drain(..) {
            let _ignored = server.join();
        }
    }
}

/// Starts servers on `0.0.0.0:port` and `[::]:port` in `ns` (one thread each, polling `stop`).
#[expect(clippy::needless_pass_by_value, reason = "the caller hands over its clone of `stop`")]
fn serve(
    ns: &Netns,
    name: &'static str,
    port: u16,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<()>> {
    let listeners = ns.run(move || {
        let v4 = TcpListener::bind(("0.0.0.0", port)).expect("bind v4");
        let v6 = TcpListener::bind(("::", port)).expect("bind v6");
        [v4, v6]
    });
    listeners
        .into_iter()
        .map(|listener| {
            let stop = Arc::clone(&stop);
            listener.set_nonblocking(true).expect("nonblocking");
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            thread::spawn(move || handle(conn, name));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect()
}

fn handle(mut conn: TcpStream, name: &str) {
    let _ignored = conn.set_nonblocking(false);
    let _ignored = conn.set_read_timeout(Some(Duration::from_secs(30)));
    if conn.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 16384];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ignored = conn.shutdown(Shutdown::Both);
}

/// A client connection through the VIP: reads the backend's name on connect.
pub struct Conn {
    pub stream: TcpStream,
    pub backend: String,
}

/// Connects to `addr:port` (from client port `source_port` when given) and reads the first line
/// the server sends — at most `max` bytes, without its newline — waiting up to `timeout`
/// (stretched by [`crate::slowdown`]) for each byte.
fn first_line(
    addr: &str,
    port: u16,
    source_port: Option<u16>,
    timeout: Duration,
    max: usize,
) -> std::io::Result<(TcpStream, String)> {
    let ip: std::net::IpAddr = addr.parse().expect("address");
    let stream = connect((ip, port).into(), source_port)?;
    stream.set_read_timeout(Some(timeout * crate::slowdown()))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let mut s = &stream;
    while line.len() < max {
        s.read_exact(&mut byte)?;
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    Ok((stream, String::from_utf8_lossy(&line).into_owned()))
}

impl Conn {
    /// Connects to `addr` (from the thread's namespace) and reads the backend's name.
    pub fn open(addr: &str, port: u16) -> std::io::Result<Self> {
        Self::open_from(addr, port, None)
    }

    /// Like [`Self::open`], from client port `source_port` when given: a test that checks how
    /// flows spread then sees the same flows, hence the same spread, on every run.
    pub fn open_from(addr: &str, port: u16, source_port: Option<u16>) -> std::io::Result<Self> {
        let (stream, name) = first_line(addr, port, source_port, Duration::from_secs(10), 16)?;
        Ok(Self { stream, backend: name })
    }

    /// Connects to an sshd behind `addr:port` and returns the last word of its identification
    /// line (the backends' `VersionAddendum` names them).
    pub fn open_banner(addr: &str, port: u16) -> std::io::Result<String> {
        Self::open_banner_from(addr, port, None)
    }

    /// Like [`Self::open_banner`], from client port `source_port` when given.
    pub fn open_banner_from(
        addr: &str,
        port: u16,
        source_port: Option<u16>,
    ) -> std::io::Result<String> {
        let (_, line) = first_line(addr, port, source_port, Duration::from_secs(5), 255)?;
        Ok(line.trim_end().rsplit(' ').next().unwrap_or_default().to_owned())
    }

    /// Sends `data` and reads it back; returns whether every byte came back intact.
    pub fn echo(&mut self, data: &[u8]) -> std::io::Result<bool> {
        let mut writer = self.stream.try_clone()?;
        let owned = data.to_vec();
        let sender = thread::spawn(move || writer.write_all(&owned));
        let mut back = vec![0u8; data.len()];
        self.stream.read_exact(&mut back)?;
        sender.join().expect("sender thread")?;
        Ok(back == data)
    }
}

/// Connects to `to` (5 s timeout), from local port `source_port` when given.
fn connect(to: std::net::SocketAddr, source_port: Option<u16>) -> std::io::Result<TcpStream> {
    let Some(sport) = source_port else {
        return TcpStream::connect_timeout(&to, Duration::from_secs(5) * crate::slowdown());
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let socket = if to.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        let any: std::net::IpAddr = if to.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        socket.bind((any, sport).into())?;
        let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        stream.into_std().and_then(|s| {
            s.set_nonblocking(false)?;
            Ok(s)
        })
    })
}

/// `len` bytes of deterministic pseudo-random data.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
