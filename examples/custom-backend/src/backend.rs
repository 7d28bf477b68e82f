//! The wrapper: every call goes to the inner backend; successful ones are recorded.

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::ops::Range;

use pvops::{Level, MmServices, OpStats, Pfn, Pte, PvError, PvMmuOps, VirtAddr};

use crate::event::Event;

/// Records every successful MMU operation of `inner`.
pub struct TraceBackend {
    inner: &'static dyn PvMmuOps,
    events: spin::Mutex<Vec<Event>>,
}

impl core::fmt::Debug for TraceBackend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "TraceBackend(over {})", self.inner.name())
    }
}

impl TraceBackend {
    /// Wraps `inner`.
    pub fn new(inner: &'static dyn PvMmuOps) -> Self {
        TraceBackend { inner, events: spin::Mutex::new(Vec::new()) }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &'static dyn PvMmuOps {
        self.inner
    }

    /// A copy of the events so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    /// The trace as text, one event per line.
    pub fn trace_text(&self) -> String {
        let mut s = String::new();
        for e in self.events.lock().iter() {
            // Writing to a String cannot fail.
            let _ = writeln!(s, "{e}");
        }
        s
    }

    /// Forgets the events recorded so far.
    pub fn clear(&self) {
        self.events.lock().clear();
    }

    fn record<T>(&self, r: Result<T, PvError>, e: Event) -> Result<T, PvError> {
        if r.is_ok() {
            self.events.lock().push(e);
        }
        r
    }
}

impl PvMmuOps for TraceBackend {
    fn name(&self) -> &'static str {
        "trace"
    }
    fn reserved_l4_slots(&self) -> Range<usize> {
        self.inner.reserved_l4_slots()
    }
    fn adopt_boot_root(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.record(self.inner.adopt_boot_root(mm, pgd), Event::AdoptBootRoot(pgd))
    }
    fn frame_metadata_ready(&self, mm: &dyn MmServices) -> Result<(), PvError> {
        self.record(self.inner.frame_metadata_ready(mm), Event::MetadataReady)
    }
    fn pgd_alloc(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.record(self.inner.pgd_alloc(mm, pgd), Event::PgdAlloc(pgd))
    }
    fn pgd_free(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.record(self.inner.pgd_free(mm, pgd), Event::PgdFree(pgd))
    }
    fn alloc_pt(&self, mm: &dyn MmServices, root: Pfn, level: Level, pfn: Pfn) -> Result<(), PvError> {
        self.record(self.inner.alloc_pt(mm, root, level, pfn), Event::AllocPt(root, level, pfn))
    }
    fn release_pt(&self, mm: &dyn MmServices, root: Pfn, level: Level, pfn: Pfn) -> Result<(), PvError> {
        self.record(self.inner.release_pt(mm, root, level, pfn), Event::ReleasePt(root, level, pfn))
    }
    fn set_entry(&self, mm: &dyn MmServices, level: Level, table: Pfn, index: usize, pte: Pte) -> Result<(), PvError> {
        self.record(self.inner.set_entry(mm, level, table, index, pte), Event::SetEntry(level, table, index, pte))
    }
    fn read_entry(&self, level: Level, table: Pfn, index: usize) -> Result<Pte, PvError> {
        self.inner.read_entry(level, table, index)
    }
    fn write_cr3(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.record(self.inner.write_cr3(mm, pgd), Event::WriteCr3(pgd))
    }
    fn read_cr3(&self) -> Pfn {
        self.inner.read_cr3()
    }
    fn activate_mm(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.record(self.inner.activate_mm(mm, pgd), Event::ActivateMm(pgd))
    }
    fn exit_mm(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.record(self.inner.exit_mm(mm, pgd), Event::ExitMm(pgd))
    }
    fn flush_tlb_all(&self) -> Result<(), PvError> {
        self.record(self.inner.flush_tlb_all(), Event::FlushAll)
    }
    fn flush_tlb_one(&self, va: VirtAddr) -> Result<(), PvError> {
        self.record(self.inner.flush_tlb_one(va), Event::FlushOne(va))
    }
    fn lazy_mmu_enter(&self) {
        self.inner.lazy_mmu_enter();
        self.events.lock().push(Event::LazyEnter);
    }
    fn lazy_mmu_leave(&self) -> Result<(), PvError> {
        self.record(self.inner.lazy_mmu_leave(), Event::LazyLeave)
    }
    fn lazy_mmu_flush(&self) -> Result<(), PvError> {
        self.inner.lazy_mmu_flush()
    }
    /// Not recorded alone: the commit records the whole change.
    fn protect_start(&self, mm: &dyn MmServices, table: Pfn, index: usize) -> Result<Pte, PvError> {
        self.inner.protect_start(mm, table, index)
    }
    fn protect_commit(&self, mm: &dyn MmServices, table: Pfn, index: usize, old: Pte, new: Pte) -> Result<(), PvError> {
        self.record(self.inner.protect_commit(mm, table, index, old, new), Event::Protect(table, index, new))
    }
    fn clear_accessed_dirty(&self, mm: &dyn MmServices, table: Pfn, index: usize, bits: u64) -> Result<Pte, PvError> {
        self.record(self.inner.clear_accessed_dirty(mm, table, index, bits), Event::ClearAd(table, index, bits))
    }
    fn make_entry(&self, pte: Pte) -> Result<u64, PvError> {
        self.inner.make_entry(pte)
    }
    fn cpus(&self) -> &dyn pvops::Cpus {
        self.inner.cpus()
    }
    fn flush_tlb_multi(&self, cpus: pvops::CpuMask, flush: pvops::Flush) -> Result<(), PvError> {
        self.inner.flush_tlb_multi(cpus, flush)
    }
    fn entry_value(&self, raw: u64) -> Pte {
        self.inner.entry_value(raw)
    }
    fn stats(&self) -> OpStats {
        self.inner.stats()
    }
}
