//! Incremental Internet checksum updates (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
//!
//! NAT changes a few words of a header (addresses, ports); recomputing a TCP checksum over the
//! whole segment would cost per byte, updating it costs per changed word.
//!
//! All arithmetic is in the machine's native byte order, on whatever width is convenient (32-bit
//! words for addresses, 16-bit for ports): the one's complement sum is independent of byte order
//! and of word width (RFC 1071 §2(B), (C)), so reading every word — the checksum field included —
//! with `from_ne_bytes` and writing the result with `to_ne_bytes` is exact and saves the data
//! plane every byte swap.

/// Accumulates the changes `old → new` of any number of words (native byte order).
#[derive(Clone, Copy, Debug, Default)]
pub struct Delta(u64);

impl Delta {
    /// No change.
    pub const fn new() -> Self {
        Self(0)
    }

    /// A change already summed elsewhere (e.g. the kernel's `bpf_csum_diff`, a native-order
    /// 32-bit partial sum of `~old + new`).
    #[inline(always)]
    pub const fn from_partial(sum: u32) -> Self {
        Self(sum as u64)
    }

    /// The accumulated change as a 32-bit partial sum (to seed `bpf_csum_diff`).
    #[inline(always)]
    pub const fn partial(self) -> u32 {
        let sum = (self.0 & 0xffff_ffff) + (self.0 >> 32);
        ((sum & 0xffff_ffff) + (sum >> 32)) as u32
    }

    /// A 16-bit word read natively (`from_ne_bytes`) as `old` now holds `new`.
    #[inline(always)]
    pub fn word16(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// A 32-bit word read natively as `old` now holds `new`.
    #[inline(always)]
    pub fn word32(&mut self, old: u32, new: u32) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// A run of 32-bit words read natively (e.g. an address pair) as `old` now holds `new`.
    #[inline(always)]
    pub fn word_run<const N: usize>(&mut self, old: &[u32; N], new: &[u32; N]) {
        let mut i = 0;
        while i < N {
            self.word32(old[i], new[i]);
            i += 1;
        }
    }

    /// The 16-bit field whose wire bytes were `old` now holds `new`.
    #[inline(always)]
    pub fn bytes2(&mut self, old: [u8; 2], new: [u8; 2]) {
        self.word16(u16::from_ne_bytes(old), u16::from_ne_bytes(new));
    }

    /// The 4-byte field `old` (an IPv4 address) now holds `new`.
    #[inline(always)]
    pub fn bytes4(&mut self, old: &[u8; 4], new: &[u8; 4]) {
        self.word32(u32::from_ne_bytes(*old), u32::from_ne_bytes(*new));
    }

    /// The 16-byte field `old` (an IPv6 address) now holds `new`.
    #[inline(always)]
    pub fn bytes16(&mut self, old: &[u8; 16], new: &[u8; 16]) {
        let (old, new) = (words(old), words(new));
        self.word32(old[0], new[0]);
        self.word32(old[1], new[1]);
        self.word32(old[2], new[2]);
        self.word32(old[3], new[3]);
    }

    /// The checksum field's new value, given its current one, both read natively.
    #[inline(always)]
    pub fn apply16(self, check: u16) -> u16 {
        !fold(u64::from(!check) + self.0)
    }

    /// The checksum field's new wire bytes, given its current ones.
    #[inline(always)]
    pub fn apply(self, check: [u8; 2]) -> [u8; 2] {
        let sum = u64::from(!u16::from_ne_bytes(check)) + self.0;
        (!fold(sum)).to_ne_bytes()
    }
}

/// The four native-order 32-bit words of a 16-byte field, read without assuming alignment (the
/// BPF backend would otherwise assemble them byte by byte through stack temporaries).
#[inline(always)]
#[expect(clippy::cast_ptr_alignment, reason = "read with read_unaligned, never dereferenced")]
pub fn words(field: &[u8; 16]) -> [u32; 4] {
    let p = field.as_ptr().cast::<u32>();
    // SAFETY: `field` is 16 readable bytes; read_unaligned has no alignment requirement.
    unsafe {
        [
            p.read_unaligned(),
            p.add(1).read_unaligned(),
            p.add(2).read_unaligned(),
            p.add(3).read_unaligned(),
        ]
    }
}

/// The native-order words of an IPv4 source/destination address pair (both in the 16-byte
/// layout), as they lie adjacent in the IPv4 header.
#[inline(always)]
pub fn v4_pair(src: &[u8; 16], dst: &[u8; 16]) -> [u32; 2] {
    [words(src)[0], words(dst)[0]]
}

/// The native-order words of an IPv6 source/destination address pair, as they lie adjacent in
/// the IPv6 header.
#[inline(always)]
pub fn v6_pair(src: &[u8; 16], dst: &[u8; 16]) -> [u32; 8] {
    let (s, d) = (words(src), words(dst));
    [s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3]]
}

/// The native-order word of a TCP source/destination port pair (both in network order), as
/// the two ports lie adjacent at the start of a TCP header.
#[inline(always)]
pub fn ports(sport_be: u16, dport_be: u16) -> u32 {
    let (s, d) = (sport_be.to_ne_bytes(), dport_be.to_ne_bytes());
    u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
}

/// Folds a 64-bit one's complement sum to 16 bits (each step keeps the end-around carry).
#[inline(always)]
pub const fn fold(sum: u64) -> u16 {
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: full RFC 1071 checksum over `data` (with its checksum field zeroed).
    fn full(data: &[u8]) -> [u8; 2] {
        let mut sum = 0u64;
        for pair in data.chunks(2) {
            sum += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        (!fold(sum)).to_be_bytes()
    }

    fn verifies(data: &[u8]) -> bool {
        let mut sum = 0u64;
        for pair in data.chunks(2) {
            sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        fold(sum) == 0xffff
    }

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn incremental_update_matches_full_recompute_for_random_rewrites() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..5000 {
            // A 40-byte "header" with its checksum at bytes 10..12; rewrite a random 16-byte run.
            let mut data = [0u8; 40];
            for b in &mut data {
                *b = xorshift(&mut rng) as u8;
            }
            data[10..12].copy_from_slice(&[0, 0]);
            let check = full(&data);
            let start = 12 + 2 * (xorshift(&mut rng) % 5) as usize;
            let old: [u8; 16] = data[start..start + 16].try_into().expect("16 bytes");
            let mut new = [0u8; 16];
            for b in &mut new {
                *b = xorshift(&mut rng) as u8;
            }
            data[start..start + 16].copy_from_slice(&new);
            // Also change a 16-bit field (a port) and a 4-byte one elsewhere in the header.
            let old_port = [data[36], data[37]];
            let new_port = (xorshift(&mut rng) as u16).to_be_bytes();
            data[36..38].copy_from_slice(&new_port);
            let old4 = [data[0], data[1], data[2], data[3]];
            let new4 = (xorshift(&mut rng) as u32).to_be_bytes();
            data[0..4].copy_from_slice(&new4);
            let mut delta = Delta::new();
            delta.bytes16(&old, &new);
            delta.bytes2(old_port, new_port);
            delta.bytes4(&old4, &new4);
            data[10..12].copy_from_slice(&delta.apply(check));
            // Verification is what receivers do: the sum including the checksum folds to 0xffff.
            assert!(verifies(&data), "checksum does not verify after update");
        }
    }

    #[test]
    fn word_runs_are_the_wire_bytes_read_natively() {
        let src = crate::v4_in_16([198, 18, 0, 1]);
        let dst = crate::v4_in_16([198, 18, 0, 2]);
        let pair = v4_pair(&src, &dst);
        assert_eq!(pair[0].to_ne_bytes(), [198, 18, 0, 1]);
        assert_eq!(pair[1].to_ne_bytes(), [198, 18, 0, 2]);
        let (s6, d6) = ([1u8; 16], [2u8; 16]);
        let run = v6_pair(&s6, &d6);
        assert!(run[..4].iter().all(|w| w.to_ne_bytes() == [1; 4]));
        assert!(run[4..].iter().all(|w| w.to_ne_bytes() == [2; 4]));
        assert_eq!(ports(22u16.to_be(), 1024u16.to_be()).to_ne_bytes(), [0, 22, 4, 0]);
    }

    #[test]
    fn no_change_keeps_the_checksum() {
        let mut delta = Delta::new();
        delta.bytes4(&[1, 2, 3, 4], &[1, 2, 3, 4]);
        for check in [[0x00, 0x00], [0x12, 0x34], [0xff, 0xfe]] {
            let after = delta.apply(check);
            assert!(
                after == check || (check == [0, 0] && after == [0xff, 0xff]),
                "{check:?} → {after:?}"
            );
        }
    }
}
