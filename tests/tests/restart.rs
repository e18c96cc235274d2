//! The agent is SIGKILLed and started again while a connection through the balancer is open:
//! the data plane keeps forwarding without an agent, the new agent takes over the pinned maps
//! and program, and the connection carries on, every byte intact.

use std::time::Duration;

use sshlb_tests::{
    agent::AgentHandle,
    config::{ConfigBuilder, ServiceBuilder},
    run,
    topo::{payload, Conn, Topo, VIP4},
    wait_for,
};

#[test]
fn established_flow_survives_agent_sigkill_and_restart() {
    let Some(topo) = Topo::for_test("established_flow_survives_agent_sigkill_and_restart") else {
        return;
    };
    // The SIGKILLed agent cannot remove its control socket: the handle does.
    let mut agent = AgentHandle::new(&topo);
    let service =
        ServiceBuilder::new("git", VIP4, 22).ring_size(4093).topo_backends(false, |_, b| b);
    agent.configure(ConfigBuilder::new().service(service));

    agent.up();
    assert!(
        wait_for(Duration::from_secs(10), || agent.attached().then_some(())).is_some(),
        "agent did not attach"
    );
    // Give the agent's start-up (rings, neighbours) a moment before the first connection.
    std::thread::sleep(Duration::from_millis(300));
    let mut conn = topo.client.run(|| Conn::open(VIP4, 22).expect("connect through the balancer"));
    let backend = conn.backend.clone();
    let exchange = |conn: Conn, seed: u64| {
        topo.client.run(move || {
            let mut conn = conn;
            let data = payload(128 * 1024, seed);
            assert!(conn.echo(&data).expect("echo"), "bytes altered");
            conn
        })
    };
    conn = exchange(conn, 1);

    // SIGKILL: no cleanup at all. The pinned program keeps forwarding.
    agent.kill();
    std::thread::sleep(Duration::from_millis(200));
    assert!(agent.attached(), "the program must stay attached when the agent dies");
    conn = exchange(conn, 2);

    // An older agent's pins lack the maps added since (OWN_FILTER): the takeover creates them.
    let added = std::path::Path::new(sshlb_tests::PIN_ROOT)
        .join(&topo.lb_if)
        .join(sshlb_common::map_names::OWN_FILTER);
    std::fs::remove_file(&added).expect("the own-address pre-filter is pinned");

    // A new agent takes over; the connection never notices.
    let mut detached = agent.up_args();
    detached.push("--detach".into());
    let out = run(&mut agent.command(&detached));
    assert!(String::from_utf8_lossy(&out.stderr).contains("took over"), "{out:?}");
    assert!(added.exists(), "the takeover did not pin the added map");
    conn = exchange(conn, 3);
    assert_eq!(conn.backend, backend);
    // New connections keep working too.
    let fresh = topo.client.run(|| Conn::open(VIP4, 22).map(|c| c.backend));
    assert!(fresh.is_ok(), "{fresh:?}");
    drop(conn);
}
