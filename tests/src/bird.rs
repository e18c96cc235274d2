//! A real BIRD 2 daemon for tests: its own directory (config, control socket, pid file), run in
//! the foreground as a child of the test, killed by its PID and its files removed on drop —
//! also when the test panics.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::wait_for;

/// One BIRD daemon, configured by `bird.conf` in its own directory.
pub struct BirdDaemon {
    child: Option<Child>,
    dir: PathBuf,
    /// The network namespace BIRD runs in (`None`: the test's own).
    netns: Option<String>,
}

impl BirdDaemon {
    /// Starts `bird -f` with `config` (the text of its `bird.conf`) in a fresh directory named
    /// after `name`; waits (at most 10 s) for its control socket.
    pub fn start(name: &str, config: &str) -> Self {
        Self::start_in(None, name, config)
    }

    /// Like [`Self::start`], in network namespace `ns` (entered with `nsenter --net`, so the
    /// control socket stays reachable from the test).
    pub fn start_in(ns: Option<&crate::Netns>, name: &str, config: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sshlb-bird-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("bird directory");
        let mut bird = Self { child: None, dir, netns: ns.map(|n| n.name.clone()) };
        std::fs::write(bird.dir.join("bird.conf"), config).expect("bird.conf");
        bird.spawn();
        bird
    }

    fn spawn(&mut self) {
        let mut command = match &self.netns {
            Some(ns) => crate::Netns::command_in(ns, "bird", &[]),
            None => Command::new("bird"),
        };
        let child = command
            .arg("-f")
            .arg("-c")
            .arg(self.dir.join("bird.conf"))
            .arg("-s")
            .arg(self.socket())
            .arg("-P")
            .arg(self.dir.join("bird.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bird starts (Debian bird2)");
        self.child = Some(child);
        let up = wait_for(Duration::from_secs(10), || self.birdc(&["show", "status"]).ok());
        assert!(up.is_some(), "bird answered on {} within 10 s", self.socket().display());
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its directory (for include files it reads).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// `birdc -s SOCKET args…`: its output when birdc exits 0.
    pub fn birdc(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// `show route all` (empty when BIRD does not answer).
    pub fn routes(&self) -> String {
        self.birdc(&["show", "route", "all"]).unwrap_or_default()
    }

    /// SIGKILLs BIRD (as a crash does) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ignored = child.kill();
            let _ignored = child.wait();
        }
        let _ignored = std::fs::remove_file(self.socket());
    }

    /// SIGKILLs BIRD (as a crash does) through a shared reference, for a test whose other
    /// handles borrow the lab; it is reaped (and its socket removed) by [`Self::kill`] or on drop.
    pub fn crash(&self) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on the PID of our own child, not reaped yet (so not reused).
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        }
    }

    /// Starts BIRD again with the same configuration.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for BirdDaemon {
    fn drop(&mut self) {
        self.kill();
        let _ignored = std::fs::remove_dir_all(&self.dir);
    }
}
