//! The agent as a test runs it: [`AgentHandle`] for the real `sshlb-agent` binary (a process in
//! the topology's lb namespace, driven through its CLI and control socket), [`AgentThread`] for
//! the whole agent in-process on a thread. Both undo everything on drop, also when the test
//! panics: the process is killed by its PID (the thread is told to stop and joined), then the
//! balancer is detached, its pins removed, and the test's files deleted.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    thread,
    time::Duration,
};

use sshlb::control::{self, Status};

use crate::{
    agent_binary, config::ConfigBuilder, prepare_port, topo::Topo, wait_for, Detach, Netns,
    PIN_ROOT,
};

/// One scrape of the agent's metrics endpoint at its default address (`agent.metrics`,
/// 127.0.0.1:9734) from inside `ns`: the whole HTTP response.
pub fn scrape_metrics(ns: &Netns) -> std::io::Result<String> {
    ns.run(|| {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect("127.0.0.1:9734")?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })
}

/// The real `sshlb-agent` binary for one topology: its config file, log and control socket
/// (named after the topology's unique interface), and the agent process once [`Self::up`] ran.
pub struct AgentHandle<'t> {
    /// The balancer's namespace.
    lb: &'t Netns,
    /// The balancer's interface.
    iface: String,
    binary: String,
    config: PathBuf,
    log: PathBuf,
    control: PathBuf,
    child: Option<Child>,
    /// Dropped after the process is killed: detaches, unpins, removes the files above.
    _detach: Detach,
}

impl<'t> AgentHandle<'t> {
    /// Prepares the topology's bridge port (veth gotcha 2) and names the files; starts nothing.
    pub fn new(topo: &'t Topo) -> Self {
        Self::on(&topo.sw, &topo.lb, &topo.lb_if, &topo.lb_port)
    }

    /// Like [`Self::new`], for the balancer in `lb` whose interface `iface` meets the bridge
    /// (in `sw`) at `port` — [`Topo::lb`] or one added by [`Topo::add_balancer`].
    pub fn on(sw: &Netns, lb: &'t Netns, iface: &str, port: &str) -> Self {
        let binary = agent_binary().to_str().expect("utf-8 agent path").to_owned();
        let dir = std::env::temp_dir();
        let config = dir.join(format!("{iface}.toml"));
        let log = dir.join(format!("{iface}.log"));
        let control = PathBuf::from(format!("/run/sshlb/test-{iface}.sock"));
        let detach =
            prepare_port(sw, iface, port, vec![config.clone(), log.clone(), control.clone()]);
        Self {
            lb,
            iface: iface.to_owned(),
            binary,
            config,
            log,
            control,
            child: None,
            _detach: detach,
        }
    }

    /// The balancer's interface.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Whether the agent process is running (started by [`Self::up`], not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// `sshlb-agent stats <iface>`: the data plane's counters by name (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        let out = self.command(&["stats", &self.iface]).output().expect("spawn agent stats");
        let text = String::from_utf8_lossy(&out.stdout);
        crate::parse_stats(&text).into_iter().find(|(n, _)| n == name).map_or(0, |(_, v)| v)
    }

    /// The control socket the configuration must name.
    pub fn control(&self) -> &Path {
        &self.control
    }

    /// The configuration file `up` reads (and SIGHUP re-reads).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// (Re)writes the configuration file.
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text)
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.config.display()));
    }

    /// Writes `config` as the configuration file, naming this handle's control socket.
    pub fn configure(&self, config: ConfigBuilder) {
        self.write_config(&config.control(&self.control).to_toml());
    }

    /// [`Self::configure`], [`Self::up`] and [`Self::wait_until_up`]: the agent running on
    /// `config` with every backend of its first service healthy.
    pub fn start(&mut self, config: ConfigBuilder) {
        self.configure(config);
        self.up();
        self.wait_until_up();
    }

    /// `sshlb-agent up <lb_if> --config <file>` in the foreground, output to the log; returns
    /// its PID. The process is this handle's: killed on drop.
    pub fn up(&mut self) -> u32 {
        assert!(self.child.is_none(), "the agent is already running");
        let file = std::fs::File::create(&self.log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", self.log.display()));
        let err = file.try_clone().expect("dup log");
        let child = self
            .command(&self.up_args())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} in {}: {e}", self.binary, self.lb.name));
        let pid = child.id();
        self.child = Some(child);
        pid
    }

    /// The arguments of `up` for this topology and configuration.
    pub fn up_args(&self) -> Vec<String> {
        let config = self.config.to_str().expect("utf-8 config path").to_owned();
        vec!["up".into(), self.iface.clone(), "--config".into(), config]
    }

    /// The agent binary with `args`, in the lb namespace (for one-shot commands such as a second
    /// `up`; the caller runs it).
    pub fn command<S: AsRef<str>>(&self, args: &[S]) -> Command {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        self.lb.command(&self.binary, &args)
    }

    /// Sends `signal` to the running agent.
    pub fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("the agent is not running");
        // SAFETY: kill(2) on a PID this handle spawned and has not reaped.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// SIGKILLs the running agent (no cleanup at all) and reaps it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the agent is not running");
        let _ignored = child.kill();
        let _ignored = child.wait();
    }

    /// `sshlb-agent --control <socket> args…` as an operator runs it (from the host).
    pub fn ctl(&self, args: &[&str]) -> Output {
        let control = self.control.to_str().expect("utf-8 socket path");
        let mut full = vec!["--control", control];
        full.extend_from_slice(args);
        Command::new(&self.binary).args(&full).output().expect("spawn agent client")
    }

    /// `status --json`, parsed; panics when the command fails.
    pub fn status(&self) -> Status {
        let out = self.ctl(&["status", "--json"]);
        assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status --json parses")
    }

    /// Waits (10 s) until every backend of the first service reports health `up`; panics with
    /// the agent's log otherwise.
    pub fn wait_until_up(&self) {
        let all_up = wait_for(Duration::from_secs(10), || {
            let out = self.ctl(&["status", "--json"]);
            let s: Status = serde_json::from_slice(&out.stdout).ok()?;
            s.services[0].backends.iter().all(|b| b.health == "up").then_some(())
        });
        assert!(all_up.is_some(), "backends never reported up:\n{}", self.log_text());
    }

    /// The agent's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the log contains `what`.
    pub fn log_has(&self, what: &str) -> bool {
        self.log_text().contains(what)
    }

    /// Waits up to `timeout` for `what` in the log.
    pub fn wait_log(&self, what: &str, timeout: Duration) -> bool {
        wait_for(timeout, || self.log_has(what).then_some(())).is_some()
    }

    /// Whether an XDP program is attached to the balancer's interface (`ip link show`).
    pub fn attached(&self) -> bool {
        let out = self.lb.ip(&["link", "show", &self.iface]);
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
}

impl Drop for AgentHandle<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ignored = child.kill();
            let _ignored = child.wait();
        }
    }
}

/// The whole agent (start + foreground loop) on a thread inside the topology's lb namespace,
/// with a control socket; told to stop and joined by [`Self::stop`] or on drop.
pub struct AgentThread {
    control: Option<PathBuf>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl AgentThread {
    /// Starts the agent with a control socket at `control`, reloading from `config_path` when
    /// given. Returns once the thread runs (the balancer may still be starting).
    pub fn spawn(
        topo: &Topo,
        config: &sshlb::config::Config,
        control: &Path,
        config_path: Option<PathBuf>,
    ) -> Self {
        let socket = control.to_path_buf();
        let options = move || sshlb::daemon::RunOptions {
            control: Some(sshlb::daemon::bind_control(&socket).expect("control socket")),
            config_path,
            ..Default::default()
        };
        Self::spawn_with(topo, config, Some(control.to_path_buf()), options, |_| {})
    }

    /// Starts the agent without a control socket or config file, and waits (10 s) until the
    /// balancer has started.
    pub fn spawn_plain(topo: &Topo, config: &sshlb::config::Config) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let agent = Self::spawn_with(topo, config, None, sshlb::daemon::RunOptions::default, {
            move |_| {
                let _ = ready_tx.send(());
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10) * crate::slowdown())
            .expect("the balancer started");
        agent
    }

    fn spawn_with(
        topo: &Topo,
        config: &sshlb::config::Config,
        control: Option<PathBuf>,
        options: impl FnOnce() -> sshlb::daemon::RunOptions + Send + 'static,
        started: impl FnOnce(&sshlb::daemon::Balancer) + Send + 'static,
    ) -> Self {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (iface, config) = (topo.lb_if.clone(), config.clone());
        let thread = topo.lb.spawn_thread(move || {
            // Bound before the balancer starts: a client may connect as soon as it exists.
            let options = options();
            let root = Path::new(PIN_ROOT);
            let mut balancer =
                sshlb::daemon::start(root, &iface, sshlb::loader::AttachMode::Native, &config)
                    .unwrap_or_else(|e| {
                        panic!("starting the balancer: {:#}", anyhow::Error::from(e))
                    });
            started(&balancer);
            let rt =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            rt.block_on(sshlb::daemon::run(&mut balancer, options, async {
                let _ignored = stop_rx.await;
            }));
        });
        Self { control, stop: Some(stop_tx), thread: Some(thread) }
    }

    /// The control socket's status, when the agent answers.
    pub fn status(&self) -> Option<Status> {
        let control = self.control.as_deref().expect("this agent has no control socket");
        control::call(control, &control::Request::Status).ok()?.status
    }

    /// Waits up to `timeout` until `ready(status)` holds.
    pub fn wait_status(&self, timeout: Duration, mut ready: impl FnMut(&Status) -> bool) -> bool {
        wait_for(timeout, || self.status().filter(|s| ready(s)).map(|_| ())).is_some()
    }

    /// Stops the foreground loop and joins the thread; panics when the agent thread panicked.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("agent thread");
        }
    }
}

impl Drop for AgentThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ignored = thread.join();
        }
    }
}
