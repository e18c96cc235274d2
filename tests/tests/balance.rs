//! Namespace tests of the balancer itself: the real program attached (native XDP) to the
//! balancer's veth in a one-armed topology, real TCP from a client behind a router to three
//! backends, in full-NAT and DSR modes, over IPv4 and IPv6, every byte verified.

use std::collections::HashMap;

use sshlb::{config, plan};
use sshlb_tests::{
    config::{ConfigBuilder, ServiceBuilder},
    inproc::Balancer,
    topo::{payload, Conn, Topo, BACKENDS, DSR4, DSR6, VIP4, VIP6},
};

fn config_text(weights: [u32; 3], b3_state: &str) -> String {
    let mut cfg = ConfigBuilder::new();
    for (name, vip, mode, v6) in [
        ("nat4", VIP4, "nat", false),
        ("nat6", VIP6, "nat", true),
        ("dsr4", DSR4, "dsr", false),
        ("dsr6", DSR6, "dsr", true),
    ] {
        cfg = cfg.service(
            ServiceBuilder::new(name, vip, 22)
                .mode(mode)
                .ring_size(4093)
                .topo_backends(v6, |i, b| {
                    b.weight(weights[i]).state(if i == 2 { b3_state } else { "active" })
                }),
        );
    }
    cfg.to_toml()
}

fn start(topo: &Topo, config: &config::Config) -> Balancer {
    Balancer::start(topo, config)
}

#[test]
fn real_tcp_through_nat_and_dsr_over_v4_and_v6() {
    let Some(topo) = Topo::for_test("real_tcp_through_nat_and_dsr_over_v4_and_v6") else { return };
    let cfg = config::parse("test.toml", &config_text([100, 100, 100], "active")).expect("config");
    let _balancer = start(&topo, &cfg);
    let seen = topo.client.run(|| {
        let mut seen = Vec::new();
        for vip in [VIP4, VIP6, DSR4, DSR6] {
            for i in 0..3u64 {
                let mut conn = Conn::open(vip, 22)
                    .unwrap_or_else(|e| panic!("connect {vip}:22 through the balancer: {e}"));
                let data = payload(256 * 1024, i + 1);
                let intact = conn.echo(&data).unwrap_or_else(|e| panic!("echo via {vip}: {e}"));
                assert!(intact, "bytes through {vip} came back altered");
                seen.push((vip, conn.backend));
            }
        }
        seen
    });
    for (vip, backend) in &seen {
        assert!(BACKENDS.iter().any(|(b, _, _)| b == backend), "{vip} answered by {backend:?}");
    }
}

#[test]
fn weighted_spread_and_backend_removal_moves_no_established_flow() {
    let Some(topo) =
        Topo::for_test("weighted_spread_and_backend_removal_moves_no_established_flow")
    else {
        return;
    };
    let weights = [100, 100, 200];
    let cfg = config::parse("test.toml", &config_text(weights, "active")).expect("config");
    let mut balancer = start(&topo, &cfg);

    // 300 new connections spread by weight (1:1:2), within ±20% of each share. From fixed
    // client ports: the same 300 flows every run, so the spread is a fact about the hash and the
    // ring, not a 2σ draw that fails one run in ten.
    let counts = topo.client.run(|| {
        let mut counts: HashMap<String, u32> = HashMap::new();
        for i in 0..300 {
            let conn = Conn::open_from(VIP4, 22, Some(30_000 + i))
                .unwrap_or_else(|e| panic!("connect: {e}"));
            *counts.entry(conn.backend).or_default() += 1;
        }
        counts
    });
    for ((name, _, _), weight) in BACKENDS.iter().zip(weights) {
        let expected = 300.0 * f64::from(weight) / 400.0;
        let got = f64::from(counts.get(*name).copied().unwrap_or(0));
        assert!(
            (got - expected).abs() <= 0.2 * expected,
            "{name}: {got} of 300, expected ≈{expected} ({counts:?})"
        );
    }

    // Established connections, then b3 leaves the ring.
    let mut established = topo.client.run(|| {
        (0..30)
            .map(|_| Conn::open(VIP4, 22).unwrap_or_else(|e| panic!("connect: {e}")))
            .collect::<Vec<_>>()
    });
    assert!(established.iter().any(|c| c.backend == "b3"), "no established flow on b3 to protect");
    // The agent sees them: per-backend live flows from the table, per-service traffic counters.
    {
        let dp = balancer.dataplane();
        let active = dp.active_flows();
        let on_b3 = established.iter().filter(|c| c.backend == "b3").count() as u64;
        assert!(
            active.per_backend[2] >= on_b3,
            "b3 live flows {} < {on_b3}",
            active.per_backend[2]
        );
        assert!(active.per_service[0] >= 30, "nat4 live flows {}", active.per_service[0]);
        let traffic = dp.service_traffic(0).expect("service traffic");
        assert!(traffic.new_flows >= 330 && traffic.packets > 1000, "{traffic:?}");
    }
    let before = plan::plan(&cfg).expect("plan");
    let removed = config::parse("test.toml", &config_text(weights, "disabled")).expect("config");
    let after = plan::plan(&removed).expect("plan");
    let dp = balancer.dataplane();
    let nat4 = &after.services[0];
    dp.publish_service(&nat4.key, nat4.id, nat4.flags, &nat4.ring).expect("republish");

    // Maglev: only b3's slots (≈ half, it had weight 200 of 400) and a sliver of others move.
    let moved = before.services[0].ring.iter().zip(&nat4.ring).filter(|(a, b)| a != b).count();
    let b3_slots = before.services[0].ring.iter().filter(|&&id| id == 2).count();
    assert!(moved <= b3_slots + nat4.ring.len() / 50, "{moved} slots moved, b3 owned {b3_slots}");

    // Every established flow still reaches its backend and carries bytes intact.
    let established = topo.client.run(move || {
        for (i, conn) in established.iter_mut().enumerate() {
            let data = payload(8192, 100 + i as u64);
            let intact = conn
                .echo(&data)
                .unwrap_or_else(|e| panic!("established flow {i} on {} broke: {e}", conn.backend));
            assert!(intact, "established flow {i} altered");
        }
        established
    });
    assert_eq!(established.len(), 30);
    // New flows avoid the removed backend.
    let new_backends = topo.client.run(|| {
        (0..100)
            .map(|_| Conn::open(VIP4, 22).unwrap_or_else(|e| panic!("connect: {e}")).backend)
            .collect::<Vec<_>>()
    });
    assert!(new_backends.iter().all(|b| b != "b3"), "a new flow went to the removed backend");
}
