//! A real OpenSSH `sshd` in a test namespace: generated host key, a config of its own, logging
//! to a file the test can read, stopped (by PID) when dropped.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{run, unique, wait_for, Netns};

/// How to run an sshd.
#[derive(Clone, Debug)]
pub struct SshdOptions {
    /// `ListenAddress` lines.
    pub listen: Vec<String>,
    /// Port.
    pub port: u16,
    /// `VersionAddendum` (tells backends apart by banner).
    pub name: Option<String>,
    /// A host key to share between backends (a fresh one when `None`).
    pub host_key: Option<PathBuf>,
    /// `AuthorizedKeysFile` (absolute; the lab's key, not the host's).
    pub authorized_keys: Option<PathBuf>,
}

impl Default for SshdOptions {
    fn default() -> Self {
        Self {
            listen: vec!["0.0.0.0".into()],
            port: 22,
            name: None,
            host_key: None,
            authorized_keys: None,
        }
    }
}

/// A running sshd.
pub struct Sshd {
    child: Child,
    dir: PathBuf,
    /// Its log (stderr, `-e`).
    pub log: PathBuf,
}

/// Where Debian installs sshd.
pub const SSHD: &str = "/usr/sbin/sshd";

impl Sshd {
    /// Starts sshd in `ns` listening on `addr:port`, with a fresh ed25519 host key (or the one
    /// in `host_key_dir` when given, so several backends can share host keys).
    pub fn start(ns: &Netns, addr: &str, port: u16) -> Self {
        Self::start_named(ns, addr, port, None)
    }

    /// Like [`Self::start`]; `name` is appended to the identification line (`VersionAddendum`),
    /// so a client can tell backends apart by banner.
    pub fn start_named(ns: &Netns, addr: &str, port: u16, name: Option<&str>) -> Self {
        Self::start_with(
            ns,
            &SshdOptions {
                listen: vec![addr.to_owned()],
                port,
                name: name.map(str::to_owned),
                ..SshdOptions::default()
            },
        )
    }

    /// Starts sshd in `ns` as `options` say.
    pub fn start_with(ns: &Netns, options: &SshdOptions) -> Self {
        let dir = std::env::temp_dir().join(unique("sshd"));
        std::fs::create_dir_all(&dir).expect("sshd dir");
        let key = if let Some(key) = &options.host_key {
            key.clone()
        } else {
            let key = dir.join("ssh_host_ed25519_key");
            run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key));
            key
        };
        // sshd refuses to start without its privilege-separation directory.
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let mut config = String::new();
        for addr in &options.listen {
            config += &format!("ListenAddress {addr}\n");
        }
        // MaxStartups: every balancer's banner checks and host-key scans (per service, per key
        // type) share sshd's unauthenticated slots with the clients; the default 10 drops
        // clients' connections as soon as three balancers check one backend.
        config += &format!(
            "Port {}\nHostKey {}\nPidFile none\nUsePAM no\nStrictModes no\nLogLevel VERBOSE\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nVersionAddendum {}\n\
             AllowTcpForwarding yes\nPermitRootLogin prohibit-password\nMaxStartups 100:30:200\n",
            options.port,
            key.display(),
            options.name.as_deref().unwrap_or("none"),
        );
        if let Some(keys) = &options.authorized_keys {
            config += &format!("AuthorizedKeysFile {}\n", keys.display());
        }
        let config_path = dir.join("sshd_config");
        std::fs::write(&config_path, config).expect("sshd_config");
        let log = dir.join("sshd.log");
        let log_file = std::fs::File::create(&log).expect("log");
        let child = ns
            .command(SSHD, &["-D", "-e", "-f", config_path.to_str().expect("utf-8")])
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawning sshd");
        let sshd = Self { child, dir, log };
        let listening = wait_for(Duration::from_secs(5), || {
            let text = std::fs::read_to_string(&sshd.log).unwrap_or_default();
            text.contains("Server listening").then_some(())
        });
        assert!(listening.is_some(), "sshd did not start: {}", sshd.log_text());
        sshd
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it (SIGTERM by PID, then reap).
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ignored = self.child.wait();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        let _ignored = std::fs::remove_dir_all(&self.dir);
    }
}
