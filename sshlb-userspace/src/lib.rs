//! `sshlb-agent`'s library: everything the binary does, as testable modules.
//!
//! Layers, each importing only the ones above it:
//! 1. ABI — `sshlb-common` (map layouts, the 16-byte address layout, key constructors).
//! 2. Model — [`config`] (TOML → a validated, typed model; enum spellings and defaults once),
//!    [`protection`] (allow/deny and rate-limit policy), [`maglev`] (pure ring builder),
//!    [`health`] (banner-check state machine + the check), [`hostkeys`] (key scans, consistency).
//! 3. Plan — [`plan`]: a configuration → the exact map contents, and `plan::diff` → the ordered
//!    map writes (`MapOp`s) that move the data plane from one to the other safely.
//! 4. Data-plane IO — [`loader`] (load/attach/pin), [`maps`] (typed accessors, the `MapOp`
//!    executor), [`stats`] (per-CPU counters), [`expiry`] (idle flows), [`sys`] (host facts).
//! 5. Daemon — [`daemon`]: the balancer state (one `BackendRef` and runtime record per backend),
//!    the status view, health/host-key tasks, host setup, the run loop; [`doctor`] (host and
//!    interface checks `doctor` prints and `up` runs first).
//! 6. API — [`control`] (socket protocol, server, client), [`metrics`] (Prometheus rendering
//!    and server), [`cli`], [`flowview`] (the `flows` command: pinned table → rows), [`top`]
//!    (the live terminal view: two samples → rows and rates, drawn with ratatui).

pub mod announce;
pub mod backend;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod defaults;
pub mod doctor;
pub mod expiry;
pub mod flows;
pub mod flowview;
pub mod health;
pub mod hostkeys;
pub mod kill;
pub mod loader;
pub mod logging;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod plan;
pub mod protection;
pub mod stats;
pub mod sys;
pub mod top;
pub mod tunnel_check;
