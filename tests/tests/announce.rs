//! Health-gated VIP announcement with the real agent binary and a real BIRD 2: the VIP is
//! announced while the service has enough usable backends, withdrawn by `maintenance on`
//! (established flows keep flowing and new ones are still forwarded), announced again by
//! `maintenance off`, withdrawn when health drops below `min-backends`, reported — never fatal —
//! while BIRD is dead, and withdrawn on a clean stop (SIGTERM).

use std::time::Duration;

use sshlb::control::Status;
use sshlb_tests::{
    agent::AgentHandle,
    bird::BirdDaemon,
    config::{ConfigBuilder, ServiceBuilder},
    topo::{payload, Conn, Topo, VIP4},
    wait_for,
};

fn announce_of(status: &Status) -> (bool, String) {
    let a = &status.services[0].announce;
    (a.announced, a.reason.clone())
}

#[test]
fn vip_is_announced_while_healthy_and_withdrawn_by_maintenance_health_and_stop() {
    let Some(topo) = Topo::for_test(
        "vip_is_announced_while_healthy_and_withdrawn_by_maintenance_health_and_stop",
    ) else {
        return;
    };
    let mut agent = AgentHandle::new(&topo);
    let include_name = format!("{}-sshlb.conf", topo.lb_if);
    let include = std::env::temp_dir().join(&include_name);
    std::fs::write(&include, "").expect("empty include");
    let mut bird = BirdDaemon::start(
        &topo.lb_if,
        &format!(
            "router id 198.18.2.11;\nprotocol device {{}}\ninclude \"{}\";\n",
            include.display()
        ),
    );
    let service =
        ServiceBuilder::new("git", VIP4, 22).fast_connect_checks().topo_backends(false, |_, b| b);
    let socket = bird.socket();
    let config = |min_backends: u32| {
        let announce = format!(
            "[announce]\nmode = \"bgp\"\nmin-backends = {min_backends}\nbird-socket = \"{}\"\ninclude-file = \"{}\"\n",
            socket.display(),
            include.display()
        );
        ConfigBuilder::new().service(service.clone()).table(&announce)
    };
    agent.start(config(3));
    let route = format!("{VIP4}/32");
    let bird_has = |bird: &BirdDaemon, yes: bool| {
        wait_for(Duration::from_secs(10), || (bird.routes().contains(&route) == yes).then_some(()))
            .is_some()
    };

    assert!(bird_has(&bird, true), "announced once healthy:\n{}", bird.routes());
    let (announced, reason) = announce_of(&agent.status());
    assert!(announced, "status says announced: {reason}");
    assert!(reason.contains("3 usable"), "{reason}");

    let mut established = topo.client.run(|| Conn::open(VIP4, 22).expect("connect"));
    let out = agent.ctl(&["maintenance", "on"]);
    assert!(out.status.success(), "maintenance on: {}", String::from_utf8_lossy(&out.stderr));
    let note = String::from_utf8_lossy(&out.stdout);
    assert!(note.contains("1 flow(s) remain"), "maintenance on says what remains: {note}");
    assert!(bird_has(&bird, false), "withdrawn in maintenance:\n{}", bird.routes());
    let status = agent.status();
    assert!(status.maintenance, "status shows maintenance");
    assert_eq!(announce_of(&status), (false, "maintenance on".to_owned()));
    let data = payload(64 * 1024, 7);
    let still = topo.client.run(move || {
        let ok = established.echo(&data).expect("echo during maintenance");
        let fresh = Conn::open(VIP4, 22).is_ok();
        (ok, fresh)
    });
    assert_eq!(still, (true, true), "established and new flows still forwarded in maintenance");

    let out = agent.ctl(&["maintenance", "off"]);
    assert!(out.status.success(), "maintenance off");
    assert!(bird_has(&bird, true), "announced again after maintenance off");

    // Health below min-backends: one backend stops answering.
    topo.backends[2].ip(&["link", "set", "eth0", "down"]);
    assert!(bird_has(&bird, false), "withdrawn with 2 of min 3 backends");
    let (announced, reason) = announce_of(&agent.status());
    assert!(!announced && reason.contains("min-backends is 3"), "{reason}");

    // BIRD dead: reported in status, balancing goes on.
    bird.kill();
    agent.configure(config(2));
    agent.signal(libc::SIGHUP);
    let reported = wait_for(Duration::from_secs(10), || agent.status().bird_error);
    assert!(reported.is_some(), "a dead BIRD is reported in status");
    assert!(topo.client.run(|| Conn::open(VIP4, 22).is_ok()), "balancing goes on without BIRD");

    bird.restart();
    assert!(bird_has(&bird, true), "a restarted BIRD is told again (retried every second)");
    assert!(wait_for(Duration::from_secs(5), || agent.status().bird_error.is_none().then_some(()))
        .is_some());

    agent.signal(libc::SIGTERM);
    assert!(bird_has(&bird, false), "a clean stop withdraws:\n{}", bird.routes());
    let _ignored = std::fs::remove_file(&include);
}
