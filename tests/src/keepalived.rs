//! A real keepalived (VRRP only) for tests: its own directory (config, pid files), run in the
//! foreground in a network namespace, killed by PID (its VRRP child too) and its files removed
//! on drop — also when the test panics.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
};

use crate::{unique, Netns};

/// One keepalived daemon.
pub struct Keepalived {
    child: Option<Child>,
    dir: PathBuf,
}

impl Keepalived {
    /// Starts `keepalived --vrrp --dont-fork` in `ns` with `config` (its `keepalived.conf`).
    pub fn start(ns: &Netns, config: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("keepalived"));
        std::fs::create_dir_all(&dir).expect("keepalived directory");
        let conf = dir.join("keepalived.conf");
        std::fs::write(&conf, config).expect("keepalived.conf");
        let log = std::fs::File::create(dir.join("keepalived.log")).expect("keepalived log");
        let err = log.try_clone().expect("dup log");
        let path = |name: &str| dir.join(name).display().to_string();
        let child = ns
            .command(
                "keepalived",
                &[
                    "--vrrp",
                    "--dont-fork",
                    "--log-console",
                    "--no-syslog",
                    "--use-file",
                    &path("keepalived.conf"),
                    "--pid",
                    &path("keepalived.pid"),
                    "--vrrp_pid",
                    &path("vrrp.pid"),
                ],
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("keepalived starts (Debian keepalived)");
        Self { child: Some(child), dir }
    }

    /// Its (parent) process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("keepalived.log")).unwrap_or_default()
    }

    /// SIGKILLs keepalived and its VRRP child through a shared reference (for a test whose
    /// other handles borrow the lab); reaped by [`Self::kill`] or on drop.
    pub fn crash(&self) {
        let Some(child) = &self.child else { return };
        let vrrp = std::fs::read_to_string(self.dir.join("vrrp.pid")).ok();
        if let Some(pid) = vrrp.and_then(|p| p.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) on our keepalived's own VRRP process, whose parent is alive and
            // has not reaped it, so the PID is still its.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    }

    /// SIGKILLs keepalived and its VRRP child (as a crash does: no priority-0 advert, the
    /// addresses stay where they were) and reaps it.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // The VRRP child first, by the PID it wrote: while its parent lives and has not reaped
        // it, that PID cannot belong to anything else.
        let vrrp = std::fs::read_to_string(self.dir.join("vrrp.pid")).ok();
        if let Some(pid) = vrrp.and_then(|p| p.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) on our keepalived's own VRRP process (see above).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ignored = child.kill();
        let _ignored = child.wait();
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.kill();
        let _ignored = std::fs::remove_dir_all(&self.dir);
    }
}
