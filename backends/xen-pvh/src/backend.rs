//! The backend: the native one, forwarded to, with Xen's remote flush.

use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use pvops::{CpuMask, Cpus, Flush, Level, MmServices, OpStats, Pfn, Pte, PvError, PvMmuOps, VirtAddr};
use pvops_native::NativeBackend;

use crate::hvm::XenHvm;

/// Xen PVH: every hook is the native backend's (hardware paging), by
/// forwarding, not by copying its code, except the flush that must reach
/// other vCPUs: one `HVMOP_flush_tlbs` instead of a cross-call per CPU.
pub struct XenPvhBackend {
    inner: NativeBackend,
    hvm: &'static dyn XenHvm,
    /// `HVMOP_flush_tlbs` calls made (published in [`PvMmuOps::stats`]).
    hypercalls: AtomicU64,
}

impl core::fmt::Debug for XenPvhBackend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XenPvhBackend").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl XenPvhBackend {
    /// Wraps a native backend built on the guest's own handles; `hvm`
    /// issues Xen's HVM hypercalls.
    pub fn new(inner: NativeBackend, hvm: &'static dyn XenHvm) -> Self {
        XenPvhBackend { inner, hvm, hypercalls: AtomicU64::new(0) }
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
    fn frame_metadata_ready(&self, mm: &dyn MmServices) -> Result<(), PvError> {
        self.inner.frame_metadata_ready(mm)
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
    /// Only this CPU: the native local flush. Any other online CPU: one
    /// `HVMOP_flush_tlbs`, which flushes every vCPU (this one too, global
    /// entries too) before it returns: a superset of `flush` on a superset
    /// of `cpus`, for one VM exit and no IPI. Nothing is deferred here
    /// (page tables are written at once), so flushing now is in order.
    fn flush_tlb_multi(&self, cpus: CpuMask, flush: Flush) -> Result<(), PvError> {
        let me = self.cpus().this_cpu();
        if cpus.and(self.cpus().online()).without(me).is_empty() {
            return self.inner.flush_tlb_multi(cpus, flush);
        }
        self.hypercalls.fetch_add(1, Ordering::Relaxed);
        self.hvm.flush_tlbs()
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
        let mut s = self.inner.stats();
        s.hypercalls += self.hypercalls.load(Ordering::Relaxed);
        s
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
