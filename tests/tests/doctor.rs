//! `sshlb-agent doctor` against interfaces broken on purpose, in namespaces of its own: a veth
//! in native mode (warned, with the peer's fix), an MTU native XDP cannot take (failed, and
//! `up` refuses with the same words and attaches nothing), generic mode (both fine), a missing
//! interface, and configurations that do not parse or whose NAT ports overlap the kernel's.

use std::process::Output;

use sshlb::doctor::{Level, Report};
use sshlb_tests::{agent_binary, root_or_skip, unique, veth, Detach, Netns};

fn report(out: &Output) -> Report {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn level(r: &Report, name: &str) -> Level {
    r.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {r:?}"))
        .level
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
