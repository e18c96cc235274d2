//! Rebuild when bpf-linker changes, and warn (not fail) when it is missing so that host-side
//! `cargo clippy --workspace` / `cargo test --workspace` still work on a machine without it.
use std::env;

fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => {
            // Only the BPF target actually needs the linker.
            if env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
                println!("cargo:warning=bpf-linker not found on PATH: run `cargo xtask setup`");
            }
        }
    }
}
