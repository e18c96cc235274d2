//! `sshlb-agent`: thin entry point; everything lives in the `sshlb` library.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;
use sshlb::{
    cli::{service_entries, Cli, Command},
    loader, stats,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sshlb-agent: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up { iface, xdp_mode, services, stats_interval, detach } => {
            let entries = service_entries(&services);
            let attached = loader::up(&cli.pin_root, &iface, xdp_mode, &entries)?;
            eprintln!(
                "sshlb-agent: attached to {iface} in {xdp_mode} mode, {} service(s), pinned at {}",
                entries.len(),
                attached.pin_dir.display()
            );
            if detach {
                return Ok(());
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime.block_on(wait_for_shutdown(&attached, stats_interval))?;
            eprint!("{}", stats::render(&stats::read(&attached.dataplane.stats())?, false));
            eprintln!(
                "sshlb-agent: exiting; the data plane stays attached to {iface} \
                 (`sshlb-agent down {iface}` detaches it)"
            );
            Ok(())
        }
        Command::Down { iface } => {
            loader::down(&cli.pin_root, &iface)?;
            eprintln!("sshlb-agent: detached from {iface} and removed its pins");
            Ok(())
        }
        Command::Stats { iface, all } => {
            let map = loader::pinned_stats(&cli.pin_root, &iface)?;
            print!("{}", stats::render(&stats::read(&map)?, all));
            Ok(())
        }
    }
}

/// Waits for SIGINT/SIGTERM, printing counters every `interval` seconds when it is non-zero.
async fn wait_for_shutdown(attached: &loader::Attached, interval: u64) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut ticker = tokio::time::interval(Duration::from_secs(interval.max(1)));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
            _ = ticker.tick(), if interval > 0 => {
                let counters = stats::read(&attached.dataplane.stats())?;
                eprint!("--\n{}", stats::render(&counters, false));
            }
        }
    }
}
