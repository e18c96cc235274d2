//! Namespace tests: the real `sshlb-agent` attaches the real program to a veth, real TCP crosses
//! it, counters move, and `down` leaves nothing behind.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    time::Duration,
};

use sshlb_tests::{agent_binary, parse_stats, root_or_skip, run, unique, veth, Netns};

/// Pins live under the default root, keyed by interface name; names are unique per test.
fn pin_dir(iface: &str) -> std::path::PathBuf {
    Path::new("/sys/fs/bpf/sshlb").join(iface)
}

fn stats(lb: &Netns, iface: &str) -> Vec<(String, u64)> {
    let agent = agent_binary();
    let out = run(&mut lb.command(agent.to_str().expect("utf-8"), &["stats", iface, "--all"]));
    parse_stats(&String::from_utf8_lossy(&out.stdout))
}

fn counter(stats: &[(String, u64)], name: &str) -> u64 {
    stats.iter().find(|(n, _)| n == name).map_or_else(|| panic!("{name}"), |(_, v)| *v)
}

/// Detaches on drop so a failing test does not leave a program attached or pins behind.
struct Attached<'a> {
    lb: &'a Netns,
    iface: String,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        if pin_dir(&self.iface).exists() {
            let agent = agent_binary();
            let _ignored =
                self.lb.command(agent.to_str().expect("utf-8"), &["down", &self.iface]).status();
        }
    }
}

#[test]
fn up_counts_real_tcp_and_down_leaves_nothing() {
    if !root_or_skip("up_counts_real_tcp_and_down_leaves_nothing") {
        return;
    }
    let agent = agent_binary();
    let agent = agent.to_str().expect("utf-8");
    let lb = Netns::new("lb");
    let client = Netns::new("cl");
    let lb_if = unique("lb");
    veth(
        &lb,
        &lb_if,
        &["198.18.10.1/24", "fd00:10::1/64"],
        &client,
        "cl0",
        &["198.18.10.2/24", "fd00:10::2/64"],
    );

    // No configuration (none given, and the default path, moved off the machine's /etc, does
    // not exist): nothing is a service, so every segment must pass through untouched — and `up`
    // says so.
    let missing = std::env::temp_dir().join(format!("{lb_if}-absent.toml"));
    let out = run(lb.command(agent, &["up", &lb_if, "--detach"]).env("SSHLB_CONFIG", &missing));
    let _attached = Attached { lb: &lb, iface: lb_if.clone() };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("native"), "default mode is native: {stderr}");
    assert!(
        stderr.contains("WARN")
            && stderr.contains("only passes traffic")
            && stderr.contains(missing.to_str().expect("utf-8")),
        "no loud warning about running without a configuration: {stderr}"
    );
    let link = String::from_utf8_lossy(&lb.ip(&["link", "show", &lb_if]).stdout).into_owned();
    assert!(link.contains("prog/xdp") && link.contains("name sshlb"), "XDP not attached: {link}");
    for pin in ["link", "prog", "SERVICES", "STATS"] {
        assert!(pin_dir(&lb_if).join(pin).exists(), "{pin} not pinned");
    }

    // Echo servers on both families, reached through the attached program.
    let listeners = lb.run(|| {
        ["198.18.10.1:22", "198.18.10.1:80", "[fd00:10::1]:22"]
            .map(|addr| TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")))
    });
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            std::thread::spawn(move || {
                let (mut s, _) = l.accept().expect("accept");
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).expect("read");
                s.write_all(&buf).expect("write");
            })
        })
        .collect();
    client.run(|| {
        for addr in ["198.18.10.1:22", "198.18.10.1:80", "[fd00:10::1]:22"] {
            let addr = addr.parse().expect("addr");
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect {addr} through the attached program: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            s.write_all(b"hello").expect("write");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).expect("echo back");
            assert_eq!(&buf, b"hello");
        }
    });
    for s in servers {
        s.join().expect("server thread");
    }

    let counters = stats(&lb, &lb_if);
    // SYN, ACK, data, FIN...: at least 3 client→server segments per connection, 3 connections.
    assert!(counter(&counters, "pass_not_service") >= 9, "{counters:?}");
    for (name, value) in &counters {
        if name.starts_with("drop_") {
            assert_eq!(*value, 0, "well-formed traffic was dropped: {counters:?}");
        }
    }

    // A second `up` (the agent restarted, or upgraded) takes over what is pinned: the program
    // stays attached throughout and the counters — the maps — carry on from where they were.
    let passed_before = counter(&counters, "pass_not_service");
    let again = run(&mut lb.command(agent, &["up", &lb_if, "--detach"]));
    assert!(String::from_utf8_lossy(&again.stderr).contains("took over"), "{again:?}");
    let after = stats(&lb, &lb_if);
    assert!(counter(&after, "pass_not_service") >= passed_before, "maps were recreated: {after:?}");
    let link = String::from_utf8_lossy(&lb.ip(&["link", "show", &lb_if]).stdout).into_owned();
    assert!(
        link.contains("prog/xdp") && link.contains("name sshlb"),
        "not attached after takeover"
    );

    // A binary/config whose map layout differs (here: another table size) is refused, and the
    // running data plane is left exactly as it was.
    let config = std::env::temp_dir().join(format!("{lb_if}.toml"));
    std::fs::write(&config, "[agent]\nmax-flows = 4096\n").expect("config");
    let refused = lb
        .command(agent, &["up", &lb_if, "--detach", "--config", config.to_str().expect("utf-8")])
        .output()
        .expect("spawn");
    let _ = std::fs::remove_file(&config);
    assert!(!refused.status.success());
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(msg.contains("FLOWS") && msg.contains("max-flows"), "{msg}");
    assert!(pin_dir(&lb_if).join("link").exists(), "a refused takeover must leave the pins");

    run(&mut lb.command(agent, &["down", &lb_if]));
    let link = String::from_utf8_lossy(&lb.ip(&["link", "show", &lb_if]).stdout).into_owned();
    assert!(!link.contains("xdp"), "still attached after down: {link}");
    assert!(!pin_dir(&lb_if).exists(), "pins left behind after down");
}

#[test]
fn clear_errors_for_bad_interface_mode_and_state() {
    if !root_or_skip("clear_errors_for_bad_interface_mode_and_state") {
        return;
    }
    let agent = agent_binary();
    let agent = agent.to_str().expect("utf-8");
    let ns = Netns::new("err");
    let no_config = std::env::temp_dir().join(format!("{}-none.toml", ns.name));
    let stderr_of = |args: &[&str]| {
        // The default configuration path moved to a file that does not exist: never /etc.
        let out = ns.command(agent, args).env("SSHLB_CONFIG", &no_config).output().expect("spawn");
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(stderr_of(&["up", "nosuch0", "--detach"]).contains("no such interface"));
    assert!(stderr_of(&["down", "nosuch0"]).contains("not attached"));
    assert!(stderr_of(&["stats", "nosuch0"]).contains("not attached"));
    assert!(stderr_of(&["up", "lo", "--xdp-mode", "warp"]).contains("invalid value"));
    // Loopback has no native XDP support: the error names the mode and suggests generic.
    let pin = pin_dir("lo");
    if !pin.exists() {
        let err = stderr_of(&["up", "lo", "--detach"]);
        assert!(err.contains("native") && err.contains("--xdp-mode generic"), "{err}");
        assert!(!pin.exists(), "a failed up left pins behind");
    }
    // check-config needs no root: a bad file names file, line and field; a good one passes.
    let dir = std::env::temp_dir();
    let bad = dir.join(format!("{}-bad.toml", ns.name));
    let good = dir.join(format!("{}-good.toml", ns.name));
    std::fs::write(
        &bad,
        "[[service]]\nname = \"git\"\nvip = \"198.18.0.100\"\nport = 22\nmode = \"ipip\"\n",
    )
    .expect("write");
    std::fs::write(&good, "[[service]]\nname = \"git\"\nvip = \"198.18.0.100\"\nport = 22\n")
        .expect("write");
    let as_nobody = |file: &std::path::Path| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", agent, "check-config"])
            .arg(file)
            .output()
            .expect("spawn setpriv")
    };
    let out = as_nobody(&bad);
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && msg.contains(":5: service[0].mode")
            && msg.contains("\"nat\", \"dsr\" or \"tunnel\""),
        "{msg}"
    );
    let out = as_nobody(&good);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Without a file, check-config reads the default path ($SSHLB_CONFIG here, never /etc).
    let default = |path: &std::path::Path| {
        std::process::Command::new(agent)
            .arg("check-config")
            .env("SSHLB_CONFIG", path)
            .output()
            .expect("spawn")
    };
    let out = default(&good);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains(good.to_str().expect("utf-8")), "{out:?}");
    let out = default(&bad);
    assert!(!out.status.success(), "the default path's bad file is refused: {out:?}");
    let absent = dir.join(format!("{}-absent.toml", ns.name));
    let out = default(&absent);
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && msg.contains(absent.to_str().expect("utf-8")), "{msg}");
    let _ = std::fs::remove_file(&bad);
    let _ = std::fs::remove_file(&good);
    // Not root: refused before touching anything (nobody = 65534).
    let out = ns
        .command(
            "setpriv",
            &["--reuid=65534", "--regid=65534", "--clear-groups", agent, "up", "lo"],
        )
        .env("SSHLB_CONFIG", &no_config)
        .output()
        .expect("spawn setpriv");
    assert!(String::from_utf8_lossy(&out.stderr).contains("must run as root"), "{out:?}");
}
