//! What the kernel says about the loaded program and its maps: per-function instruction counts
//! after the verifier (`bpftool -j prog dump xlated`, whose BTF func info opens each function
//! with its prototype), per-function JIT'd bytes and machine code (`bpf_prog_info`'s
//! `jited_func_lens` and image, counted into instructions with `objdump` when it is installed),
//! and each map's `bytes_memlock` (`bpftool -j map show`).

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use aya_obj::generated::{bpf_cmd, bpf_prog_info};
use serde_json::Value;

/// `bpftool -j args…`, parsed.
fn bpftool(args: &[&str]) -> Result<Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("running bpftool (installed by `cargo xtask setup`)")?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        bail!(
            "bpftool {}: {}{}",
            args.join(" "),
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bpftool {} output", args.join(" ")))
}

/// One function of a loaded program, as BTF func info names it.
#[derive(Clone, Debug)]
pub struct Function {
    /// The name BTF gives it (the entry point's is the program's name).
    pub name: String,
    /// Instruction slots after the verifier's rewrites (a 16-byte `ld_imm64` counts 2).
    pub xlated_insns: u64,
    /// Machine instructions the JIT emitted (`None` without objdump).
    pub jited_insns: Option<u64>,
    /// Machine-code bytes the JIT emitted (0 when the kernel gives no per-function lengths).
    pub jited_bytes: u64,
}

/// A loaded program's size, whole and per function.
#[derive(Clone, Debug)]
pub struct ProgramSize {
    /// Kernel program id.
    pub id: u32,
    /// `bytes_xlated / 8`.
    pub xlated_insns: u64,
    /// `bytes_jited`.
    pub jited_bytes: u64,
    /// Instructions the verifier processed (all paths explored), when the kernel reports it.
    pub verified_insns: Option<u64>,
    /// Its functions, entry point first.
    pub functions: Vec<Function>,
    /// Why JIT instruction counts are missing, if they are.
    pub jit_note: Option<String>,
}

impl ProgramSize {
    /// Reads the sizes of the loaded program `info` describes.
    pub fn of(info: &aya::programs::ProgramInfo) -> Result<Self> {
        let id = info.id();
        let id_text = id.to_string();
        let show = bpftool(&["prog", "show", "id", &id_text])?;
        let xlated = bpftool(&["prog", "dump", "xlated", "id", &id_text])?;
        let fd = info.fd().context("program fd")?;
        let (lens, image) = jit_image(fd.as_fd().as_raw_fd())?;
        let counted = count_machine_insns(&image, &lens);
        let jit_note = counted.as_ref().err().map(|e| format!("{e:#}"));
        let functions = xlated_functions(&xlated)
            .into_iter()
            .enumerate()
            .map(|(i, (name, xlated_insns))| Function {
                name,
                xlated_insns,
                jited_insns: counted.as_ref().ok().and_then(|c| c.get(i).copied()),
                jited_bytes: lens.get(i).copied().map_or(0, u64::from),
            })
            .collect();
        Ok(Self {
            id,
            xlated_insns: show["bytes_xlated"].as_u64().context("bytes_xlated")? / 8,
            jited_bytes: show["bytes_jited"].as_u64().unwrap_or(0),
            verified_insns: show["verified_insns"].as_u64(),
            functions,
            jit_note,
        })
    }

    /// The function named `wanted`, or whose (demangled) path ends in `::wanted`.
    pub fn function(&self, wanted: &str) -> Option<&Function> {
        self.functions.iter().find(|f| {
            let path = demangle(&f.name);
            path == wanted || path.ends_with(&format!("::{wanted}"))
        })
    }
}

/// `(name, instruction slots)` per function of `bpftool -j prog dump xlated`: the first
/// instruction of each function carries its BTF prototype (`"proto": "u32 sshlb(struct xdp_md *
/// ctx)"`); `ld_imm64` (opcode 0x18) takes two slots.
fn xlated_functions(dump: &Value) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for insn in dump.as_array().map_or(&[][..], Vec::as_slice) {
        if let Some(proto) = insn["proto"].as_str() {
            out.push((function_name(proto), 0));
        }
        let slots =
            if insn["disasm"].as_str().is_some_and(|d| d.starts_with("(18)")) { 2 } else { 1 };
        match out.last_mut() {
            Some(last) => last.1 += slots,
            None => out.push(("(no BTF func info)".to_owned(), slots)),
        }
    }
    out
}

/// The name in a C-style prototype: `u32 sshlb(struct xdp_md * ctx)` → `sshlb`.
fn function_name(proto: &str) -> String {
    let head = proto.split('(').next().unwrap_or(proto);
    head.rsplit([' ', '*']).next().unwrap_or(head).to_owned()
}

/// `_ZN10sshlb_ebpf7balance7forward17h0123456789abcdefE` → `sshlb_ebpf::balance::forward`;
/// anything else unchanged.
pub fn demangle(name: &str) -> String {
    let Some(mut rest) = name.strip_prefix("_ZN") else { return name.to_owned() };
    let mut parts = Vec::new();
    while let Some(len_end) = rest.find(|c: char| !c.is_ascii_digit()) {
        let Ok(len) = rest[..len_end].parse::<usize>() else { break };
        let Some(part) = rest.get(len_end..len_end + len) else { break };
        parts.push(part);
        rest = &rest[len_end + len..];
    }
    if parts.last().is_some_and(|h| h.len() == 17 && h.starts_with('h')) {
        parts.pop();
    }
    if parts.is_empty() {
        return name.to_owned();
    }
    parts.join("::")
}

/// `BPF_OBJ_GET_INFO_BY_FD` of program `fd`, with `prepare` pointing the info's arrays at
/// buffers first.
fn prog_info(fd: i32, prepare: impl FnOnce(&mut bpf_prog_info)) -> Result<bpf_prog_info> {
    /// The `info` member of `union bpf_attr`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is plain integers; all-zero is its "ask for nothing" value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    prepare(&mut info);
    let mut attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: std::mem::size_of::<bpf_prog_info>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: attr points at `info`, valid for info_len bytes, and the buffers `prepare` set
    // outlive this call (they are the caller's).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc != 0 {
        bail!("BPF_OBJ_GET_INFO_BY_FD: {}", std::io::Error::last_os_error());
    }
    Ok(info)
}

/// The JIT'd length of every function (in func-info order) and the whole machine-code image.
fn jit_image(fd: i32) -> Result<(Vec<u32>, Vec<u8>)> {
    let sizes = prog_info(fd, |_| {})?;
    let mut lens = vec![0u32; sizes.nr_jited_func_lens as usize];
    let mut image = vec![0u8; sizes.jited_prog_len as usize];
    prog_info(fd, |info| {
        info.nr_jited_func_lens = lens.len() as u32;
        info.jited_func_lens = lens.as_mut_ptr() as u64;
        info.jited_prog_len = image.len() as u32;
        info.jited_prog_insns = image.as_mut_ptr() as u64;
    })?;
    Ok((lens, image))
}

/// Machine instructions per function: `image` disassembled by `objdump` (x86-64), split at the
/// functions' lengths.
fn count_machine_insns(image: &[u8], lens: &[u32]) -> Result<Vec<u64>> {
    if std::env::consts::ARCH != "x86_64" {
        bail!("JIT instruction counts are only decoded on x86-64");
    }
    let path = std::env::temp_dir().join(format!("sshlb-jit-{}.bin", std::process::id()));
    std::fs::write(&path, image)?;
    let out = Command::new("objdump")
        .args(["-D", "-b", "binary", "-m", "i386:x86-64", "--no-show-raw-insn"])
        .arg(&path)
        .output();
    let _ignored = std::fs::remove_file(&path);
    let out = out.context("objdump (binutils) to count JIT'd instructions")?;
    if !out.status.success() {
        bail!("objdump: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    // Instruction lines: "  1f:\tmov ...". Their offsets, in order.
    let offsets: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (addr, rest) = l.trim_start().split_once(":\t")?;
            (!rest.trim().is_empty()).then(|| u64::from_str_radix(addr, 16).ok())?
        })
        .collect();
    let mut counts = Vec::with_capacity(lens.len());
    let mut start = 0u64;
    for len in lens {
        let end = start + u64::from(*len);
        counts.push(offsets.iter().filter(|&&o| o >= start && o < end).count() as u64);
        start = end;
    }
    Ok(counts)
}

/// One map, as the kernel accounts it.
#[derive(Clone, Debug)]
pub struct MapMemory {
    /// Map name (truncated to 15 bytes by the kernel).
    pub name: String,
    /// `max_entries`.
    pub max_entries: u64,
    /// `bytes_memlock`: the kernel's own figure of what the map holds in memory.
    pub bytes_memlock: u64,
    /// Map creation flags (`BPF_F_NO_PREALLOC` = 1 makes `bytes_memlock` grow with entries).
    pub flags: u64,
    /// Key and value sizes: what of an entry is ours (the rest is the kernel's element header
    /// and its share of the bucket array).
    pub key_size: u64,
    pub value_size: u64,
}

impl MapMemory {
    /// The kernel's bytes per entry (`bytes_memlock / max_entries`).
    pub fn per_entry(&self) -> f64 {
        self.bytes_memlock as f64 / self.max_entries as f64
    }

    /// Reads map `id`.
    pub fn of(id: u32) -> Result<Self> {
        let show = bpftool(&["map", "show", "id", &id.to_string()])?;
        Ok(Self {
            name: show["name"].as_str().unwrap_or("?").to_owned(),
            max_entries: show["max_entries"].as_u64().context("max_entries")?,
            bytes_memlock: show["bytes_memlock"].as_u64().context("bytes_memlock")?,
            flags: show["flags"].as_u64().unwrap_or(0),
            key_size: show["bytes_key"].as_u64().context("bytes_key")?,
            value_size: show["bytes_value"].as_u64().context("bytes_value")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_rust_paths_and_keeps_plain_names() {
        assert_eq!(
            demangle("_ZN10sshlb_ebpf7balance7forward17h0123456789abcdefE"),
            "sshlb_ebpf::balance::forward"
        );
        assert_eq!(demangle("sshlb"), "sshlb");
    }

    #[test]
    fn splits_xlated_dump_at_prototypes_and_counts_wide_loads_twice() {
        let dump = serde_json::json!([
            {"proto": "u32 sshlb(struct xdp_md * ctx)", "disasm": "(bf) r6 = r1"},
            {"disasm": "(18) r1 = map[id:360]"},
            {"proto": "static u64 * parse_into(void)", "disasm": "(95) exit"},
        ]);
        assert_eq!(xlated_functions(&dump), vec![("sshlb".into(), 3), ("parse_into".into(), 1)]);
    }
}
