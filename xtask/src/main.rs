//! `cargo xtask`: sshlb's orchestration — machine setup, building the agent, the one test command
//! CI runs, and a throwaway demo topology. The only crate in the workspace that shells out (`ip`,
//! `ethtool`, `apt-get`, `rustup`, `cargo`).

mod bench;
mod build;
mod cmd;
mod deb;
mod fuzz;
mod lab;
mod setup;
mod test;
mod vm;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// sshlb's developer and CI tasks (`cargo xtask <command>`).
#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check for, and install where possible, everything needed to build and test sshlb
    /// (toolchains, components, bpf-linker, Debian packages). Idempotent.
    Setup,
    /// Build sshlb-agent (with its embedded XDP program) and print the binary's path.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build the Debian package target/deb/sshlb_<version>_<arch>.deb (release build): the agent,
    /// sshlb@.service, /etc/sshlb/sshlb.toml, man pages and bash/zsh/fish completions.
    Deb {
        /// Package the debug build instead (what `cargo xtask test` checks; no release build).
        #[arg(long)]
        debug: bool,
        /// Then unpack it into a scratch root and check it, as `cargo xtask test` does (root).
        #[arg(long)]
        check: bool,
    },
    /// Run every check and test tier: the one command that proves the project works (CI runs it).
    Test {
        /// Skip setup and clippy (for quick development loops).
        #[arg(long)]
        quick: bool,
    },
    /// Run benchmarks (figures and ratios against a peer in the same run; JSON in target/bench).
    Bench {
        /// Which benchmark.
        #[arg(value_enum, default_value_t = bench::Bench::Dataplane)]
        which: bench::Bench,
        /// Seconds of traffic per scenario (each is also bounded in packets).
        #[arg(long, default_value_t = 2)]
        seconds: u64,
        /// `lab`: interleaved rounds (every peer once per round; at least 2).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(2..))]
        rounds: u16,
        /// `dataplane`: the 1k table and IPv4 only (a development loop of under a minute; the
        /// 1M table and IPv6 are what a report quotes).
        #[arg(long)]
        quick: bool,
    },
    /// Run one cargo-fuzz target (fuzz/) for longer than the test suite does; new inputs go to
    /// fuzz/corpus-new/TARGET, crashes to fuzz/artifacts/TARGET.
    Fuzz {
        /// `config_parse` or `control_protocol`.
        target: String,
        /// How long to run.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// libFuzzer sanitizer (`none`, `address`, ...).
        #[arg(long, default_value = "none")]
        sanitizer: String,
    },
    /// The test lab: `up` (background), `down` (removes everything, also after a crash), `status`.
    Lab {
        /// What to do.
        #[arg(value_enum)]
        action: lab::Action,
        /// With `up`: how many balancers; more than one builds the HA lab (each balancer runs
        /// BIRD and announces the DSR VIPs by BGP to a router doing ECMP over them).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
        balancers: u8,
        /// With `up`: the full-NAT pair instead (two balancers, keepalived moving the VIP and the
        /// NAT address to the master).
        #[arg(long, conflicts_with = "balancers")]
        nat_pair: bool,
    },
    /// Boot Debian's kernels under QEMU and run the BPF packet fixtures and the namespace tests
    /// in each: loaded or rejected (with the verifier's message), tests passed/failed.
    VmTest {
        /// Which kernel(s).
        #[arg(long, value_enum, default_value_t = vm::Kernel::All)]
        kernel: vm::Kernel,
        /// Write the README's "Supported kernels" table from this run (only with --kernel all).
        #[arg(long)]
        update_readme: bool,
        /// Run the end-to-end tests (real sshd, ssh, git and the agent) in the guest instead.
        #[arg(long, conflicts_with = "update_readme")]
        e2e: bool,
        /// With --e2e: only this test binary (e2e_ssh, e2e_tunnel, e2e_protect, e2e_ops,
        /// e2e_ha); repeatable.
        #[arg(long = "test", value_name = "NAME", requires = "e2e")]
        tests: Vec<String>,
    },
    /// Build everything and run the balancer in the lab (client, router, three OpenSSH backends)
    /// in the foreground, printing the ssh and git commands that go through it; Ctrl-C ends it.
    Run {
        /// Stop by itself after SECS seconds.
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
        /// How many balancers; more than one builds the HA lab (each balancer runs BIRD and
        /// announces the DSR VIPs by BGP to a router doing ECMP over them).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
        balancers: u8,
        /// The full-NAT pair instead: two balancers, keepalived (VRRP) moving the VIP and the
        /// NAT address to the master.
        #[arg(long, conflicts_with = "balancers")]
        nat_pair: bool,
        /// Run the lab inside a QEMU guest instead (KVM when usable, TCG otherwise), with a
        /// shell on its console to run the printed commands; Ctrl-C shuts the guest down.
        #[arg(long, conflicts_with_all = ["balancers", "nat_pair"])]
        vm: bool,
        /// With --vm: the guest's kernel.
        #[arg(long, value_enum, default_value_t = vm::Kernel::K7, requires = "vm")]
        kernel: vm::Kernel,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::setup().map(|_| ()),
        Command::Build { release } => build::build(release).map(|agent| {
            println!("{}", agent.display());
        }),
        Command::Test { quick } => test::test(quick),
        Command::Deb { debug, check } => {
            deb::deb(debug).and_then(|path| if check { deb::check(&path) } else { Ok(()) })
        }
        Command::VmTest { kernel, update_readme, e2e: false, .. } => vm::run(kernel, update_readme),
        Command::VmTest { kernel, e2e: true, tests, .. } => vm::e2e(kernel, &tests),
        Command::Run { duration, vm: true, kernel, .. } => {
            vm::run_lab(kernel, duration.map(std::time::Duration::from_secs))
        }
        Command::Run { duration, balancers, nat_pair, vm: false, .. } => {
            lab::run(duration.map(std::time::Duration::from_secs), lab::shape(balancers, nat_pair))
        }
        Command::Lab { action, balancers, nat_pair } => {
            lab::lab(action, lab::shape(balancers, nat_pair))
        }
        Command::Bench { which, seconds, rounds, quick } => {
            bench::bench(which, seconds, rounds.into(), quick)
        }
        Command::Fuzz { target, seconds, sanitizer } => fuzz::fuzz(&target, seconds, &sanitizer),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the directory holding the top-level `Cargo.toml`).
fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().expect("xtask lives one level below the workspace root").to_owned()
}

/// Whether this process runs with effective uid 0.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_is_consistent_and_parses_options() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["xtask", "run", "--duration", "8"]).expect("valid");
        assert!(
            matches!(cli.command, Command::Run { duration: Some(8), balancers: 1, .. }),
            "{cli:?}"
        );
        let cli = Cli::try_parse_from(["xtask", "run", "--balancers", "3"]).expect("valid");
        assert!(
            matches!(cli.command, Command::Run { duration: None, balancers: 3, .. }),
            "{cli:?}"
        );
        let cli = Cli::try_parse_from(["xtask", "lab", "up", "--nat-pair"]).expect("valid");
        assert!(matches!(cli.command, Command::Lab { nat_pair: true, .. }), "{cli:?}");
        let both = ["xtask", "run", "--nat-pair", "--balancers", "3"];
        assert!(Cli::try_parse_from(both).is_err(), "--nat-pair conflicts with --balancers");
        let err = Cli::try_parse_from(["xtask", "run", "--balancers", "0"]).expect_err("0");
        assert!(err.to_string().contains("--balancers"), "{err}");
        let cli = Cli::try_parse_from(["xtask", "run", "--vm", "--kernel", "5.10"]).expect("valid");
        assert!(
            matches!(cli.command, Command::Run { vm: true, kernel: vm::Kernel::K5_10, .. }),
            "{cli:?}"
        );
        let cli = Cli::try_parse_from(["xtask", "run", "--vm"]).expect("valid");
        assert!(matches!(cli.command, Command::Run { kernel: vm::Kernel::K7, .. }), "{cli:?}");
        assert!(Cli::try_parse_from(["xtask", "run", "--kernel", "6.1"]).is_err(), "needs --vm");
        assert!(Cli::try_parse_from(["xtask", "run", "--vm", "--nat-pair"]).is_err());
        let cli =
            Cli::try_parse_from(["xtask", "vm-test", "--e2e", "--kernel", "7"]).expect("valid");
        assert!(matches!(cli.command, Command::VmTest { e2e: true, .. }), "{cli:?}");
        let one = ["xtask", "vm-test", "--e2e", "--test", "e2e_ops", "--test", "e2e_ha"];
        let cli = Cli::try_parse_from(one).expect("valid");
        assert!(
            matches!(&cli.command, Command::VmTest { e2e: true, tests, .. } if tests.len() == 2),
            "{cli:?}"
        );
        assert!(Cli::try_parse_from(["xtask", "vm-test", "--test", "e2e_ops"]).is_err());
        let both = ["xtask", "vm-test", "--e2e", "--update-readme"];
        assert!(Cli::try_parse_from(both).is_err(), "--e2e does not write the table");
        let cli = Cli::try_parse_from(["xtask", "test", "--quick"]).expect("valid");
        assert!(matches!(cli.command, Command::Test { quick: true }), "{cli:?}");
        let cli = Cli::try_parse_from(["xtask", "fuzz", "config_parse", "--seconds", "60"])
            .expect("valid");
        assert!(
            matches!(&cli.command, Command::Fuzz { target, seconds: 60, sanitizer }
                if target == "config_parse" && sanitizer == "none"),
            "{cli:?}"
        );
        let cli = Cli::try_parse_from(["xtask", "deb", "--check"]).expect("valid");
        assert!(matches!(cli.command, Command::Deb { debug: false, check: true }), "{cli:?}");
        let cli = Cli::try_parse_from(["xtask", "build", "--release"]).expect("valid");
        assert!(matches!(cli.command, Command::Build { release: true }), "{cli:?}");
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = workspace_root().join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("reading {}: {e}", manifest.display()));
        assert!(
            text.contains("[workspace]"),
            "{} is not the workspace manifest",
            manifest.display()
        );
    }
}
