//! Walking the connection table: every (key, entry) of `FLOWS`, read in batches of
//! [`BATCH`] entries per system call (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6) where the kernel has
//! it, one `BPF_MAP_GET_NEXT_KEY` + lookup pair per entry otherwise.
//!
//! A walk runs while the data plane keeps writing the table, so it is a snapshot of no single
//! instant: a flow added or removed meanwhile may or may not be seen. The batched walk goes
//! bucket by bucket and never restarts; the fallback restarts from the first key when the key it
//! stands on is removed, so it may see an entry twice under heavy churn.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{HashMap, Map, MapData};
use sshlb_common::{Flow, FlowKey};

/// Entries asked for per batched system call (64 KiB of buffers).
pub const BATCH: u32 = 1024;

/// `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The kernel's `ENOTSUPP` (524): the map type has no batch operations.
const ENOTSUPP: i32 = 524;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A walk that could not complete.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// The map given is not a hash map.
    #[error("the connection table is not a hash map")]
    NotAHashMap,
    /// A batched read failed for another reason than "no more entries".
    #[error("BPF_MAP_LOOKUP_BATCH on the connection table")]
    Batch(#[source] std::io::Error),
    /// Reading an entry by iteration failed.
    #[error("iterating the connection table")]
    Iterate(#[source] aya::maps::MapError),
}

/// How a walk went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walked {
    /// Entries visited.
    pub entries: u64,
    /// Whether batched reads were used (false: the per-entry fallback).
    pub batched: bool,
}

/// Calls `visit` with every entry of the connection table `map` (`FLOWS`).
pub fn walk(map: &Map, mut visit: impl FnMut(&FlowKey, &Flow)) -> Result<Walked, WalkError> {
    let Map::HashMap(data) = map else { return Err(WalkError::NotAHashMap) };
    match walk_batched(data, &mut visit) {
        Ok(Some(entries)) => Ok(Walked { entries, batched: true }),
        Ok(None) => walk_iterating(map, visit).map(|entries| Walked { entries, batched: false }),
        Err(err) => Err(err),
    }
}

/// The per-entry walk, usable on any kernel (also what [`walk`] falls back to).
pub fn walk_iterating(map: &Map, mut visit: impl FnMut(&FlowKey, &Flow)) -> Result<u64, WalkError> {
    let table: HashMap<&MapData, FlowKey, Flow> =
        HashMap::try_from(map).map_err(|_| WalkError::NotAHashMap)?;
    let mut entries = 0;
    for item in &table {
        match item {
            Ok((key, flow)) => {
                visit(&key, &flow);
                entries += 1;
            }
            // Removed between finding its key and reading it: it is gone, not an error.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(err) => return Err(WalkError::Iterate(err)),
        }
    }
    Ok(entries)
}

/// One `BPF_MAP_LOOKUP_BATCH` on the map `fd`: up to `keys.len()` entries into `keys` and
/// `values`, continuing from `token_in` (`None`: from the start) and leaving the continuation in
/// `token_out`. Returns how many entries were read and whether the map ended with them (the
/// kernel's `ENOENT`); any other failure is the `Err`.
///
/// # Safety
/// `K` must be the map's key type and `values` must hold `keys.len()` of the map's values (for a
/// per-CPU map, one per possible CPU each): the kernel writes that many bytes into them.
pub unsafe fn lookup_batch<K, V>(
    fd: std::os::fd::BorrowedFd<'_>,
    token_in: Option<&u64>,
    token_out: &mut u64,
    keys: &mut [K],
    values: &mut [V],
) -> std::io::Result<(usize, bool)> {
    let mut attr = BatchAttr {
        in_batch: token_in.map_or(0, |t| std::ptr::from_ref(t) as u64),
        out_batch: std::ptr::from_mut(token_out) as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: u32::try_from(keys.len()).unwrap_or(u32::MAX),
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr.batch`; its buffers are sized as the caller promised
    // (8-byte tokens leave room for any map's batch token) and live until the call returns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<BatchAttr>(),
        )
    };
    let got = (attr.count as usize).min(keys.len());
    if rc == 0 {
        return Ok((got, false));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOENT) {
        Ok((got, true))
    } else {
        Err(err)
    }
}

/// The batched walk: `Ok(None)` when this kernel has no batch operations for hash maps (before
/// anything was visited).
fn walk_batched(
    data: &MapData,
    visit: &mut impl FnMut(&FlowKey, &Flow),
) -> Result<Option<u64>, WalkError> {
    // SAFETY: FLOWS maps FlowKey → Flow (a plain hash map: one value per key).
    unsafe { visit_batched(data, BATCH, visit) }.map_err(WalkError::Batch)
}

/// Calls `visit` with every (key, value) of the map `data`, read `batch` entries per
/// `BPF_MAP_LOOKUP_BATCH`; `Ok(None)` when this kernel has no batch operations for the map's
/// type (before anything was visited).
///
/// # Safety
/// `K` and `V` must be the map's key and value types, and the map must hold one value per key
/// (not a per-CPU map): the kernel writes `batch` of each into buffers sized for that.
pub unsafe fn visit_batched<K: Clone + Default, V: Clone + Default>(
    data: &MapData,
    batch: u32,
    visit: &mut impl FnMut(&K, &V),
) -> std::io::Result<Option<u64>> {
    let mut keys = vec![K::default(); batch as usize];
    let mut values = vec![V::default(); batch as usize];
    // The batch token of a hash map is a bucket index, of an array an index (both u32); 8
    // bytes leave room.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut entries = 0u64;
    let mut first = true;
    loop {
        let token = (!first).then_some(&token_in);
        // SAFETY: the caller vouches for K and V; the buffers hold `batch` of each.
        let read = unsafe {
            lookup_batch(data.fd().as_fd(), token, &mut token_out, &mut keys, &mut values)
        };
        let (got, done) = match read {
            Ok(read) => read,
            Err(err) => match err.raw_os_error() {
                Some(libc::EINVAL | libc::ENOSYS | ENOTSUPP) if first => return Ok(None),
                _ => return Err(err),
            },
        };
        for (key, value) in keys[..got].iter().zip(&values[..got]) {
            visit(key, value);
        }
        entries += got as u64;
        if done {
            return Ok(Some(entries));
        }
        token_in = token_out;
        first = false;
    }
}
