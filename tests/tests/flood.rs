//! A spoofed SYN flood against a full-NAT and a DSR VIP, with a real client connecting through
//! it: during the flood and straight after, the client's connections keep succeeding.
//!
//! The NAT port range is cut to 1,000 ports per backend so that a small, bounded flood (6,000
//! SYNs from spoofed sources in 198.19.0.0/16, 1,500/s for 4 s) holds far more ports than exist:
//! without the data plane reclaiming the ports of dead handshakes every new flow would be
//! refused for the 120 s SYN timeout once 3,000 were taken (2 s into the flood).

use std::{
    thread,
    time::{Duration, Instant},
};

use sshlb_tests::{
    config::ConfigBuilder,
    inject::{flood_targets, SynFlood},
    inproc::Balancer,
    topo::{Conn, Topo, DSR4, VIP4},
};

/// SYNs per second and for how long (bounded: 6,000 frames).
const FLOOD_RATE: u32 = 1_500;
const FLOOD_SECONDS: u32 = 4;

/// One real connection: connect, read the backend's name, echo a line.
fn connects(vip: &str) -> bool {
    Conn::open(vip, 22).and_then(|mut conn| conn.echo(b"still here\n")).unwrap_or(false)
}

#[test]
fn real_clients_get_through_a_spoofed_syn_flood() {
    let Some(topo) = Topo::for_test("real_clients_get_through_a_spoofed_syn_flood") else { return };
    let cfg = flood_targets(ConfigBuilder::new().agent("nat-ports", "\"20000-20999\""));
    let config = cfg.parse("flood.toml");
    let balancer = Balancer::start(&topo, &config);
    // A first connection through each VIP: the path works before the flood.
    let (nat_ok, dsr_ok) = topo.client.run(|| (connects(VIP4), connects(DSR4)));
    assert!(nat_ok && dsr_ok, "no connection before the flood (nat {nat_ok}, dsr {dsr_ok})");

    let flood = SynFlood {
        rate: Some(FLOOD_RATE),
        max: FLOOD_RATE * FLOOD_SECONDS,
        within: Duration::from_secs(u64::from(FLOOD_SECONDS) + 2),
        first: 0,
    }
    .spawn(&topo);

    // The real client, from its own namespace: every 100 ms during the flood, every 200 ms in
    // the 3 s after it.
    let flooding = flood.watch();
    let (during, after) = topo.client.run(move || {
        let mut during = Vec::new();
        thread::sleep(Duration::from_millis(300));
        while flooding.on() {
            let vip = if during.len() % 2 == 0 { VIP4 } else { DSR4 };
            during.push(connects(vip));
            thread::sleep(Duration::from_millis(100));
        }
        let mut after = Vec::new();
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            let vip = if after.len() % 2 == 0 { VIP4 } else { DSR4 };
            after.push(connects(vip));
            thread::sleep(Duration::from_millis(200));
        }
        (during, after)
    });
    let (sent, _) = flood.join();
    let ok = |v: &[bool]| v.iter().filter(|&&b| b).count();
    let reclaimed = balancer.counter("event_nat_port_reclaimed");
    let exhausted = balancer.counter("drop_nat_ports_exhausted");
    eprintln!(
        "flood: {sent} spoofed SYNs; client during it {}/{}, after it {}/{}; NAT ports \
         reclaimed {reclaimed}, refused {exhausted}",
        ok(&during),
        during.len(),
        ok(&after),
        after.len()
    );
    assert_eq!(sent, FLOOD_RATE * FLOOD_SECONDS, "the whole flood went out");
    assert!(during.len() >= 20, "the client tried only {} times during the flood", during.len());
    assert!(
        ok(&during) * 10 >= during.len() * 9,
        "only {}/{} connections got through during the flood",
        ok(&during),
        during.len()
    );
    assert_eq!(ok(&after), after.len(), "a connection failed after the flood");
    // The flood did take more ports than the range holds: they were recycled, not spared.
    assert!(reclaimed > 0, "no NAT port was reclaimed: the flood never exhausted the range");
}
