//! Whole-word loads and stores at packet and map-value addresses of any alignment.
//!
//! Header fields sit at unaligned offsets (an IPv4 address at 26 behind Ethernet), so they are
//! declared as byte arrays, and this LLVM's BPF backend then loads and stores them byte by byte:
//! four loads, three shifts and three ORs per IPv4 address, 32 loads for an IPv6 pair — the NAT
//! rewrite was 561 instructions. The kernel takes unaligned packet and map-value access on every
//! architecture with efficient unaligned access (x86-64, arm64; the verifier only insists on
//! aligned *stack* access), and one `ldx`/`stx` of the field's width is what C programs get
//! from clang. LLVM's `allows-misaligned-mem-access` feature would do this everywhere, but it
//! also merges stack stores into misaligned ones, which the verifier refuses; so the few hot
//! accesses say it themselves, here.
//!
//! Each helper is one instruction. The pointer must be bounds-checked (`parse::ptr_at`) for the
//! access's width first: the verifier checks that, LLVM cannot see into the `asm!`.

use core::arch::asm;

/// `pub unsafe fn $name(p) -> $ty`: one `$width` load at `p`, as stored (native order).
macro_rules! load {
    ($name:ident, $ty:ty, $width:literal) => {
        #[doc = concat!("The ", stringify!($ty), " at `p`, as stored (native order).")]
        ///
        /// # Safety
        /// `p` must point at that many readable bytes the verifier knows to be in bounds.
        #[inline(always)]
        pub unsafe fn $name(p: *const u8) -> $ty {
            let v: u64;
            // SAFETY: per the contract; one load.
            unsafe {
                asm!(concat!("{v} = *(", $width, " *)({p} + 0)"), p = in(reg) p, v = lateout(reg) v,
                    options(nostack, readonly, preserves_flags));
            }
            v as $ty
        }
    };
}

/// `pub unsafe fn $name(p, v)`: one `$width` store of `v` at `p`.
macro_rules! store {
    ($name:ident, $ty:ty, $width:literal) => {
        #[doc = concat!("Stores the ", stringify!($ty), " `v` at `p`.")]
        ///
        /// # Safety
        /// `p` must point at that many writable bytes the verifier knows to be in bounds.
        #[inline(always)]
        pub unsafe fn $name(p: *mut u8, v: $ty) {
            // SAFETY: per the contract; one store.
            unsafe {
                asm!(concat!("*(", $width, " *)({p} + 0) = {v}"), p = in(reg) p,
                    v = in(reg) u64::from(v), options(nostack, preserves_flags));
            }
        }
    };
}

load!(load16, u16, "u16");
load!(load32, u32, "u32");
load!(load64, u64, "u64");
store!(store16, u16, "u16");
store!(store32, u32, "u32");
store!(store64, u64, "u64");

/// Adds `v` to the u64 at `p` atomically (BPF's `lock xadd`, its result unused: every kernel
/// takes it; this target's `core` has no atomic read-modify-write to say it with).
///
/// # Safety
/// `p` must point at an 8-byte-aligned u64 in a map value.
#[inline(always)]
pub unsafe fn atomic_add64(p: *mut u64, v: u64) {
    // SAFETY: per the contract; one atomic add.
    unsafe {
        asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) v,
            options(nostack, preserves_flags));
    }
}
