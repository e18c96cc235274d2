//! SIGHUP reloads: the real agent binary in the foreground, an established connection open;
//! the configuration changes under it (a backend inserted first, another removed, weights
//! changed) and then turns invalid. The connection never notices, new flows follow the new
//! configuration, and a bad file changes nothing.

use std::{path::PathBuf, time::Duration};

use sshlb_tests::{
    agent_binary, prepare_bridge, root_or_skip,
    topo::{payload, Conn, Topo, BACKENDS, VIP4},
    wait_for,
};

fn config(control: &str, backends: &[(&str, u32)]) -> String {
    let mut text = format!(
        "[agent]\ncontrol = \"{control}\"\n\n[[service]]\nname = \"git\"\nvip = \"{VIP4}\"\nport = 22\nring-size = 4093\n"
    );
    for (name, weight) in backends {
        let (_, v4, _) = BACKENDS.iter().find(|(n, _, _)| n == name).expect("known backend");
        text += &format!(
            "[[service.backend]]\nname = \"{name}\"\naddress = \"{v4}\"\nweight = {weight}\n"
        );
    }
    text
}

#[test]
fn sighup_applies_changes_without_touching_established_flows() {
    if !root_or_skip("sighup_applies_changes_without_touching_established_flows") {
        return;
    }
    let agent = agent_binary();
    let agent = agent.to_str().expect("utf-8").to_owned();
    let mut topo = Topo::new(22);
    let dir = std::env::temp_dir();
    let cfg_path = dir.join(format!("{}.toml", topo.lb_if));
    let log = dir.join(format!("{}.log", topo.lb_if));
    let control = format!("/run/sshlb/test-{}.sock", topo.lb_if);
    std::fs::write(&cfg_path, config(&control, &[("b1", 100), ("b2", 100)])).expect("config");
    let _detach =
        prepare_bridge(&topo, vec![cfg_path.clone(), log.clone(), PathBuf::from(&control)]);
    let lb_if = topo.lb_if.clone();
    let cfg = cfg_path.to_str().expect("utf-8").to_owned();
    let pid = topo.lb.spawn_logged(&agent, &["up", &lb_if, "--config", &cfg], &log);
    let log_has = |what: &str| std::fs::read_to_string(&log).unwrap_or_default().contains(what);
    assert!(wait_for(Duration::from_secs(10), || log_has("attached to").then_some(())).is_some());
    std::thread::sleep(Duration::from_millis(300));

    // Established flows on both original backends.
    let mut conns = topo
        .client
        .run(|| (0..12).map(|_| Conn::open(VIP4, 22).expect("connect")).collect::<Vec<_>>());
    let kept = conns[0].backend.clone();
    let removed = if kept == "b1" { "b2" } else { "b1" };

    // b3 inserted first, the other original backend removed, weights changed.
    std::fs::write(&cfg_path, config(&control, &[("b3", 300), (kept.as_str(), 100)]))
        .expect("config");
    // SAFETY: kill(2) on a PID this test spawned.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    assert!(
        wait_for(Duration::from_secs(5), || log_has("reloaded").then_some(())).is_some(),
        "no reload"
    );
    conns = topo.client.run(move || {
        for (i, conn) in conns.iter_mut().enumerate() {
            let data = payload(64 * 1024, i as u64);
            assert!(conn
                .echo(&data)
                .unwrap_or_else(|e| panic!("flow {i} on {} broke: {e}", conn.backend)));
        }
        conns
    });
    let fresh = topo.client.run(|| {
        (0..60)
            .map(|_| Conn::open(VIP4, 22).map(|c| c.backend).map_err(|e| e.to_string()))
            .collect::<Vec<_>>()
    });
    assert!(fresh.iter().all(Result::is_ok), "{fresh:?}");
    assert!(
        fresh.iter().any(|b| b.as_deref() == Ok("b3")),
        "new backend gets new flows: {fresh:?}"
    );
    assert!(fresh.iter().all(|b| b.as_deref() != Ok(removed)), "removed {removed} got a new flow");

    // A broken file is refused with its location; nothing changes.
    std::fs::write(&cfg_path, "[[service]]\nname = \"git\"\nvip = \"not-an-ip\"\nport = 22\n")
        .expect("config");
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    assert!(wait_for(Duration::from_secs(5), || log_has("reload refused").then_some(())).is_some());
    assert!(log_has(":3: service[0].vip"), "the refusal names file, line and field");
    let after = topo.client.run(|| {
        (0..30)
            .map(|_| Conn::open(VIP4, 22).map(|c| c.backend).map_err(|e| e.to_string()))
            .collect::<Vec<_>>()
    });
    assert!(after.iter().all(Result::is_ok), "{after:?}");
    assert!(
        after.iter().any(|b| b.as_deref() == Ok("b3")),
        "the running config changed: {after:?}"
    );
    topo.client.run(move || {
        for conn in &mut conns {
            assert!(conn.echo(b"still here").expect("echo"));
        }
    });
}
