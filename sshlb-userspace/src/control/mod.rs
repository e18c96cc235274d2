//! The control socket: the running agent's runtime API — its protocol, the agent's server and
//! the command-line client.
//!
//! Protocol: a unix stream socket (mode 0600, root only); the client writes one JSON request on
//! one line, the agent answers with one JSON reply on one line and closes. Requests that change
//! backends (`set-weight`, `drain`, `enable`, `disable`, `switch`) edit the agent's in-memory
//! configuration and go through the same re-plan as a reload, so they take effect atomically
//! (one ring flip) and touch no established flow. They are not written back to the file: the
//! next reload returns to what the file says (as HAProxy's runtime API does).
//!
//! `status --json` prints [`Status`]: a stable schema for scripts (fields are only ever added).
//!
//! - [`protocol`]: requests, replies, the status schema, and [`edit`] (sans-IO);
//! - [`server`]: binding the socket and answering connections (the agent's side);
//! - [`client`]: calling the agent, `drain --wait`, rendering a status for people.

pub mod client;
pub mod protocol;
pub mod server;

pub use client::{
    call, live_sessions, parse_target, render, wait_drained, ClientError, DrainEnd, DrainError,
    TargetError,
};
pub use protocol::{
    decode_reply, decode_request, edit, encode, AnnounceStatus, BackendStatus, DecodeError,
    EditError, LimitStatus, LimitedPrefix, Reply, Request, ServiceStatus, Status, DEFAULT_SOCKET,
    MAX_REQUEST,
};
pub use server::{bind_control, ControlError};
