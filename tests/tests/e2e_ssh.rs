//! End to end with the real tools: OpenSSH `sshd` on three backends sharing one host key, the
//! real `ssh` and `git` clients on a host behind a router, through the balancer's VIPs in full
//! NAT and DSR, over IPv4 and IPv6.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use sshlb::config;
use sshlb_tests::{
    agent::AgentThread,
    lab::{Files, Lab},
    ok, prepare_bridge, root_or_skip,
    topo::{payload, Conn, DSR4, DSR6, VIP4, VIP6},
    unique, wait_for, Netns,
};

fn git(client: &Netns, f: &Files, args: &[&str], cwd: &Path) -> Output {
    let ssh_command = format!("ssh {}", f.ssh_args().join(" "));
    let mut cmd = client.command("git", args);
    cmd.current_dir(cwd).env("GIT_SSH_COMMAND", ssh_command);
    cmd.output().expect("spawn git")
}

#[test]
fn ssh_git_and_tunnels_through_every_vip() {
    if !root_or_skip("ssh_git_and_tunnels_through_every_vip") {
        return;
    }
    // The topology's echo servers on port 7 serve as the tunnel target.
    let lab = Lab::build(&std::env::temp_dir().join(unique("e2e")), true);
    let (topo, f) = (&lab.topo, &lab.files);
    let cfg =
        config::parse("e2e.toml", &lab.config(&format!("/run/sshlb/test-{}.sock", topo.lb_if)))
            .expect("config");
    let control = PathBuf::from(format!("/run/sshlb/test-{}.sock", topo.lb_if));
    let _detach = prepare_bridge(topo, vec![control.clone()]);
    // The whole agent (health checks, control socket) runs in the lb namespace.
    let agent = AgentThread::spawn(topo, &cfg, &control, None);
    // Every backend of every service, IPv4 and IPv6, passes its SSH banner check (the checks
    // leave from the balancer's own address, not from a VIP it also holds).
    let all_up = agent.wait_status(Duration::from_secs(10), |status| {
        let healths: Vec<_> =
            status.services.iter().flat_map(|s| &s.backends).map(|b| b.health.clone()).collect();
        healths.len() == 12 && healths.iter().all(|h| h == "up")
    });
    let status = agent.status();
    assert!(all_up, "not every backend is up: {status:?}");

    // ssh runs a command and gets the right answer, through every VIP, with strict host keys.
    for vip in [VIP4, VIP6, DSR4, DSR6] {
        let out = f.ssh(&topo.client, vip, &[], "echo $((6*7)) via $SSH_CONNECTION");
        let answer = ok(&out, &format!("ssh via {vip}"));
        assert!(answer.starts_with("42 via "), "{vip}: {answer}");
        // NAT: the backend sees the balancer; DSR: it sees the client itself.
        let client = if vip.contains(':') { "fd00:20::10" } else { "198.18.2.10" };
        assert_eq!(answer.contains(client), vip == DSR4 || vip == DSR6, "{vip}: {answer}");
    }

    // git clone (objects verified), push, and a second clone through another VIP sees the push.
    let work = f.path("clones");
    std::fs::create_dir_all(&work).expect("clones");
    let url = |vip: &str| f.repo_url(vip);
    ok(&git(&topo.client, f, &["clone", "-q", &url(VIP4), "a"], &work), "git clone via nat4");
    ok(&git(&topo.client, f, &["fsck", "--strict"], &work.join("a")), "git fsck");
    std::fs::write(work.join("a/pushed.txt"), "through the balancer\n").expect("write");
    ok(&git(&topo.client, f, &["add", "pushed.txt"], &work.join("a")), "git add");
    let commit = sshlb_tests::lab::commit_args("push via dsr6");
    ok(&git(&topo.client, f, &commit, &work.join("a")), "git commit");
    ok(
        &git(&topo.client, f, &["push", "-q", &url(DSR6), "main"], &work.join("a")),
        "git push via dsr6",
    );
    ok(&git(&topo.client, f, &["clone", "-q", &url(VIP6), "b"], &work), "git clone via nat6");
    ok(&git(&topo.client, f, &["fsck", "--strict"], &work.join("b")), "git fsck");
    assert_eq!(
        std::fs::read_to_string(work.join("b/pushed.txt")).expect("pushed file"),
        "through the balancer\n"
    );

    // 300 new connections spread by weight 1:1:2 within ±20 %, from fixed client ports (the
    // same flows every run: a deterministic spread, not a 2σ draw).
    let names = topo.client.run(|| {
        (0..300)
            .map(|i| Conn::open_banner_from(VIP4, 22, Some(30_000 + i)).expect("connect"))
            .collect::<Vec<_>>()
    });
    for (name, share) in [("b1", 0.25), ("b2", 0.25), ("b3", 0.5)] {
        let got = names.iter().filter(|n| n.as_str() == name).count() as f64;
        let expected = 300.0 * share;
        assert!((got - expected).abs() <= 0.2 * expected, "{name}: {got} of 300 (≈{expected})");
    }

    // ssh -L: a tunnel riding the balanced session reaches the backend's echo service.
    let mut tunnel = f.ssh_forward(&topo.client, "127.0.0.1:17007:127.0.0.1:7", VIP4);
    let echoed = wait_for(Duration::from_secs(10), || {
        topo.client.run(|| {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect("127.0.0.1:17007").ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5) * sshlb_tests::slowdown())).ok()?;
            let mut name = [0u8; 3];
            s.read_exact(&mut name).ok()?;
            let data = payload(64 * 1024, 9);
            s.write_all(&data).ok()?;
            let mut back = vec![0u8; data.len()];
            s.read_exact(&mut back).ok()?;
            (back == data).then_some(())
        })
    });
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    assert!(echoed.is_some(), "nothing came back through the ssh -L tunnel");
    lab.assert_no_sessions_left(Duration::from_secs(10));
    agent.stop();
}
