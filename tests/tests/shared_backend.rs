//! Two services sharing their backends count each (service, backend) pair on its own: traffic
//! through one service shows under that service's backends only, in `status` and in the metrics.

use sshlb_tests::{
    agent::{scrape_metrics, AgentHandle},
    config::{ConfigBuilder, ServiceBuilder},
    topo::{payload, Conn, Topo, VIP4},
};

#[test]
fn figures_belong_to_the_service_and_backend_pair() {
    let Some(topo) = Topo::for_test("figures_belong_to_the_service_and_backend_pair") else {
        return;
    };
    let mut agent = AgentHandle::new(&topo);
    let service = |name: &str, port: u16| {
        ServiceBuilder::new(name, VIP4, port)
            .ring_size(251)
            .fast_connect_checks()
            .topo_backends(false, |_, b| b)
    };
    agent.start(ConfigBuilder::new().service(service("used", 22)).service(service("idle", 2222)));

    let mut conns = topo
        .client
        .run(|| (0..9).map(|_| Conn::open(VIP4, 22).expect("connect")).collect::<Vec<_>>());
    topo.client.run(move || {
        for (i, conn) in conns.iter_mut().enumerate() {
            assert!(conn.echo(&payload(4096, i as u64)).expect("echo"));
        }
        conns
    });

    let s = agent.status();
    let (used, idle) = (&s.services[0], &s.services[1]);
    assert_eq!((used.name.as_str(), idle.name.as_str()), ("used", "idle"));
    let sum = |svc: &sshlb::control::ServiceStatus,
               f: fn(&sshlb::control::BackendStatus) -> u64| {
        svc.backends.iter().map(f).sum::<u64>()
    };
    assert_eq!(sum(used, |b| b.new_flows), 9, "{used:?}");
    assert_eq!(sum(used, |b| b.active_flows), 9, "{used:?}");
    assert!(sum(used, |b| b.bytes) > 9 * 2 * 4096, "{used:?}");
    let figures: [fn(&sshlb::control::BackendStatus) -> u64; 5] =
        [|b| b.new_flows, |b| b.active_flows, |b| b.live_sessions, |b| b.packets, |b| b.bytes];
    for f in figures {
        assert_eq!(sum(idle, f), 0, "no connection used \"idle\", yet: {idle:?}");
    }

    let scrape = scrape_metrics(&topo.lb).expect("a scrape of the metrics endpoint");
    for metric in [
        "sshlb_backend_active_flows",
        "sshlb_backend_live_sessions",
        "sshlb_backend_new_flows_total",
        "sshlb_backend_packets_total",
        "sshlb_backend_bytes_total",
    ] {
        for (name, _, _) in sshlb_tests::topo::BACKENDS {
            let line = format!("{metric}{{service=\"idle\",backend=\"{name}\"}} 0\n");
            assert!(scrape.contains(&line), "metrics lack {line:?}:\n{scrape}");
        }
    }
    let used_flows: u64 = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("sshlb_backend_new_flows_total{service=\"used\","))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(used_flows, 9, "{scrape}");
}
