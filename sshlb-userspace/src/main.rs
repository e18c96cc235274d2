//! `sshlb-agent`: thin entry point; everything lives in the `sshlb` library.

use std::{io::Write as _, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;
use sshlb::{
    backend,
    cli::{BackendCommand, Cli, Command},
    config::{self, Config},
    control::{self, Request},
    daemon,
    defaults::{self, ConfigChoice},
    doctor, loader, stats,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = sshlb::logging::init(cli.log_level.as_deref(), cli.log_format) {
        eprintln!("sshlb-agent: error: {err}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sshlb-agent: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading configuration {}", path.display()))?;
    Ok(config::parse(&path.display().to_string(), &text)?)
}

/// `sshlb-agent backend …`.
fn run_backend(command: BackendCommand) -> anyhow::Result<()> {
    match command {
        BackendCommand::Up { iface, vips, balancers, gue_port, xdp_mode, backend_pins } => {
            let setup = backend::Setup { iface, vips, balancers, gue_port, mode: xdp_mode };
            backend::up(&backend_pins, &setup)?;
            eprintln!(
                "sshlb-agent: decapsulating on {} for {} VIP(s) from {} balancer prefix(es)",
                setup.iface,
                setup.vips.len(),
                setup.balancers.len()
            );
            Ok(())
        }
        BackendCommand::Down { iface, backend_pins } => {
            backend::down(&backend_pins, &iface)?;
            eprintln!("sshlb-agent: decapsulation removed from {iface}, host settings restored");
            Ok(())
        }
        BackendCommand::Status { iface, json, backend_pins } => {
            let status = backend::status(&backend_pins, &iface)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", backend::render(&status));
            }
            Ok(())
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up { iface, config, xdp_mode, stats_interval, detach } => {
            let choice = defaults::choose_config(config);
            let config = match &choice {
                ConfigChoice::Given(path) | ConfigChoice::Default(path) => load_config(path)?,
                ConfigChoice::Missing(path) => {
                    tracing::warn!(
                        "NO CONFIGURATION: --config not given and {} does not exist; attaching \
                         with no services, so sshlb only passes traffic (create the file and run \
                         `sshlb-agent reload`, or pass --config)",
                        path.display()
                    );
                    config::parse("(none)", "").expect("the empty configuration is valid")
                }
            };
            // Kept even when missing: `reload` reads it once the operator has written it.
            let config_path = Some(choice.path().to_path_buf());
            if !sshlb::sys::is_root() {
                return Err(loader::LoaderError::NotRoot.into());
            }
            // The doctor's local checks first: refuse on a failed one, with its words. The
            // backend probes (banner, host keys) are left to the health checker and host-key
            // scanner, which start with the agent: a start must not wait seconds on them.
            let facts = doctor::facts(&iface, &cli.pin_root);
            let report = doctor::local_report(&facts, xdp_mode, Some(&config));
            if let Some(fatal) = report.fatal() {
                anyhow::bail!(
                    "refusing to attach to {iface} (`sshlb-agent doctor {iface}` shows every \
                     check):\n{fatal}"
                );
            }
            for warning in report.warnings() {
                tracing::warn!("doctor: {warning}");
            }
            // The control socket first: a second agent for the same socket stops here, before
            // it touches the data plane.
            let control = if detach {
                None
            } else {
                let path = std::path::PathBuf::from(&config.agent.control);
                Some(daemon::bind_control(&path)?)
            };
            let mut balancer = daemon::start(&cli.pin_root, &iface, xdp_mode, &config)?;
            let attached = &balancer.attached;
            if attached.adopted {
                tracing::info!(
                    "took over the data plane already on {iface} (pinned at {}): \
                     flows kept, program replaced, {} service(s) applied",
                    attached.pin_dir.display(),
                    config.services.len()
                );
            } else {
                tracing::info!(
                    "attached to {iface} in {xdp_mode} mode, {} service(s), pinned at {}",
                    config.services.len(),
                    attached.pin_dir.display()
                );
            }
            if detach {
                return Ok(());
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            let interval = Duration::from_secs(stats_interval);
            let shutdown = shutdown_signal();
            let options = daemon::RunOptions { config_path, stats_interval: interval, control };
            runtime.block_on(daemon::run(&mut balancer, options, shutdown));
            eprint!(
                "{}",
                stats::render(&stats::read(&balancer.attached.dataplane.stats())?, false)
            );
            tracing::info!(
                "exiting; the data plane stays attached to {iface} \
                 (`sshlb-agent down {iface}` detaches it)"
            );
            Ok(())
        }
        Command::Backend(command) => run_backend(command),
        Command::Down { iface } => {
            loader::down(&cli.pin_root, &iface)?;
            eprintln!("sshlb-agent: detached from {iface} and removed its pins");
            Ok(())
        }
        Command::CheckConfig { file, config } => {
            let file = defaults::choose_config(file.or(config)).path().to_path_buf();
            let config = load_config(&file)?;
            println!("{}: ok, {} service(s)", file.display(), config.services.len());
            Ok(())
        }
        Command::Status { json } => {
            let reply = control::call(&cli.control, &Request::Status)?;
            let status = reply_ok(reply)?.status.context("the agent sent no status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", control::render(&status));
            }
            Ok(())
        }
        Command::SetWeight { target, weight } => {
            let (service, backend) = control::parse_target(&target)?;
            reply_ok(control::call(
                &cli.control,
                &Request::SetWeight { service, backend, weight },
            )?)?;
            Ok(())
        }
        Command::Drain { target, wait, timeout } => {
            simple(&cli.control, &target, |service, backend| Request::Drain { service, backend })?;
            if wait {
                drain_wait(&cli.control, &target, timeout)?;
            }
            Ok(())
        }
        Command::Enable { target } => {
            simple(&cli.control, &target, |service, backend| Request::Enable { service, backend })
        }
        Command::Disable { target } => {
            simple(&cli.control, &target, |service, backend| Request::Disable { service, backend })
        }
        Command::Switch { service, group } => {
            reply_ok(control::call(&cli.control, &Request::Switch { service, group })?)?;
            Ok(())
        }
        Command::Maintenance { state } => {
            let on = state == "on";
            let reply = reply_ok(control::call(&cli.control, &Request::Maintenance { on })?)?;
            if let Some(note) = reply.note {
                println!("{note}");
            }
            Ok(())
        }
        Command::Reload { kill_established } => {
            let reply =
                reply_ok(control::call(&cli.control, &Request::Reload { kill_established })?)?;
            if let Some(note) = reply.note {
                println!("{note}");
            }
            Ok(())
        }
        Command::XdpPass { iface, remove } => {
            if remove {
                loader::detach_pass(&cli.pin_root, &iface)?;
            } else {
                loader::attach_pass(&cli.pin_root, &iface)?;
            }
            Ok(())
        }
        Command::Flows { iface, service, backend, client, config, json } => {
            let query = FlowsQuery { iface, service, backend, client, config, json };
            flows(&cli.pin_root, &cli.control, query)
        }
        Command::Doctor { iface, config, xdp_mode, json } => {
            let choice = defaults::choose_config(config);
            let parsed = (!matches!(choice, ConfigChoice::Missing(_)))
                .then(|| load_config(choice.path()).map_err(|e| format!("{e:#}")));
            let facts = doctor::facts(&iface, &cli.pin_root);
            let good = parsed.as_ref().and_then(|p| p.as_ref().ok());
            let mut report = doctor::local_report(&facts, xdp_mode, good);
            if let Some(parsed) = &parsed {
                let path = choice.path().display().to_string();
                let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
                    .unwrap_or_default();
                report.checks.extend(doctor::checks::config_checks(
                    &path,
                    parsed.as_ref().map_err(String::as_str),
                    &range,
                ));
            }
            if let (Some(config), Some(_)) = (good, &facts.iface) {
                report.checks.extend(doctor::backend_report(config, &iface));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            if report.worst() == doctor::Level::Fail {
                anyhow::bail!(
                    "{iface}: {} check(s) failed",
                    report.checks.iter().filter(|c| c.level == doctor::Level::Fail).count()
                );
            }
            Ok(())
        }
        Command::Completions { shell } => {
            sshlb::cli::write_completions(shell, &mut std::io::stdout().lock());
            Ok(())
        }
        Command::Man { dir } => sshlb::cli::write_man_pages(&dir)
            .with_context(|| format!("writing the man pages into {}", dir.display())),
        Command::Top { iface, interval, once } => {
            let options = sshlb::top::Options {
                control: cli.control,
                pin_root: cli.pin_root,
                iface,
                interval,
                once,
            };
            Ok(sshlb::top::run(&options)?)
        }
        Command::Stats { iface, all } => {
            let map = loader::pinned_stats(&cli.pin_root, &iface)?;
            print!("{}", stats::render(&stats::read(&map)?, all));
            Ok(())
        }
    }
}

/// The arguments of `flows`.
struct FlowsQuery {
    iface: Option<String>,
    service: Option<String>,
    backend: Option<String>,
    client: Option<String>,
    config: Option<std::path::PathBuf>,
    json: bool,
}

/// `flows`: walks the pinned connection table (batched) and prints the rows that pass the
/// filters, named by the running agent or, when it does not answer, by the configuration file.
fn flows(
    pin_root: &std::path::Path,
    socket: &std::path::Path,
    query: FlowsQuery,
) -> anyhow::Result<()> {
    use sshlb::flowview::{self, Collector, Filter, Names};
    let status = control::call(socket, &Request::Status).ok().and_then(|r| r.status);
    let iface = match (query.iface, &status) {
        (Some(iface), _) => Ok(iface),
        (None, Some(status)) => Ok(status.interface.clone()),
        (None, None) => match loader::attached_interfaces(pin_root).as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(anyhow::anyhow!(
                "sshlb is attached to no interface (nothing pinned under {})",
                pin_root.display()
            )),
            many => Err(anyhow::anyhow!(
                "sshlb is attached to {}: say which with --iface",
                many.join(", ")
            )),
        },
    };
    // The agent's names are those of its own interface only.
    let status = status.filter(|s| iface.as_ref().is_ok_and(|i| *i == s.interface));
    let names = if let Some(status) = &status {
        Ok(Names::from_status(status))
    } else {
        let file = defaults::choose_config(query.config).path().to_path_buf();
        load_config(&file)
            .map(|config| Names::from_config(&config, file.display().to_string()))
            .map_err(|err| format!("{err:#}"))
    };
    let filter = Filter::new(
        query.service,
        query.backend,
        query.client.as_deref(),
        names.as_ref().map_err(String::as_str),
    )?;
    let iface = iface?;
    if let Err(why) = &names {
        eprintln!("sshlb-agent: the agent does not answer and {why}: showing addresses only");
    }
    let table = loader::pinned_flows(pin_root, &iface)?;
    let backends = loader::pinned_backends(pin_root, &iface)?;
    let mut collector =
        Collector::new(&backends, names.as_ref().ok(), filter, sshlb::sys::monotonic_ns());
    sshlb::flows::walk(&table, |key, flow| collector.visit(key, flow))
        .context("reading the connection table")?;
    let flows = collector.finish(&iface);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if query.json {
        serde_json::to_writer(&mut out, &flows)?;
        writeln!(out)?;
    } else {
        out.write_all(flowview::render(&flows).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// `drain --wait`: prints the backend's live sessions as they fall, until none are left.
fn drain_wait(
    socket: &std::path::Path,
    target: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let (service, backend) = control::parse_target(target)?;
    let started = std::time::Instant::now();
    let report = |live: u64| {
        println!("{target}: {live} live session(s) ({:.0?} since drain)", started.elapsed());
    };
    let every = std::time::Duration::from_secs(1);
    match control::wait_drained(socket, (&service, &backend), timeout, every, report)? {
        control::DrainEnd::Drained => {
            println!("{target}: drained in {:.1?}", started.elapsed());
            Ok(())
        }
        control::DrainEnd::TimedOut(live) => anyhow::bail!(
            "{target}: {live} session(s) still open after {timeout:?}; the backend is drained for new \
             flows, its open sessions continue"
        ),
    }
}

/// The reply if the agent carried the request out, its reason as the error otherwise.
fn reply_ok(reply: control::Reply) -> anyhow::Result<control::Reply> {
    if reply.ok {
        Ok(reply)
    } else {
        anyhow::bail!("{}", reply.error.unwrap_or_else(|| "the agent refused".to_owned()))
    }
}

/// A `SERVICE/BACKEND` request.
fn simple(
    socket: &std::path::Path,
    target: &str,
    request: impl FnOnce(String, String) -> Request,
) -> anyhow::Result<()> {
    let (service, backend) = control::parse_target(target)?;
    reply_ok(control::call(socket, &request(service, backend))?)?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. Lazy like every async fn: calling it outside a runtime only
/// builds the future.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ignored = tokio::signal::ctrl_c().await;
        }
    }
}
