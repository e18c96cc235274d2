//! Prometheus metrics: rendering a scrape ([`render`](mod@render), sans-IO) and serving it
//! ([`server`]) on `agent.metrics` (`GET /metrics`, loopback by default).

pub mod render;
pub mod server;

pub use render::{render, CheckLatency, ConfigState, Limits, Snapshot, CHECK_BUCKETS};
pub use server::respond;
