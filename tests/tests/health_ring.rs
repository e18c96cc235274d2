//! Health checks drive the ring: real OpenSSH sshd backends behind the balancer; one is stopped
//! and leaves the ring for new flows in time (no new connection fails), then restarted and
//! rejoins. The balancer runs in-process in the lb namespace, its foreground loop on a thread.

use std::{
    io::Read as _,
    net::TcpStream,
    time::{Duration, Instant},
};

use sshlb_tests::{
    agent::AgentThread,
    config::{ConfigBuilder, ServiceBuilder},
    prepare_bridge,
    sshd::Sshd,
    topo::{Topo, BACKENDS, VIP4},
};

const PORT: u16 = 2200;

/// Connects to the VIP and returns the backend's name from its banner's addendum.
fn banner_name() -> Result<String, String> {
    let addr = format!("{VIP4}:{PORT}").parse().expect("addr");
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 255 {
        s.read_exact(&mut byte).map_err(|e| e.to_string())?;
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).trim_end().to_owned();
    line.rsplit(' ').next().map(str::to_owned).ok_or(line)
}

#[test]
fn stopped_sshd_leaves_the_ring_in_time_and_rejoins() {
    let Some(topo) = Topo::for_test("stopped_sshd_leaves_the_ring_in_time_and_rejoins") else {
        return;
    };
    let mut sshds: Vec<Sshd> = BACKENDS
        .iter()
        .zip(&topo.backends)
        .map(|((name, v4, _), ns)| Sshd::start_named(ns, v4, PORT, Some(name)))
        .collect();
    let service = ServiceBuilder::new("ssh", VIP4, PORT)
        .ring_size(4093)
        .health("interval", "100ms")
        .health("timeout", "300ms")
        .health_count("rise", 2)
        .health_count("fall", 2)
        .topo_backends(false, |_, b| b.port(PORT));
    let cfg = ConfigBuilder::new().service(service).parse("test.toml");
    // Detaches the balancer and the pass program when the test ends, also when it fails.
    let cleanup = prepare_bridge(&topo, Vec::new());
    let agent = AgentThread::spawn_plain(&topo, &cfg);

    let names =
        |n: usize| topo.client.run(move || (0..n).map(|_| banner_name()).collect::<Vec<_>>());
    let before = names(30);
    assert!(before.iter().all(Result::is_ok), "with all backends up: {before:?}");
    assert!(before.iter().any(|r| r.as_deref() == Ok("b2")), "b2 never chosen: {before:?}");

    // b2's sshd stops: gone from the ring within fall × interval + one interval (300 ms);
    // allow 700 ms of slack for a loaded CI machine, then no new connection may fail.
    sshds[1].stop();
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let during = names(60);
    assert!(during.iter().all(Result::is_ok), "new connections failed after detection: {during:?}");
    assert!(during.iter().all(|r| r.as_deref() != Ok("b2")), "a new flow reached stopped b2");
    eprintln!("60 new connections, none to b2, done {:?} after stopping it", stopped.elapsed());

    // Restarted: rejoins after `rise` passes.
    let ns = &topo.backends[1];
    sshds[1] = Sshd::start_named(ns, BACKENDS[1].1, PORT, Some("b2"));
    std::thread::sleep(Duration::from_millis(800));
    let after = names(60);
    assert!(after.iter().all(Result::is_ok), "{after:?}");
    assert!(after.iter().any(|r| r.as_deref() == Ok("b2")), "b2 did not rejoin: {after:?}");

    agent.stop();
    drop(cleanup);
}
