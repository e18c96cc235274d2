//! The agent is SIGKILLed and started again while a connection through the balancer is open:
//! the data plane keeps forwarding without an agent, the new agent takes over the pinned maps
//! and program, and the connection carries on, every byte intact.

use std::{path::PathBuf, time::Duration};

use sshlb_tests::{
    agent_binary, prepare_bridge, root_or_skip, run,
    topo::{payload, Conn, Topo, BACKENDS, VIP4},
    wait_for,
};

#[test]
fn established_flow_survives_agent_sigkill_and_restart() {
    if !root_or_skip("established_flow_survives_agent_sigkill_and_restart") {
        return;
    }
    let agent = agent_binary();
    let agent = agent.to_str().expect("utf-8").to_owned();
    let mut topo = Topo::new(22);
    let config = std::env::temp_dir().join(format!("{}.toml", topo.lb_if));
    let mut text = format!(
        "[agent]\ncontrol = \"/run/sshlb/test-{}.sock\"\n\n[[service]]\nname = \"git\"\nvip = \"{VIP4}\"\nport = 22\nring-size = 4093\n",
        topo.lb_if
    );
    for (name, v4, _) in BACKENDS {
        text += &format!("[[service.backend]]\nname = \"{name}\"\naddress = \"{v4}\"\n");
    }
    std::fs::write(&config, text).expect("config");
    // The SIGKILLed agent cannot remove its control socket: the guard does.
    let socket = PathBuf::from(format!("/run/sshlb/test-{}.sock", topo.lb_if));
    let _detach = prepare_bridge(&topo, vec![config.clone(), socket]);
    let lb_if = topo.lb_if.clone();
    let cfg = config.to_str().expect("utf-8").to_owned();
    let attached = |topo: &Topo| {
        let out = topo.lb.ip(&["link", "show", &lb_if]);
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    };

    let first = topo.lb.spawn(&agent, &["up", &topo.lb_if.clone(), "--config", &cfg]);
    assert!(
        wait_for(Duration::from_secs(10), || attached(&topo).then_some(())).is_some(),
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
    // SAFETY: kill(2) on a PID this test spawned.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(200));
    assert!(attached(&topo), "the program must stay attached when the agent dies");
    conn = exchange(conn, 2);

    // A new agent takes over; the connection never notices.
    let out = run(&mut topo
        .lb
        .command(&agent, &["up", &topo.lb_if.clone(), "--config", &cfg, "--detach"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("took over"), "{out:?}");
    conn = exchange(conn, 3);
    assert_eq!(conn.backend, backend);
    // New connections keep working too.
    let fresh = topo.client.run(|| Conn::open(VIP4, 22).map(|c| c.backend));
    assert!(fresh.is_ok(), "{fresh:?}");
    drop(conn);
}
