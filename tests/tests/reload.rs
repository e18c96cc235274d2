//! SIGHUP reloads: the real agent binary in the foreground, an established connection open;
//! the configuration changes under it (a backend inserted first, another removed, weights
//! changed) and then turns invalid. The connection never notices, new flows follow the new
//! configuration, and a bad file changes nothing.

use std::time::Duration;

use sshlb_tests::{
    agent::AgentHandle,
    config::{BackendBuilder, ConfigBuilder, ServiceBuilder},
    topo::{payload, Conn, Topo, BACKENDS, VIP4},
};

/// git on the topology backends `backends` (name, weight), in this order.
fn config(backends: &[(&str, u32)]) -> ConfigBuilder {
    let mut service = ServiceBuilder::new("git", VIP4, 22).ring_size(4093);
    for (name, weight) in backends {
        let (_, v4, _) = BACKENDS.iter().find(|(n, _, _)| n == name).expect("known backend");
        service = service.backend(BackendBuilder::new(name, v4).weight(*weight));
    }
    ConfigBuilder::new().service(service)
}

/// The backends `n` new connections through the VIP reach (or why each failed).
fn new_flows(topo: &Topo, n: usize) -> Vec<Result<String, String>> {
    topo.client.run(move || {
        (0..n).map(|_| Conn::open(VIP4, 22).map(|c| c.backend).map_err(|e| e.to_string())).collect()
    })
}

#[test]
fn sighup_applies_changes_without_touching_established_flows() {
    let Some(topo) = Topo::for_test("sighup_applies_changes_without_touching_established_flows")
    else {
        return;
    };
    let mut agent = AgentHandle::new(&topo);
    agent.configure(config(&[("b1", 100), ("b2", 100)]));
    agent.up();
    let log_has = |what: &str| agent.log_has(what);
    assert!(agent.wait_log("attached to", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(300));

    // Established flows on both original backends.
    let mut conns = topo
        .client
        .run(|| (0..12).map(|_| Conn::open(VIP4, 22).expect("connect")).collect::<Vec<_>>());
    let kept = conns[0].backend.clone();
    let removed = if kept == "b1" { "b2" } else { "b1" };

    // b3 inserted first, the other original backend removed, weights changed.
    agent.configure(config(&[("b3", 300), (kept.as_str(), 100)]));
    agent.signal(libc::SIGHUP);
    assert!(agent.wait_log("reloaded", Duration::from_secs(5)), "no reload");
    conns = topo.client.run(move || {
        for (i, conn) in conns.iter_mut().enumerate() {
            let data = payload(64 * 1024, i as u64);
            assert!(conn
                .echo(&data)
                .unwrap_or_else(|e| panic!("flow {i} on {} broke: {e}", conn.backend)));
        }
        conns
    });
    let fresh = new_flows(&topo, 60);
    assert!(fresh.iter().all(Result::is_ok), "{fresh:?}");
    assert!(
        fresh.iter().any(|b| b.as_deref() == Ok("b3")),
        "new backend gets new flows: {fresh:?}"
    );
    assert!(fresh.iter().all(|b| b.as_deref() != Ok(removed)), "removed {removed} got a new flow");

    // A broken file is refused with its location; nothing changes.
    agent.write_config(
        &ConfigBuilder::new().service(ServiceBuilder::new("git", "not-an-ip", 22)).to_toml(),
    );
    agent.signal(libc::SIGHUP);
    assert!(agent.wait_log("reload refused", Duration::from_secs(5)));
    assert!(log_has(":3: service[0].vip"), "the refusal names file, line and field");
    let after = new_flows(&topo, 30);
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
