//! Booting one kernel under QEMU: with KVM where `/dev/kvm` is usable, TCG otherwise (always on
//! these machines: their `/dev/kvm` is the PVM variant), the console either captured from a
//! pipe and bounded in time (the tests) or on the user's terminal (`run --vm`).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};

use super::image::find_file;

/// The guest machine.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Virtual CPUs (TCG runs one host thread per vCPU).
    pub cpus: u8,
    /// Memory in MiB (the initramfs, `/tmp` and `/run` live in it).
    pub memory_mib: u32,
    /// Appended to the kernel command line (`key=value` words become `/init`'s environment).
    pub append: String,
}

/// The unpacked kernel's `vmlinuz`.
pub fn vmlinuz(kdir: &Path) -> Result<PathBuf> {
    let kroot = kdir.join("root");
    find_file(&kroot, &|n| n.starts_with("vmlinuz"))
        .with_context(|| format!("no vmlinuz in {}", kroot.display()))
}

/// Whether guests run under KVM: only when `/dev/kvm` opens and is not the PVM variant
/// (`/sys/module/kvm_pvm`), on which stock kernels crash or crawl. TCG otherwise.
pub fn kvm() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
        && !Path::new("/sys/module/kvm_pvm").exists()
}

/// How many times slower than native the guest's tests run, for the test kit's waits
/// (`SSHLB_TEST_SLOWDOWN`): 1 under KVM; under TCG OpenSSH's process starts and key exchanges
/// took 10–20× longer on the 2-core machine.
pub fn slowdown() -> u32 {
    if kvm() {
        1
    } else {
        10
    }
}

/// QEMU's accelerator and CPU model: see [`kvm`].
fn accel_args() -> [&'static str; 4] {
    if kvm() {
        ["-accel", "kvm", "-cpu", "host"]
    } else {
        ["-accel", "tcg", "-cpu", "max"]
    }
}

/// QEMU for `vmlinuz` + `initrd` on `machine`, without its console yet.
fn qemu(vmlinuz: &Path, initrd: &Path, machine: &Machine) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(accel_args())
        .args(["-smp", &machine.cpus.to_string(), "-m", &machine.memory_mib.to_string()])
        .args(["-nographic", "-nodefaults", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 rdinit=/init quiet {}", machine.append).trim_end());
    c
}

/// Boots and returns the whole serial console; kills QEMU after `limit`. With `echo`, each
/// console line is also printed as it comes (long runs show their progress).
pub fn run_captured(
    vmlinuz: &Path,
    initrd: &Path,
    machine: &Machine,
    limit: Duration,
    echo: bool,
) -> Result<String> {
    let mut child = qemu(vmlinuz, initrd, machine)
        .args(["-serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut lines = BufReader::new(stdout);
        let mut line = Vec::new();
        while lines.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line);
            if echo {
                println!("  | {}", text.trim_end_matches(['\r', '\n']));
                let _ = std::io::stdout().flush();
            }
            all.push_str(&text);
            line.clear();
        }
        all
    });
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(reader.join().unwrap_or_default())
}

/// Boots with the serial console on this terminal (`-serial stdio` with signals on: the
/// terminal is raw for the guest's shell, and Ctrl-C ends QEMU). Returns when QEMU exits.
pub fn run_interactive(vmlinuz: &Path, initrd: &Path, machine: &Machine) -> Result<()> {
    let mut command = qemu(vmlinuz, initrd, machine);
    command.args(["-chardev", "stdio,id=console,signal=on", "-serial", "chardev:console"]);
    // Ctrl-C reaches QEMU (same process group), which ends the guest; xtask only waits.
    // SAFETY: ignoring SIGINT in xtask itself; the child resets dispositions on exec.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = command.status().context("starting qemu-system-x86_64")?;
    // QEMU exits 0 on the guest's power-off and 1 when a signal ended it: both are a shutdown.
    ensure!(status.code().is_some_and(|c| c <= 1), "qemu-system-x86_64 exited with {status}");
    Ok(())
}
