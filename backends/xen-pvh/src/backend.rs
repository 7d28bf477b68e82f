//! The backend: the native one, forwarded to.

use core::ops::Range;

use pvops::{CpuMask, Cpus, Flush, Level, MmServices, OpStats, Pfn, Pte, PvError, PvMmuOps, VirtAddr};
use pvops_native::NativeBackend;

/// Xen PVH: every hook is the native backend's (hardware paging), by
/// forwarding, not by copying its code.
///
/// Remote TLB shootdowns also stay native (cross-calls through the emulated
/// local APIC), as in Linux PVH; `HVMOP_flush_tlbs` would flush every vCPU
/// fully (no VA, no mask) for the cost of a VM exit, so it is not used here.
#[derive(Debug)]
pub struct XenPvhBackend {
    inner: NativeBackend,
}

impl XenPvhBackend {
    /// Wraps a native backend built on the guest's own handles.
    pub fn new(inner: NativeBackend) -> Self {
        XenPvhBackend { inner }
    }
}

impl PvMmuOps for XenPvhBackend {
    fn name(&self) -> &'static str {
        "xen-pvh"
    }
    fn reserved_l4_slots(&self) -> Range<usize> {
        self.inner.reserved_l4_slots()
    }
    fn adopt_boot_root(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.inner.adopt_boot_root(mm, pgd)
    }
    fn pgd_alloc(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.inner.pgd_alloc(mm, pgd)
    }
    fn pgd_free(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.inner.pgd_free(mm, pgd)
    }
    fn alloc_pt(&self, mm: &dyn MmServices, root: Pfn, level: Level, pfn: Pfn) -> Result<(), PvError> {
        self.inner.alloc_pt(mm, root, level, pfn)
    }
    fn release_pt(&self, mm: &dyn MmServices, root: Pfn, level: Level, pfn: Pfn) -> Result<(), PvError> {
        self.inner.release_pt(mm, root, level, pfn)
    }
    fn set_entry(&self, mm: &dyn MmServices, level: Level, table: Pfn, index: usize, pte: Pte) -> Result<(), PvError> {
        self.inner.set_entry(mm, level, table, index, pte)
    }
    fn read_entry(&self, level: Level, table: Pfn, index: usize) -> Result<Pte, PvError> {
        self.inner.read_entry(level, table, index)
    }
    fn write_cr3(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.inner.write_cr3(mm, pgd)
    }
    fn read_cr3(&self) -> Pfn {
        self.inner.read_cr3()
    }
    fn cpus(&self) -> &dyn Cpus {
        self.inner.cpus()
    }
    fn flush_tlb_multi(&self, cpus: CpuMask, flush: Flush) -> Result<(), PvError> {
        self.inner.flush_tlb_multi(cpus, flush)
    }
    fn activate_mm(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.inner.activate_mm(mm, pgd)
    }
    fn exit_mm(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.inner.exit_mm(mm, pgd)
    }
    fn flush_tlb_all(&self) -> Result<(), PvError> {
        self.inner.flush_tlb_all()
    }
    fn flush_tlb_one(&self, va: VirtAddr) -> Result<(), PvError> {
        self.inner.flush_tlb_one(va)
    }
    fn lazy_mmu_enter(&self) {
        self.inner.lazy_mmu_enter()
    }
    fn lazy_mmu_leave(&self) -> Result<(), PvError> {
        self.inner.lazy_mmu_leave()
    }
    fn lazy_mmu_flush(&self) -> Result<(), PvError> {
        self.inner.lazy_mmu_flush()
    }
    fn protect_start(&self, mm: &dyn MmServices, table: Pfn, index: usize) -> Result<Pte, PvError> {
        self.inner.protect_start(mm, table, index)
    }
    fn protect_commit(&self, mm: &dyn MmServices, table: Pfn, index: usize, old: Pte, new: Pte) -> Result<(), PvError> {
        self.inner.protect_commit(mm, table, index, old, new)
    }
    fn clear_accessed_dirty(&self, mm: &dyn MmServices, table: Pfn, index: usize, bits: u64) -> Result<Pte, PvError> {
        self.inner.clear_accessed_dirty(mm, table, index, bits)
    }
    fn make_entry(&self, pte: Pte) -> Result<u64, PvError> {
        self.inner.make_entry(pte)
    }
    fn entry_value(&self, raw: u64) -> Pte {
        self.inner.entry_value(raw)
    }
    fn stats(&self) -> OpStats {
        self.inner.stats()
    }
    fn set_pgd(&self, mm: &dyn MmServices, table: Pfn, index: usize, pte: Pte) -> Result<(), PvError> {
        self.inner.set_pgd(mm, table, index, pte)
    }
    fn set_pud(&self, mm: &dyn MmServices, table: Pfn, index: usize, pte: Pte) -> Result<(), PvError> {
        self.inner.set_pud(mm, table, index, pte)
    }
    fn set_pmd(&self, mm: &dyn MmServices, table: Pfn, index: usize, pte: Pte) -> Result<(), PvError> {
        self.inner.set_pmd(mm, table, index, pte)
    }
    fn set_pte(&self, mm: &dyn MmServices, table: Pfn, index: usize, pte: Pte) -> Result<(), PvError> {
        self.inner.set_pte(mm, table, index, pte)
    }
}
