//! The lab: the one-armed topology ([`crate::topo`]) with real OpenSSH backends sharing one host
//! key, a client key, a `known_hosts` naming every VIP, and a bare git repository of a few MB —
//! what `cargo xtask run` and the end-to-end tests stand on.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    config::{ConfigBuilder, ServiceBuilder},
    run,
    sshd::{Sshd, SshdOptions},
    topo::{payload, Topo, BACKENDS, DSR4, DSR6, GUE4, TUN4, TUN6, VIP4, VIP6},
};

/// Keys, known_hosts and the bare repository in one directory (every backend sees it: the
/// namespaces share the filesystem).
pub struct Files {
    /// The directory.
    pub dir: PathBuf,
    remove_on_drop: bool,
}

impl Files {
    /// Generates everything in `dir` (created; removed on drop when `remove_on_drop`).
    pub fn create(dir: &Path, remove_on_drop: bool) -> Self {
        std::fs::create_dir_all(dir).expect("lab dir");
        let f = Self { dir: dir.to_owned(), remove_on_drop };
        for key in ["host_key", "client_key"] {
            let path = f.path(key);
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(path.with_extension("pub"));
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&path));
        }
        std::fs::copy(f.path("client_key.pub"), f.path("authorized_keys"))
            .expect("authorized_keys");
        // Every VIP presents the one shared host key: known_hosts names them all.
        let host_pub = std::fs::read_to_string(f.path("host_key.pub")).expect("host key");
        #[expect(clippy::format_collect, reason = "seven lines, built once")]
        let known: String = [VIP4, VIP6, DSR4, DSR6, TUN4, TUN6, GUE4]
            .iter()
            .map(|vip| format!("{vip} {host_pub}"))
            .collect();
        std::fs::write(f.path("known_hosts"), known).expect("known_hosts");
        // A few MB of history in a bare repository, identical from every backend.
        let work = f.path("work");
        let _ = std::fs::remove_dir_all(&work);
        let _ = std::fs::remove_dir_all(f.path("repo.git"));
        run(Command::new("git").args(["init", "-q", "-b", "main"]).arg(&work));
        for i in 0..4 {
            std::fs::write(work.join(format!("blob{i}.bin")), payload(1 << 20, i)).expect("blob");
            run(Command::new("git").arg("-C").arg(&work).args(["add", "."]));
            let message = format!("commit {i}");
            run(Command::new("git").arg("-C").arg(&work).args(commit_args(&message)));
        }
        run(Command::new("git").args(["clone", "-q", "--bare"]).arg(&work).arg(f.path("repo.git")));
        f
    }

    /// A file in the lab directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `ssh` options: the lab's client key, strict host checking against the shared host key.
    pub fn ssh_args(&self) -> Vec<String> {
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
            // The TCP connection and the banner exchange; stretched where sshd starts slowly.
            format!("ConnectTimeout={}", 5 * crate::slowdown()),
        ]
    }

    /// `ssh [extra…] root@vip command` from `client`, with [`Self::ssh_args`]: run to its end.
    pub fn ssh(
        &self,
        client: &crate::Netns,
        vip: &str,
        extra: &[&str],
        command: &str,
    ) -> std::process::Output {
        self.ssh_command(client, vip, extra, command).output().expect("spawn ssh")
    }

    /// The command of [`Self::ssh`], for the caller to spawn (with pipes, say).
    pub fn ssh_command(
        &self,
        client: &crate::Netns,
        vip: &str,
        extra: &[&str],
        command: &str,
    ) -> std::process::Command {
        let mut args = self.ssh_args();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.push(format!("root@{vip}"));
        args.push(command.to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        client.command("ssh", &args)
    }

    /// `ssh -N -L forward root@vip` from `client`: a port forward riding a balanced session
    /// (the caller kills the child).
    pub fn ssh_forward(
        &self,
        client: &crate::Netns,
        forward: &str,
        vip: &str,
    ) -> std::process::Child {
        let mut args = self.ssh_args();
        args.extend(["-N".into(), "-L".into(), forward.to_owned(), format!("root@{vip}")]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        client.command("ssh", &args).spawn().expect("ssh -L")
    }

    /// The repository's `ssh://` URL through `vip`.
    pub fn repo_url(&self, vip: &str) -> String {
        let host = if vip.contains(':') { format!("[{vip}]") } else { vip.to_owned() };
        format!("ssh://root@{host}{}", self.path("repo.git").display())
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `git` arguments committing what is staged, as the lab's author, with `message`.
pub fn commit_args(message: &str) -> [&str; 8] {
    ["-c", "user.name=lab", "-c", "user.email=lab@example.invalid", "commit", "-q", "-m", message]
}

/// A lab backend's sshd: port 22 on every address, named `name` in its banner, the lab's shared
/// host key and client key.
pub fn sshd_options(files: &Files, name: &str) -> SshdOptions {
    SshdOptions {
        listen: vec!["0.0.0.0".into(), "::".into()],
        name: Some(name.to_owned()),
        host_key: Some(files.path("host_key")),
        authorized_keys: Some(files.path("authorized_keys")),
        ..SshdOptions::default()
    }
}

/// The lab: topology, files and an sshd on every backend (port 22, all addresses).
pub struct Lab {
    /// Namespaces and links.
    pub topo: Topo,
    /// Keys and repository.
    pub files: Files,
    /// One per backend, in [`BACKENDS`] order.
    pub sshds: Vec<Sshd>,
}

impl Lab {
    /// Builds it; `files` in `dir`. The topology's echo servers listen on port 7.
    pub fn build(dir: &Path, remove_files: bool) -> Self {
        let topo = Topo::new(7);
        let files = Files::create(dir, remove_files);
        let sshds = BACKENDS
            .iter()
            .zip(&topo.backends)
            .map(|((name, _, _), ns)| Sshd::start_with(ns, &sshd_options(&files, name)))
            .collect();
        Self { topo, files, sshds }
    }

    /// Waits (up to `within`) until no backend holds an sshd session process, and panics naming
    /// the ones left: a test whose clients have all finished must leave none behind (a session
    /// whose client side was killed must have been ended on the backend too).
    pub fn assert_no_sessions_left(&self, within: std::time::Duration) {
        let left = || -> Vec<String> {
            self.topo
                .backends
                .iter()
                .chain(&self.topo.far)
                .flat_map(|ns| {
                    ns.ssh_sessions()
                        .into_iter()
                        .map(|(pid, cmd)| format!("{}: {pid} {cmd}", ns.name))
                })
                .collect()
        };
        let clean = crate::wait_for(within, || left().is_empty().then_some(()));
        if clean.is_none() {
            for ns in &self.topo.backends {
                let ss = ns.command("ss", &["-tnpo"]).output().expect("ss");
                eprintln!("{}:\n{}", ns.name, String::from_utf8_lossy(&ss.stdout));
            }
        }
        assert!(clean.is_some(), "sshd sessions left on the backends: {:?}", left());
    }

    /// Starts backend `i`'s sshd again (after a test stopped it), as [`Self::build`] did.
    pub fn restart_sshd(&mut self, i: usize) {
        let (name, _, _) = BACKENDS[i];
        self.sshds[i] = Sshd::start_with(&self.topo.backends[i], &sshd_options(&self.files, name));
    }

    /// A configuration for the lab: full NAT and DSR services over IPv4 and IPv6, three
    /// backends each (weights 100, 100, 200), control socket `control`.
    pub fn config(&self, control: &str) -> String {
        self.config_builder(control).to_toml()
    }

    /// [`Self::config`] as a builder, for tests that change it first.
    pub fn config_builder(&self, control: &str) -> ConfigBuilder {
        let mut cfg = ConfigBuilder::new().control(control);
        for (name, vip, mode, v6) in [
            ("nat4", VIP4, "nat", false),
            ("nat6", VIP6, "nat", true),
            ("dsr4", DSR4, "dsr", false),
            ("dsr6", DSR6, "dsr", true),
        ] {
            cfg = cfg.service(Self::ssh_service(name, vip, mode, v6));
        }
        cfg
    }

    /// One of the lab's SSH services: port 22 on `vip`, `mode` (`nat`/`dsr`), the three backends
    /// over IPv4 or IPv6 with weights 100, 100, 200, health checks every 250 ms (with the
    /// default 1 s timeout). Under a [`crate::slowdown`] both are stretched by it, so a banner
    /// check on a CPU that emulates another does not take a healthy backend out of the ring.
    pub fn ssh_service(name: &str, vip: &str, mode: &str, v6: bool) -> ServiceBuilder {
        let slowdown = crate::slowdown();
        let service = ServiceBuilder::new(name, vip, 22)
            .mode(mode)
            .ring_size(4093)
            .health("interval", &format!("{}ms", 250 * slowdown))
            .topo_backends(v6, |i, b| b.weight(if i == 2 { 200 } else { 100 }));
        if slowdown > 1 {
            service.health("timeout", &format!("{}ms", 1000 * slowdown))
        } else {
            service
        }
    }
}
