//! `sshlb-agent`'s library: everything the binary does, as testable modules.
//!
//! - [`loader`]: loads the embedded XDP object, attaches it, pins it under
//!   `/sys/fs/bpf/sshlb/<iface>`, and detaches/unpins it.
//! - [`maglev`]: builds weighted Maglev rings (pure: backends' keys and weights → slots).
//! - [`maps`]: typed writers/readers for the data plane's maps.
//! - [`metrics`]: Prometheus exposition.
//! - [`plan`]: a configuration → the exact map contents (backend ids, rings).
//! - [`expiry`]: removes flows idle past their state's timeout.
//! - [`health`]: SSH banner health checks (state machine + the check).
//! - [`stats`]: reads the data plane's per-CPU counters.
//! - [`sys`]: the few host facts the loader needs (privileges, bpffs, interfaces).
//! - [`cli`]: the command line.
//! - [`daemon`]: start (attach + write the config) and the foreground loop (expiry, neighbours).
//! - [`config`]: the TOML configuration file, validated into a typed model.
//! - [`control`]: the control socket protocol, `status` schema and client.
//! - [`protect`]: allow/deny lists and per-source rate limits → the data plane's entries.
//! - [`hostkeys`]: host-key scans (a real key exchange per key type) and consistency.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod expiry;
pub mod health;
pub mod hostkeys;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod plan;
pub mod protect;
pub mod stats;
pub mod sys;
