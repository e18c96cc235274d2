//! Tunnel mode end to end with the real tools: an OpenSSH `sshd` on a backend in another subnet
//! (behind the router, not on the balancer's segment) running `sshlb-agent backend up`, the real
//! `ssh` and `git` clients on a host behind the router, through IP-in-IP (IPv4, IPv6) and GUE
//! VIPs. The backend sees the client's own address, answers it directly, and drops tunnel
//! packets from outside the balancer prefix or for other destinations; `backend down` undoes
//! everything `backend up` changed on the host, and the balancer's health checks, which travel
//! through the tunnel, then mark the backend down.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use etherparse::PacketBuilder;
use sshlb::config;
use sshlb_tests::{
    agent::AgentThread,
    agent_binary,
    config::{BackendBuilder, ServiceBuilder},
    lab::{sshd_options, Lab},
    ok, prepare_bridge, root_or_skip,
    sshd::Sshd,
    topo::{FAR4, FAR6, GUE4, LB4, LB6, TUN4, TUN6},
    unique, wait_for, Netns, PIN_ROOT,
};

/// `sshlb-agent backend …` in the far backend's namespace.
fn backend_cmd(ns: &Netns, args: &[&str], pins: &Path) -> Output {
    let mut all: Vec<&str> = vec!["backend"];
    all.extend(args);
    let pins = pins.display().to_string();
    all.extend(["--backend-pins", &pins]);
    let binary = agent_binary();
    ns.command(binary.to_str().expect("utf-8 path"), &all).output().expect("spawn sshlb-agent")
}

/// The far backend's decapsulation counters.
fn decap_counters(ns: &Netns, iface: &str, pins: &Path) -> serde_json::Value {
    let out = backend_cmd(ns, &["status", iface, "--json"], pins);
    let text = ok(&out, "backend status");
    let status: serde_json::Value = serde_json::from_str(&text).expect("status JSON");
    status["counters"].as_array().expect("counters").iter().fold(
        serde_json::json!({}),
        |mut acc, pair| {
            acc[pair[0].as_str().expect("name")] = pair[1].clone();
            acc
        },
    )
}

fn counter(counters: &serde_json::Value, name: &str) -> u64 {
    counters[name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {counters}"))
}

/// For a failed login: what each side counted — the balancer's outcome counters, the far
/// backend's decapsulation counters, every namespace's TCP/IP/ICMP counters and link drops.
fn explain(topo: &sshlb_tests::topo::Topo, far: &Netns, far_if: &str, pins: &Path) {
    let stats = sshlb::loader::pinned_stats(Path::new(PIN_ROOT), &topo.lb_if)
        .map_err(|e| e.to_string())
        .and_then(|stats| sshlb::stats::read(&stats).map_err(|e| e.to_string()));
    match stats {
        Ok(counters) => {
            let moved: Vec<String> = counters
                .iter()
                .filter(|c| c.value != 0)
                .map(|c| format!("{} {}", c.name, c.value))
                .collect();
            eprintln!("balancer counters: {}", moved.join(", "));
        }
        Err(err) => eprintln!("balancer counters unreadable: {err}"),
    }
    eprintln!("backend decapsulation: {}", decap_counters(far, far_if, pins));
    let namespaces = [&topo.client, &topo.router, &topo.lb, far];
    for line in sshlb_tests::counters::tcp_ip_counters(&namespaces) {
        eprintln!("{line}");
    }
    let drops = sshlb_tests::counters::Snapshot::take(&namespaces);
    eprintln!("link drops: {:?}", drops.drops);
}

/// Sends one IPv4-in-IPv4 packet from `ns` (outer source: its own address) to `to`, carrying a
/// TCP SYN to `inner_dst`:22.
fn send_ipip(ns: &Netns, to: &str, inner_dst: &str) {
    let (to, inner_dst): (Ipv4Addr, Ipv4Addr) =
        (to.parse().expect("v4"), inner_dst.parse().expect("v4"));
    ns.run(move || {
        let mut inner = Vec::new();
        PacketBuilder::ipv4([198, 18, 2, 10], inner_dst.octets(), 64)
            .tcp(40999, 22, 1, 64240)
            .syn()
            .write(&mut inner, &[])
            .expect("vec");
        // SAFETY: plain socket calls; the fd is closed below.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_IPIP);
            assert!(fd >= 0, "raw IPIP socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes(to.octets());
            let sent = libc::sendto(
                fd,
                inner.as_ptr().cast(),
                inner.len(),
                0,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            libc::close(fd);
            assert_eq!(sent, inner.len() as isize, "sendto: {}", std::io::Error::last_os_error());
        }
    });
}

/// Runs `backend down` when the test ends, however it ends.
struct BackendDown<'a> {
    ns: &'a Netns,
    iface: String,
    pins: PathBuf,
}

impl Drop for BackendDown<'_> {
    fn drop(&mut self) {
        let _ = backend_cmd(self.ns, &["down", &self.iface], &self.pins);
        let _ = std::fs::remove_dir(&self.pins);
    }
}

#[test]
fn ssh_and_git_through_tunnels_to_a_backend_in_another_subnet() {
    if !root_or_skip("ssh_and_git_through_tunnels_to_a_backend_in_another_subnet") {
        return;
    }
    let mut lab = Lab::build(&std::env::temp_dir().join(unique("e2etun")), true);
    let far_if = unique("tb");
    lab.topo.add_far_backend("far", &far_if);
    let (topo, f) = (&lab.topo, &lab.files);
    let far = &topo.far[0];
    let _sshd = Sshd::start_with(far, &sshd_options(f, "far1"));
    let pins = PathBuf::from(PIN_ROOT).with_file_name(unique("sshlb-backend"));
    let _down = BackendDown { ns: far, iface: far_if.clone(), pins: pins.clone() };
    let lb4 = format!("{LB4}/32");
    let lb6 = format!("{LB6}/128");
    let up = backend_cmd(
        far,
        &[
            "up",
            &far_if,
            "--vip",
            TUN4,
            "--vip",
            GUE4,
            "--vip",
            TUN6,
            "--balancer",
            &lb4,
            "--balancer",
            &lb6,
        ],
        &pins,
    );
    ok(&up, "backend up");
    let on_lo =
        String::from_utf8_lossy(&far.ip(&["addr", "show", "dev", "lo"]).stdout).into_owned();
    assert!(on_lo.contains(TUN4) && on_lo.contains(TUN6), "VIPs on lo: {on_lo}");

    let control = PathBuf::from(format!("/run/sshlb/test-{}.sock", topo.lb_if));
    let service = |name: &str, vip: &str, encap: &str, addr: &str| {
        ServiceBuilder::new(name, vip, 22)
            .mode("tunnel")
            .raw(&format!("encap = \"{encap}\""))
            .health("interval", "250ms")
            .backend(BackendBuilder::new("far1", addr))
    };
    let text = sshlb_tests::config::ConfigBuilder::new()
        .control(&control)
        .service(service("tun4", TUN4, "ipip", FAR4))
        .service(service("gue4", GUE4, "gue", FAR4))
        .service(service("tun6", TUN6, "ipip", FAR6))
        .to_toml();
    let cfg = config::parse("tunnel.toml", &text).expect("config");
    let _detach = prepare_bridge(topo, vec![control.clone()]);
    let agent = AgentThread::spawn(topo, &cfg, &control, None);
    let all_up = agent.wait_status(Duration::from_secs(10), |status| {
        let h: Vec<_> =
            status.services.iter().flat_map(|s| &s.backends).map(|b| &b.health).collect();
        h.len() == 3 && h.iter().all(|h| *h == "up")
    });
    assert!(all_up, "the far backend is not up: {:?}", agent.status());

    // Strict host-key logins through every tunnel VIP; the backend sees the client's own
    // address (no NAT) and answers it directly.
    let before = decap_counters(far, &far_if, &pins);
    for vip in [TUN4, GUE4, TUN6] {
        // -v: should it fail, ssh's stderr (printed by `ok`) says which step stalled.
        let out = f.ssh(&topo.client, vip, &["-v"], "echo $SSH_CONNECTION");
        if !out.status.success() {
            explain(topo, far, &far_if, &pins);
        }
        let answer = ok(&out, &format!("ssh via {vip}"));
        let client = if vip.contains(':') { "fd00:20::10" } else { "198.18.2.10" };
        let fields: Vec<&str> = answer.split_whitespace().collect();
        assert_eq!(fields.first(), Some(&client), "{vip}: the backend saw {answer}");
        assert_eq!(fields.get(2), Some(&vip), "{vip}: the session's local address is the VIP");
    }
    let after = decap_counters(far, &far_if, &pins);
    let decapsulated = counter(&after, "pass_decapsulated") - counter(&before, "pass_decapsulated");
    assert!(decapsulated > 30, "three logins decapsulated only {decapsulated} packets");

    // A clone through the IP-in-IP VIP (objects verified), a push through the GUE VIP.
    let work = std::env::temp_dir().join(unique("tunclone"));
    let ssh_command = format!("ssh {}", f.ssh_args().join(" "));
    let git = |args: &[&str], cwd: &Path| {
        let out = topo
            .client
            .command("git", args)
            .current_dir(cwd)
            .env("GIT_SSH_COMMAND", &ssh_command)
            .output();
        out.expect("spawn git")
    };
    let tmp = std::env::temp_dir();
    ok(
        &git(&["clone", "-q", &f.repo_url(TUN4), work.to_str().expect("utf-8")], &tmp),
        "git clone via tun4",
    );
    ok(&git(&["fsck", "--strict"], &work), "git fsck");
    std::fs::write(work.join("tunnelled.txt"), "through a tunnel\n").expect("write");
    ok(&git(&["add", "tunnelled.txt"], &work), "git add");
    let commit = sshlb_tests::lab::commit_args("push via gue4");
    ok(&git(&commit, &work), "git commit");
    ok(&git(&["push", "-q", &f.repo_url(GUE4), "main"], &work), "git push via gue4");
    let head = |dir: &Path| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["rev-parse", "HEAD"])
            .output();
        String::from_utf8_lossy(&out.expect("git").stdout).trim().to_owned()
    };
    assert_eq!(
        head(&f.path("repo.git")),
        head(&work),
        "the pushed commit is the repository's HEAD"
    );
    let _ = std::fs::remove_dir_all(&work);

    // ssh -L through the IPv6 tunnel: the forwarded port reaches the backend's own sshd.
    let mut forward = f.ssh_forward(&topo.client, "127.0.0.1:17022:127.0.0.1:22", TUN6);
    let banner = wait_for(Duration::from_secs(10), || {
        topo.client.run(|| {
            use std::io::Read as _;
            let mut s = std::net::TcpStream::connect("127.0.0.1:17022").ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let mut line = [0u8; 64];
            let n = s.read(&mut line).ok()?;
            let text = String::from_utf8_lossy(&line[..n]).into_owned();
            text.starts_with("SSH-2.0-").then_some(text)
        })
    });
    let _ = forward.kill();
    let _ = forward.wait();
    assert!(
        banner.is_some_and(|b| b.contains("far1")),
        "nothing came back through the ssh -L forward"
    );
    let stats = sshlb::loader::pinned_stats(Path::new(PIN_ROOT), &topo.lb_if).expect("stats");
    let fwd_tunnel = sshlb::stats::read(&stats)
        .expect("read stats")
        .iter()
        .find(|c| c.name == "fwd_tunnel")
        .map_or(0, |c| c.value);
    assert!(fwd_tunnel > 100, "the balancer encapsulated {fwd_tunnel} packets");

    // A tunnel packet from outside the balancer prefix (the client forging one) and one from
    // the balancer's address for a destination that is not a VIP: both dropped, counted.
    let before = decap_counters(far, &far_if, &pins);
    send_ipip(&topo.client, FAR4, TUN4);
    send_ipip(&topo.lb, FAR4, "198.18.6.99");
    let counted = wait_for(Duration::from_secs(3), || {
        let now = decap_counters(far, &far_if, &pins);
        let foreign =
            counter(&now, "drop_foreign_source") - counter(&before, "drop_foreign_source");
        let not_vip = counter(&now, "drop_not_vip") - counter(&before, "drop_not_vip");
        (foreign == 1 && not_vip == 1).then_some(())
    });
    assert!(counted.is_some(), "drops: {}", decap_counters(far, &far_if, &pins));

    // `backend down` detaches the program and undoes the host changes; the balancer's next
    // checks through the tunnel find nobody decapsulating and mark the backend down (its sshd
    // still answers on its own address).
    ok(&backend_cmd(far, &["down", &far_if], &pins), "backend down");
    let on_lo =
        String::from_utf8_lossy(&far.ip(&["addr", "show", "dev", "lo"]).stdout).into_owned();
    assert!(!on_lo.contains(TUN4), "VIP left on lo: {on_lo}");
    let status = backend_cmd(far, &["status", &far_if], &pins);
    assert!(!status.status.success(), "status after down must fail");
    let all_down = agent.wait_status(Duration::from_secs(10), |status| {
        status.services.iter().flat_map(|s| &s.backends).all(|b| b.health == "down")
    });
    assert!(all_down, "a backend that no longer decapsulates stayed up: {:?}", agent.status());
    drop(agent);
    lab.assert_no_sessions_left(Duration::from_secs(10));
}
