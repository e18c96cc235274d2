//! Operations under load, end to end: one long `ssh … cat` transfer through the VIP while the
//! operator drains, re-weights, switches, reloads and restarts the agent, while a backend's sshd
//! dies, and while outsiders send garbage, hold idle connections and scan the VIP's ports. The
//! transfer must complete with every byte right; new connections must keep working.

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use sshlb::{config, control, loader};
use sshlb_tests::{
    agent::AgentThread,
    config_ms,
    lab::Lab,
    prepare_bridge, root_or_skip, slowdown,
    topo::{payload, BACKENDS, VIP4},
    unique, wait_for, PIN_ROOT,
};

const CHUNK: usize = 256 * 1024;
const ROUNDS: usize = 50;

#[expect(clippy::needless_pass_by_value, reason = "call sites build the request inline")]
fn ctl(control: &Path, request: control::Request) {
    let reply = control::call(control, &request).unwrap_or_else(|e| panic!("{request:?}: {e}"));
    assert!(reply.ok, "{request:?}: {:?}", reply.error);
}

/// Every backend of every service reports health `up`.
fn all_up(status: &control::Status) -> bool {
    status.services.iter().flat_map(|s| &s.backends).all(|b| b.health == "up")
}

#[test]
fn long_transfer_survives_operations_failures_and_hostile_clients() {
    if !root_or_skip("long_transfer_survives_operations_failures_and_hostile_clients") {
        return;
    }
    let mut lab = Lab::build(&std::env::temp_dir().join(unique("ops")), true);
    let control = PathBuf::from(format!("/run/sshlb/test-{}.sock", lab.topo.lb_if));
    let mut built = lab.config_builder(&control.display().to_string());
    for service in built.services_mut() {
        // Stretched under emulation (config_ms): the same checks, on a slower CPU.
        service
            .set_health("interval", &config_ms(100))
            .set_health_count("fall", 2)
            .set_health_count("rise", 2)
            .set_health("timeout", &config_ms(300));
        // Blue-green groups for the switch: b1, b2 blue; b3 green.
        for (name, group) in [("b3", "green"), ("b1", "blue"), ("b2", "blue")] {
            service.backend_mut(name).set_group(group);
        }
    }
    let text = built.to_toml();
    let cfg_path = lab.files.path("sshlb.toml");
    std::fs::write(&cfg_path, &text).expect("config");
    let cfg = config::parse("ops.toml", &text).expect("config");
    let _detach = prepare_bridge(&lab.topo, vec![control.clone()]);
    let mut agent = AgentThread::spawn(&lab.topo, &cfg, &control, Some(cfg_path.clone()));
    assert!(agent.wait_status(Duration::from_secs(10), all_up), "backends not up");

    // The long transfer: first line names the backend, then ROUNDS copies of a fixed chunk,
    // paced so the transfer spans every operation below.
    let chunk_path = lab.files.path("chunk.bin");
    let chunk = payload(CHUNK, 77);
    std::fs::write(&chunk_path, &chunk).expect("chunk");
    let remote = format!(
        "echo $SSH_CONNECTION; for i in $(seq {ROUNDS}); do cat {}; sleep 0.1; done",
        chunk_path.display()
    );
    let mut transfer = lab
        .files
        .ssh_command(&lab.topo.client, VIP4, &[], &remote)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh transfer");
    let mut stdout = std::io::BufReader::new(transfer.stdout.take().expect("stdout"));
    let mut header = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut header).expect("the transfer's first line");
    let served_by = header.split_whitespace().nth(2).unwrap_or_default().to_owned();
    assert!(BACKENDS.iter().any(|(_, a, _)| *a == served_by), "{header}");
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        stdout.read_to_end(&mut all).expect("read transfer");
        all
    });

    // Operations, one after another, while the transfer runs.
    ctl(&control, control::Request::Drain { service: "nat4".into(), backend: "b1".into() });
    ctl(
        &control,
        control::Request::SetWeight { service: "nat4".into(), backend: "b2".into(), weight: 300 },
    );
    ctl(&control, control::Request::Switch { service: "nat4".into(), group: "green".into() });
    ctl(&control, control::Request::Switch { service: "nat4".into(), group: "blue".into() });
    ctl(&control, control::Request::Reload { kill_established: false });
    // Agent restart: the loop stops, a new agent takes over the pinned data plane.
    agent.stop();
    agent = AgentThread::spawn(&lab.topo, &cfg, &control, Some(cfg_path.clone()));
    assert!(agent.wait_status(Duration::from_secs(10), all_up), "not up after restart");

    // Hostile outsiders: garbage to the SSH port, idle connections held open, a port scan.
    let garbage = lab.topo.client.run(|| {
        let mut done = 0;
        for i in 0..20 {
            let Ok(mut s) = std::net::TcpStream::connect_timeout(
                &format!("{VIP4}:22").parse().expect("addr"),
                Duration::from_secs(2) * slowdown(),
            ) else {
                continue;
            };
            let _ = s.write_all(&payload(4096, i));
            done += 1;
        }
        done
    });
    assert_eq!(garbage, 20, "garbage clients could not even connect");
    let idle = lab.topo.client.run(|| {
        (0..50)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(
                    &format!("{VIP4}:22").parse().expect("addr"),
                    Duration::from_secs(2) * slowdown(),
                )
                .ok()
            })
            .collect::<Vec<_>>()
    });
    let pass_not_service = || {
        let map = loader::pinned_stats(&PathBuf::from(PIN_ROOT), &lab.topo.lb_if).expect("stats");
        let counters = sshlb::stats::read(&map).expect("read stats");
        counters.iter().find(|c| c.name == "pass_not_service").map_or(0, |c| c.value)
    };
    let before_scan = pass_not_service();
    let scanned = lab.topo.client.run(|| {
        (1..=300u16)
            .filter(|p| *p != 22)
            .filter(|p| {
                std::net::TcpStream::connect_timeout(
                    &format!("{VIP4}:{p}").parse().expect("addr"),
                    Duration::from_millis(200),
                )
                .is_ok()
            })
            .count()
    });
    assert_eq!(scanned, 0, "a port other than 22 answered on the VIP");
    // Every probe of a non-service port was seen, counted, and left to the balancer's kernel.
    assert!(pass_not_service() - before_scan >= 299, "the scan's SYNs were not all counted");
    // The idle holders go: each sits in an sshd's pre-authentication slots (MaxStartups 10:30:100),
    // where they would make sshd itself refuse newcomers — the backend's limit, not ours.
    drop(idle);

    // A backend that does not carry the transfer dies: after detection (fall 2 × 100 ms + one
    // interval; 600 ms allowed) no new connection fails.
    let victim = BACKENDS.iter().position(|(_, a, _)| *a != served_by).expect("another backend");
    lab.sshds[victim].stop();
    let victim_name = BACKENDS[victim].0;
    let detected = wait_for(Duration::from_secs(5), || {
        let status = control::call(&control, &control::Request::Status).ok()?.status?;
        let nat4 = status.services.iter().find(|s| s.name == "nat4")?;
        let b = nat4.backends.iter().find(|b| b.name == victim_name)?;
        (b.health == "down" && !b.in_ring).then_some(())
    });
    assert!(detected.is_some(), "{victim_name} was not detected down within 5 s");
    let fresh: Vec<_> =
        (0..10).map(|_| lab.files.ssh(&lab.topo.client, VIP4, &[], "echo ok")).collect();
    for out in &fresh {
        assert!(
            out.status.success(),
            "a new ssh failed after b1 died: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The transfer completes, every byte right.
    let status = transfer.wait().expect("transfer");
    let mut stderr = String::new();
    let _ = transfer.stderr.take().map(|mut e| e.read_to_string(&mut stderr));
    let all = reader.join().expect("reader");
    assert!(status.success(), "the transfer failed: {stderr}");
    let body = all.as_slice();
    assert_eq!(body.len(), CHUNK * ROUNDS, "transfer via {served_by} truncated");
    assert!(
        body.chunks(CHUNK).all(|c| c == chunk.as_slice()),
        "transfer via {served_by} corrupted"
    );
    lab.assert_no_sessions_left(Duration::from_secs(10));
    agent.stop();
}
