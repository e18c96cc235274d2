//! The bytes the sshlb XDP program and `sshlb-agent` agree on.
//!
//! Everything that crosses the kernel boundary is defined here once: map names, map key and value
//! layouts (`#[repr(C)]`, no implicit padding, integers and named constants instead of `bool`,
//! `enum` or `Option`), counter indexes and limits. The layout tests at the bottom lock the ABI: a
//! pinned map written by one build must be readable by the next.
#![no_std]

pub mod addr;
pub mod stats;
pub mod tunnel;

pub use addr::v4_in_16;

/// Map names, as they appear in the BPF object and under the pin directory.
pub mod map_names {
    /// Services: (VIP, port, protocol) → [`crate::Service`]. Written by the agent, read by XDP.
    pub const SERVICES: &str = "SERVICES";
    /// Backends by id → [`crate::Backend`]. Written by the agent, read by XDP.
    pub const BACKENDS: &str = "BACKENDS";
    /// Maglev rings, two per service (active + standby), each `RING_STRIDE` slots of backend ids.
    /// Written by the agent (standby ring, then flip `Service::ring_offset`), read by XDP.
    pub const RINGS: &str = "RINGS";
    /// Connection table: [`crate::FlowKey`] (client → VIP) → [`crate::Flow`]. Written by XDP
    /// (new flows, state, last-seen), expired by the agent.
    pub const FLOWS: &str = "FLOWS";
    /// Full-NAT reverse index: [`crate::NatKey`] (backend, backend port, NAT port) →
    /// [`crate::NatFlow`] (the client's flow key and what the reply path counts it under).
    /// Written by XDP together with the flow, removed by the agent with it.
    pub const NAT_REVERSE: &str = "NAT_REVERSE";
    /// The balancer's own settings, one [`crate::Config`] at index 0. Written by the agent.
    pub const CONFIG: &str = "CONFIG";
    /// Global per-CPU outcome counters indexed by [`crate::stats`]. Written by XDP.
    pub const STATS: &str = "STATS";
    /// Per-CPU [`crate::Traffic`] per service id. Written by XDP.
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    /// Per-CPU [`crate::Traffic`] per backend id. Written by XDP.
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// Allow/deny lists: longest-prefix-match trie of [`crate::SourceKey`] (prefix length
    /// [`crate::ACL_PREFIX_BASE`] + the CIDR's) → one of `acl::*`. Written by the agent, read by
    /// XDP for new flows of services with [`crate::service_flags::ACL`].
    pub const ACL: &str = "ACL";
    /// Per-source new-connection limit of each service id: [`crate::Limit`]. Written by the
    /// agent.
    pub const LIMITS: &str = "LIMITS";
    /// Token buckets, LRU-bounded: masked [`crate::SourceKey`] → [`crate::Bucket`]. Written by
    /// XDP, read by the agent (top limited prefixes).
    pub const LIMITER: &str = "LIMITER";
    /// The service pre-filter, one [`crate::ServiceFilter`] at index 0: a bit per
    /// [`crate::hash::filter_slot`] of every service's (VIP, port). Written by the agent with the
    /// services, read by XDP before any hash lookup.
    pub const SERVICE_FILTER: &str = "SERVICE_FILTER";
    /// The balancer's own addresses — VIPs, NAT addresses, backends' — as [`crate::OwnAddr`]
    /// keys (value: a `u32`, 1). Written by the agent with the services, backends and NAT
    /// settings; read by XDP before a flow is created: no client has one of these addresses.
    pub const OWN_ADDRESSES: &str = "OWN_ADDRESSES";
    /// The own-address pre-filter, one [`crate::OwnFilter`] at index 0: a set bit proves a
    /// source is none of `OWN_ADDRESSES`, so a new flow skips that hash lookup. Written by the
    /// agent with `OWN_ADDRESSES`, read by XDP; all-zero (as created) sends every check on to
    /// the hash.
    pub const OWN_FILTER: &str = "OWN_FILTER";
    /// Segments of flows the agent is killing ([`crate::flow_flags::KILL`]), one
    /// [`crate::ResetEvent`] each: a ring buffer written by XDP, read by the agent, which answers
    /// the client with a RST carrying the sequence number the segment acknowledged.
    pub const RESETS: &str = "RESETS";
    /// The connection table's generation, one `u64` at index 0: each CPU's flow cache (a
    /// per-CPU copy of the entries its established segments follow, private to the data plane)
    /// trusts only entries filled under the current value. Bumped by whoever changes or removes
    /// `FLOWS` entries behind the data plane's back (the agent's kill and expiry), so a change
    /// takes effect on the next segment.
    pub const FLOW_EPOCH: &str = "FLOW_EPOCH";
}

/// Size in bytes of the [`map_names::RESETS`] ring buffer (a power of two, a multiple of the
/// page size): 1,170 events of 48 bytes plus their 8-byte headers. A kill sends at most a few
/// probes per flow; a full ring loses reports, counted (`event_reset_report_lost`), never
/// packets.
pub const RESETS_BYTES: u32 = 65_536;

/// Largest number of services (VIP, port, protocol) one balancer serves. Each costs two rings of
/// `ring_size` slots (4 bytes each): 16 services × 2 × 65537 × 4 B ≈ 8.4 MB.
pub const MAX_SERVICES: u32 = 16;

// A service id fits the `u8` that [`Backend::service_id`] keeps.
const _: () = assert!(MAX_SERVICES <= 256);

/// Largest number of (service, backend) pairs over all services (ids are `0..MAX_BACKENDS`; a
/// backend address listed in two services takes two ids).
pub const MAX_BACKENDS: u32 = 4096;

/// Default connection-table size (entries); the agent can size the map at load time.
pub const DEFAULT_MAX_FLOWS: u32 = 262_144;

/// Largest Maglev ring: rings are laid out at a fixed stride of this many slots.
pub const RING_STRIDE: u32 = 65537;

/// A ring slot holding no backend (the service has no usable backend).
pub const EMPTY_SLOT: u32 = u32::MAX;

/// Largest number of allow/deny entries over all services.
pub const MAX_ACL_ENTRIES: u32 = 16_384;

/// Source prefixes the rate limiter tracks at once (an LRU: a flood of spoofed sources evicts
/// the oldest buckets and never grows the map). About 100 bytes each in the kernel.
pub const LIMITER_ENTRIES: u32 = 65_536;

/// Bits of an ACL key before the address: the service id, family and padding always match in
/// full, so an entry for `addr/len` has prefix length `ACL_PREFIX_BASE + len`.
pub const ACL_PREFIX_BASE: u32 = 32;

/// Address family tag stored in keys (`AF_INET`/`AF_INET6` would tie the ABI to libc's values).
pub mod family {
    /// IPv4: the address occupies the first four bytes, the other twelve are zero.
    pub const V4: u8 = 4;
    /// IPv6: all sixteen bytes.
    pub const V6: u8 = 6;
}

/// IANA protocol numbers used in keys.
pub mod proto {
    /// Transmission Control Protocol.
    pub const TCP: u8 = 6;
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
}

/// Key of the `SERVICES` map: one balanced endpoint.
///
/// Addresses and the port are kept in network byte order, exactly as they appear in the packet, so
/// the data plane builds a key by copying bytes and never swaps.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// VIP address in network byte order; IPv4 uses the first four bytes, the rest are zero.
    pub addr: [u8; 16],
    /// Destination port, network byte order.
    pub port_be: u16,
    /// IP protocol number ([`proto::TCP`]).
    pub proto: u8,
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
}

impl ServiceKey {
    /// Key for an IPv4 VIP; `port` in host byte order.
    pub const fn v4(addr: [u8; 4], port: u16, proto: u8) -> Self {
        Self { addr: v4_in_16(addr), port_be: port.to_be(), proto, family: family::V4 }
    }

    /// Key for an IPv6 VIP; `port` in host byte order.
    pub const fn v6(addr: [u8; 16], port: u16, proto: u8) -> Self {
        Self { addr, port_be: port.to_be(), proto, family: family::V6 }
    }
}

/// Largest number of entries in `OWN_ADDRESSES`: every backend, VIP and NAT address.
pub const MAX_OWN_ADDRESSES: u32 = MAX_BACKENDS + MAX_SERVICES + 2;

/// Key of the `OWN_ADDRESSES` map: one address of the balancer's own configuration.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct OwnAddr {
    /// The address, network byte order (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// Explicit padding, zero.
    pub pad8: u8,
    /// Explicit padding, zero.
    pub pad16: u16,
}

impl OwnAddr {
    /// The key for `addr` of family `family` (padding zeroed).
    pub const fn new(addr: [u8; 16], family: u8) -> Self {
        Self { addr, family, pad8: 0, pad16: 0 }
    }
}

/// Bits in each pre-filter ([`ServiceFilter`], [`OwnFilter`]).
pub const FILTER_BITS: u32 = 4096;
/// The 64-bit words holding them.
const FILTER_WORDS: usize = (FILTER_BITS / 64) as usize;

/// Value of the `SERVICE_FILTER` map: bit [`hash::filter_slot`]`(vip, port)` is set for every
/// service. A clear bit proves a segment is addressed to no service, so the data plane passes
/// it after one array read instead of a hash lookup; a set bit only means "maybe" (the
/// `SERVICES` lookup decides). With at most [`MAX_SERVICES`] services in 4,096 bits, traffic
/// to a VIP's other ports or the host's own addresses almost never takes the slow path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceFilter {
    /// Bit `i` of the filter is bit `i % 64` of word `i / 64`.
    pub words: [u64; FILTER_WORDS],
}

impl Default for ServiceFilter {
    fn default() -> Self {
        Self { words: [0; FILTER_WORDS] }
    }
}

impl ServiceFilter {
    /// Sets the bit of service `key`.
    pub fn insert(&mut self, key: &ServiceKey) {
        let (word, bit) = Self::position(key);
        self.words[word] |= bit;
    }

    /// Whether `key`'s bit is set.
    pub fn may_contain(&self, key: &ServiceKey) -> bool {
        let (word, bit) = Self::position(key);
        self.words[word] & bit != 0
    }

    /// The word index and bit mask of `key`'s bit.
    fn position(key: &ServiceKey) -> (usize, u64) {
        filter_bit(hash::filter_slot(&key.addr, key.port_be, key.family))
    }
}

/// The word index and bit mask of bit `slot` (`< FILTER_BITS`) of a pre-filter.
const fn filter_bit(slot: u32) -> (usize, u64) {
    ((slot / 64) as usize, 1 << (slot % 64))
}

/// Value of the `OWN_FILTER` map: bit [`hash::filter_slot`]`(addr, 0)` is *set* when no
/// address of the balancer's own (no `OWN_ADDRESSES` key) has that slot. A set bit proves a
/// source foreign, so a new flow from it needs no `OWN_ADDRESSES` lookup; a clear bit only
/// means "maybe" (the lookup decides). Stored this way round so that the map as the kernel
/// creates it, all zero, claims nothing: a data plane that runs before the agent has written
/// the filter (first start, an upgrade adopting older pins) checks every source as before.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnFilter {
    /// Bit `i` of the filter is bit `i % 64` of word `i / 64`.
    pub words: [u64; FILTER_WORDS],
}

impl Default for OwnFilter {
    /// Claims nothing (every source "maybe" own).
    fn default() -> Self {
        Self { words: [0; FILTER_WORDS] }
    }
}

impl OwnFilter {
    /// The filter that proves foreign every source whose slot no address of `own` takes.
    pub fn of<'a>(own: impl IntoIterator<Item = &'a OwnAddr>) -> Self {
        let mut filter = Self { words: [u64::MAX; FILTER_WORDS] };
        for addr in own {
            let (word, bit) = Self::position(&addr.addr, addr.family);
            filter.words[word] &= !bit;
        }
        filter
    }

    /// Whether the filter proves `addr` (family `fam`) none of the balancer's own.
    pub fn is_foreign(&self, addr: &[u8; 16], fam: u8) -> bool {
        let (word, bit) = Self::position(addr, fam);
        self.words[word] & bit != 0
    }

    /// The word index and bit mask of `addr`'s bit.
    fn position(addr: &[u8; 16], fam: u8) -> (usize, u64) {
        filter_bit(hash::filter_slot(addr, 0, fam))
    }
}

/// Value of the `SERVICES` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Service {
    /// Dense service index chosen by the agent (`< MAX_SERVICES`); indexes per-service state.
    pub id: u32,
    /// Bit set of `service_flags::*`.
    pub flags: u32,
    /// Number of slots in this service's Maglev ring (prime, `<= RING_STRIDE`); 0 = no ring yet.
    pub ring_size: u32,
    /// Index in `RINGS` of the active ring's first slot (`(2 × id + 0|1) × RING_STRIDE`).
    pub ring_offset: u32,
}

/// Bits of [`Service::flags`].
pub mod service_flags {
    /// Direct server return: rewrite only the destination MAC (default is full NAT).
    pub const DSR: u32 = 1 << 0;
    /// Hash on the client address alone (source affinity) instead of the 5-tuple.
    pub const SOURCE_AFFINITY: u32 = 1 << 1;
    /// New flows are checked against the service's entries in `ACL`.
    pub const ACL: u32 = 1 << 2;
    /// With [`ACL`]: a source matching no entry is denied (the service has an allow list).
    pub const ACL_DEFAULT_DENY: u32 = 1 << 3;
    /// New flows (SYNs) are rate-limited per source prefix by the service's `LIMITS` entry.
    pub const RATE_LIMIT: u32 = 1 << 4;
    /// Direct server return through a tunnel: the segment is encapsulated (IP-in-IP, or GUE
    /// with [`GUE`]) towards the backend, which may sit in any subnet.
    pub const TUNNEL: u32 = 1 << 5;
    /// With [`TUNNEL`]: GUE (UDP, direct IP encapsulation) instead of IP-in-IP.
    pub const GUE: u32 = 1 << 6;
}

/// Values of the `ACL` map.
pub mod acl {
    /// The longest matching prefix allows the source.
    pub const ALLOW: u32 = 1;
    /// The longest matching prefix denies the source.
    pub const DENY: u32 = 2;
}

/// A client address within one service: the data of an `ACL` trie key (after its prefix
/// length) and, masked to the limit's prefix, the key of a `LIMITER` bucket.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SourceKey {
    /// Service id.
    pub service_id: u16,
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// Explicit padding, zero.
    pub pad: u8,
    /// Client address (or prefix), network byte order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
}

/// Per-source new-connection limit of a service (`LIMITS[service id]`): a token bucket kept as
/// GCRA (one timestamp per source): a SYN at `now` passes when the source's theoretical arrival
/// time is at most `now + tau_ns`, and moves it on by `interval_ns`. `burst` SYNs pass at once,
/// then one per `interval_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Limit {
    /// Nanoseconds per token (1 s / rate).
    pub interval_ns: u64,
    /// Burst tolerance: `interval_ns × (burst − 1)`.
    pub tau_ns: u64,
    /// IPv4 prefix mask, network byte order, as four bytes read natively.
    pub mask_v4: u32,
    /// Explicit padding, zero.
    pub pad: u32,
    /// IPv6 prefix mask, network byte order, as sixteen bytes read natively.
    pub mask_v6: [u32; 4],
}

/// Value of the `LIMITER` map: one source prefix's bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Bucket {
    /// Theoretical arrival time of the next SYN (`bpf_ktime_get_ns` clock).
    pub tat_ns: u64,
    /// SYNs refused since the bucket was created (approximate under contention).
    pub refused: u64,
}

/// Value of the `BACKENDS` map.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Address in network byte order (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// Port, network byte order (full NAT rewrites the destination port to it).
    pub port_be: u16,
    /// [`family::V4`] or [`family::V6`]; 0 = unused slot.
    pub family: u8,
    /// The id of the service this backend id belongs to. A backend listed in two services has
    /// one id (and one entry) per service, so that its traffic is counted per (service,
    /// backend); the agent reads this back to recover that pairing after a restart. The data
    /// plane does not read it.
    pub service_id: u8,
}

/// Key of the connection table: the flow as the client sent it (client → VIP).
///
/// Aligned to 4 (as are the other keys and values holding addresses, all sized in whole words,
/// so the alignment adds no padding) so the data plane zeroes, copies and compares them in
/// words, not bytes.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Client address (network byte order; IPv4 in the first four bytes).
    pub src: [u8; 16],
    /// VIP.
    pub dst: [u8; 16],
    /// Client port, network byte order.
    pub sport_be: u16,
    /// Service port, network byte order.
    pub dport_be: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// Explicit padding, always zero (it is hashed as part of the key). A scalar, not a byte
    /// array: zeroing an array compiles to a memset call on the BPF target.
    pub pad: u16,
}

/// Value of the connection table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flow {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the flow last carried a packet, refreshed at
    /// most every [`LAST_SEEN_GRANULARITY_NS`] to keep the entry's cache line from bouncing.
    pub last_seen_ns: u64,
    /// Backend chosen when the flow started; never changes for the flow's life.
    pub backend_id: u32,
    /// Service the flow belongs to.
    pub service_id: u32,
    /// Full NAT: the balancer-side source port towards the backend (network order); 0 for DSR.
    pub nat_port_be: u16,
    /// One of `flow_state::*`.
    pub state: u8,
    /// Bit set of `flow_flags::*`.
    pub flags: u8,
    /// CLOCK_MONOTONIC whole seconds when the data plane made the entry ([`started_s`]): from
    /// the SYN, or from the first packet seen mid-flow for a recovered one. 0: unknown (an
    /// entry made by a data plane older than this field).
    pub started_s: u32,
}

/// The [`Flow::started_s`] value for a flow made at `now_ns` (`bpf_ktime_get_ns()`); a
/// monotonic clock in seconds needs 136 years to wrap a `u32`.
pub const fn started_s(now_ns: u64) -> u32 {
    (now_ns / 1_000_000_000) as u32
}

/// How often (at most) the data plane rewrites `Flow::last_seen_ns`; also how long a CPU's
/// flow cache trusts its copy of an entry before it looks at the table again.
pub const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

/// How far `Flow::last_seen_ns` may lag an established flow's last segment: a segment followed
/// from a CPU's cached copy (up to [`LAST_SEEN_GRANULARITY_NS`] old) does not touch the entry,
/// and a table hit rewrites it only when it is older than the granularity. (Handshakes and
/// killed flows are never cached: theirs lags by the granularity at most.)
pub const LAST_SEEN_MAX_LAG_NS: u64 = 2 * LAST_SEEN_GRANULARITY_NS;

/// TCP state as the balancer tracks it (coarser than the endpoints' own state machines).
pub mod flow_state {
    /// SYN seen from the client, handshake not completed.
    pub const SYN: u8 = 1;
    /// Handshake completed (client ACK seen), or picked up mid-flow.
    pub const ESTABLISHED: u8 = 2;
    /// A FIN was seen in either direction.
    pub const FIN: u8 = 3;
    /// A RST was seen in either direction.
    pub const CLOSED: u8 = 4;
}

/// Bits of [`Flow::flags`].
pub mod flow_flags {
    /// Full NAT: a `NAT_REVERSE` entry exists for this flow.
    pub const NAT: u8 = 1 << 0;
    /// Created from a non-SYN packet (after a balancer restart or failover), routed by the ring.
    pub const RECOVERED: u8 = 1 << 1;
    /// Set by the agent (`reload --kill-established`): the flow is being ended. Each segment the
    /// client sends on it is turned into a RST towards the backend (its sequence number is the
    /// one the backend expects next), and reported in [`crate::map_names::RESETS`] so the
    /// agent can reset the client with the sequence number the client expects.
    pub const KILL: u8 = 1 << 2;
    /// Tunnel mode: the flow's segments are encapsulated towards the backend.
    pub const TUNNEL: u8 = 1 << 3;
    /// With [`TUNNEL`]: GUE rather than IP-in-IP.
    pub const GUE: u8 = 1 << 4;
}

/// One segment of a killed flow, as the client sent it ([`crate::map_names::RESETS`]).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ResetEvent {
    /// The flow (client → VIP).
    pub key: FlowKey,
    /// The segment's sequence number, network byte order.
    pub seq_be: u32,
    /// The segment's acknowledgment number, network byte order: the next byte the client
    /// expects, which a RST to the client must carry as its sequence number.
    pub ack_be: u32,
}

/// Key of the full-NAT reverse index: a packet from a backend to the balancer.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NatKey {
    /// Backend address.
    pub backend: [u8; 16],
    /// Backend port, network byte order.
    pub backend_port_be: u16,
    /// The balancer's NAT port, network byte order.
    pub nat_port_be: u16,
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// Explicit padding, zero.
    pub pad8: u8,
    /// Explicit padding, zero.
    pub pad16: u16,
}

/// Value of the full-NAT reverse index: everything a backend's reply needs, so the reply path
/// does one hash lookup (the connection table is consulted only for a FIN or RST, whose state
/// change it records; the client's own segments keep the entry's last-seen time fresh — TCP
/// acknowledges whatever the backend sends).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatFlow {
    /// The client's flow as it sent it (client → VIP): the reply is rewritten to its reverse.
    pub client: FlowKey,
    /// The flow's service id (for per-service counters).
    pub service_id: u32,
    /// The flow's backend id (for per-backend counters).
    pub backend_id: u32,
}

/// The balancer's own settings (`CONFIG[0]`).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Full-NAT source address towards IPv4 backends (the balancer's own address).
    pub nat_v4: [u8; 4],
    /// Full-NAT source address towards IPv6 backends.
    pub nat_v6: [u8; 16],
    /// First port of the NAT source-port range (host order).
    pub nat_port_min: u16,
    /// Last port of the NAT source-port range (host order, inclusive).
    pub nat_port_max: u16,
    /// Destination UDP port of GUE-encapsulated segments, network byte order.
    pub gue_port_be: u16,
    /// Largest outer datagram the tunnels to backends carry (host order): a tunnel-mode
    /// segment that would exceed it with the encapsulation's overhead is answered with
    /// "packet too big". 0 = no tunnel configured.
    pub tunnel_mtu: u16,
}

/// Per-service or per-backend traffic counters (one per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Traffic {
    /// Packets forwarded (both directions for full NAT).
    pub packets: u64,
    /// Bytes forwarded (IP length).
    pub bytes: u64,
    /// New flows started.
    pub new_flows: u64,
}

pub mod csum;
pub mod hash;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are #[repr(C)], contain only integers and integer arrays, and have no padding
    // (checked by the layout tests below), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Service {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Flow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NatKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::tunnel::DecapSource {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::tunnel::DecapConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Traffic {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SourceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Limit {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Bucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceFilter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OwnAddr {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OwnFilter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NatFlow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ResetEvent {}
}

#[cfg(test)]
mod layout_tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn service_key_layout_is_packed_and_stable() {
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(align_of::<ServiceKey>(), 4);
        assert_eq!(offset_of!(ServiceKey, addr), 0);
        assert_eq!(offset_of!(ServiceKey, port_be), 16);
        assert_eq!(offset_of!(ServiceKey, proto), 18);
        assert_eq!(offset_of!(ServiceKey, family), 19);
    }

    #[test]
    fn service_layout_is_stable() {
        assert_eq!(size_of::<Service>(), 16);
        assert_eq!(offset_of!(Service, id), 0);
        assert_eq!(offset_of!(Service, flags), 4);
        assert_eq!(offset_of!(Service, ring_size), 8);
        assert_eq!(offset_of!(Service, ring_offset), 12);
    }

    #[test]
    fn backend_layout_is_stable() {
        assert_eq!(size_of::<Backend>(), 20);
        assert_eq!(offset_of!(Backend, port_be), 16);
        assert_eq!(offset_of!(Backend, family), 18);
        assert_eq!(offset_of!(Backend, service_id), 19);
    }

    #[test]
    fn flow_key_has_no_implicit_padding() {
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(offset_of!(FlowKey, dst), 16);
        assert_eq!(offset_of!(FlowKey, sport_be), 32);
        assert_eq!(offset_of!(FlowKey, dport_be), 34);
        assert_eq!(offset_of!(FlowKey, proto), 36);
        assert_eq!(offset_of!(FlowKey, family), 37);
        assert_eq!(offset_of!(FlowKey, pad), 38);
    }

    #[test]
    fn started_seconds_are_whole_monotonic_seconds() {
        assert_eq!((started_s(0), started_s(999_999_999), started_s(1_000_000_000)), (0, 0, 1));
        assert_eq!(started_s(86_400 * 1_000_000_000 + 5), 86_400);
    }

    #[test]
    fn flow_layout_is_stable() {
        assert_eq!(size_of::<Flow>(), 24);
        assert_eq!(align_of::<Flow>(), 8);
        assert_eq!(offset_of!(Flow, backend_id), 8);
        assert_eq!(offset_of!(Flow, service_id), 12);
        assert_eq!(offset_of!(Flow, nat_port_be), 16);
        assert_eq!(offset_of!(Flow, state), 18);
        assert_eq!(offset_of!(Flow, flags), 19);
        assert_eq!(offset_of!(Flow, started_s), 20);
    }

    #[test]
    fn nat_key_config_and_traffic_layouts_are_stable() {
        assert_eq!(size_of::<NatKey>(), 24);
        assert_eq!(offset_of!(NatKey, backend_port_be), 16);
        assert_eq!(offset_of!(NatKey, nat_port_be), 18);
        assert_eq!(offset_of!(NatKey, family), 20);
        assert_eq!(offset_of!(NatKey, pad8), 21);
        assert_eq!(offset_of!(NatKey, pad16), 22);
        assert_eq!(size_of::<Config>(), 28);
        assert_eq!(offset_of!(Config, gue_port_be), 24);
        assert_eq!(offset_of!(Config, tunnel_mtu), 26);
        assert_eq!(offset_of!(Config, nat_v6), 4);
        assert_eq!(offset_of!(Config, nat_port_min), 20);
        assert_eq!(size_of::<Traffic>(), 24);
    }

    #[test]
    fn protection_layouts_are_stable() {
        assert_eq!(size_of::<SourceKey>(), 20);
        assert_eq!(offset_of!(SourceKey, family), 2);
        assert_eq!(offset_of!(SourceKey, addr), 4);
        assert_eq!(ACL_PREFIX_BASE as usize, 8 * offset_of!(SourceKey, addr));
        assert_eq!(size_of::<Limit>(), 40);
        assert_eq!(offset_of!(Limit, mask_v4), 16);
        assert_eq!(offset_of!(Limit, mask_v6), 24);
        assert_eq!(size_of::<Bucket>(), 16);
    }

    #[test]
    fn reset_event_layout_is_stable() {
        assert_eq!(size_of::<ResetEvent>(), 48);
        assert_eq!(offset_of!(ResetEvent, seq_be), 40);
        assert_eq!(offset_of!(ResetEvent, ack_be), 44);
    }

    #[test]
    fn nat_flow_layout_is_stable() {
        assert_eq!(size_of::<NatFlow>(), 48);
        assert_eq!(offset_of!(NatFlow, service_id), 40);
        assert_eq!(offset_of!(NatFlow, backend_id), 44);
    }

    #[test]
    fn own_addr_layout_is_stable() {
        assert_eq!(size_of::<OwnAddr>(), 20);
        assert_eq!(offset_of!(OwnAddr, family), 16);
    }

    #[test]
    fn service_filter_is_one_page_eighth() {
        assert_eq!(size_of::<ServiceFilter>(), (FILTER_BITS / 8) as usize);
        assert_eq!(size_of::<OwnFilter>(), (FILTER_BITS / 8) as usize);
    }

    #[test]
    fn own_filter_proves_foreign_only_what_is_not_ours() {
        // A fleet's own addresses: two VIPs, a NAT address, 100 backends, v4 and v6.
        let mut v6 = [0u8; 16];
        v6[..2].copy_from_slice(&[0xfd, 0x00]);
        v6[15] = 0x64;
        let mut own = [OwnAddr::default(); 103];
        own[0] = OwnAddr::new(v4_in_16([198, 18, 0, 100]), family::V4);
        own[1] = OwnAddr::new(v4_in_16([198, 18, 0, 2]), family::V4);
        own[2] = OwnAddr::new(v6, family::V6);
        for i in 0..100u8 {
            own[3 + usize::from(i)] = OwnAddr::new(v4_in_16([198, 18, 1, i]), family::V4);
        }
        let filter = OwnFilter::of(&own);
        for addr in &own {
            assert!(!filter.is_foreign(&addr.addr, addr.family), "{addr:?} taken for foreign");
        }
        // Clients: nearly all skip the lookup.
        let foreign = (0..1000u32)
            .filter(|i| {
                filter.is_foreign(&v4_in_16([198, 19, (i >> 8) as u8, *i as u8]), family::V4)
            })
            .count();
        assert!(foreign > 950, "only {foreign} of 1,000 clients proved foreign");
        // As the kernel creates it, the filter proves nothing.
        assert!(!OwnFilter::default().is_foreign(&v4_in_16([198, 19, 0, 1]), family::V4));
    }

    #[test]
    fn rings_fit_the_array_index_space() {
        // Two rings per service at a fixed stride must be addressable with u32 indexes.
        assert!(u64::from(MAX_SERVICES) * 2 * u64::from(RING_STRIDE) < u64::from(u32::MAX));
    }

    #[test]
    fn v4_key_keeps_network_order_and_zero_tail() {
        let key = ServiceKey::v4([198, 18, 0, 100], 22, proto::TCP);
        assert_eq!(&key.addr[..4], &[198, 18, 0, 100]);
        assert!(key.addr[4..].iter().all(|&b| b == 0));
        assert_eq!(key.port_be.to_ne_bytes(), [0, 22]);
        assert_eq!(key.family, family::V4);
        // A v6 key whose first four bytes happen to match must not collide with the v4 key.
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&[198, 18, 0, 100]);
        assert_ne!(key, ServiceKey::v6(v6, 22, proto::TCP));
    }
}
