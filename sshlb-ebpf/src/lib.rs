//! The sshlb XDP data plane is the `sshlb` binary target of this crate (built for
//! `bpfel-unknown-none` by `sshlb-userspace`'s build script). This empty library exists so the
//! agent can name the crate as a build-dependency and cargo re-runs that build on changes here.
#![no_std]
