//! The BGP configuration the agent renders, against a real upstream router: two balancer
//! namespaces run BIRD 2 with the include file `sshlb::announce::render_bird` writes (BGP +
//! BFD at 100 ms); the router's BIRD merges their announcements into one ECMP kernel route;
//! when one balancer's BIRD dies hard (SIGKILL, so no withdrawal is ever sent) the router drops
//! that next hop by BFD, and an announcement withdrawn by the agent (empty VIP list) leaves the
//! router too. Prints the time from the death to the router's withdrawal.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use sshlb::{
    announce::render_bird,
    config::{Announce, AnnounceMode, Bfd, Neighbor},
};
use sshlb_tests::{bird::BirdDaemon, root_or_skip, veth, wait_for, Netns};

const VIP: &str = "198.18.0.100";

/// The router's kernel route to the VIP: its next hops.
fn next_hops(router: &Netns) -> Vec<String> {
    let out = router.command("ip", &["-4", "route", "show", &format!("{VIP}/32")]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_owned())
        .collect()
}

#[test]
fn router_spreads_over_announcing_balancers_and_drops_a_dead_one_by_bfd() {
    if !root_or_skip("router_spreads_over_announcing_balancers_and_drops_a_dead_one_by_bfd") {
        return;
    }
    let router = Netns::new("bgprt");
    let lbs = [Netns::new("bgplb1"), Netns::new("bgplb2")];
    let links = [("198.18.4.1", "198.18.4.2"), ("198.18.4.5", "198.18.4.6")];
    for (i, (lb, (rt_addr, lb_addr))) in lbs.iter().zip(links).enumerate() {
        veth(
            &router,
            &format!("r{i}"),
            &[&format!("{rt_addr}/30")],
            lb,
            "up0",
            &[&format!("{lb_addr}/30")],
        );
    }
    let ok = router
        .command("sysctl", &["-qw", "net.ipv4.fib_multipath_hash_policy=1"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "router sysctl");
    let router_conf = format!(
        "router id 198.18.4.1;\nprotocol device {{}}\n\
         protocol bfd {{ interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
         protocol kernel {{ ipv4 {{ export all; }}; merge paths yes; }}\n\
         template bgp lbs {{ local as 65000; bfd on; ipv4 {{ import all; export none; }}; }}\n\
         protocol bgp lb1 from lbs {{ neighbor {} as 65001; }}\n\
         protocol bgp lb2 from lbs {{ neighbor {} as 65001; }}\n",
        links[0].1, links[1].1
    );
    let rt_bird = BirdDaemon::start_in(Some(&router), &router.name, &router_conf);
    let vip: IpAddr = VIP.parse().expect("vip");
    let mut birds: Vec<BirdDaemon> = Vec::new();
    let mut announces = Vec::new();
    for (i, (lb, (rt_addr, lb_addr))) in lbs.iter().zip(links).enumerate() {
        let include = std::env::temp_dir().join(format!("{}-sshlb.conf", lb.name));
        let announce = Announce {
            mode: AnnounceMode::Bgp,
            local_as: Some(65001),
            router_id: Some(lb_addr.parse().expect("id")),
            neighbors: vec![Neighbor { address: rt_addr.parse().expect("ip"), remote_as: 65000 }],
            bfd: Bfd { enabled: true, interval: Duration::from_millis(100), multiplier: 3 },
            include_file: include.display().to_string(),
            ..Announce::default()
        };
        std::fs::write(&include, render_bird(&announce, &[vip])).expect("include");
        let conf = format!("protocol device {{}}\ninclude \"{}\";\n", include.display());
        birds.push(BirdDaemon::start_in(Some(lb), &format!("{}-{i}", lb.name), &conf));
        announces.push((announce, include));
    }

    let both = wait_for(Duration::from_secs(30), || (next_hops(&router).len() == 2).then_some(()));
    assert!(
        both.is_some(),
        "ECMP route over both balancers: {:?}\n{}",
        next_hops(&router),
        rt_bird.birdc(&["show", "protocols", "all"]).unwrap_or_default()
    );

    // A hard death: the balancer's packets stop (its link is dead to the router, but the
    // carrier stays up, as across a switch) and then its BIRD is SIGKILLed — the kernel's FIN
    // never leaves, so only BFD can tell the router.
    for chain in ["INPUT", "OUTPUT"] {
        let ok = lbs[0]
            .command("iptables", &["-w", "-A", chain, "-j", "DROP"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "iptables DROP in {}", lbs[0].name);
    }
    let died = Instant::now();
    birds[0].kill();
    let one = wait_for(Duration::from_secs(10), || {
        (next_hops(&router) == [links[1].1.to_owned()]).then_some(())
    });
    assert!(one.is_some(), "the dead balancer's next hop is withdrawn: {:?}", next_hops(&router));
    eprintln!(
        "balancer cut off + BIRD SIGKILLed -> router's kernel route withdrawn after {:?} (BFD)",
        died.elapsed()
    );

    // The agent's withdrawal: the survivor's include file with no VIP, `birdc configure`.
    let (announce, include) = &announces[1];
    std::fs::write(include, render_bird(announce, &[])).expect("include");
    let reply = birds[1].birdc(&["configure"]).expect("birdc configure");
    assert!(reply.contains("Reconfigured"), "{reply}");
    let gone = wait_for(Duration::from_secs(10), || next_hops(&router).is_empty().then_some(()));
    assert!(gone.is_some(), "a withdrawn VIP leaves the router: {:?}", next_hops(&router));
    for (_, include) in &announces {
        let _ignored = std::fs::remove_file(include);
    }
}
