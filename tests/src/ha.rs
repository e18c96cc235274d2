//! The HA lab: the lab ([`crate::lab::Lab`]) with N balancers on its segment, all with the same
//! services (so the same Maglev rings), each running BIRD 2 next to its agent with a BGP + BFD
//! session to the router, and the router running BIRD too, merging the balancers' announcements
//! into one ECMP kernel route per VIP and spreading flows over it by the L4 hash of their
//! headers (`fib_multipath_hash_policy=3`, 5-tuple fields; see [`HaLab::build`]). What `sshlb-lab --balancers N` and `tests/tests/e2e_ha.rs`
//! stand on: one builder for both.
//!
//! ```text
//!  client ── router (BIRD, AS 65000, ECMP) ──[segment]── lb0 .2, lb1 .3, lb2 .4 (agent + BIRD, AS 65001)
//!                                                   └── b1 .11, b2 .12, b3 .13 (sshd, DSR VIPs on lo)
//! ```
//!
//! The agents are started by the caller ([`HaLab::agent`] + [`HaLab::config`]): a test kills and
//! restarts them, the lab binary keeps them running.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    agent::AgentHandle,
    bird::BirdDaemon,
    config::ConfigBuilder,
    keepalived::Keepalived,
    lab::Lab,
    run,
    topo::{Peer, DSR4, DSR6, LB4, LB6, ROUTER4, ROUTER6, VIP4},
    wait_for, Netns,
};

/// The router's AS.
pub const ROUTER_AS: u32 = 65000;
/// The balancers' AS (one AS for the whole fleet: they announce the same VIPs).
pub const BALANCER_AS: u32 = 65001;
/// BFD's interval on every session: 100 ms, stretched by [`crate::slowdown`] (under emulation
/// BIRD sends and reads the same packets, only slower).
pub fn bfd_interval_ms() -> u32 {
    100 * crate::slowdown()
}
/// Missed BFD packets that declare a peer down: five, not three, so a balancer's BIRD starved of
/// CPU for a few hundred milliseconds on a loaded 2-core machine is not taken for dead.
pub const BFD_MULTIPLIER: u32 = 5;

/// One balancer of the HA lab: where it lives on the segment.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    /// Its namespace.
    pub ns: &'a Netns,
    /// Its interface on the segment.
    pub iface: &'a str,
    /// That interface's bridge-side peer.
    pub port: &'a str,
    /// Its IPv4 address on the segment: its BGP next hop and router id.
    pub addr4: &'a str,
    /// Its IPv6 address on the segment: its IPv6 BGP next hop.
    pub addr6: &'a str,
}

/// The HA lab. Fields drop in order: the BIRDs die before the namespaces they run in go.
pub struct HaLab {
    /// BIRD on each balancer, in balancer order.
    pub birds: Vec<BirdDaemon>,
    /// The router's BIRD.
    pub router_bird: BirdDaemon,
    /// Balancers 1.. (balancer 0 is the lab's own [`crate::topo::Topo::lb`]).
    pub peers: Vec<Peer>,
    /// The lab: topology, keys, repository, sshd backends.
    pub lab: Lab,
    /// Each balancer's BIRD include file (written by its agent), in balancer order.
    includes: Vec<PathBuf>,
}

impl HaLab {
    /// Builds the lab with `balancers` balancers (1..=8), files in `dir`, and starts every BIRD:
    /// the router's with one BGP session per balancer and family, each balancer's with an empty
    /// include file that its agent fills.
    pub fn build(dir: &Path, remove_files: bool, balancers: u8) -> Self {
        assert!((1..=8).contains(&balancers), "--balancers {balancers}: 1 to 8 are supported");
        let lab = Lab::build(dir, remove_files);
        let peers: Vec<Peer> = (1..balancers).map(|i| lab.topo.add_balancer(i)).collect();
        let router = &lab.topo.router;
        // ECMP by the L4 hash of the headers (addresses, protocol, ports). Not policy 1: for a
        // segment that already carries an L4 hash, Linux's policy 1 uses that instead, and a
        // segment from another namespace carries the client socket's transmit hash, which TCP
        // re-draws (after a retransmission timeout, a duplicate segment...) — a flow would hop
        // between balancers with no failure at all. A router fed by a wire hashes the headers,
        // the same way for every segment of a flow; policy 3 with these fields does exactly that.
        for family in ["ipv4", "ipv6"] {
            for (key, value) in
                [("fib_multipath_hash_policy", "3"), ("fib_multipath_hash_fields", "0x0037")]
            {
                run(&mut router.command("sysctl", &["-qw", &format!("net.{family}.{key}={value}")]));
            }
        }
        let mut addrs = vec![(LB4.to_owned(), LB6.to_owned())];
        addrs.extend(peers.iter().map(|p| (p.addr4.clone(), p.addr6.clone())));
        let router_bird =
            BirdDaemon::start_in(Some(router), &router.name, &router_bird_conf(&addrs));
        let mut ha = Self { birds: Vec::new(), router_bird, peers, lab, includes: Vec::new() };
        for i in 0..ha.len() {
            let node = ha.node(i);
            let include = std::env::temp_dir().join(format!("{}-bird-sshlb.conf", node.iface));
            std::fs::write(&include, "").expect("empty include file");
            let conf = format!(
                "router id {};\nprotocol device {{}}\ninclude \"{}\";\n",
                node.addr4,
                include.display()
            );
            let bird = BirdDaemon::start_in(Some(node.ns), &node.ns.name, &conf);
            ha.birds.push(bird);
            ha.includes.push(include);
        }
        ha
    }

    /// How many balancers.
    pub fn len(&self) -> usize {
        1 + self.peers.len()
    }

    /// Never empty (balancer 0 always exists); here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Balancer `i` (0 is the lab's own).
    pub fn node(&self, i: usize) -> Node<'_> {
        node(&self.lab, &self.peers, i)
    }

    /// An agent handle for balancer `i` (nothing started yet).
    pub fn agent(&self, i: usize) -> AgentHandle<'_> {
        let node = self.node(i);
        AgentHandle::on(&self.lab.topo.sw, node.ns, node.iface, node.port)
    }

    /// Balancer `i`'s configuration: the same services on every balancer — DSR over IPv4
    /// (`dsr4`, listed first) and IPv6 (`dsr6`), the lab's three backends — announced by BGP
    /// through its own BIRD to the router over both families, BFD at [`bfd_interval_ms`].
    /// Only `control`, the BIRD socket and the include file differ between balancers.
    pub fn config(&self, i: usize, control: &Path) -> String {
        let bird = &self.birds[i];
        let announce = format!(
            "[announce]\nmode = \"bgp\"\nlocal-as = {BALANCER_AS}\nbfd-interval = \"{}ms\"\nbfd-multiplier = {BFD_MULTIPLIER}\n\
             bird-socket = \"{}\"\ninclude-file = \"{}\"\n\
             [[announce.neighbor]]\naddress = \"{ROUTER4}\"\nas = {ROUTER_AS}\n\
             [[announce.neighbor]]\naddress = \"{ROUTER6}\"\nas = {ROUTER_AS}\n",
            bfd_interval_ms(),
            bird.socket().display(),
            self.includes[i].display()
        );
        ConfigBuilder::new()
            .control(control)
            .service(Lab::ssh_service("dsr4", DSR4, "dsr", false))
            .service(Lab::ssh_service("dsr6", DSR6, "dsr", true))
            .table(&announce)
            .to_toml()
    }

    /// The router's kernel route to `vip` (IPv4 or IPv6): its next hops, sorted.
    pub fn next_hops(&self, vip: &str) -> Vec<String> {
        let (family, len) = if vip.contains(':') { ("-6", 128) } else { ("-4", 32) };
        let prefix = format!("{vip}/{len}");
        let out = self.lab.topo.router.command("ip", &[family, "route", "show", &prefix]).output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut hops: Vec<String> =
            words.windows(2).filter(|w| w[0] == "via").map(|w| w[1].to_owned()).collect();
        hops.sort();
        hops
    }

    /// The next hops balancers `alive` would give (their addresses for `vip`'s family), sorted.
    pub fn hops_of(&self, vip: &str, alive: &[usize]) -> Vec<String> {
        let mut hops: Vec<String> = alive
            .iter()
            .map(|&i| {
                let node = self.node(i);
                if vip.contains(':') { node.addr6 } else { node.addr4 }.to_owned()
            })
            .collect();
        hops.sort();
        hops
    }

    /// Waits up to `timeout` until the router routes `vip` over exactly balancers `alive`.
    pub fn wait_routed_over(&self, vip: &str, alive: &[usize], timeout: Duration) -> bool {
        let want = self.hops_of(vip, alive);
        wait_for(timeout, || (self.next_hops(vip) == want).then_some(())).is_some()
    }

    /// The router's view of its BGP sessions and BFD (`birdc show protocols`, `show bfd
    /// sessions`), for failure messages.
    pub fn router_protocols(&self) -> String {
        let protocols = self.router_bird.birdc(&["show", "protocols"]).unwrap_or_default();
        let bfd = self.router_bird.birdc(&["show", "bfd", "sessions"]).unwrap_or_default();
        protocols + &bfd
    }
}

/// The full-NAT pair's NAT address: it moves between the balancers with the VIP.
pub const NAT4: &str = "198.18.0.50";
/// The pair's full-NAT source ports (the agent's default range).
pub const NAT_PORTS: (u16, u16) = (10_000, 32_767);

/// The full-NAT pair: the lab with a second balancer on its segment; keepalived (VRRP, 100 ms
/// adverts, × [`crate::slowdown`]) on both moves the NAT VIP ([`VIP4`]) and the NAT address ([`NAT4`]) together to
/// whichever is master — balancer 0 while it lives (priority 150 against 100). Both run the same
/// configuration, so the standby picks each flow's backend by the same ring and its NAT port by
/// the same hash. Fields drop in order: keepalived dies before the namespaces go.
pub struct NatPair {
    /// keepalived on balancer 0 and 1.
    pub keepaliveds: Vec<Keepalived>,
    /// Balancer 1.
    pub peer: Peer,
    /// The lab: topology, keys, repository, sshd backends.
    pub lab: Lab,
}

impl NatPair {
    /// Builds it, files in `dir`, and starts keepalived on both balancers.
    ///
    /// On each balancer, the VIP leaves the interface (keepalived puts it, and the NAT address,
    /// on the master only), and TCP to the NAT address within [`NAT_PORTS`] is dropped before
    /// the kernel's TCP sees it: a backend's segment that reaches a new master before any client
    /// segment of its flow finds no reverse entry and is passed to the kernel, which owns the
    /// NAT address and would answer with a RST that ends the backend's connection. (XDP runs
    /// before netfilter: what it forwards never meets the rule.)
    pub fn build(dir: &Path, remove_files: bool) -> Self {
        let lab = Lab::build(dir, remove_files);
        let peer = lab.topo.add_balancer(1);
        let mut pair = Self { keepaliveds: Vec::new(), peer, lab };
        for i in 0..2 {
            let node = pair.node(i);
            node.ns.ip(&["addr", "del", &format!("{VIP4}/32"), "dev", node.iface]);
            let ports = format!("{}:{}", NAT_PORTS.0, NAT_PORTS.1);
            run(&mut node.ns.command(
                "iptables",
                &["-w", "-A", "INPUT", "-d", NAT4, "-p", "tcp", "--dport", &ports, "-j", "DROP"],
            ));
            let priority = if i == 0 { 150 } else { 100 };
            // 100 ms adverts, stretched under emulation like the BFD interval.
            let advert = f64::from(crate::slowdown()) / 10.0;
            let config = format!(
                "global_defs {{\n  router_id sshlb_lb{i}\n  vrrp_version 3\n}}\n\
                 vrrp_instance sshlb {{\n  state BACKUP\n  interface {}\n  virtual_router_id 51\n  \
                 priority {priority}\n  advert_int {advert}\n  virtual_ipaddress {{\n    {VIP4}/32\n    \
                 {NAT4}/32\n  }}\n}}\n",
                node.iface
            );
            let keepalived = Keepalived::start(node.ns, &config);
            pair.keepaliveds.push(keepalived);
        }
        pair
    }

    /// Balancer `i` (0 or 1).
    pub fn node(&self, i: usize) -> Node<'_> {
        node(&self.lab, std::slice::from_ref(&self.peer), i)
    }

    /// An agent handle for balancer `i` (nothing started yet).
    pub fn agent(&self, i: usize) -> AgentHandle<'_> {
        let node = self.node(i);
        AgentHandle::on(&self.lab.topo.sw, node.ns, node.iface, node.port)
    }

    /// The configuration of both balancers: the lab's full-NAT IPv4 service (`nat4`) from
    /// [`NAT4`], control socket `control`.
    pub fn config(control: &Path) -> String {
        ConfigBuilder::new()
            .control(control)
            .agent("nat-v4", &format!("\"{NAT4}\""))
            .agent("nat-ports", &format!("\"{}-{}\"", NAT_PORTS.0, NAT_PORTS.1))
            .service(Lab::ssh_service("nat4", VIP4, "nat", false))
            .to_toml()
    }

    /// Whether balancer `i` holds the VIP and the NAT address (it is VRRP master).
    pub fn holds(&self, i: usize) -> bool {
        let node = self.node(i);
        let out = node.ns.ip(&["-4", "addr", "show", "dev", node.iface]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains(&format!("{VIP4}/32")) && text.contains(&format!("{NAT4}/32"))
    }
}

/// Balancer `i` of a lab with `peers` added: 0 is the lab's own.
fn node<'a>(lab: &'a Lab, peers: &'a [Peer], i: usize) -> Node<'a> {
    let topo = &lab.topo;
    if i == 0 {
        return Node {
            ns: &topo.lb,
            iface: &topo.lb_if,
            port: &topo.lb_port,
            addr4: LB4,
            addr6: LB6,
        };
    }
    let p = &peers[i - 1];
    Node { ns: &p.ns, iface: &p.iface, port: &p.port, addr4: &p.addr4, addr6: &p.addr6 }
}

/// The router's `bird.conf` for balancers at `addrs` (IPv4, IPv6): BFD on the segment, ECMP
/// into the kernel (`merge paths`), and an IPv4 and an IPv6 BGP session to every balancer,
/// importing what they announce.
fn router_bird_conf(addrs: &[(String, String)]) -> String {
    let ms = bfd_interval_ms();
    let mut conf = format!(
        "router id {ROUTER4};\nprotocol device {{}}\n\
         protocol bfd {{ interface \"rt0\" {{ min rx interval {ms} ms; min tx interval {ms} ms; \
         idle tx interval {ms} ms; multiplier {BFD_MULTIPLIER}; }}; }}\n\
         protocol kernel {{ ipv4 {{ export all; }}; merge paths yes; }}\n\
         protocol kernel {{ ipv6 {{ export all; }}; merge paths yes; }}\n\
         template bgp lb4 {{ local as {ROUTER_AS}; bfd on; connect retry time 1; error wait time 1, 5; ipv4 {{ import all; export none; }}; }}\n\
         template bgp lb6 {{ local as {ROUTER_AS}; bfd on; connect retry time 1; error wait time 1, 5; ipv6 {{ import all; export none; }}; }}\n"
    );
    for (i, (addr4, addr6)) in addrs.iter().enumerate() {
        conf += &format!(
            "protocol bgp lb{i}v4 from lb4 {{ neighbor {addr4} as {BALANCER_AS}; }}\n\
             protocol bgp lb{i}v6 from lb6 {{ neighbor {addr6} as {BALANCER_AS}; }}\n"
        );
    }
    conf
}

impl Drop for HaLab {
    fn drop(&mut self) {
        for include in &self.includes {
            let _ignored = std::fs::remove_file(include);
        }
    }
}
