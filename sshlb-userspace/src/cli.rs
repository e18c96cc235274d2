//! The `sshlb-agent` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::loader::{AttachMode, DEFAULT_PIN_ROOT};

/// sshlb-agent: an XDP load balancer for SSH fleets.
#[derive(Debug, Parser)]
#[command(name = "sshlb-agent", version, about)]
pub struct Cli {
    /// Directory on the BPF filesystem holding one pin directory per interface.
    #[arg(long, global = true, default_value = DEFAULT_PIN_ROOT, value_name = "DIR")]
    pub pin_root: PathBuf,
    /// The running agent's control socket (`agent.control` in its configuration).
    #[arg(long, global = true, default_value = crate::control::DEFAULT_SOCKET, value_name = "PATH")]
    pub control: PathBuf,
    /// Which log events: a level (error, warn, info, debug, trace) or `RUST_LOG` directives;
    /// default `RUST_LOG`, else info.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log lines as text or as one JSON object each.
    #[arg(long, global = true, value_enum, default_value_t = crate::logging::LogFormat::Text)]
    pub log_format: crate::logging::LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the data plane, attach it to IFACE, pin it, and stay in the foreground until
    /// SIGINT/SIGTERM. The program stays attached after the agent exits; `down` detaches it.
    Up {
        /// Interface to attach to (the balancer's one-armed interface, e.g. eth0).
        iface: String,
        /// Configuration file (TOML; default /etc/sshlb/sshlb.toml, or $SSHLB_CONFIG). With
        /// neither, the program is attached with no services: every packet passes (a warning
        /// says so), and `reload` reads the default path once it exists.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t = AttachMode::Native)]
        xdp_mode: AttachMode,
        /// Print the counters every SECONDS while running (0 = only on exit).
        #[arg(long, default_value_t = 0, value_name = "SECONDS")]
        stats_interval: u64,
        /// Attach, pin, write the maps and return at once instead of staying in the foreground
        /// (no flow expiry then: a foreground agent is the normal way to run).
        #[arg(long)]
        detach: bool,
    },
    /// The backend side of tunnel mode: decapsulate the balancers' tunnels on this host.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Detach the data plane from IFACE and remove its pins.
    Down {
        /// Interface to detach from.
        iface: String,
    },
    /// Validate a configuration file without touching the system (no root needed).
    CheckConfig {
        /// The file (default /etc/sshlb/sshlb.toml, or $SSHLB_CONFIG).
        #[arg(value_name = "FILE", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// The file, as `up` takes it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Attach a one-line XDP_PASS program to IFACE (test/lab veth peers), or remove it.
    #[command(hide = true)]
    XdpPass {
        /// Interface.
        iface: String,
        /// Remove it instead.
        #[arg(long)]
        remove: bool,
    },
    /// Show services and backends: health, state, weight, flows, traffic (from the running agent).
    Status {
        /// The documented JSON schema instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Set a backend's weight (0 drains it). Takes effect at once; established flows stay.
    SetWeight {
        /// SERVICE/BACKEND.
        target: String,
        /// New weight (0-65535).
        weight: u32,
    },
    /// Stop sending new flows to SERVICE/BACKEND; its established flows continue.
    Drain {
        /// SERVICE/BACKEND.
        target: String,
        /// Then wait until the backend's live sessions (from the connection table) reach zero,
        /// printing the count as it falls. Exits non-zero if the timeout passes first.
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits ("90s", "30m", "2h").
        #[arg(long, default_value = "30m", value_parser = parse_timeout, requires = "wait")]
        timeout: std::time::Duration,
    },
    /// Put SERVICE/BACKEND back into service.
    Enable {
        /// SERVICE/BACKEND.
        target: String,
    },
    /// Take SERVICE/BACKEND out of service; its established flows continue.
    Disable {
        /// SERVICE/BACKEND.
        target: String,
    },
    /// Blue-green: send every new flow of SERVICE to the backends of GROUP, at once.
    Switch {
        /// Service name.
        service: String,
        /// Group name (`group = "..."` on backends).
        group: String,
    },
    /// Maintenance: `on` withdraws this balancer's VIPs from the routers (flows that still
    /// arrive keep being forwarded), `off` announces them again.
    Maintenance {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Make the running agent re-read its configuration file (as SIGHUP does): the one its `up`
    /// was given, else /etc/sshlb/sshlb.toml (or $SSHLB_CONFIG as the agent saw it).
    Reload {
        /// Also end established sessions whose client the new allow/deny lists refuse (by
        /// default, list changes apply to new connections only).
        #[arg(long)]
        kill_established: bool,
    },
    /// List the live flows of the connection table: client address and port, service, backend,
    /// state, idle time, NAT port. Reads the pinned table itself, so it works while the agent is
    /// down; names come from the running agent, else from the configuration file.
    Flows {
        /// Interface the data plane is attached to (default: the running agent's, else the only
        /// one attached).
        #[arg(long, value_name = "IFACE")]
        iface: Option<String>,
        /// Only flows of this service (by name).
        #[arg(long, value_name = "SERVICE")]
        service: Option<String>,
        /// Only flows to this backend (by name; with --service, of that service).
        #[arg(long, value_name = "BACKEND")]
        backend: Option<String>,
        /// Only clients in this prefix ("198.18.8.0/24", "fd00:8::/48", or one address).
        #[arg(long, value_name = "CIDR")]
        client: Option<String>,
        /// Where the names come from when the agent does not answer (default
        /// /etc/sshlb/sshlb.toml, or $SSHLB_CONFIG).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The documented JSON schema (`sshlb::flowview::Flows`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check this host and IFACE for what breaks XDP balancing (kernel, BTF, bpffs, veth peers,
    /// MTU, LRO, hardware GRO, virtio queues, sysctls, rp_filter; with a configuration also the
    /// NAT ports, whether each VIP reaches this host, each backend's banner from the NAT address
    /// and the backends' host keys), each pass/warn/fail with the fix. Exits non-zero when a
    /// check fails; `up` runs the same local checks first and refuses on a failed one.
    Doctor {
        /// Interface to check.
        iface: String,
        /// Configuration file to check too (default /etc/sshlb/sshlb.toml, or $SSHLB_CONFIG,
        /// when it exists).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The attach mode to check for.
        #[arg(long, value_enum, default_value_t = AttachMode::Native)]
        xdp_mode: AttachMode,
        /// The checks as JSON (`sshlb::doctor::Report`).
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script for SHELL on stdout (packages install them).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (sshlb-agent.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Man {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
    /// A live view of the running agent and its data plane, refreshed every interval.
    ///
    /// Per service and backend: health, state, weight, ring membership, live sessions, flows,
    /// new flows/s, packets/s, bytes/s; above them packets/s by outcome, below them drops by
    /// reason. Keys: q, Esc or Ctrl-C quit, s cycles the backend order (file, live sessions,
    /// packets/s), z shows every drop reason or only those seen.
    Top {
        /// Interface the data plane is attached to (default: the running agent's).
        iface: Option<String>,
        /// Time between screens ("1s", "500ms", or whole seconds).
        #[arg(long, default_value = "1s", value_parser = parse_interval, value_name = "DURATION")]
        interval: std::time::Duration,
        /// Print one plain-text screen (rates over one interval) and exit, e.g. for scripts.
        #[arg(long)]
        once: bool,
    },
    /// Print the data plane's counters on IFACE.
    Stats {
        /// Interface the data plane is attached to.
        iface: String,
        /// Also print counters that are zero.
        #[arg(long)]
        all: bool,
    },
}

/// The man pages of the command line, generated from its definitions: `sshlb-agent.1` and
/// `sshlb-agent-<subcommand>.1` for every visible subcommand, written into `dir`.
pub fn write_man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory as _;
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)?;
    // Hidden subcommands (lab and packaging helpers) get no page.
    for sub in Cli::command().get_subcommands().filter(|c| c.is_hide_set()) {
        let _ignored = std::fs::remove_file(dir.join(format!("sshlb-agent-{}.1", sub.get_name())));
    }
    Ok(())
}

/// The completion script for `shell`, generated from the command line's definitions.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory as _;
    clap_complete::generate(shell, &mut Cli::command(), "sshlb-agent", out);
}

fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(text)
        .ok_or_else(|| format!("{text:?}: expected a duration like \"90s\", \"30m\" or \"2h\""))
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let seconds = text.parse::<u64>().ok().map(std::time::Duration::from_secs);
    match seconds.or_else(|| crate::config::parse_duration(text)) {
        Some(d) if !d.is_zero() => Ok(d),
        Some(_) => Err("must be more than 0".to_owned()),
        None => Err(format!("{text:?}: expected a duration like \"1s\", \"500ms\" or \"2\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_takes_an_optional_interface_and_an_interval() {
        let top = |args: &[&str]| {
            let mut full = vec!["sshlb-agent", "top"];
            full.extend_from_slice(args);
            let cli = Cli::try_parse_from(full).map_err(|e| e.to_string())?;
            let Command::Top { iface, interval, once } = cli.command else { panic!("not top") };
            Ok::<_, String>((iface, interval.as_millis(), once))
        };
        assert_eq!(top(&[]), Ok((None, 1000, false)));
        assert_eq!(top(&["eth0", "--interval", "250ms"]), Ok((Some("eth0".into()), 250, false)));
        assert_eq!(top(&["--interval", "2", "--once"]), Ok((None, 2000, true)));
        let err = top(&["--interval", "0"]).expect_err("zero");
        assert!(err.contains("more than 0"), "{err}");
        let err = top(&["--interval", "soon"]).expect_err("garbage");
        assert!(err.contains("500ms"), "{err}");
    }

    #[test]
    fn parses_up_with_config_and_mode() {
        let cli = Cli::try_parse_from([
            "sshlb-agent",
            "up",
            "eth0",
            "--xdp-mode",
            "generic",
            "--config",
            "/etc/sshlb/sshlb.toml",
        ])
        .expect("valid command line");
        let Command::Up { iface, xdp_mode, config, .. } = cli.command else { panic!("not up") };
        assert_eq!(iface, "eth0");
        assert_eq!(xdp_mode, AttachMode::Generic);
        assert_eq!(config.as_deref(), Some(std::path::Path::new("/etc/sshlb/sshlb.toml")));
    }

    #[test]
    fn check_config_takes_a_file_a_flag_or_nothing() {
        let file = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).expect("valid");
            let Command::CheckConfig { file, config } = cli.command else { panic!("not check") };
            file.or(config)
        };
        assert_eq!(file(&["sshlb-agent", "check-config"]), None, "the default applies");
        assert_eq!(file(&["sshlb-agent", "check-config", "a.toml"]), Some("a.toml".into()));
        assert_eq!(
            file(&["sshlb-agent", "check-config", "--config", "b.toml"]),
            Some("b.toml".into())
        );
        Cli::try_parse_from(["sshlb-agent", "check-config", "a.toml", "--config", "b.toml"])
            .expect_err("two files");
    }

    #[test]
    fn drain_wait_takes_a_timeout_only_with_wait() {
        let cli =
            Cli::try_parse_from(["sshlb-agent", "drain", "git/b1", "--wait", "--timeout", "90s"])
                .expect("valid");
        let Command::Drain { wait, timeout, .. } = cli.command else { panic!("not drain") };
        assert!(wait);
        assert_eq!(timeout, std::time::Duration::from_secs(90));
        let err = Cli::try_parse_from(["sshlb-agent", "drain", "git/b1", "--timeout", "90s"])
            .expect_err("timeout without wait");
        assert!(err.to_string().contains("--wait"), "{err}");
        let err =
            Cli::try_parse_from(["sshlb-agent", "drain", "git/b1", "--wait", "--timeout", "soon"])
                .expect_err("bad duration");
        assert!(err.to_string().contains("90s"), "{err}");
    }

    #[test]
    fn man_pages_and_completions_come_from_the_definitions() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let dir = std::env::temp_dir().join(format!("sshlb-man-{}", std::process::id()));
        write_man_pages(&dir).expect("man pages");
        let page = std::fs::read_to_string(dir.join("sshlb-agent.1")).expect("main page");
        assert!(
            page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH sshlb-agent"),
            "{page}"
        );
        assert!(page.contains("flows") && page.contains("\\-\\-pin\\-root"), "{page}");
        let flows = std::fs::read_to_string(dir.join("sshlb-agent-flows.1")).expect("flows page");
        assert!(flows.contains("\\-\\-client"), "{flows}");
        assert!(!dir.join("sshlb-agent-xdp-pass.1").exists(), "hidden commands get no page");
        assert!(!dir.join("sshlb-agent-man.1").exists(), "hidden commands get no page");
        let _ignored = std::fs::remove_dir_all(&dir);
        for shell in
            [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish]
        {
            let mut out = Vec::new();
            write_completions(shell, &mut out);
            let text = String::from_utf8(out).expect("utf-8");
            let client = text.contains("--client") || text.contains("-l client");
            assert!(text.contains("check-config") && client, "{shell}: {text}");
        }
    }

    #[test]
    fn flows_takes_filters_and_json() {
        let cli = Cli::try_parse_from([
            "sshlb-agent",
            "flows",
            "--service",
            "git",
            "--backend",
            "b1",
            "--client",
            "198.18.8.0/24",
            "--json",
        ])
        .expect("valid");
        let Command::Flows { iface, service, backend, client, json, .. } = cli.command else {
            panic!("not flows")
        };
        assert_eq!(iface, None);
        assert_eq!((service.as_deref(), backend.as_deref()), (Some("git"), Some("b1")));
        assert_eq!(client.as_deref(), Some("198.18.8.0/24"));
        assert!(json);
        let err = Cli::try_parse_from(["sshlb-agent", "flows", "eth0"]).expect_err("positional");
        assert!(err.to_string().contains("eth0"), "{err}");
    }

    #[test]
    fn rejects_bad_mode_and_bad_service_with_a_message() {
        let err = Cli::try_parse_from(["sshlb-agent", "up", "eth0", "--xdp-mode", "turbo"])
            .expect_err("turbo is not a mode");
        assert!(err.to_string().contains("native"), "{err}");
        let err = Cli::try_parse_from(["sshlb-agent", "up"]).expect_err("interface missing");
        assert!(err.to_string().contains("IFACE"), "{err}");
    }
}

/// `sshlb-agent backend …`.
#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// Attach the decapsulation program to IFACE (or update it in place), put the VIPs on `lo`
    /// and set arp_ignore/arp_announce/rp_filter. Tunnel packets are accepted only from the
    /// balancer prefixes and only for these VIPs; the rest is dropped and counted.
    Up {
        /// Interface the tunnel packets arrive on.
        iface: String,
        /// A VIP this backend serves (repeat for several).
        #[arg(long = "vip", value_name = "ADDR", required = true)]
        vips: Vec<std::net::IpAddr>,
        /// A balancer address or prefix tunnel packets may come from (repeat for several).
        #[arg(long = "balancer", value_name = "PREFIX", required = true)]
        balancers: Vec<crate::protection::Cidr>,
        /// GUE's UDP port (the balancers' `agent.gue-port`).
        #[arg(long, default_value_t = sshlb_common::tunnel::DEFAULT_GUE_PORT, value_name = "PORT")]
        gue_port: u16,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t = AttachMode::Native)]
        xdp_mode: AttachMode,
        /// Pin root of the backend side.
        #[arg(long, default_value = crate::backend::DEFAULT_PIN_ROOT, value_name = "DIR")]
        backend_pins: PathBuf,
    },
    /// Detach the decapsulation program and undo what `backend up` changed.
    Down {
        /// Interface.
        iface: String,
        /// Pin root of the backend side.
        #[arg(long, default_value = crate::backend::DEFAULT_PIN_ROOT, value_name = "DIR")]
        backend_pins: PathBuf,
    },
    /// Show the VIPs, the accepted balancer prefixes and the counters.
    Status {
        /// Interface.
        iface: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Pin root of the backend side.
        #[arg(long, default_value = crate::backend::DEFAULT_PIN_ROOT, value_name = "DIR")]
        backend_pins: PathBuf,
    },
}
