//! End to end with the real tools: OpenSSH `sshd` on three backends sharing one host key, the
//! real `ssh` and `git` clients on a host behind a router, through the balancer's VIPs in full
//! NAT and DSR, over IPv4 and IPv6.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use sshlb::{config, daemon, loader};
use sshlb_tests::{
    root_or_skip, run,
    sshd::{Sshd, SshdOptions},
    topo::{payload, Conn, Topo, BACKENDS, DSR4, DSR6, VIP4, VIP6},
    unique, wait_for, Netns,
};

const PIN_ROOT: &str = "/sys/fs/bpf/sshlb";

/// Keys, known_hosts and a bare repository shared by every backend (one filesystem).
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("e2e"));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = Self { dir };
        for key in ["host_key", "client_key"] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(f.path(key)));
        }
        std::fs::copy(f.path("client_key.pub"), f.path("authorized_keys"))
            .expect("authorized_keys");
        // Every VIP presents the one shared host key: known_hosts names them all.
        let host_pub = std::fs::read_to_string(f.path("host_key.pub")).expect("host key");
        let known: String =
            [VIP4, VIP6, DSR4, DSR6].iter().map(|vip| format!("{vip} {host_pub}")).collect();
        std::fs::write(f.path("known_hosts"), known).expect("known_hosts");
        // A few MB of history in a bare repository.
        let work = f.path("work");
        run(Command::new("git").args(["init", "-q", "-b", "main"]).arg(&work));
        for i in 0..4 {
            std::fs::write(work.join(format!("blob{i}.bin")), payload(1 << 20, i)).expect("blob");
            run(Command::new("git").arg("-C").arg(&work).args(["add", "."]));
            run(Command::new("git").arg("-C").arg(&work).args([
                "-c",
                "user.name=lab",
                "-c",
                "user.email=lab@example.invalid",
                "commit",
                "-q",
                "-m",
                &format!("commit {i}"),
            ]));
        }
        run(Command::new("git").args(["clone", "-q", "--bare"]).arg(&work).arg(f.path("repo.git")));
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `ssh` options for the client: our key, strict host checking against the shared key.
    fn ssh_args(&self) -> Vec<String> {
        vec![
            "-i".into(),
            self.path("client_key").display().to_string(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.path("known_hosts").display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "ConnectTimeout=5".into(),
        ]
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ssh(client: &Netns, f: &Fixture, vip: &str, extra: &[&str], command: &str) -> Output {
    let mut args = f.ssh_args();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(format!("root@{vip}"));
    args.push(command.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    client.command("ssh", &args).output().expect("spawn ssh")
}

fn git(client: &Netns, f: &Fixture, args: &[&str], cwd: &Path) -> Output {
    let ssh_command = format!("ssh {}", f.ssh_args().join(" "));
    let mut cmd = client.command("git", args);
    cmd.current_dir(cwd).env("GIT_SSH_COMMAND", ssh_command);
    cmd.output().expect("spawn git")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ssh_git_and_tunnels_through_every_vip() {
    if !root_or_skip("ssh_git_and_tunnels_through_every_vip") {
        return;
    }
    // The topology's echo servers on port 7 serve as the tunnel target.
    let topo = Topo::new(7);
    let f = Fixture::new();
    let _sshds: Vec<Sshd> = BACKENDS
        .iter()
        .zip(&topo.backends)
        .map(|((name, _, _), ns)| {
            Sshd::start_with(
                ns,
                &SshdOptions {
                    listen: vec!["0.0.0.0".into(), "::".into()],
                    name: Some((*name).to_owned()),
                    host_key: Some(f.path("host_key")),
                    authorized_keys: Some(f.path("authorized_keys")),
                    ..SshdOptions::default()
                },
            )
        })
        .collect();
    let mut text = format!("[agent]\ncontrol = \"/run/sshlb/test-{}.sock\"\n", topo.lb_if);
    for (name, vip, mode, v6) in [
        ("nat4", VIP4, "nat", false),
        ("nat6", VIP6, "nat", true),
        ("dsr4", DSR4, "dsr", false),
        ("dsr6", DSR6, "dsr", true),
    ] {
        text += &format!("[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = 22\nmode = \"{mode}\"\nring-size = 4093\n");
        for (bname, a4, a6) in BACKENDS {
            let weight = if bname == "b3" { 200 } else { 100 };
            text += &format!(
                "[[service.backend]]\nname = \"{bname}\"\naddress = \"{}\"\nweight = {weight}\n",
                if v6 { a6 } else { a4 }
            );
        }
    }
    let cfg = config::parse("e2e.toml", &text).expect("config");
    let pass_port = topo.lb_port.clone();
    topo.sw.run(move || loader::attach_pass(&PathBuf::from(PIN_ROOT), &pass_port).expect("pass"));
    let iface = topo.lb_if.clone();
    let balancer = topo.lb.run(move || {
        daemon::start(&PathBuf::from(PIN_ROOT), &iface, loader::AttachMode::Native, &cfg)
            .unwrap_or_else(|e| panic!("start: {e}"))
    });
    let _cleanup = Cleanup { iface: topo.lb_if.clone(), pass_port: topo.lb_port.clone() };

    // ssh runs a command and gets the right answer, through every VIP, with strict host keys.
    for vip in [VIP4, VIP6, DSR4, DSR6] {
        let out = ssh(&topo.client, &f, vip, &[], "echo $((6*7)) via $SSH_CONNECTION");
        let answer = ok(&out, &format!("ssh via {vip}"));
        assert!(answer.starts_with("42 via "), "{vip}: {answer}");
        // NAT: the backend sees the balancer; DSR: it sees the client itself.
        let client = if vip.contains(':') { "fd00:20::10" } else { "198.18.2.10" };
        assert_eq!(answer.contains(client), vip == DSR4 || vip == DSR6, "{vip}: {answer}");
    }

    // git clone (objects verified), push, and a second clone through another VIP sees the push.
    let work = f.path("clones");
    std::fs::create_dir_all(&work).expect("clones");
    let repo = f.path("repo.git");
    let url = |vip: &str| {
        let host = if vip.contains(':') { format!("[{vip}]") } else { vip.to_owned() };
        format!("ssh://root@{host}{}", repo.display())
    };
    ok(&git(&topo.client, &f, &["clone", "-q", &url(VIP4), "a"], &work), "git clone via nat4");
    ok(&git(&topo.client, &f, &["fsck", "--strict"], &work.join("a")), "git fsck");
    std::fs::write(work.join("a/pushed.txt"), "through the balancer\n").expect("write");
    ok(&git(&topo.client, &f, &["add", "pushed.txt"], &work.join("a")), "git add");
    let commit = [
        "-c",
        "user.name=e2e",
        "-c",
        "user.email=e2e@example.invalid",
        "commit",
        "-q",
        "-m",
        "push via dsr6",
    ];
    ok(&git(&topo.client, &f, &commit, &work.join("a")), "git commit");
    ok(
        &git(&topo.client, &f, &["push", "-q", &url(DSR6), "main"], &work.join("a")),
        "git push via dsr6",
    );
    ok(&git(&topo.client, &f, &["clone", "-q", &url(VIP6), "b"], &work), "git clone via nat6");
    ok(&git(&topo.client, &f, &["fsck", "--strict"], &work.join("b")), "git fsck");
    assert_eq!(
        std::fs::read_to_string(work.join("b/pushed.txt")).expect("pushed file"),
        "through the balancer\n"
    );

    // 300 new connections spread by weight 1:1:2 within ±20 %.
    let names = topo.client.run(|| {
        (0..300).map(|_| Conn::open_banner(VIP4, 22).expect("connect")).collect::<Vec<_>>()
    });
    for (name, share) in [("b1", 0.25), ("b2", 0.25), ("b3", 0.5)] {
        let got = names.iter().filter(|n| n.as_str() == name).count() as f64;
        let expected = 300.0 * share;
        assert!((got - expected).abs() <= 0.2 * expected, "{name}: {got} of 300 (≈{expected})");
    }

    // ssh -L: a tunnel riding the balanced session reaches the backend's echo service.
    let mut tunnel = {
        let mut args = f.ssh_args();
        args.extend([
            "-N".into(),
            "-L".into(),
            "127.0.0.1:17007:127.0.0.1:7".into(),
            format!("root@{VIP4}"),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        topo.client.command("ssh", &args).spawn().expect("ssh -L")
    };
    let echoed = wait_for(Duration::from_secs(10), || {
        topo.client.run(|| {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect("127.0.0.1:17007").ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
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
    drop(balancer);
}

struct Cleanup {
    iface: String,
    pass_port: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = loader::down(&PathBuf::from(PIN_ROOT), &self.iface);
        let _ = loader::detach_pass(&PathBuf::from(PIN_ROOT), &self.pass_port);
    }
}
