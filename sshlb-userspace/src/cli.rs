//! The `sshlb-agent` command line.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};
use sshlb_common::{proto, Service, ServiceKey};

use crate::loader::{AttachMode, DEFAULT_PIN_ROOT};

/// sshlb-agent: an XDP load balancer for SSH fleets.
#[derive(Debug, Parser)]
#[command(name = "sshlb-agent", version, about)]
pub struct Cli {
    /// Directory on the BPF filesystem holding one pin directory per interface.
    #[arg(long, global = true, default_value = DEFAULT_PIN_ROOT, value_name = "DIR")]
    pub pin_root: PathBuf,
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
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t = AttachMode::Native)]
        xdp_mode: AttachMode,
        /// A service to classify, as VIP:PORT (`198.18.0.100:22`, `[fd00::100]:22`). Repeatable.
        #[arg(long = "service", value_name = "VIP:PORT")]
        services: Vec<SocketAddr>,
        /// Print the counters every SECONDS while running (0 = only on exit).
        #[arg(long, default_value_t = 0, value_name = "SECONDS")]
        stats_interval: u64,
        /// Attach, pin and return at once instead of staying in the foreground.
        #[arg(long)]
        detach: bool,
    },
    /// Detach the data plane from IFACE and remove its pins.
    Down {
        /// Interface to detach from.
        iface: String,
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

/// The service table entries for `--service` arguments, with dense ids in argument order.
pub fn service_entries(addrs: &[SocketAddr]) -> Vec<(ServiceKey, Service)> {
    addrs
        .iter()
        .zip(0u32..)
        .map(|(addr, id)| {
            let key = match addr {
                SocketAddr::V4(a) => ServiceKey::v4(a.ip().octets(), a.port(), proto::TCP),
                SocketAddr::V6(a) => ServiceKey::v6(a.ip().octets(), a.port(), proto::TCP),
            };
            (key, Service { id, ..Service::default() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_up_with_services_and_mode() {
        let cli = Cli::try_parse_from([
            "sshlb-agent",
            "up",
            "eth0",
            "--xdp-mode",
            "generic",
            "--service",
            "198.18.0.100:22",
            "--service",
            "[fd00:1::100]:2222",
        ])
        .expect("valid command line");
        let Command::Up { iface, xdp_mode, services, .. } = cli.command else { panic!("not up") };
        assert_eq!(iface, "eth0");
        assert_eq!(xdp_mode, AttachMode::Generic);
        let entries = service_entries(&services);
        assert_eq!(entries[0].0, ServiceKey::v4([198, 18, 0, 100], 22, proto::TCP));
        assert_eq!(entries[1].1.id, 1);
        assert_eq!(entries[1].0.port_be, 2222u16.to_be());
    }

    #[test]
    fn rejects_bad_mode_and_bad_service_with_a_message() {
        let err = Cli::try_parse_from(["sshlb-agent", "up", "eth0", "--xdp-mode", "turbo"])
            .expect_err("turbo is not a mode");
        assert!(err.to_string().contains("native"), "{err}");
        let err = Cli::try_parse_from(["sshlb-agent", "up", "eth0", "--service", "198.18.0.1"])
            .expect_err("port missing");
        assert!(err.to_string().contains("--service"), "{err}");
    }
}
