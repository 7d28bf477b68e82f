//! Thin wrappers around privileged x86 instructions.
//!
//! Natively all of these are fine in ring 0. Under Xen PV only the port I/O
//! (after `PHYSDEVOP_set_iopl`), `rdmsr`/`wrmsr` and `mov %cr*` are emulated;
//! `invlpg`, `hlt`, `lgdt`, `lidt`, `ltr` raise #GP (notes §6.5).

use core::arch::asm;

/// Writes a byte to an I/O port.
///
/// # Safety
/// Port I/O can have arbitrary device side effects.
#[inline]
pub unsafe fn outb(port: u16, val: u8) {
    // SAFETY: caller guarantees the port write is intended.
    unsafe { asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags)) }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// Port I/O can have arbitrary device side effects.
#[inline]
pub unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: caller guarantees the port read is intended.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Writes a dword to an I/O port.
///
/// # Safety
/// Port I/O can have arbitrary device side effects.
#[inline]
pub unsafe fn outl(port: u16, val: u32) {
    // SAFETY: caller guarantees the port write is intended.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") val, options(nomem, nostack, preserves_flags)) }
}

/// Reads a model-specific register.
///
/// # Safety
/// The MSR must exist (else #GP).
#[inline]
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: caller guarantees the MSR exists.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    ((hi as u64) << 32) | lo as u64
}

/// Writes a model-specific register.
///
/// # Safety
/// The MSR must exist and the value must be valid for it.
#[inline]
pub unsafe fn wrmsr(msr: u32, val: u64) {
    // SAFETY: caller guarantees the write is valid.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") val as u32, in("edx") (val >> 32) as u32,
             options(nostack, preserves_flags))
    }
}

/// Reads CR2 (native only: on Xen PV use the vcpu_info copy).
#[inline]
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects in ring 0.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads CR3 (native only).
#[inline]
pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects in ring 0.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Loads CR3 (native only; flushes non-global TLB entries).
///
/// # Safety
/// `val` must point to a valid L4 that maps the running kernel.
#[inline]
pub unsafe fn write_cr3(val: u64) {
    // SAFETY: caller guarantees the new root maps the kernel.
    unsafe { asm!("mov cr3, {}", in(reg) val, options(nostack, preserves_flags)) }
}

/// Invalidates one TLB entry (native only: #GP under Xen PV).
///
/// # Safety
/// Must not be executed under Xen PV.
#[inline]
pub unsafe fn invlpg(va: u64) {
    // SAFETY: caller guarantees we run natively.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) }
}

/// Halts until the next interrupt (native only).
///
/// # Safety
/// Must not be executed under Xen PV.
#[inline]
pub unsafe fn hlt() {
    // SAFETY: caller guarantees we run natively.
    unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) }
}

/// Disables interrupts (native only; a no-op/#GP under Xen PV).
///
/// # Safety
/// Must not be executed under Xen PV.
#[inline]
pub unsafe fn cli() {
    // SAFETY: caller guarantees we run natively.
    unsafe { asm!("cli", options(nomem, nostack)) }
}
