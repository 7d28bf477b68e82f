//! Xen PVH start of day: detecting Xen from the PVH entry, the hypercall
//! page and the memory map (`../shared/reference/pvh-notes.md` §5).
//!
//! A PVH entry is taken both on bare QEMU and by Xen's PVH dom0 builder; only
//! the hypervisor CPUID leaves tell them apart. QEMU TCG has a leaf too
//! ("TCGTCGTCGTCG"), so the exact Xen signature is matched, by the scan the
//! xen-pvh backend's probe uses too ([`find_xen`]).

use crate::entry::{hypercall_page, KERNEL_VMA};
use crate::memory::{E820Entry, MAX_E820};
use crate::x86;
use crate::xen::hypercall::{self, XenError};
pub use pvops_xen_pvh::{find_xen, XenLeaves};

/// The CPU's own CPUID, for [`find_xen`] and the xen-pvh backend's probe.
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

/// `HVMOP_flush_tlbs` (`hvm_op` 34, sub-op 5, NULL argument): Xen flushes the
/// TLB of every vCPU of the domain, the caller's included, and returns once
/// they are flushed (`hvmop_flush_tlb_all`, xen/arch/x86/hvm/hvm.c; under HAP
/// it tickles each vCPU's ASID and IPIs the pCPUs running them). A non-NULL
/// argument is -EINVAL in 4.17 (`pvh-notes.md` §8).
pub fn flush_tlbs() -> Result<(), XenError> {
    // SAFETY: HVMOP_flush_tlbs reads and writes no guest memory.
    let rc = unsafe { hypercall::hypercall5(hypercall::nr::HVM_OP, HVMOP_FLUSH_TLBS, 0, 0, 0, 0) };
    if rc < 0 {
        return Err(XenError { op: "HVMOP_flush_tlbs", rc });
    }
    Ok(())
}

const HVMOP_FLUSH_TLBS: u64 = 5;

/// `HVMOP_flush_tlbs` calls made through [`KernelHvm`] (counted at the seam,
/// not by the backend).
static HVM_FLUSHES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// How many `HVMOP_flush_tlbs` the backend's seam has issued.
pub fn hvm_flushes() -> u64 {
    HVM_FLUSHES.load(core::sync::atomic::Ordering::Relaxed)
}

/// The xen-pvh backend's HVM seam: the real hypercall.
pub struct KernelHvm;

/// The one [`KernelHvm`].
pub static HVM: KernelHvm = KernelHvm;

impl pvops_xen_pvh::XenHvm for KernelHvm {
    fn flush_tlbs(&self) -> Result<(), pvops::PvError> {
        if crate::sabotage::NO_HVM_FLUSH {
            return Ok(());
        }
        HVM_FLUSHES.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        flush_tlbs().map_err(|e| pvops::PvError::Hypercall { op: "HVMOP_flush_tlbs", index: 0, code: e.rc })
    }
}

/// What one remote flush costs on this machine, in TSC cycles, each way:
/// a cross-call IPI whose handler flushes (the native path: ICR write,
/// injection, EOI, all emulated by Xen) and one `HVMOP_flush_tlbs`.
pub fn remote_flush_costs(other: usize, rounds: u64) -> Result<(u64, u64), pvops::PvError> {
    use pvops::{CpuMask, Cpus};
    let cpus: &dyn Cpus = &crate::smp::CPUS;
    let t0 = crate::smp::tsc();
    for _ in 0..rounds {
        cpus.call_on(CpuMask::one(other), &|| {
            // SAFETY: PVH runs the native paths (ring 0, hardware paging).
            unsafe { crate::x86::invlpg(0) };
            Ok(())
        })?;
    }
    let t1 = crate::smp::tsc();
    for _ in 0..rounds {
        flush_tlbs().map_err(|e| pvops::PvError::Hypercall { op: "HVMOP_flush_tlbs", index: 0, code: e.rc })?;
    }
    let t2 = crate::smp::tsc();
    Ok(((t1 - t0) / rounds, (t2 - t1) / rounds))
}
