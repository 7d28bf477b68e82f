//! The native hardware seam: cr3 and the TLB.

use pvops::VirtAddr;

/// What the native backend needs from the CPU besides page-table memory.
pub trait NativeCpu: Sync {
    /// Current cr3 (physical address of the root, flags included).
    fn read_cr3(&self) -> u64;
    /// Loads cr3.
    fn write_cr3(&self, value: u64);
    /// `invlpg`.
    fn invlpg(&self, va: VirtAddr);
    /// Flushes the non-global TLB (cr3 reload).
    fn flush_all(&self);
}

/// The real CPU, through the `x86` crate. Valid only in ring 0 on bare metal
/// (or under QEMU's PVH entry); on Xen PV `invlpg` would #GP.
#[derive(Debug, Clone, Copy, Default)]
pub struct BareMetalCpu;

impl NativeCpu for BareMetalCpu {
    fn read_cr3(&self) -> u64 {
        // SAFETY: 1. reading cr3 has no side effect; the backend is only
        // instantiated for a ring-0 PVH boot, where the read is permitted.
        unsafe { x86::controlregs::cr3() }
    }

    fn write_cr3(&self, value: u64) {
        // SAFETY: 2. the backend only loads roots built by kernel-glue, which
        // share the kernel half (code, stack, direct map) with the current root.
        unsafe { x86::controlregs::cr3_write(value) }
    }

    fn invlpg(&self, va: VirtAddr) {
        // SAFETY: 3. invlpg only drops a TLB entry; ring 0 on bare metal.
        unsafe { x86::tlb::flush(va.as_u64() as usize) }
    }

    fn flush_all(&self) {
        // SAFETY: 4. reloading cr3 with itself only flushes non-global entries.
        unsafe { x86::tlb::flush_all() }
    }
}
