//! Full NAT: the balancer's own address and a per-flow source port towards the backend, the
//! reverse index that maps a backend's reply back to its client, and the header rewrite.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};
use sshlb_common::{
    family, flow_state,
    hash::{flow_hash, NAT_PORT_SEED},
    stats, v4_in_16, Backend, Config, FlowKey, NatFlow, NatKey, DEFAULT_MAX_FLOWS,
};

use crate::{
    csum::Delta,
    flow::{self, EEXIST},
    parse::{ptr_at, Tcp},
    stats::count,
    verdict::Error,
    word,
};

/// (backend, backend port, NAT port) → the client's flow key. Written by XDP with the flow
/// ([`allocate_port`], [`release_port`]), read by XDP ([`reverse_lookup`]), removed by the agent
/// when it expires the flow.
#[map]
static NAT_REVERSE: HashMap<NatKey, NatFlow> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Per-CPU room for the reverse entry a new flow inserts: built here rather than on the stack of
/// the new-flow path, whose frame shares the verifier's 512-byte budget with its callers'.
/// Written and read by XDP only.
#[map]
static NEW_NAT_FLOW: PerCpuArray<NatFlow> = PerCpuArray::with_max_entries(1, 0);

/// The balancer's NAT address(es) and port range, at index 0. Written by the agent, read by XDP
/// ([`config`]).
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// NAT source-port probes per new flow before giving up.
const PORT_PROBES: u32 = 8;
/// How long a flow whose handshake has not completed keeps its NAT port against a new flow
/// that needs it. A real handshake completes within a round trip, and a client whose SYN went
/// unanswered retransmits after 1 s (RFC 6298) and so refreshes its entry; what stays silent in
/// SYN state longer is, under a flood, a spoofed source that will never answer.
pub const EMBRYONIC_GRACE_NS: u64 = 1_000_000_000;
/// Distance between probes (odd, so consecutive probes differ for any range size).
const PROBE_STEP: u32 = 0x9e37_79b1;

/// The configuration, if the agent has written one — in place: a copy would take room in the
/// caller's stack frame, which the verifier counts (512 bytes per call chain, each frame
/// rounded up to 32 bytes on older kernels).
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// The configured NAT source-port range `(min, max)` (host order), read in place.
#[inline(always)]
pub fn port_range() -> Option<(u16, u16)> {
    let cfg = CONFIG.get(0)?;
    Some((cfg.nat_port_min, cfg.nat_port_max))
}

/// The NAT source address for `fam`, or `None` while unconfigured.
#[inline(always)]
pub fn nat_addr(cfg: &Config, fam: u8) -> Option<[u8; 16]> {
    if fam == family::V4 {
        let a = cfg.nat_v4;
        (a != [0; 4]).then_some(v4_in_16(a))
    } else {
        (cfg.nat_v6 != [0; 16]).then_some(cfg.nat_v6)
    }
}

/// Whether `key`'s destination is the NAT address of its family (unconfigured: never).
#[inline(always)]
pub fn is_nat_address(key: &sshlb_common::FlowKey) -> bool {
    config().and_then(|cfg| nat_addr(cfg, key.family)) == Some(key.dst)
}

/// Claims a NAT source port (network order) towards `backend` for the flow `key`.
///
/// The first probe is a hash of the flow, so after a balancer restart a flow picked up mid-stream
/// usually gets the port it had and the backend's connection carries on. The claim is the
/// `NAT_REVERSE` insert itself (`BPF_NOEXIST`), atomic across CPUs.
///
/// A probe that hits a port held by an embryonic flow (SYN seen, handshake never completed,
/// silent for [`EMBRYONIC_GRACE_NS`]) takes that port over and ends the embryonic flow: a
/// spoofed SYN flood then recycles ports among its own dead flows instead of locking real
/// clients out, and no established flow ever loses its port.
#[inline(always)]
pub fn allocate_port(
    key: &FlowKey,
    backend: &Backend,
    ids: (u32, u32),
    now: u64,
) -> Result<u16, Error> {
    let entry = NEW_NAT_FLOW.get_ptr_mut(0).ok_or(Error::ScratchMissing)?;
    // SAFETY: this CPU's slot; nothing else runs on this CPU meanwhile.
    let entry = unsafe {
        (*entry).client = *key;
        (*entry).service_id = ids.0;
        (*entry).backend_id = ids.1;
        &*entry
    };
    let (min, max) = port_range().ok_or(Error::NatUnconfigured)?;
    let (min, max) = (u32::from(min), u32::from(max));
    if min == 0 || max < min {
        return Err(Error::NatUnconfigured);
    }
    let range = max - min + 1;
    let mut probe = flow_hash(key, false, NAT_PORT_SEED);
    let mut nat_key = NatKey::new(backend.addr, backend.port_be, 0, key.family);
    for _ in 0..PORT_PROBES {
        // `range >= 1` (checked above); checked_rem keeps a panic path out of the object.
        let port = (min + probe.checked_rem(range).unwrap_or(0)) as u16;
        nat_key.nat_port_be = port.to_be();
        match NAT_REVERSE.insert(nat_key, entry, u64::from(BPF_NOEXIST)) {
            Ok(()) => return Ok(port.to_be()),
            // Taken by another flow to the same backend: reclaim it if that flow is a dead
            // handshake, else probe on.
            Err(EEXIST) => {
                if reclaim(nat_key, entry, now) {
                    count(stats::EVENT_NAT_PORT_RECLAIMED);
                    return Ok(port.to_be());
                }
                count(stats::EVENT_NAT_PORT_RETRY);
            }
            // Out of entries (or memory): as full as the connection table.
            Err(_) => return Err(Error::FlowTableFull),
        }
        probe = probe.wrapping_add(PROBE_STEP);
    }
    Err(Error::NatPortsExhausted)
}

/// Takes the NAT port `nat_key` for `key` if its holder is an embryonic flow past the grace
/// period (or no flow at all any more): the holder's entry is removed and the port's reverse
/// entry rewritten to `key`.
#[inline(always)]
fn reclaim(nat_key: NatKey, entry_for_new: &NatFlow, now: u64) -> bool {
    // The holder's key is used where it lies in the map value (not copied: this runs in the
    // new-flow path's frame, which shares the verifier's 512-byte budget with its callers).
    let Some(holder) = NAT_REVERSE.get_ptr(nat_key) else { return false };
    // SAFETY: a live map value, used only as a lookup key before it is overwritten below.
    let holder = unsafe { &(*holder).client };
    if let Some(entry) = flow::get(holder) {
        // SAFETY: a live map value, fields read once.
        let (state, last_seen) = unsafe { ((*entry).state, (*entry).last_seen_ns) };
        if state != flow_state::SYN || now.saturating_sub(last_seen) < EMBRYONIC_GRACE_NS {
            return false;
        }
        // The dead handshake goes; a late ACK of it would be picked up as a recovered flow.
        let _ignored = flow::remove(holder);
    }
    if NAT_REVERSE.insert(nat_key, entry_for_new, 0).is_err() {
        return false;
    }
    // No CPU may send the port's replies to its old holder from a copy.
    crate::cache::replaced();
    true
}

/// Frees the NAT port of a flow that is being replaced or could not be stored.
#[inline(always)]
pub fn release_port(backend: &Backend, nat_port_be: u16, fam: u8) {
    let nat_key = NatKey::new(backend.addr, backend.port_be, nat_port_be, fam);
    // Absent already is fine: the goal is that it is absent.
    let _ignored = NAT_REVERSE.remove(nat_key);
}

/// The client flow behind the NAT reverse key `nat_key`, if any: a backend's segment to the
/// balancer (backend = its source) or the segment an ICMP error quotes (backend = its
/// destination).
#[inline(always)]
pub fn reverse_lookup(nat_key: NatKey) -> Option<NatFlow> {
    // SAFETY: copied out at once.
    unsafe { NAT_REVERSE.get(nat_key) }.copied()
}

/// New addresses and ports for a segment (network byte order).
///
/// Addresses as native-order words (`csum::words`), so the rewrite moves them in words.
pub struct Rewrite {
    /// New source address.
    pub src: [u32; 4],
    /// New destination address.
    pub dst: [u32; 4],
    /// New source and destination port as they lie in the header (`csum::ports`).
    pub ports: u32,
}

/// Rewrites the segment's addresses and ports, updating the IPv4 header checksum and the TCP
/// checksum incrementally (RFC 1624): the pseudo-header covers both addresses. The arithmetic is
/// inline (a few adds per changed word): cheaper than a `bpf_csum_diff` call per run of words.
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, pkt: &Tcp, to: &Rewrite) -> Result<(), Error> {
    let Rewrite { src, dst, ports } = *to;
    // Source and destination address are adjacent in both IP headers, and so are the two TCP
    // ports: each run is read from the packet, summed into the change and written back whole.
    let mut delta = Delta::new();
    if pkt.key.family == family::V4 {
        let ip = ptr_at::<Ipv4Hdr>(ctx, pkt.l3_off).ok_or(Error::TruncatedIpv4)?;
        let base = ip.cast::<u8>();
        let (src, dst) = (src[0], dst[0]);
        // SAFETY: ptr_at checked the 20-byte header: checksum at 10, addresses at 12..20.
        unsafe {
            let old = word::load64(base.add(12));
            delta.word32(old as u32, src);
            delta.word32((old >> 32) as u32, dst);
            // The IPv4 header checksum covers exactly the two addresses that changed.
            let check = base.add(10);
            word::store16(check, delta.apply16(word::load16(check)));
            word::store64(base.add(12), u64::from(src) | (u64::from(dst) << 32));
        }
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, pkt.l3_off).ok_or(Error::TruncatedIpv6)?;
        let base = ip.cast::<u8>();
        let new = [src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3]];
        // SAFETY: ptr_at checked the 40-byte header; the addresses are bytes 8..40.
        unsafe {
            let mut i = 0;
            while i < 4 {
                let at = base.add(8 + 8 * i);
                let old = word::load64(at);
                let (lo, hi) = (new[2 * i], new[2 * i + 1]);
                delta.word32(old as u32, lo);
                delta.word32((old >> 32) as u32, hi);
                word::store64(at, u64::from(lo) | (u64::from(hi) << 32));
                i += 1;
            }
        }
    }
    let tcp = ptr_at::<TcpHdr>(ctx, pkt.l4_off).ok_or(Error::TruncatedTcp)?;
    let base = tcp.cast::<u8>();
    // SAFETY: ptr_at checked the 20-byte header: ports at 0..4, checksum at 16.
    unsafe {
        // The TCP checksum covers the pseudo-header's addresses too: the same change, plus the
        // ports'.
        delta.word32(word::load32(base), ports);
        let check = base.add(16);
        word::store16(check, delta.apply16(word::load16(check)));
        word::store32(base, ports);
    }
    Ok(())
}
