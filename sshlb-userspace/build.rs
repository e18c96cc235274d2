//! Builds the XDP programs (`sshlb-ebpf`, nightly, `bpfel-unknown-none`) and leaves the objects at
//! `$OUT_DIR/sshlb` (the balancer), `$OUT_DIR/sshlb-decap` (the backend side) and
//! `$OUT_DIR/sshlb-clock` (the clock probe), where `loader.rs`, `backend.rs` and `clock.rs` embed
//! them into the `sshlb-agent` binary.
//!
//! With `AYA_BUILD_SKIP=1` (host-only checks on a machine without bpf-linker) an empty object is
//! written instead; the agent and the BPF tests then report "BPF object missing" and skip clearly.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("sshlb");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(&object, b"")?;
        fs::write(out_dir.join("sshlb-decap"), b"")?;
        fs::write(out_dir.join("sshlb-clock"), b"")?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let ebpf_dir = manifest_dir.join("..").join("sshlb-ebpf");
    let ebpf_dir = ebpf_dir.to_str().expect("workspace path is UTF-8");
    aya_build::build_ebpf(
        [aya_build::Package { name: "sshlb-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
