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

/// The 32-bit word at `p`, as stored (native order).
///
/// # Safety
/// `p` must point at 4 readable bytes the verifier knows to be in bounds.
#[inline(always)]
pub unsafe fn load32(p: *const u8) -> u32 {
    let v: u64;
    // SAFETY: per the contract; one load.
    unsafe {
        asm!("{v} = *(u32 *)({p} + 0)", p = in(reg) p, v = lateout(reg) v,
            options(nostack, readonly, preserves_flags));
    }
    v as u32
}

/// The 64-bit word at `p`, as stored.
///
/// # Safety
/// `p` must point at 8 readable bytes the verifier knows to be in bounds.
#[inline(always)]
pub unsafe fn load64(p: *const u8) -> u64 {
    let v: u64;
    // SAFETY: per the contract; one load.
    unsafe {
        asm!("{v} = *(u64 *)({p} + 0)", p = in(reg) p, v = lateout(reg) v,
            options(nostack, readonly, preserves_flags));
    }
    v
}

/// The 16-bit word at `p`, as stored.
///
/// # Safety
/// `p` must point at 2 readable bytes the verifier knows to be in bounds.
#[inline(always)]
pub unsafe fn load16(p: *const u8) -> u16 {
    let v: u64;
    // SAFETY: per the contract; one load.
    unsafe {
        asm!("{v} = *(u16 *)({p} + 0)", p = in(reg) p, v = lateout(reg) v,
            options(nostack, readonly, preserves_flags));
    }
    v as u16
}

/// Stores the 32-bit word `v` at `p`.
///
/// # Safety
/// `p` must point at 4 writable bytes the verifier knows to be in bounds.
#[inline(always)]
pub unsafe fn store32(p: *mut u8, v: u32) {
    // SAFETY: per the contract; one store.
    unsafe {
        asm!("*(u32 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) u64::from(v),
            options(nostack, preserves_flags));
    }
}

/// Stores the 64-bit word `v` at `p`.
///
/// # Safety
/// `p` must point at 8 writable bytes the verifier knows to be in bounds.
#[inline(always)]
pub unsafe fn store64(p: *mut u8, v: u64) {
    // SAFETY: per the contract; one store.
    unsafe {
        asm!("*(u64 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) v,
            options(nostack, preserves_flags));
    }
}

/// Stores the 16-bit word `v` at `p`.
///
/// # Safety
/// `p` must point at 2 writable bytes the verifier knows to be in bounds.
#[inline(always)]
pub unsafe fn store16(p: *mut u8, v: u16) {
    // SAFETY: per the contract; one store.
    unsafe {
        asm!("*(u16 *)({p} + 0) = {v}", p = in(reg) p, v = in(reg) u64::from(v),
            options(nostack, preserves_flags));
    }
}
