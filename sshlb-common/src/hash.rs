//! The flow hash, shared by the data plane (ring slot, first NAT port probe) and host tests.
//!
//! MurmurHash3's 32-bit mixing rounds over the flow's words: cheap in BPF (multiplies, shifts,
//! no tables, no loops beyond a fixed four words) and well distributed. Not a keyed PRF: a client
//! can choose tuples that land on one backend, which gains it nothing it couldn't get by
//! connecting repeatedly. Stable by contract: changing it moves every flow recovered mid-stream
//! after a restart, so it is versioned with the map layouts.

use crate::{family, FlowKey};

/// Seed for the Maglev slot of a flow.
pub const RING_SEED: u32 = 0x5eed_0001;
/// Seed for the first NAT source-port probe of a flow.
pub const NAT_PORT_SEED: u32 = 0x5eed_0002;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
const fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]])
}

#[inline(always)]
const fn mix_addr(mut h: u32, addr: &[u8; 16], fam: u8) -> u32 {
    h = mix(h, word(addr, 0));
    if fam == family::V6 {
        h = mix(h, word(addr, 1));
        h = mix(h, word(addr, 2));
        h = mix(h, word(addr, 3));
    }
    h
}

/// Hash of a flow: the 5-tuple, or the client address alone with `source_only` (affinity).
#[inline(always)]
pub const fn flow_hash(key: &FlowKey, source_only: bool, seed: u32) -> u32 {
    let mut h = mix_addr(seed, &key.src, key.family);
    if !source_only {
        h = mix_addr(h, &key.dst, key.family);
        h = mix(h, (key.sport_be as u32) << 16 | key.dport_be as u32);
        h = mix(h, key.proto as u32);
    }
    finish(h)
}

/// The service pre-filter's bit for (`addr`, `port_be`) of family `fam` (see
/// [`crate::ServiceFilter`]): one multiply-xorshift over the address words and the port, cheap
/// enough to cost the data plane less than the hash lookup it saves.
#[inline(always)]
pub const fn filter_slot(addr: &[u8; 16], port_be: u16, fam: u8) -> u32 {
    let mut h = word(addr, 0);
    if fam == family::V6 {
        h ^= word(addr, 1) ^ word(addr, 2) ^ word(addr, 3);
        h = h.rotate_left(7) ^ 0x6000_0000;
    }
    h = (h ^ ((port_be as u32) << 8)).wrapping_mul(0x9e37_79b1);
    (h >> 20) & (crate::FILTER_BITS - 1)
}

/// Slots of the data plane's per-CPU flow cache (`FLOW_CACHE`, direct-mapped by
/// [`flow_cache_slot`]), 64 bytes each: 256 KiB per CPU, enough for the established flows a CPU
/// carries at once in an SSH fleet (a colliding or evicted flow is looked up in the table, as
/// without the cache).
pub const FLOW_CACHE_SLOTS: u32 = 4096;
const _: () = assert!(FLOW_CACHE_SLOTS.is_power_of_two());

/// The flow cache's slot for a flow key given as its five native-order words (how the data
/// plane reads it to compare it): the words folded by XOR — an IPv4 key's unused address words
/// are zero, so both families take one path — and a multiplicative (Fibonacci) hash of the
/// fold, whose top bits depend on every bit of it. Ten instructions, where the ring's
/// MurmurHash rounds take a hundred: the cache only needs flows that differ — in a port, an
/// address byte — to land apart. Not keyed: a client that picks colliding tuples makes its own
/// segments miss the cache and pay the table lookup, nothing more.
#[inline(always)]
pub const fn flow_cache_slot(w: &[u64; 5]) -> u32 {
    let mut x = w[0] ^ w[1] ^ w[2] ^ w[3] ^ w[4];
    // MurmurHash3's 64-bit finaliser, first half: the shift brings the address's high bytes
    // down to the ports' before the multiply spreads them upwards.
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FLOW_CACHE_SLOTS.trailing_zeros())) as u32
}

/// `key` as the five native-order words [`flow_cache_slot`] takes.
pub fn flow_key_words(key: &FlowKey) -> [u64; 5] {
    let half = |a: &[u8; 16], i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&a[i..i + 8]);
        u64::from_ne_bytes(b)
    };
    let [p0, p1] = key.sport_be.to_ne_bytes();
    let [q0, q1] = key.dport_be.to_ne_bytes();
    let [z0, z1] = key.pad.to_ne_bytes();
    [
        half(&key.src, 0),
        half(&key.src, 8),
        half(&key.dst, 0),
        half(&key.dst, 8),
        u64::from_ne_bytes([p0, p1, q0, q1, key.proto, key.family, z0, z1]),
    ]
}

/// Slots of the data plane's per-CPU next-hop cache (`HOP_CACHE`, direct-mapped by
/// destination). Sized for the reply path of full NAT, whose destinations are the clients:
/// 4,096 slots keep most of a few thousand active clients' next hops.
pub const HOP_CACHE_SLOTS: u32 = 4096;
const _: () = assert!(HOP_CACHE_SLOTS.is_power_of_two());

/// The next-hop cache's slot for destination `w` (the address as four native-order words):
/// a multiplicative (Fibonacci) hash of the words folded into one, whose top bits depend on
/// every bit of the address. Backends usually differ only in their last byte; a fold of the
/// low bytes once sent 198.18.0.11, .12 and .13 to one slot, so an established flow's packet
/// paid a FIB lookup nearly every time.
#[inline(always)]
pub const fn hop_slot(w: &[u32; 4]) -> u32 {
    let h = w[0] ^ w[1] ^ w[2] ^ w[3];
    h.wrapping_mul(0x9e37_79b1) >> (32 - HOP_CACHE_SLOTS.trailing_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{proto, v4_in_16};

    fn key(src: [u8; 4], sport: u16) -> FlowKey {
        FlowKey {
            src: v4_in_16(src),
            dst: v4_in_16([198, 18, 0, 100]),
            sport_be: sport.to_be(),
            dport_be: 22u16.to_be(),
            proto: proto::TCP,
            family: family::V4,
            pad: 0,
        }
    }

    #[test]
    fn source_affinity_ignores_ports_and_vip() {
        let a = key([198, 18, 2, 10], 40000);
        let mut b = key([198, 18, 2, 10], 50000);
        b.dst = v4_in_16([198, 18, 0, 101]);
        assert_eq!(flow_hash(&a, true, RING_SEED), flow_hash(&b, true, RING_SEED));
        assert_ne!(flow_hash(&a, false, RING_SEED), flow_hash(&b, false, RING_SEED));
    }

    #[test]
    fn filter_slots_tell_a_vips_ports_and_families_apart() {
        let vip = v4_in_16([198, 18, 0, 100]);
        let ssh = filter_slot(&vip, 22u16.to_be(), family::V4);
        assert!(ssh < crate::FILTER_BITS);
        // The ports a host commonly serves beside a VIP's SSH port land elsewhere.
        for port in [80u16, 443, 2222, 2223, 8080, 9100] {
            assert_ne!(ssh, filter_slot(&vip, port.to_be(), family::V4), "port {port}");
        }
        // Neighbouring VIPs too.
        assert_ne!(ssh, filter_slot(&v4_in_16([198, 18, 0, 101]), 22u16.to_be(), family::V4));
        let mut filter = crate::ServiceFilter::default();
        let key = crate::ServiceKey::v4([198, 18, 0, 100], 22, proto::TCP);
        filter.insert(&key);
        assert!(filter.may_contain(&key));
        assert!(!filter.may_contain(&crate::ServiceKey::v4([198, 18, 0, 100], 80, proto::TCP)));
        assert_eq!(filter.words.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
    }

    /// How many distinct slots `addrs` take.
    fn distinct_slots(addrs: impl Iterator<Item = [u8; 16]>) -> usize {
        let mut taken = [false; HOP_CACHE_SLOTS as usize];
        for a in addrs {
            taken[hop_slot(&crate::csum::words(&a)) as usize] = true;
        }
        taken.iter().filter(|&&t| t).count()
    }

    #[test]
    fn next_hops_differing_in_their_last_byte_get_their_own_slots() {
        // Backend pools on one subnet, IPv4 and IPv6: 64 addresses each, no shared slot.
        assert_eq!(distinct_slots((1..=64u8).map(|b| v4_in_16([198, 18, 0, b]))), 64);
        let v6 = |b: u8| {
            let mut a = [0u8; 16];
            a[0] = 0xfd;
            a[15] = b;
            a
        };
        assert_eq!(distinct_slots((1..=64u8).map(v6)), 64);
        // 1,000 clients over the cache: a direct-mapped table of 4,096 slots keeps ~89 % of
        // 1,000 uniformly hashed keys in distinct slots; no clustering below that.
        let clients = (0..1000u32).map(|i| v4_in_16([198, 19, (i >> 8) as u8, i as u8]));
        let slots = distinct_slots(clients);
        assert!(slots > 850, "1,000 clients in {slots} slots");
    }

    #[test]
    fn seeds_give_independent_hashes() {
        let k = key([198, 18, 2, 10], 40000);
        assert_ne!(flow_hash(&k, false, RING_SEED), flow_hash(&k, false, NAT_PORT_SEED));
    }

    #[test]
    fn sequential_client_ports_spread_evenly_over_a_prime_ring() {
        // 30,000 connections from one client (ports 20000..50000) over 3 equal buckets of a
        // 65537-slot ring: each bucket within 3% of a third.
        let mut buckets = [0u32; 3];
        for port in 20_000..50_000u16 {
            let slot = flow_hash(&key([198, 18, 2, 10], port), false, RING_SEED) % 65537;
            buckets[(slot as usize * 3) / 65537] += 1;
        }
        for b in buckets {
            assert!((9_700..=10_300).contains(&b), "uneven spread: {buckets:?}");
        }
    }

    #[test]
    fn a_fleets_flows_spread_over_the_flow_cache() {
        // A direct-mapped cache of 4,096 slots keeps ~89 % of 1,000 uniformly hashed keys
        // apart; a hash that ignored the ports or the low address bytes would pile them up.
        let spread = |keys: &mut dyn Iterator<Item = FlowKey>| {
            let mut taken = [false; FLOW_CACHE_SLOTS as usize];
            for k in keys {
                taken[flow_cache_slot(&flow_key_words(&k)) as usize] = true;
            }
            taken.iter().filter(|&&t| t).count()
        };
        // 1,000 sessions from 250 clients of one subnet, four source ports each.
        let fleet = spread(
            &mut (0..1000u32).map(|i| key([198, 19, 0, (i / 4) as u8], 40_000 + (i % 4) as u16)),
        );
        assert!(fleet > 850, "1,000 flows of 250 clients in {fleet} slots");
        // One client's sequential ports.
        let ports = spread(&mut (0..1000u16).map(|p| key([198, 19, 0, 1], 40_000 + p)));
        assert!(ports > 850, "1,000 ports of one client in {ports} slots");
        // IPv6 clients of one /64, each its own interface id.
        let v6 = spread(&mut (0..1000u16).map(|i| {
            let mut k = key([0, 0, 0, 0], 40_000);
            k.family = family::V6;
            k.src = [0xfd, 0, 0, 0x19, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0];
            k.src[14..].copy_from_slice(&i.to_be_bytes());
            k.dst = [0xfd, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
            k
        }));
        assert!(v6 > 850, "1,000 IPv6 clients in {v6} slots");
    }
}
