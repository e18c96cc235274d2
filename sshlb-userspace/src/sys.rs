//! Host facts the loader depends on: privileges, the BPF filesystem, interface names.

use std::{ffi::CString, io, path::Path};

/// `statfs` magic of the BPF filesystem (`BPF_FS_MAGIC` in `linux/magic.h`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether the process runs with uid 0 (loading XDP needs CAP_BPF + CAP_NET_ADMIN; we ask for root).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The kernel's index of interface `name`, or `None` when there is no such interface.
pub fn ifindex(name: &str) -> Option<u32> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: c_name is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Whether `path` is on a mounted BPF filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs is plain old data; zeroed is a valid initial value.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and buf is a valid, writable statfs.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut buf) };
    let magic = buf.f_type as i64;
    rc == 0 && magic == BPF_FS_MAGIC
}

/// Mounts the BPF filesystem at `path` unless one is already there (a fresh machine has none).
pub fn ensure_bpffs(path: &Path) -> io::Result<()> {
    if is_bpffs(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path)?;
    let target = CString::new(path.as_os_str().as_encoded_bytes())?;
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; data is null (no options).
    let rc = unsafe {
        libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
