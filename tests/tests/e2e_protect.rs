//! SSH-aware protection, end to end, with real `sshd` backends and the real `ssh` client through
//! the VIP: host-key consistency (one backend re-keyed), allow/deny lists changed live (with and
//! without `--kill-established`), the per-source rate limit (a burst from one client while another
//! is unaffected), and `sshlb-agent drain --wait`.
//!
//! One lab, phases in sequence: each phase reloads the configuration it needs.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    time::{Duration, Instant},
};

use sshlb::{config, control, loader};
use sshlb_tests::{
    agent::{scrape_metrics, AgentThread},
    agent_binary,
    config::{ConfigBuilder, ServiceBuilder},
    config_ms,
    lab::Lab,
    prepare_bridge, root_or_skip, run,
    sshd::{Sshd, SshdOptions},
    topo::{BACKENDS, CLIENT4, VIP4},
    unique, wait_for, PIN_ROOT,
};

/// Extra client addresses (on the client host, beside `CLIENT4`).
const INTRUDER: &str = "198.18.2.66";
const BURSTY: &str = "198.18.2.20";
const BURST: usize = 5;

struct Phase<'a> {
    lab: &'a Lab,
    control: PathBuf,
    cfg_path: PathBuf,
}

impl Phase<'_> {
    fn status(&self) -> control::ServiceStatus {
        let reply = control::call(&self.control, &control::Request::Status).expect("status");
        reply.status.expect("status").services.into_iter().next().expect("one service")
    }

    /// Writes the configuration with `extra` service settings and reloads it.
    fn reload(&self, extra: &str, kill_established: bool) -> control::Reply {
        std::fs::write(&self.cfg_path, config_text(self.lab, &self.control, extra)).expect("cfg");
        let reply = control::call(&self.control, &control::Request::Reload { kill_established })
            .expect("reload");
        assert!(reply.ok, "reload refused: {:?}", reply.error);
        reply
    }

    fn ssh_args(&self, from: &str, remote: &str) -> Vec<String> {
        let mut args = self.lab.files.ssh_args();
        args.extend(["-b".into(), from.into(), "-o".into(), "ConnectTimeout=2".into()]);
        args.extend([format!("root@{VIP4}"), remote.to_owned()]);
        args
    }

    fn ssh(&self, from: &str, remote: &str) -> Output {
        let args = self.ssh_args(from, remote);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.lab.topo.client.command("ssh", &args).output().expect("ssh")
    }

    fn spawn_ssh(&self, from: &str, remote: &str, extra: &[&str]) -> Child {
        let mut args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        args.extend(self.ssh_args(from, remote));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.lab
            .topo
            .client
            .command("ssh", &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ssh")
    }

    fn counter(&self, name: &str) -> u64 {
        let map = loader::pinned_stats(Path::new(PIN_ROOT), &self.lab.topo.lb_if).expect("stats");
        let counters = sshlb::stats::read(&map).expect("read stats");
        counters.iter().find(|c| c.name == name).map_or(0, |c| c.value)
    }

    /// The connection table's entries from `client` (for failure messages).
    fn flows_from(&self, client: &str) -> Vec<String> {
        let Ok(map) = loader::pinned_flows(Path::new(PIN_ROOT), &self.lab.topo.lb_if) else {
            return vec!["no pinned FLOWS".to_owned()];
        };
        let client: std::net::IpAddr = client.parse().expect("client address");
        let mut seen = Vec::new();
        let _walked = sshlb::flows::walk(&map, |key, flow| {
            if sshlb_common::addr::from16(key.family, &key.src) == client {
                seen.push(format!("{}: {flow:?}", u16::from_be(key.sport_be)));
            }
        });
        seen
    }

    /// `sshlb-agent drain bastion/BACKEND --wait --timeout T` as an operator types it.
    fn drain_wait(&self, backend: &str, timeout: &str) -> Output {
        let control = self.control.display().to_string();
        let target = format!("bastion/{backend}");
        std::process::Command::new(agent_binary())
            .args(["--control", &control, "drain", &target, "--wait", "--timeout", timeout])
            .stdin(Stdio::null())
            .output()
            .expect("sshlb-agent drain")
    }
}

fn config_text(lab: &Lab, control: &Path, extra: &str) -> String {
    let _ = lab;
    let service = ServiceBuilder::new("bastion", VIP4, 22)
        .raw(extra)
        // Stretched under emulation (config_ms): the same checks and scans, on a slower CPU.
        .health("interval", &config_ms(100))
        .health("timeout", &config_ms(1000))
        .health("host-key-interval", &config_ms(1000))
        .topo_backends(false, |_, b| b);
    ConfigBuilder::new().control(control).service(service).to_toml()
}

/// The backend name whose address an `echo $SSH_CONNECTION` line ends with (server side).
fn backend_of(line: &str) -> String {
    let addr = line.split_whitespace().nth(2).unwrap_or_default();
    BACKENDS
        .iter()
        .find(|(_, a, _)| *a == addr)
        .map_or_else(|| panic!("{line:?} names no backend"), |(n, _, _)| (*n).to_owned())
}

/// [`sshlb_tests::counters::tcp_ip_counters`] of the client, the balancer and each backend:
/// which end received, answered or refused the kill's probes.
fn tcp_counters(lab: &Lab) -> Vec<String> {
    let topo = &lab.topo;
    let namespaces: Vec<&sshlb_tests::Netns> =
        [&topo.client, &topo.lb].into_iter().chain(&topo.backends).collect();
    sshlb_tests::counters::tcp_ip_counters(&namespaces)
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout * sshlb_tests::slowdown();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn host_keys_lists_limits_and_drain_wait_with_real_ssh() {
    if !root_or_skip("host_keys_lists_limits_and_drain_wait_with_real_ssh") {
        return;
    }
    let mut lab = Lab::build(&std::env::temp_dir().join(unique("protect")), true);
    for addr in [INTRUDER, BURSTY] {
        lab.topo.client.ip(&["addr", "add", &format!("{addr}/24"), "dev", "cl0"]);
    }
    // b3 is re-keyed: a backend rebuilt without the fleet's host key.
    lab.sshds[2].stop();
    lab.sshds[2] = Sshd::start_with(
        &lab.topo.backends[2],
        &SshdOptions {
            listen: vec!["0.0.0.0".into()],
            name: Some("b3".into()),
            authorized_keys: Some(lab.files.path("authorized_keys")),
            ..SshdOptions::default()
        },
    );
    let control = PathBuf::from(format!("/run/sshlb/test-{}.sock", lab.topo.lb_if));
    let cfg_path = lab.files.path("sshlb.toml");
    let text = config_text(&lab, &control, "");
    std::fs::write(&cfg_path, &text).expect("config");
    let cfg = config::parse("protect.toml", &text).expect("config");
    let _detach = prepare_bridge(&lab.topo, vec![control.clone()]);
    let agent = AgentThread::spawn(&lab.topo, &cfg, &control, Some(cfg_path.clone()));
    let phase = Phase { lab: &lab, control: control.clone(), cfg_path };
    let serving = agent.wait_status(Duration::from_secs(10), |_| true);
    assert!(serving, "the agent did not come up");

    // 1. Host keys, policy "warn": b3 is flagged with a reason, counted, and stays in the ring.
    let flagged = wait_for(Duration::from_secs(15), || {
        let s = phase.status();
        let ok = s.backends.iter().filter(|b| b.host_key_check == "match").count() == 2;
        (ok && s.backends[2].host_key_check == "mismatch").then_some(s)
    })
    .unwrap_or_else(|| panic!("b3 not flagged: {:?}", phase.status()));
    let b3 = &flagged.backends[2];
    let problem = b3.host_key_problem.clone().unwrap_or_default();
    assert!(problem.contains("ssh-ed25519 key is SHA256:"), "{problem}");
    assert!(b3.in_ring, "warn keeps it in the ring");
    assert_eq!(flagged.host_key_mismatches, 1);
    let fleet_key = run(std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(lab.files.path("host_key.pub")));
    let fleet_fp = String::from_utf8_lossy(&fleet_key.stdout)
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_owned();
    assert!(
        flagged.backends[0].host_keys.iter().any(|k| k.fingerprint == fleet_fp),
        "the agent's fingerprint is ssh-keygen's: {:?} vs {fleet_fp}",
        flagged.backends[0].host_keys
    );
    // A counter of transitions into "mismatch": 1 here, more where a scan timed out in between
    // (under QEMU's emulation one can: the verdict goes mismatch → error → mismatch).
    let mismatches = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("sshlb_host_key_mismatches_total{service=\"bastion\"} "))
            .and_then(|n| n.parse::<u64>().ok())
    };
    let metrics = wait_for(Duration::from_secs(5), || {
        let metrics = scrape_metrics(&lab.topo.lb).ok()?;
        mismatches(&metrics).is_some_and(|n| n >= 1).then_some(metrics)
    });
    let metrics = metrics.unwrap_or_else(|| {
        let last = scrape_metrics(&lab.topo.lb).unwrap_or_default();
        panic!("no host-key mismatch counted: {:?}", mismatches(&last))
    });
    assert!(metrics.contains(
        "sshlb_backend_host_keys{service=\"bastion\",backend=\"b3\",state=\"mismatch\"} 1"
    ));

    // Policy "enforce" with the fleet's fingerprint: b3 leaves the ring; every client that
    // checks host keys strictly gets in, none is told the host identification changed.
    // From here on every configuration keeps the enforced fleet key.
    let enforce = format!("host-keys = [\"{fleet_fp}\"]\nhost-key-policy = \"enforce\"");
    phase.reload(&enforce, false);
    let out =
        wait_for(Duration::from_secs(10), || (!phase.status().backends[2].in_ring).then_some(()));
    assert!(out.is_some(), "enforce did not take b3 out of the ring: {:?}", phase.status());
    for i in 0..6 {
        let out = phase.ssh(CLIENT4, "echo $SSH_CONNECTION");
        assert!(
            out.status.success(),
            "strict ssh {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_ne!(backend_of(&String::from_utf8_lossy(&out.stdout)), "b3");
    }

    // 2. Deny list, changed live. The intruder's open session survives the change; its new
    // connections are refused and counted; --kill-established then ends the session.
    // No keepalives: the killed session must end without either side sending anything.
    let mut session = phase.spawn_ssh(INTRUDER, "while read l; do echo got-$l; done", &[]);
    let mut stdin = session.stdin.take().expect("stdin");
    let mut lines = BufReader::new(session.stdout.take().expect("stdout")).lines();
    let mut roundtrip = |word: &str| {
        writeln!(stdin, "{word}").and_then(|()| stdin.flush()).ok()?;
        lines.next()?.ok()
    };
    assert_eq!(roundtrip("a").as_deref(), Some("got-a"), "intruder session did not start");
    let denied_before = phase.counter("drop_acl_denied");
    let deny = format!("{enforce}\ndeny = [\"{INTRUDER}\"]");
    phase.reload(&deny, false);
    assert_eq!(roundtrip("b").as_deref(), Some("got-b"), "the list change cut a session");
    let refused = phase.ssh(INTRUDER, "true");
    assert!(!refused.status.success(), "a denied client got in");
    assert!(phase.counter("drop_acl_denied") > denied_before, "denied SYNs not counted");
    let allowed = phase.ssh(CLIENT4, "echo in");
    assert!(allowed.status.success(), "{}", String::from_utf8_lossy(&allowed.stderr));
    assert_eq!(phase.status().deny, vec![format!("{INTRUDER}/32")]);
    let resets_before = phase.counter("event_flow_reset");
    let killed_at = Instant::now();
    let reply = phase.reload(&deny, true);
    let note = reply.note.unwrap_or_default();
    assert!(note.contains("ended 1 established flow"), "{note}");
    // Both ends are reset: the idle client exits, and its sshd session on the backend too.
    let mut ended = wait_exit(&mut session, Duration::from_secs(5));
    let mut probed = true;
    if ended.is_none() {
        // The probes did not end the client. Once this was a third of the runs: Linux 6.18
        // answers a PAWS-refused ACK only when it lies after the number it expects next (the
        // counters below showed TcpExtPAWSOldAck), hence two probes half the sequence space
        // apart. What the README promises either way: the client's next segment on the flow
        // ends it. Say which step did not happen, then check that.
        eprintln!(
            "--kill-established: the probes did not end the client within 5 s: \
             event_flow_reset {} → {}, event_reset_report_lost {}, backend sessions {:?}, \
             flows {:?}",
            resets_before,
            phase.counter("event_flow_reset"),
            phase.counter("event_reset_report_lost"),
            lab.topo.backends.iter().map(sshlb_tests::Netns::ssh_sessions).collect::<Vec<_>>(),
            phase.flows_from(INTRUDER),
        );
        // Read only now (a read before the kill changes its timing, and the failure hides):
        // the namespaces are the test's own, so the counts are this test's.
        eprintln!("TCP/IP counters per namespace (non-zero):");
        for line in tcp_counters(&lab) {
            eprintln!("  {line}");
        }
        probed = false;
        // Written, not read back: a read would wait as long as a broken kill lets it.
        let _sent = writeln!(stdin, "c").and_then(|()| stdin.flush());
        ended = wait_exit(&mut session, Duration::from_secs(5));
    }
    assert!(
        ended.is_some_and(|s| !s.success()),
        "the killed session's client did not fail ({ended:?}), even on its next segment"
    );
    let client_gone = killed_at.elapsed();
    lab.assert_no_sessions_left(Duration::from_secs(5));
    eprintln!(
        "--kill-established ({}): client exited after {client_gone:?}, backend session gone \
         after {:?}",
        if probed { "by the probes" } else { "on the client's next segment" },
        killed_at.elapsed()
    );
    assert!(phase.counter("event_flow_reset") >= 1, "the data plane reset no segment");

    // 3. Rate limit: the first BURST connections of one client pass, the rest are refused,
    // while another client is unaffected.
    phase.reload(&format!("{deny}\n[service.limit]\nrate = \"1/h\"\nburst = 5"), false);
    let limited_before = phase.counter("drop_rate_limited");
    for i in 0..BURST {
        let out = phase.ssh(BURSTY, "true");
        assert!(
            out.status.success(),
            "burst connection {i} refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let over: Vec<_> = (0..3)
        .map(|_| {
            let args = phase.ssh_args(BURSTY, "true");
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            lab.topo.client.command("ssh", &args).stderr(Stdio::piped()).spawn().expect("ssh")
        })
        .collect();
    let other = phase.ssh(CLIENT4, "echo unaffected");
    assert!(other.status.success(), "{}", String::from_utf8_lossy(&other.stderr));
    for child in over {
        let out = child.wait_with_output().expect("ssh");
        assert!(!out.status.success(), "a connection over the burst got in");
    }
    assert!(phase.counter("drop_rate_limited") >= limited_before + 3);
    let limited = phase.status().limited;
    assert_eq!(limited.first().map(|p| p.prefix.as_str()), Some("198.18.2.20/32"), "{limited:?}");

    // 4. drain --wait: a session is open on some backend; the drain prints its live sessions
    // and returns once the session ends.
    // The CLI is built on first use (a cargo call): not while the session's seconds run.
    let _cli = agent_binary();
    let mut open = phase.spawn_ssh(CLIENT4, "echo $SSH_CONNECTION; sleep 3", &[]);
    let mut first = String::new();
    BufReader::new(open.stdout.take().expect("stdout")).read_line(&mut first).expect("line");
    let backend = backend_of(&first);
    let drained = phase.drain_wait(&backend, "30s");
    let said = String::from_utf8_lossy(&drained.stdout);
    assert!(drained.status.success(), "drain --wait failed: {said}");
    assert!(said.contains("1 live session"), "{said}");
    assert!(said.contains("drained in"), "{said}");
    assert!(open.wait().expect("session").success(), "the drained session was cut");
    // With a session outliving the timeout, it says so and exits non-zero.
    let mut long = phase.spawn_ssh(CLIENT4, "echo $SSH_CONNECTION; sleep 5", &[]);
    let mut first = String::new();
    BufReader::new(long.stdout.take().expect("stdout")).read_line(&mut first).expect("line");
    let timed_out = phase.drain_wait(&backend_of(&first), "1s");
    assert!(!timed_out.status.success(), "drain --wait returned while a session was open");
    let why = String::from_utf8_lossy(&timed_out.stderr);
    assert!(why.contains("still open"), "{why}");
    assert!(long.wait().expect("session").success(), "the timed-out drain cut the session");

    lab.assert_no_sessions_left(Duration::from_secs(10));
    agent.stop();
}
