//! `sshlb-agent doctor` against interfaces broken on purpose, in namespaces of its own: a veth
//! in native mode (warned, with the peer's fix), an MTU native XDP cannot take (failed, and
//! `up` refuses with the same words and attaches nothing), generic mode (both fine), a missing
//! interface, and configurations that do not parse or whose NAT ports overlap the kernel's.
//! Then a configuration against the network, in native and generic mode: a VIP neither owned
//! nor routed here (warned), one owned and one routed here by a local route (passed), backends
//! that do not listen or answer as another server (reported), real sshds of one service with
//! different host keys (the odd one named), one that never speaks (cut by the 3 s deadline, not
//! its 20 s timeout), and a strict reverse-path filter with a VIP off the interface (warned;
//! loose passes) — and `up` logs those warnings without probing backends.
//! Then what that rp_filter warning is about, for real: with the agent attached, a client whose
//! neighbour entry the balancer lacks cannot connect through that VIP under strict filtering
//! (the kernel counts the drop) and can under loose.

use std::{
    io::Write as _,
    net::TcpListener,
    process::Output,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use sshlb::doctor::{Check, Level, Report};
use sshlb_tests::{
    agent_binary,
    config::{BackendBuilder, ConfigBuilder, ServiceBuilder},
    root_or_skip, run,
    sshd::{Sshd, SshdOptions},
    unique, veth, Detach, Netns,
};

fn report(out: &Output) -> Report {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn named<'r>(r: &'r Report, name: &str) -> &'r Check {
    r.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}: {r:?}"))
}

fn level(r: &Report, name: &str) -> Level {
    named(r, name).level
}

#[test]
fn doctor_fails_warns_and_up_refuses_on_broken_interfaces() {
    if !root_or_skip("doctor_fails_warns_and_up_refuses_on_broken_interfaces") {
        return;
    }
    let agent = agent_binary();
    let agent = agent.to_str().expect("utf-8");
    let ns = Netns::new("doc");
    let peer = Netns::new("docp");
    let iface = unique("dv");
    veth(&ns, &iface, &["198.18.44.1/24"], &peer, "p0", &["198.18.44.2/24"]);
    let files = std::env::temp_dir().join(unique("doctor"));
    std::fs::create_dir_all(&files).expect("dir");
    let no_config = files.join("none.toml");
    // Undoes an attach if `up` got that far (it must not), and removes the files.
    let _detach = Detach { iface: iface.clone(), pass_port: unique("none"), files: vec![] };
    let run = |args: &[&str]| -> Output {
        ns.command(agent, args).env("SSHLB_CONFIG", &no_config).output().expect("spawn agent")
    };

    // A veth with a jumbo MTU, native mode: mtu fails, veth warns; non-zero exit.
    ns.ip(&["link", "set", &iface, "mtu", "9000"]);
    let out = run(&["doctor", &iface, "--json"]);
    assert!(!out.status.success(), "a failed check exits non-zero");
    let r = report(&out);
    assert_eq!((level(&r, "mtu"), level(&r, "veth")), (Level::Fail, Level::Warn), "{r:?}");
    assert_eq!(level(&r, "interface"), Level::Pass);
    assert!(r.checks.iter().all(|c| c.name != "config"), "no configuration file: not checked");
    let veth_fix = r.checks.iter().find(|c| c.name == "veth").and_then(|c| c.fix.clone());
    assert!(
        veth_fix.is_some_and(|f| f.contains("xdp-pass PEER") && f.contains("--xdp-mode generic"))
    );
    let mtu_line =
        r.checks.iter().find(|c| c.name == "mtu").map(sshlb::doctor::Check::line).expect("mtu");
    assert!(mtu_line.contains("MTU 9000 is larger than native XDP takes"), "{mtu_line}");

    // The table for people says the same.
    let text = String::from_utf8_lossy(&run(&["doctor", &iface]).stdout).into_owned();
    assert!(
        text.contains("FAIL  mtu")
            && text.contains(&format!("fix: `ip link set {iface} mtu 3498`")),
        "{text}"
    );

    // `up` refuses with the same words, and nothing is attached or pinned.
    let config = files.join("ok.toml");
    std::fs::write(&config, "[agent]\ncontrol = \"/run/sshlb/doctor-test.sock\"\n")
        .expect("config");
    let config_s = config.to_str().expect("utf-8");
    let out = run(&["up", &iface, "--detach", "--config", config_s]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up attached despite the MTU: {err}");
    assert!(err.contains(&mtu_line), "up's refusal differs from the doctor's words:\n{err}");
    let link = String::from_utf8_lossy(&ns.ip(&["link", "show", &iface]).stdout).into_owned();
    assert!(!link.contains("xdp"), "an XDP program was attached: {link}");
    assert!(!std::path::Path::new(sshlb_tests::PIN_ROOT).join(&iface).exists(), "pins left");

    // Generic mode takes both.
    let out = run(&["doctor", &iface, "--xdp-mode", "generic", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let r = report(&out);
    assert_eq!((level(&r, "mtu"), level(&r, "veth")), (Level::Pass, Level::Pass), "{r:?}");

    // MTU fixed: native passes but for the veth warning, which `up` logs and attaches anyway.
    ns.ip(&["link", "set", &iface, "mtu", "1500"]);
    let out = run(&["doctor", &iface, "--json"]);
    assert!(out.status.success());
    assert_eq!(report(&out).worst(), Level::Warn);
    let out = run(&["up", &iface, "--detach", "--config", config_s]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "up refused: {err}");
    assert!(err.contains(&format!("doctor: veth: {iface} is a veth in native mode")), "{err}");
    let out = run(&["down", &iface]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // No such interface.
    let out = run(&["doctor", "nosuch0", "--json"]);
    assert!(!out.status.success());
    assert_eq!(level(&report(&out), "interface"), Level::Fail);

    // Configurations: one that does not parse fails, one whose NAT ports overlap warns.
    let bad = files.join("bad.toml");
    std::fs::write(&bad, "[[service]]\nname = \"git\"\nvip = \"300.0.0.1\"\nport = 22\n")
        .expect("write");
    let out = run(&["doctor", &iface, "--config", bad.to_str().expect("utf-8"), "--json"]);
    assert!(!out.status.success());
    let r = report(&out);
    let c = r.checks.iter().find(|c| c.name == "config").expect("config check");
    assert_eq!(c.level, Level::Fail);
    assert!(c.found.contains("bad.toml") && c.found.contains("300.0.0.1"), "{c:?}");
    let overlap = files.join("overlap.toml");
    ns.command("sysctl", &["-qw", "net.ipv4.ip_local_port_range=32768 60999"])
        .status()
        .expect("sysctl");
    std::fs::write(&overlap, "[agent]\nnat-ports = \"40000-50000\"\n").expect("write");
    let out = run(&["doctor", &iface, "--config", overlap.to_str().expect("utf-8"), "--json"]);
    let r = report(&out);
    assert_eq!((level(&r, "config"), level(&r, "nat-ports")), (Level::Pass, Level::Warn), "{r:?}");
    let _ignored = std::fs::remove_dir_all(&files);
}

/// A server on `addr` that is not sshd: it answers every connection with an HTTP error line and
/// closes, until `stop`.
fn http_server(ns: &Netns, addr: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let addr = addr.to_owned();
    let listener = ns.run(move || TcpListener::bind(&addr).expect("bind the HTTP server"));
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    let _ignored = conn.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
}

#[test]
fn doctor_checks_vips_backends_host_keys_and_rp_filter_in_both_modes() {
    if !root_or_skip("doctor_checks_vips_backends_host_keys_and_rp_filter_in_both_modes") {
        return;
    }
    let agent = agent_binary();
    let agent = agent.to_str().expect("utf-8");
    let ns = Netns::new("docn");
    let peer = Netns::new("docb");
    let iface = unique("dn");
    veth(&ns, &iface, &["198.18.45.1/24"], &peer, "p0", &["198.18.45.2/24"]);
    // The owned VIP; 198.18.47.0/24 is routed here by a local route (AnyIP); 198.18.45.101 is
    // in the link's subnet but nobody holds it.
    ns.ip(&["addr", "add", "198.18.45.100/32", "dev", &iface]);
    ns.ip(&["route", "add", "local", "198.18.47.0/24", "dev", "lo"]);
    let files = std::env::temp_dir().join(unique("doctorn"));
    std::fs::create_dir_all(&files).expect("dir");
    let _detach = Detach { iface: iface.clone(), pass_port: unique("none"), files: vec![] };

    // Backends: b1 and b2 share a host key, b3 has its own; 2203 has nothing; 2204 is HTTP.
    let shared = files.join("ssh_host_ed25519_key");
    run(std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&shared));
    let sshd = |port: u16, key: Option<&std::path::Path>| {
        Sshd::start_with(
            &peer,
            &SshdOptions {
                listen: vec!["198.18.45.2".into()],
                port,
                host_key: key.map(std::path::Path::to_path_buf),
                ..SshdOptions::default()
            },
        )
    };
    let _b1 = sshd(2201, Some(&shared));
    let _b2 = sshd(2202, Some(&shared));
    let _b3 = sshd(2203, None);
    let stop = Arc::new(AtomicBool::new(false));
    let http = http_server(&peer, "198.18.45.2:2205", Arc::clone(&stop));
    // A backend that takes the connection (the kernel's backlog) and never speaks.
    let _mute = peer.run(|| TcpListener::bind("198.18.45.2:2206").expect("bind the mute server"));

    let backend = |name: &str, port: u16| BackendBuilder::new(name, "198.18.45.2").port(port);
    let config = files.join("net.toml");
    ConfigBuilder::new()
        .control(files.join("ctl.sock"))
        .service(
            ServiceBuilder::new("git", "198.18.45.100", 22)
                .backend(backend("b1", 2201))
                .backend(backend("b2", 2202))
                .backend(backend("b3", 2203)),
        )
        .service(
            ServiceBuilder::new("bad", "198.18.45.101", 22)
                .backend(backend("off", 2204))
                .backend(backend("web", 2205)),
        )
        .service(ServiceBuilder::new("anyip", "198.18.47.5", 22).backend(backend("b1", 2201)))
        // A check timeout far beyond the doctor's deadline: the deadline decides.
        .service(
            ServiceBuilder::new("slow", "198.18.45.100", 2222)
                .health("timeout", "20s")
                .backend(backend("mute", 2206)),
        )
        .write_to(&config);
    let config_s = config.to_str().expect("utf-8");
    let doctor = |mode: &str| -> (Report, Duration) {
        let started = Instant::now();
        let out = ns
            .command(agent, &["doctor", &iface, "--config", config_s, "--xdp-mode", mode, "--json"])
            .output()
            .expect("spawn agent");
        (report(&out), started.elapsed())
    };
    let sysctl = |key: &str| {
        let out = ns.command("sysctl", &["-qw", key]).status().expect("sysctl");
        assert!(out.success(), "sysctl -w {key}");
    };

    sysctl("net.ipv4.conf.all.rp_filter=1");
    sysctl(&format!("net.ipv4.conf.{iface}.rp_filter=0"));
    for mode in ["native", "generic"] {
        let (r, took) = doctor(mode);
        assert_eq!(r.mode, mode);
        eprintln!("doctor --xdp-mode {mode} took {took:?}");
        // The doctor waits 3 s at most for the backends, however many and however long
        // their own timeouts; plus its own start.
        assert!(took < Duration::from_secs(5), "{mode}: doctor took {took:?}");
        let mute = named(&r, "backend slow/mute");
        assert_eq!(mute.level, Level::Warn, "{mode}: {mute:?}");
        assert!(mute.found.contains("no identification line within"), "{mute:?}");
        // veth lists rx-gro-hw (off, fixed): found by name in the driver's feature strings.
        let gro = named(&r, "gro-hw");
        assert_eq!((gro.level, gro.found.as_str()), (Level::Pass, "hardware GRO (rx-gro-hw) off"));
        assert!(r.checks.iter().all(|c| c.name != "queues"), "only virtio_net is checked");
        assert_eq!(level(&r, "sysctls"), Level::Pass);
        assert!(named(&r, "sysctls")
            .found
            .contains(&format!("net.ipv4.conf.{iface}.forwarding=1 (now 0)")));

        // VIPs: owned, routed here, neither.
        assert_eq!(level(&r, "vip 198.18.45.100"), Level::Pass, "{mode}: {r:?}");
        let routed = named(&r, "vip 198.18.47.5");
        assert_eq!(routed.level, Level::Pass, "{mode}: {routed:?}");
        assert!(routed.found.contains("routed here (local dev lo)"), "{routed:?}");
        let lost = named(&r, "vip 198.18.45.101");
        assert_eq!(lost.level, Level::Warn, "{mode}: {lost:?}");
        assert!(lost.found.contains(&format!("route: unicast dev {iface}")), "{lost:?}");
        assert!(
            lost.fix
                .as_deref()
                .is_some_and(|f| f.contains(&format!("ip addr add 198.18.45.101/32 dev {iface}"))),
            "{lost:?}"
        );

        // Strict rp_filter (all 1) with the AnyIP VIP on lo: warned with the loose fix.
        let rp = named(&r, "rp_filter");
        assert_eq!(rp.level, Level::Warn, "{mode}: {rp:?}");
        assert!(rp.found.contains("VIP 198.18.47.5 is on lo"), "{rp:?}");
        assert!(!rp.found.contains("198.18.45.100"), "the owned VIP is on the interface: {rp:?}");
        assert!(rp.fix.as_deref().is_some_and(|f| f.contains("rp_filter=2")), "{rp:?}");

        // Backends, from the NAT address (the interface's own).
        let ok = named(&r, "backend git/b1");
        assert_eq!(ok.level, Level::Pass, "{mode}: {ok:?}");
        assert!(ok.found.contains("answers SSH-2.0-… from 198.18.45.1"), "{ok:?}");
        let off = named(&r, "backend bad/off");
        assert_eq!(off.level, Level::Warn, "{mode}: {off:?}");
        assert!(
            off.found.contains("not reachable from 198.18.45.1") && off.found.contains("refused"),
            "{off:?}"
        );
        let web = named(&r, "backend bad/web");
        assert_eq!(web.level, Level::Warn, "{mode}: {web:?}");
        assert!(
            web.found.contains("not as sshd") && web.found.contains("HTTP/1.0 400 Bad Request"),
            "{web:?}"
        );

        // Host keys: b3 is the odd one out of git; anyip's one backend is consistent.
        let keys = named(&r, "host-keys git");
        assert_eq!(keys.level, Level::Warn, "{mode}: {keys:?}");
        assert!(keys.found.contains("b3: its ssh-ed25519 key is SHA256:"), "{keys:?}");
        assert!(!keys.found.contains("b1:") && !keys.found.contains("b2:"), "{keys:?}");
        assert_eq!(level(&r, "host-keys anyip"), Level::Pass);
        assert!(r.checks.iter().all(|c| c.name != "host-keys bad"), "nothing to scan in bad");
        assert_eq!(r.worst(), Level::Warn, "warnings only: {}", r.render());
    }

    // Loose reverse-path filtering takes the VIP on lo.
    sysctl("net.ipv4.conf.all.rp_filter=2");
    let (r, _) = doctor("generic");
    assert_eq!(level(&r, "rp_filter"), Level::Pass, "{r:?}");
    assert!(named(&r, "rp_filter").found.contains("loose"));
    sysctl("net.ipv4.conf.all.rp_filter=1");

    // `up` logs the local warnings (VIP, rp_filter) and attaches; it does not probe backends.
    let started = Instant::now();
    let out = ns
        .command(agent, &["up", &iface, "--detach", "--xdp-mode", "generic", "--config", config_s])
        .output()
        .expect("spawn agent");
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "up refused: {err}");
    assert!(err.contains(&format!("doctor: {}", named(&r, "vip 198.18.45.101").line())), "{err}");
    assert!(err.contains("doctor: rp_filter: rp_filter 1"), "{err}");
    assert!(!err.contains("doctor: backend") && !err.contains("doctor: host-keys"), "{err}");

    // What the rp_filter warning is about, for real: a client at 198.18.45.3 whose neighbour
    // entry the balancer lacks. The backend's SYN-ACK, rewritten to come from the VIP (on lo,
    // by the local route), cannot be sent by the data plane (no neighbour) and goes to the
    // kernel; strict mode drops it (IPReversePathFilter), loose mode forwards it and resolves.
    let link: serde_json::Value =
        serde_json::from_slice(&ns.ip(&["-j", "link", "show", &iface]).stdout).expect("ip -j");
    let mac = link[0]["address"].as_str().expect("the balancer's MAC").to_owned();
    peer.ip(&["addr", "add", "198.18.45.3/24", "dev", "p0"]);
    // The client never ARPs for the balancer (which would teach the balancer its address).
    peer.ip(&["neigh", "replace", "198.18.45.1", "lladdr", &mac, "dev", "p0", "nud", "permanent"]);
    peer.ip(&["route", "add", "198.18.47.0/24", "via", "198.18.45.1", "src", "198.18.45.3"]);
    let connect = || {
        ns.ip(&["neigh", "flush", "to", "198.18.45.3", "dev", &iface]);
        peer.run(|| -> Result<String, String> {
            let addr: std::net::SocketAddr = "198.18.47.5:22".parse().expect("addr");
            let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .map_err(|e| e.to_string())?;
            conn.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
            let mut banner = [0u8; 8];
            std::io::Read::read_exact(&mut conn, &mut banner).map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&banner).into_owned())
        })
    };
    let rp_drops = || {
        let out = ns.command("cat", &["/proc/net/netstat"]).output().expect("netstat");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let (names, values) = (lines.next().expect("names"), lines.next().expect("values"));
        let at = names.split_whitespace().position(|n| n == "IPReversePathFilter").expect("field");
        values.split_whitespace().nth(at).and_then(|v| v.parse::<u64>().ok()).expect("value")
    };
    let before = rp_drops();
    let strict = connect();
    assert!(strict.is_err(), "strict rp_filter let the reply through: {strict:?}");
    assert!(rp_drops() > before, "the reply was not dropped by the reverse-path filter");
    sysctl("net.ipv4.conf.all.rp_filter=2");
    assert_eq!(connect().as_deref(), Ok("SSH-2.0-"), "loose rp_filter: the reply is forwarded");
    let stats = ns.command(agent, &["stats", &iface]).output().expect("stats");
    let stats = sshlb_tests::parse_stats(&String::from_utf8_lossy(&stats.stdout));
    let no_neigh = stats.iter().find(|(n, _)| n == "pass_no_neigh").map_or(0, |(_, v)| *v);
    assert!(no_neigh > 0, "the replies did not take the unresolved-neighbour path: {stats:?}");

    let down = ns.command(agent, &["down", &iface]).output().expect("down");
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    eprintln!("up --detach with the local checks took {took:?}");

    stop.store(true, Ordering::Relaxed);
    http.join().expect("http server");
    let _ignored = std::fs::remove_dir_all(&files);
}
