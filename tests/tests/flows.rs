//! `sshlb-agent flows` against real OpenSSH sessions through two services (full NAT and DSR):
//! each row's client port is the port the `ssh` client really bound (read from the client
//! namespace's sockets), and its backend is the one whose sshd holds that connection (read
//! from each backend namespace's sockets: the client's own address and port under DSR, the
//! balancer's NAT address and the row's NAT port under full NAT). Then the filters, the bad
//! ones, and the agent killed: the rows still come, named by the configuration file.

use std::{
    io::BufRead as _,
    process::{Child, Stdio},
    time::Duration,
};

use sshlb::flowview::{FlowRow, Flows};
use sshlb_tests::{
    agent::AgentHandle,
    lab::Lab,
    root_or_skip,
    topo::{BACKENDS, DSR4, LB4, VIP4},
    unique, wait_for, Netns,
};

/// ssh sessions this test started; killed by PID when dropped, also on failure.
struct Sessions(Vec<Child>);

impl Drop for Sessions {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ignored = child.kill();
            let _ignored = child.wait();
        }
    }
}

/// Established TCP connections in `ns` as (local, peer, process info) — `ss -Htnp`.
fn sockets(ns: &Netns) -> Vec<(String, String, String)> {
    let out = ns.command("ss", &["-Htnp", "state", "established"]).output().expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (local, peer) = (cols.get(2)?, cols.get(3)?);
            Some(((*local).to_owned(), (*peer).to_owned(), cols[4..].join(" ")))
        })
        .collect()
}

fn flows_json(agent: &AgentHandle<'_>, args: &[&str]) -> Flows {
    let mut full = vec!["flows", "--json"];
    full.extend_from_slice(args);
    let out = agent.ctl(&full);
    assert!(out.status.success(), "flows {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("flows --json: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn flows_show_real_ssh_sessions_with_their_ports_and_backends() {
    if !root_or_skip("flows_show_real_ssh_sessions_with_their_ports_and_backends") {
        return;
    }
    let lab = Lab::build(&std::env::temp_dir().join(unique("flows")), true);
    let mut agent = AgentHandle::new(&lab.topo);
    let control = agent.control().display().to_string();
    let config = sshlb_tests::config::ConfigBuilder::new()
        .control(&control)
        .service(Lab::ssh_service("nat4", VIP4, "nat", false).health("interval", "100ms"))
        .service(Lab::ssh_service("dsr4", DSR4, "dsr", false).health("interval", "100ms"))
        .to_toml();
    agent.write_config(&config);
    agent.up();
    let all_up = wait_for(Duration::from_secs(10), || {
        let out = agent.ctl(&["status", "--json"]);
        let s: sshlb::control::Status = serde_json::from_slice(&out.stdout).ok()?;
        s.services.iter().flat_map(|s| &s.backends).all(|b| b.health == "up").then_some(())
    });
    assert!(all_up.is_some(), "backends not up:\n{}", agent.log_text());

    // Three held sessions per service; each prints its $SSH_CONNECTION once logged in.
    let mut sessions = Sessions(Vec::new());
    for vip in [VIP4, DSR4, VIP4, DSR4, VIP4, DSR4] {
        let mut child = lab
            .files
            .ssh_command(&lab.topo.client, vip, &[], "echo $SSH_CONNECTION; exec sleep 120")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the session's first line");
        assert_eq!(line.split_whitespace().count(), 4, "not logged in: {line:?}");
        sessions.0.push(child);
    }

    // The client's real source port of each session, by the ssh process's PID.
    let client_sockets = sockets(&lab.topo.client);
    let mut expected: Vec<(u16, &str)> = Vec::new();
    for (child, vip) in sessions.0.iter().zip([VIP4, DSR4, VIP4, DSR4, VIP4, DSR4]) {
        let pid = format!("pid={},", child.id());
        let (local, _, _) = client_sockets
            .iter()
            .find(|(_, peer, who)| *peer == format!("{vip}:22") && who.contains(&pid))
            .unwrap_or_else(|| panic!("no socket of ssh {pid} to {vip}: {client_sockets:?}"));
        let port: u16 = local.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        expected.push((port, if vip == VIP4 { "nat4" } else { "dsr4" }));
    }

    let flows = flows_json(&agent, &[]);
    assert_eq!(flows.interface, lab.topo.lb_if);
    assert_eq!(flows.names_from.as_deref(), Some("the running agent"));
    let rows: Vec<&FlowRow> = flows.flows.iter().filter(|r| r.state == "established").collect();
    assert_eq!(rows.len(), 6, "{:#?}", flows.flows);
    let backend_sockets: Vec<_> = lab.topo.backends.iter().map(sockets).collect();
    for (port, service) in &expected {
        let row = rows
            .iter()
            .find(|r| r.client_port == *port)
            .unwrap_or_else(|| panic!("no row for client port {port}: {rows:#?}"));
        assert_eq!(row.client, sshlb_tests::topo::CLIENT4, "{row:?}");
        // Made by this data plane during this test: an age, no older than the test, and never
        // shorter than the time the flow has been idle.
        let age = row.age_seconds.expect("a flow this data plane made has an age");
        assert!(age <= 300 && age >= row.idle_seconds, "{row:?}");
        assert_eq!(row.service.as_deref(), Some(*service), "{row:?}");
        let name = row.backend.as_deref().expect("backend named");
        let i = BACKENDS.iter().position(|(n, _, _)| *n == name).expect("a lab backend");
        assert_eq!(row.backend_address.as_deref(), Some(BACKENDS[i].1), "{row:?}");
        // The backend named is the one whose sshd holds the connection.
        let peer = if *service == "nat4" {
            assert_eq!(row.vip, VIP4);
            format!("{LB4}:{}", row.nat_port.expect("full NAT has a NAT port"))
        } else {
            assert_eq!((row.vip.as_str(), row.nat_port), (DSR4, None), "{row:?}");
            format!("{}:{port}", sshlb_tests::topo::CLIENT4)
        };
        for (j, socks) in backend_sockets.iter().enumerate() {
            let holds = socks.iter().any(|(local, p, _)| local.ends_with(":22") && *p == peer);
            assert_eq!(holds, i == j, "{peer} on {}: {socks:?} (row {row:?})", BACKENDS[j].0);
        }
    }

    // Filters.
    let ports = |flows: Flows| -> Vec<u16> {
        let mut p: Vec<u16> = flows.flows.iter().map(|r| r.client_port).collect();
        p.sort_unstable();
        p
    };
    let of = |service: &str| -> Vec<u16> {
        let mut p: Vec<u16> =
            expected.iter().filter(|(_, s)| *s == service).map(|(p, _)| *p).collect();
        p.sort_unstable();
        p
    };
    assert_eq!(ports(flows_json(&agent, &["--service", "dsr4"])), of("dsr4"));
    assert_eq!(ports(flows_json(&agent, &["--service", "nat4"])), of("nat4"));
    let some = rows.iter().find(|r| r.service.as_deref() == Some("nat4")).expect("a nat4 row");
    let b = some.backend.clone().expect("named");
    let on_b = flows_json(&agent, &["--service", "nat4", "--backend", &b]);
    assert!(!on_b.flows.is_empty() && on_b.flows.iter().all(|r| r.backend.as_ref() == Some(&b)));
    assert_eq!(flows_json(&agent, &["--client", "198.18.2.0/24"]).flows.len(), 6);
    assert!(flows_json(&agent, &["--client", "198.18.3.0/24"]).flows.is_empty());

    // The table for people: a header, one line per flow, the count.
    let out = agent.ctl(&["flows", "--service", "dsr4"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with("CLIENT "), "{text}");
    assert!(text.contains(&format!("{} flow(s) on {}", 3, lab.topo.lb_if)), "{text}");

    // Bad filters: a located message and a failing exit.
    for (args, says) in [
        (&["flows", "--client", "300.1.2.3/8"][..], "--client \"300.1.2.3/8\" is not an address"),
        (
            &["flows", "--service", "svn"],
            "--service \"svn\": no such service (configured: nat4, dsr4)",
        ),
        (&["flows", "--service", "nat4", "--backend", "b9"], "--backend \"b9\": no such backend"),
    ] {
        let out = agent.ctl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{args:?}: {err}");
    }

    // The agent dies (SIGKILL: pins stay, sessions keep flowing): the table is still read,
    // named from the configuration file, or shown by address only without one.
    agent.kill();
    let iface = lab.topo.lb_if.clone();
    let cfg = agent.config_path().display().to_string();
    let down = flows_json(&agent, &["--iface", &iface, "--config", &cfg]);
    assert_eq!(down.names_from.as_deref(), Some(cfg.as_str()));
    let again: Vec<_> = down.flows.iter().filter(|r| r.state == "established").collect();
    for (port, service) in &expected {
        let before = rows.iter().find(|r| r.client_port == *port).expect("row before");
        let after =
            again.iter().find(|r| r.client_port == *port).expect("row after the agent died");
        assert_eq!((after.service.as_deref(), &after.backend), (Some(*service), &before.backend));
    }
    let bare = agent
        .command(&["--control", &control, "flows", "--json", "--iface", &iface])
        .env("SSHLB_CONFIG", "/nonexistent/sshlb.toml")
        .output()
        .expect("flows");
    assert!(bare.status.success(), "{}", String::from_utf8_lossy(&bare.stderr));
    let bare: Flows = serde_json::from_slice(&bare.stdout).expect("json");
    assert_eq!(bare.names_from, None);
    assert!(bare.flows.iter().filter(|r| r.state == "established").count() == 6);
    assert!(bare.flows.iter().all(|r| r.service.is_none() && r.backend_address.is_some()));
    drop(sessions);
}
