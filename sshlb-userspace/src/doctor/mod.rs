//! `sshlb-agent doctor IFACE`: the host and interface checks that caught real users, each pass,
//! warn or fail with the fix. [`checks`] decides from [`Facts`] (sans-IO, unit-tested);
//! [`probe`] gathers the facts (kernel, BTF, bpffs, and the interface through ioctls in the
//! caller's network namespace). `up` runs the same checks first and refuses on a failed one
//! with the same words ([`Report::fatal`]); it logs the warnings.

pub mod checks;
pub mod probe;

pub use checks::{check, Check, Facts, IfaceFacts, Level, Report, MAX_NATIVE_MTU};
pub use probe::facts;
