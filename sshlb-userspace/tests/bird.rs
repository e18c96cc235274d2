//! The BIRD edge against a real BIRD 2: the include file the agent renders is accepted, the
//! announced VIPs appear as routes of protocol `sshlb_vips4`/`sshlb_vips6` and leave again on
//! withdrawal, and a file BIRD refuses comes back as an error with BIRD's own words while the
//! routes BIRD had stay.
//!
//! Needs root and `bird`/`birdc` (Debian `bird2`); with `SSHLB_REQUIRE_ROOT_TESTS=1` a missing
//! one fails the test instead of skipping it. BIRD runs with only static protocols: no
//! network is touched.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sshlb::{
    announce::{render_bird, Bird, BirdError},
    config::{Announce, AnnounceMode},
};

/// A BIRD daemon in the foreground, killed (by its pid) and its directory removed on drop.
struct BirdDaemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for BirdDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn skip_unless_ready() -> bool {
    let required = std::env::var_os("SSHLB_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1");
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    let bird = Command::new("bird").arg("--version").output().is_ok();
    if root && bird {
        return false;
    }
    assert!(!required, "SSHLB_REQUIRE_ROOT_TESTS=1 but root={root}, bird installed={bird}");
    eprintln!("skipped: needs root and bird2 (root={root}, bird={bird})");
    true
}

fn start_bird(dir: &Path, include: &Path) -> BirdDaemon {
    std::fs::create_dir_all(dir).expect("temp dir");
    std::fs::write(include, "").expect("empty include");
    let conf = dir.join("bird.conf");
    std::fs::write(
        &conf,
        format!(
            "router id 198.18.2.11;\nprotocol device {{}}\ninclude \"{}\";\n",
            include.display()
        ),
    )
    .expect("bird.conf");
    let socket = dir.join("bird.ctl");
    let child = Command::new("bird")
        .arg("-f")
        .arg("-c")
        .arg(&conf)
        .arg("-s")
        .arg(&socket)
        .arg("-P")
        .arg(dir.join("bird.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bird starts");
    let daemon = BirdDaemon { child, dir: dir.to_owned() };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "bird made no control socket in 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon
}

fn routes(socket: &Path) -> String {
    let out = Command::new("birdc")
        .arg("-s")
        .arg(socket)
        .args(["show", "route", "all"])
        .output()
        .expect("birdc runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bird_takes_the_announcements_withdraws_them_and_refusals_are_reported() {
    if skip_unless_ready() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("sshlb-bird-{}", std::process::id()));
    let include = dir.join("sshlb.conf");
    let _bird = start_bird(&dir, &include);
    let socket = dir.join("bird.ctl");
    let announce = Announce {
        mode: AnnounceMode::Bgp,
        local_as: Some(65001),
        bird_socket: socket.display().to_string(),
        include_file: include.display().to_string(),
        ..Announce::default()
    };
    let mut bird = Bird::new(&announce);
    let vips: Vec<IpAddr> = vec!["198.18.0.100".parse().unwrap(), "fd00:1::100".parse().unwrap()];

    assert!(bird.apply(&render_bird(&announce, &vips)).expect("BIRD takes the file"));
    let shown = routes(&socket);
    assert!(shown.contains("198.18.0.100/32"), "announced v4 VIP missing:\n{shown}");
    assert!(shown.contains("fd00:1::100/128"), "announced v6 VIP missing:\n{shown}");
    assert!(shown.contains("sshlb_vips4") && shown.contains("sshlb_vips6"), "{shown}");

    let one = &vips[..1];
    assert!(bird.apply(&render_bird(&announce, one)).expect("withdraw one"));
    let shown = routes(&socket);
    assert!(shown.contains("198.18.0.100/32") && !shown.contains("fd00:1::100"), "{shown}");
    assert!(!bird.apply(&render_bird(&announce, one)).expect("same file"), "not reloaded twice");

    let err = bird.apply("protocol static broken { ipv4; route 198.18.0.200/33 blackhole; }\n");
    let Err(BirdError::Refused(why)) = err else { panic!("a bad file is refused: {err:?}") };
    assert!(why.contains("sshlb.conf"), "BIRD's own message names the file: {why}");
    let shown = routes(&socket);
    assert!(shown.contains("198.18.0.100/32"), "a refused file leaves BIRD as it was:\n{shown}");
}

#[test]
fn no_bird_at_the_socket_is_an_error_not_a_hang() {
    if skip_unless_ready() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("sshlb-nobird-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let announce = Announce {
        mode: AnnounceMode::Bgp,
        bird_socket: dir.join("absent.ctl").display().to_string(),
        include_file: dir.join("sshlb.conf").display().to_string(),
        ..Announce::default()
    };
    let err = Bird::new(&announce).apply(&render_bird(&announce, &[])).expect_err("no BIRD");
    assert!(err.to_string().contains("absent.ctl"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
