//! The configuration file (TOML): parsing, validation, and the typed model the agent runs on.
//!
//! Sans-IO: [`parse`] takes the file's name and text. Every error names the file, the line and
//! the field, and says what is allowed.
//!
//! - `model`: the validated types, their defaults and the enum spelling tables;
//! - `raw`: the file as serde reads it, values with their spans;
//! - `validate`: raw → model, with located errors;
//! - `units`: durations, rates and port ranges;
//! - `announce`: `[announce]`, VIP announcement by BGP (model and validation);
//! - `error`: [`ConfigError`] (where) and [`Problem`] (what).

mod error;
#[macro_use]
mod model;
mod announce;
mod raw;
#[cfg(test)]
mod tests;
mod units;
mod validate;

pub use announce::{Announce, AnnounceMode, Bfd, Neighbor};
pub use error::{ConfigError, Problem, UnknownChoice};
pub use model::{
    limit_defaults, Affinity, Agent, Backend, BackendState, Config, Encap, HealthCheck,
    HostKeyPolicy, Mode, Service, Timeouts, MAX_WEIGHT,
};
pub use units::parse_duration;
pub use validate::parse;
