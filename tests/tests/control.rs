//! The control socket with the real agent binary: status, set-weight, drain, enable, disable,
//! blue-green switch and reload, each taking effect for new flows at once while established
//! flows keep carrying bytes.

use std::time::Instant;

use sshlb_tests::{
    agent::{scrape_metrics, AgentHandle},
    config::{ConfigBuilder, ServiceBuilder},
    topo::{payload, Conn, Topo, VIP4},
};

#[test]
fn control_commands_steer_new_flows_and_spare_established_ones() {
    let Some(topo) = Topo::for_test("control_commands_steer_new_flows_and_spare_established_ones")
    else {
        return;
    };
    let mut agent = AgentHandle::new(&topo);
    let service = ServiceBuilder::new("git", VIP4, 22)
        .ring_size(4093)
        .fast_connect_checks()
        .topo_backends(false, |i, b| b.group(if i == 2 { "green" } else { "blue" }));
    agent.start(ConfigBuilder::new().service(service));
    let ctl = |args: &[&str]| agent.ctl(args);
    let status = || agent.status();

    let mut established = topo
        .client
        .run(|| (0..12).map(|_| Conn::open(VIP4, 22).expect("connect")).collect::<Vec<_>>());
    let new_backends = |n: usize| {
        topo.client.run(move || {
            (0..n)
                .map(|_| Conn::open(VIP4, 22).map_or_else(|e| format!("error: {e}"), |c| c.backend))
                .collect::<Vec<_>>()
        })
    };
    let only = |got: &[String], allowed: &[&str]| got.iter().all(|b| allowed.contains(&b.as_str()));
    let timed = |args: &[&str]| {
        let started = Instant::now();
        let out = ctl(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        eprintln!("{args:?} took {:?} to be in the data plane", started.elapsed());
    };

    timed(&["switch", "git", "green"]);
    let got = new_backends(30);
    assert!(only(&got, &["b3"]), "after switch to green: {got:?}");
    timed(&["switch", "git", "blue"]);
    let got = new_backends(30);
    assert!(
        only(&got, &["b1", "b2"]) && got.iter().any(|b| b == "b1"),
        "after switch to blue: {got:?}"
    );
    timed(&["set-weight", "git/b1", "0"]);
    let got = new_backends(30);
    assert!(only(&got, &["b2"]), "after b1 weight 0: {got:?}");
    timed(&["enable", "git/b3"]);
    timed(&["disable", "git/b2"]);
    let got = new_backends(30);
    assert!(only(&got, &["b3"]), "after enable b3, disable b2: {got:?}");

    let s = status();
    let b = &s.services[0].backends;
    assert_eq!((b[0].weight, b[0].in_ring), (0, false));
    assert_eq!((b[1].state.as_str(), b[1].in_ring), ("disabled", false));
    assert_eq!((b[2].state.as_str(), b[2].in_ring), ("active", true));
    assert!(s.services[0].active_flows >= 12, "{:?}", s.services[0]);
    assert!(b.iter().map(|b| b.new_flows).sum::<u64>() >= 12 + 120);

    // Errors name what is wrong and change nothing.
    let out = ctl(&["drain", "git/nope"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("\"nope\""));
    let out = ctl(&["switch", "git", "red"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("\"red\""));
    // `reload` returns to what the file says: all three active again.
    timed(&["reload"]);
    let got = new_backends(60);
    for name in ["b1", "b2", "b3"] {
        assert!(got.iter().any(|b| b == name), "{name} missing after reload: {got:?}");
    }
    // Through all of it, every established flow kept its backend and its bytes.
    topo.client.run(move || {
        for (i, conn) in established.iter_mut().enumerate() {
            let data = payload(32 * 1024, i as u64);
            assert!(conn
                .echo(&data)
                .unwrap_or_else(|e| panic!("flow {i} on {}: {e}", conn.backend)));
        }
    });
    // Prometheus metrics, scraped from inside the balancer's namespace (loopback by default).
    let scrape = scrape_metrics(&topo.lb).expect("a scrape of the metrics endpoint");
    assert!(scrape.starts_with("HTTP/1.1 200 OK"), "{scrape}");
    for needle in [
        "sshlb_backend_health{service=\"git\",backend=\"b3\",state=\"up\"} 1",
        "sshlb_backend_weight{service=\"git\",backend=\"b1\"} 100",
        "sshlb_packets_total{outcome=\"fwd_nat\"}",
        "sshlb_health_check_duration_seconds_count",
        "sshlb_config_last_reload_success 1",
    ] {
        assert!(scrape.contains(needle), "metrics lack {needle:?}:\n{scrape}");
    }
    let generation = scrape
        .lines()
        .find_map(|l| l.strip_prefix("sshlb_config_generation "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("generation");
    assert!(generation >= 6, "six changes were applied, generation says {generation}");

    // A second agent for the same socket is refused before touching anything.
    let second = agent.command(&agent.up_args()).output().expect("spawn");
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another sshlb-agent is running"));
}
