//! SSH-aware protection: admission of new flows by a service's allow/deny list and its
//! per-source rate limit (the agent's side of the same feature configures both).
//!
//! Both look only at flows about to be created — never at a packet of an established flow, which
//! follows the connection table before this is reached. The cost is therefore paid per new
//! connection, not per packet: established traffic runs at the same speed with protection on.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, LpmTrie, LruHashMap},
};
use sshlb_common::{
    acl, family, service_flags, Bucket, FlowKey, Limit, SourceKey, ACL_PREFIX_BASE,
    LIMITER_ENTRIES, MAX_ACL_ENTRIES, MAX_SERVICES,
};

/// (service, client prefix) → allow or deny. Written (and listed) by the agent, read by XDP
/// ([`acl_entry`]).
#[map]
static ACL: LpmTrie<SourceKey, u32> = LpmTrie::with_max_entries(MAX_ACL_ENTRIES, 0);

/// The `acl::*` value of the longest ACL prefix matching `source`, if any matches.
#[inline(always)]
fn acl_entry(source: SourceKey) -> Option<u32> {
    let lookup = Key::new(ACL_PREFIX_BASE + 128, source);
    ACL.get(&lookup).copied()
}

/// Per-service source-prefix limit. Written by the agent, read by XDP ([`limit`]).
#[map]
static LIMITS: Array<Limit> = Array::with_max_entries(MAX_SERVICES, 0);

/// The new-connection limit of service `service_id`.
#[inline(always)]
fn limit(service_id: u32) -> Option<&'static Limit> {
    LIMITS.get(service_id)
}

/// One bucket per (service, client prefix). LRU: bounded whatever the number of sources.
/// Written by XDP ([`take_token`]), read by the agent (top limited prefixes).
#[map]
static LIMITER: LruHashMap<SourceKey, Bucket> = LruHashMap::with_max_entries(LIMITER_ENTRIES, 0);

/// Whether a new flow may start.
///
/// A field-less `repr(u32)` enum: it comes back from the [`admit`] subprogram in R0 as one
/// integer, with no padding for LLVM to fill (see `verdict::Decision`).
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The flow may start.
    Admitted,
    /// The service's allow/deny list refuses the source.
    Denied,
    /// The source's prefix is over the service's new-connection rate.
    RateLimited,
}

/// Whether a new flow of service `service_id` (with `flags`) from `key.src` may start; `syn`
/// says it starts with a SYN (flows recovered mid-stream are checked against the lists but not
/// rate-limited: they are connections that already exist).
#[inline(never)]
pub fn admit(key: &FlowKey, service_id: u32, flags: u32, syn: bool, now: u64) -> Admission {
    // SAFETY: FlowKey is 4-aligned and `src` is its first field: four aligned words.
    let src = unsafe { *key.src.as_ptr().cast::<[u32; 4]>() };
    if flags & service_flags::ACL != 0 {
        let verdict = match acl_entry(source_key(service_id, key.family, src)) {
            Some(v) => v,
            None if flags & service_flags::ACL_DEFAULT_DENY != 0 => acl::DENY,
            None => acl::ALLOW,
        };
        if verdict != acl::ALLOW {
            return Admission::Denied;
        }
    }
    if syn && flags & service_flags::RATE_LIMIT != 0 {
        if let Some(limit) = limit(service_id) {
            return take_token(limit, key.family, service_id, src, now);
        }
    }
    Admission::Admitted
}

/// GCRA on the bucket of the source's prefix. Racing CPUs may both let a SYN through where one
/// should have: the limit is approximate by at most the number of CPUs, never unbounded.
#[inline(always)]
fn take_token(limit: &Limit, fam: u8, service_id: u32, src: [u32; 4], now: u64) -> Admission {
    let masked = if fam == family::V4 {
        [src[0] & limit.mask_v4, 0, 0, 0]
    } else {
        [
            src[0] & limit.mask_v6[0],
            src[1] & limit.mask_v6[1],
            src[2] & limit.mask_v6[2],
            src[3] & limit.mask_v6[3],
        ]
    };
    let bucket_key = source_key(service_id, fam, masked);
    if let Some(bucket) = LIMITER.get_ptr_mut(bucket_key) {
        // SAFETY: a live map value; whole u64 fields, read once, written once.
        unsafe {
            let tat = if (*bucket).tat_ns > now { (*bucket).tat_ns } else { now };
            if tat - now > limit.tau_ns {
                (*bucket).refused += 1;
                return Admission::RateLimited;
            }
            (*bucket).tat_ns = tat + limit.interval_ns;
        }
    } else {
        let fresh = Bucket { tat_ns: now + limit.interval_ns, refused: 0 };
        // A full LRU evicts its oldest bucket; a failed insert only forgets this SYN.
        let _ignored = LIMITER.insert(bucket_key, fresh, 0);
    }
    Admission::Admitted
}

/// The `ACL`/`LIMITER` key of `addr` (four native-order words) within service `service_id`.
#[inline(always)]
fn source_key(service_id: u32, fam: u8, addr: [u32; 4]) -> SourceKey {
    SourceKey {
        service_id: service_id as u16,
        family: fam,
        pad: 0,
        // SAFETY: [u32; 4] and [u8; 16] have the same size; every bit pattern is valid.
        addr: unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(addr) },
    }
}
