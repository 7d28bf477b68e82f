//! Xen PVH start of day: detecting Xen from the PVH entry, the hypercall
//! page and the memory map (`../shared/reference/pvh-notes.md` §5).
//!
//! A PVH entry is taken both on bare QEMU and by Xen's PVH dom0 builder; only
//! the hypervisor CPUID leaves tell them apart. QEMU TCG has a leaf too
//! ("TCGTCGTCGTCG"), so we match the exact Xen signature, as Linux's
//! `xen_cpuid_base()` (`arch/x86/include/asm/xen/hypervisor.h`) does.

use crate::entry::{hypercall_page, KERNEL_VMA};
use crate::memory::{E820Entry, MAX_E820};
use crate::x86;
use crate::xen::hypercall::{self, XenError};

/// "XenVMMXenVMM" as CPUID returns it in ebx, ecx, edx.
const XEN_SIGNATURE: [u32; 3] = [0x566e_6558, 0x6558_4d4d, 0x4d4d_566e];

/// What the Xen CPUID leaves say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenLeaves {
    /// First leaf (0x40000000, or 0x40000100 when Viridian sits below Xen).
    pub base: u32,
    /// MSR that takes the hypercall page's physical address (`base + 2`, ebx).
    pub hypercall_msr: u32,
}

/// Scans the hypervisor leaves for Xen (`cpuid` is the instruction, or a fake
/// in tests). Requires the signature and at least leaf `base + 2`
/// (`xen/include/public/arch-x86/cpuid.h`).
pub fn find_xen(cpuid: impl Fn(u32) -> [u32; 4]) -> Option<XenLeaves> {
    let mut base = 0x4000_0000u32;
    while base < 0x4001_0000 {
        let [eax, ebx, ecx, edx] = cpuid(base);
        if [ebx, ecx, edx] == XEN_SIGNATURE && eax.wrapping_sub(base) >= 2 {
            return Some(XenLeaves { base, hypercall_msr: cpuid(base + 2)[1] });
        }
        base += 0x100;
    }
    None
}

/// The CPU's own CPUID, for [`find_xen`].
pub fn hw_cpuid(leaf: u32) -> [u32; 4] {
    // CPUID exists on every x86-64 CPU; a hypervisor leaf that does not
    // exist returns unrelated data, it never faults.
    let r = core::arch::x86_64::__cpuid(leaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Asks Xen to fill our hypercall page: its guest-physical address goes to
/// the MSR of leaf `base + 2` (`guest_wrmsr_xen`, `xen/arch/x86/traps.c`).
///
/// # Safety
/// `leaves` must come from [`find_xen`] on this CPU (the MSR #GPs otherwise).
pub unsafe fn init_hypercall_page(leaves: XenLeaves) {
    let paddr = (&raw const hypercall_page) as u64 - KERNEL_VMA;
    // SAFETY: Xen's hypercall MSR (the caller checked the signature); the
    // page is 4 KiB aligned and part of our image.
    unsafe { x86::wrmsr(leaves.hypercall_msr, paddr) };
}

/// `struct xen_memory_map` (xen/include/public/memory.h).
#[repr(C)]
struct XenMemoryMap {
    nr_entries: u32,
    buffer: u64,
}

/// `struct e820entry` as Xen returns it: packed, 20 bytes (not the 24-byte
/// `hvm_memmap_table_entry` of `hvm_start_info`).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct RawE820 {
    addr: u64,
    size: u64,
    kind: u32,
}

/// `XENMEM_memory_map`: the domain's E820 (Xen 4.17's PVH dom0 start info
/// has none; Linux `mem_map_via_hcall`, `arch/x86/xen/enlighten_pvh.c`).
pub fn memory_map(out: &mut [E820Entry; MAX_E820]) -> Result<usize, XenError> {
    let mut raw = [RawE820::default(); MAX_E820];
    let mut map = XenMemoryMap { nr_entries: MAX_E820 as u32, buffer: raw.as_mut_ptr() as u64 };
    // SAFETY: `map` and the buffer it names are live and writable; Xen
    // writes at most `nr_entries` entries.
    let rc = unsafe { hypercall::hypercall5(hypercall::nr::MEMORY_OP, 9, (&raw mut map) as u64, 0, 0, 0) };
    if rc < 0 {
        return Err(XenError { op: "memory_op(memory_map)", rc });
    }
    let n = (map.nr_entries as usize).min(MAX_E820);
    for (o, r) in out.iter_mut().zip(&raw[..n]) {
        *o = E820Entry { addr: r.addr, size: r.size, kind: r.kind };
    }
    Ok(n)
}
