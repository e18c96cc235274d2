//! Health checks against real peers in a test namespace: a real OpenSSH sshd, and servers that
//! misbehave the ways a broken backend does (garbage, silence, early close, never closing).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    thread,
    time::{Duration, Instant},
};

use sshlb::health::{check, CheckError};
use sshlb_tests::{root_or_skip, sshd::Sshd, Netns};

const ADDR: &str = "198.18.0.1";

/// A one-shot misbehaving server on `port`: `behave` gets each accepted connection.
fn serve(ns: &Netns, port: u16, behave: fn(std::net::TcpStream)) {
    let listener = ns.run(move || TcpListener::bind((ADDR, port)).expect("bind"));
    thread::spawn(move || {
        for conn in listener.incoming().take(4).flatten() {
            thread::spawn(move || behave(conn));
        }
    });
}

fn run_check(
    ns: &Netns,
    port: u16,
    timeout: Duration,
    expect: &'static str,
) -> Result<(), CheckError> {
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let addr: SocketAddr = format!("{ADDR}:{port}").parse().expect("addr");
        rt.block_on(check(addr, timeout, expect, None))
    })
}

#[test]
fn checks_real_sshd_and_misbehaving_backends() {
    if !root_or_skip("checks_real_sshd_and_misbehaving_backends") {
        return;
    }
    let ns = Netns::new("hc");
    ns.ip(&["addr", "add", &format!("{ADDR}/32"), "dev", "lo"]);
    let t = Duration::from_millis(500);

    // A real sshd passes, and logs our visit as a client that went away — no protocol error.
    let mut sshd = Sshd::start(&ns, ADDR, 22);
    for _ in 0..3 {
        run_check(&ns, 22, t, "SSH-2.0-")
            .unwrap_or_else(|e| panic!("real sshd failed the check: {e}"));
    }
    thread::sleep(Duration::from_millis(200));
    let log = sshd.log_text();
    for noise in ["kex_exchange_identification", "Bad protocol version", "banner exchange"] {
        assert!(!log.contains(noise), "sshd logged {noise:?} for a health check:\n{log}");
    }
    sshd.stop();
    assert!(
        matches!(run_check(&ns, 22, t, "SSH-2.0-"), Err(CheckError::Connect(_))),
        "stopped sshd must fail"
    );

    // Garbage instead of a banner (then closes): down.
    serve(&ns, 2001, |mut c| {
        let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        thread::sleep(Duration::from_millis(100));
    });
    let garbage = run_check(&ns, 2001, t, "SSH-2.0-");
    assert!(
        matches!(&garbage, Err(CheckError::Closed(Some(l))) if l == "HTTP/1.1 400 Bad Request")
            || matches!(garbage, Err(CheckError::Timeout(_))),
        "{garbage:?}"
    );
    // An SSH server of the wrong protocol version.
    serve(&ns, 2007, |mut c| {
        let _ = c.write_all(b"SSH-1.5-Ancient\r\n");
        thread::sleep(Duration::from_millis(300));
    });
    assert!(matches!(run_check(&ns, 2007, t, "SSH-2.0-"), Err(CheckError::Mismatch(_))));
    // Silence: accepts and never speaks.
    serve(&ns, 2002, |_c| thread::sleep(Duration::from_secs(3)));
    let started = Instant::now();
    assert!(matches!(run_check(&ns, 2002, t, "SSH-2.0-"), Err(CheckError::Timeout(_))));
    assert!(started.elapsed() < Duration::from_secs(2), "the check must be bounded by its timeout");
    // Closes at once.
    serve(&ns, 2003, drop);
    assert!(matches!(run_check(&ns, 2003, t, "SSH-2.0-"), Err(CheckError::Closed(None))));
    // Other lines first (RFC 4253 §4.2), then SSH-1.99; never closes: still a pass, we close.
    serve(&ns, 2004, |mut c| {
        let _ = c.write_all(b"welcome to the fleet\r\nSSH-1.99-Legacy_1.0\r\n");
        let mut ours = [0u8; 64];
        let n = c.read(&mut ours).unwrap_or(0);
        assert!(ours[..n].starts_with(b"SSH-2.0-sshlb-health"), "we identify ourselves");
        thread::sleep(Duration::from_secs(3));
    });
    run_check(&ns, 2004, t, "SSH-2.0-").expect("preamble + SSH-1.99 is a valid server");
    // An endless preamble is refused, not read forever.
    serve(&ns, 2005, |mut c| {
        let line = [b'x'; 1023];
        for _ in 0..20 {
            if c.write_all(&line).and_then(|()| c.write_all(b"\n")).is_err() {
                break;
            }
        }
        thread::sleep(Duration::from_millis(300));
    });
    assert!(matches!(run_check(&ns, 2005, t, "SSH-2.0-"), Err(CheckError::TooLong(Some(_)))));
    // TCP-only checks need nothing but the connect.
    serve(&ns, 2006, |_c| thread::sleep(Duration::from_millis(300)));
    run_check(&ns, 2006, t, "").expect("connect-only check");
}
