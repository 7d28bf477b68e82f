//! The native implementation of every `PvMmuOps` hook.

use core::ops::Range;

use core::sync::atomic::{AtomicU64, Ordering};

use pvops::pte::flags;
use pvops::{
    CpuMask, Cpus, Flush, Level, MmServices, Pfn, PhysMem, Pte, PvError, PvMmuOps, SingleCpu, VirtAddr,
    ENTRIES_PER_TABLE, MAX_CPUS, PAGE_SHIFT,
};

use crate::cpu::NativeCpu;

/// Direct page-table writes and one cr3 per CPU.
///
/// `M` is the page-table memory's type. The default, `dyn PhysMem`, is what
/// the registry builds ([`NativeBackend::new`], [`NativeBackend::from_env`]):
/// every word is a vtable call. A kernel that knows its memory's type — a
/// [`DirectMap`](crate::DirectMap) — names it ([`NativeBackend::with_mem`],
/// [`NativeBackend::from_env_with`]) and, dispatched statically
/// (`pvops::static_dispatch!`), gets every page-table word as an inlined
/// load or store (`docs/PERFORMANCE.md`, "Framework vs hand-written").
pub struct NativeBackend<M: PhysMem + ?Sized + 'static = dyn PhysMem> {
    mem: &'static M,
    cpu: &'static dyn NativeCpu,
    cpus: &'static dyn Cpus,
    /// The root each CPU last loaded through this backend (pfn;
    /// `u64::MAX`: none yet). Another CPU's cr3 cannot be read, and a root
    /// one still has loaded must not be freed.
    roots: [AtomicU64; MAX_CPUS],
}

impl<M: PhysMem + ?Sized + 'static> core::fmt::Debug for NativeBackend<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("NativeBackend")
    }
}

impl NativeBackend {
    /// A backend over the given seams.
    pub fn new(mem: &'static dyn PhysMem, cpu: &'static dyn NativeCpu) -> Self {
        NativeBackend::with_mem(mem, cpu)
    }
}

impl<M: PhysMem + ?Sized + 'static> NativeBackend<M> {
    /// A backend over memory of the type `M`: with a concrete `M` (a
    /// [`DirectMap`](crate::DirectMap)) its word accesses are direct calls,
    /// inlined where the backend is (static dispatch); with `dyn PhysMem`
    /// it is [`NativeBackend::new`].
    ///
    /// ```
    /// use pvops::{Pfn, PhysMem};
    /// use pvops_native::{BareMetalCpu, DirectMap, NativeBackend};
    ///
    /// let frames: &'static mut [u64] = Box::leak(vec![0u64; 2 * 512].into_boxed_slice());
    /// // SAFETY: the leaked buffer holds 2 frames and lives forever.
    /// let mem: &'static DirectMap = Box::leak(Box::new(unsafe { DirectMap::new(frames.as_mut_ptr() as u64, 2) }));
    /// let backend: NativeBackend<DirectMap> = NativeBackend::with_mem(mem, &BareMetalCpu);
    /// mem.write_entry(Pfn(1), 3, 0x1234);
    /// # use pvops::{Level, PvMmuOps};
    /// assert_eq!(backend.read_entry(Level::L1, Pfn(1), 3).unwrap().0, 0x1234);
    /// ```
    pub fn with_mem(mem: &'static M, cpu: &'static dyn NativeCpu) -> Self {
        NativeBackend { mem, cpu, cpus: &SingleCpu, roots: [const { AtomicU64::new(u64::MAX) }; MAX_CPUS] }
    }

    /// The same backend on the CPUs `cpus` (remote flushes are cross-calls).
    pub fn with_cpus(self, cpus: &'static dyn Cpus) -> Self {
        NativeBackend { cpus, ..self }
    }

    /// Another online CPU that last loaded `pgd`, if any.
    fn loaded_elsewhere(&self, pgd: Pfn) -> Option<usize> {
        let me = self.cpus.this_cpu();
        let online = self.cpus.online();
        (0..MAX_CPUS).find(|&c| c != me && online.contains(c) && self.roots[c].load(Ordering::Acquire) == pgd.0)
    }

    /// `flush` on this CPU: `invlpg` per page up to 32 pages, else a full
    /// flush (what the trait's default does through `flush_tlb_one`/`_all`).
    #[inline]
    fn flush_here(&self, flush: Flush) -> Result<(), PvError> {
        match flush {
            Flush::Page(va) => self.cpu.invlpg(va),
            Flush::Range { start, pages } if pages <= 32 => {
                for i in 0..pages {
                    self.cpu.invlpg(VirtAddr::try_new(start.as_u64().wrapping_add(i << PAGE_SHIFT))?);
                }
            }
            Flush::Range { .. } | Flush::All => self.cpu.flush_all(),
        }
        Ok(())
    }

    /// Refuses `pgd` while it is loaded here or on another CPU.
    fn check_unloaded(&self, pgd: Pfn, what: &'static str) -> Result<(), PvError> {
        if self.read_cr3() == pgd {
            return Err(PvError::WrongState { what });
        }
        match self.loaded_elsewhere(pgd) {
            Some(cpu) => Err(PvError::RootInUse { pgd, cpu }),
            None => Ok(()),
        }
    }
}

/// The bits the hardware sets on its own.
const AD: u64 = flags::ACCESSED | flags::DIRTY;

/// `new` keeps `old`'s frame and is present: a protection change, not a remap.
fn check_protection_change(old: Pte, new: Pte) -> Result<(), PvError> {
    if !new.is_present() || !old.is_present() || new.pfn() != old.pfn() {
        return Err(PvError::WrongState { what: "protect_commit: not a protection change of a present entry" });
    }
    Ok(())
}

/// Only A and D may be cleared.
fn check_ad_bits(bits: u64) -> Result<(), PvError> {
    if bits & !AD != 0 {
        return Err(PvError::WrongState { what: "clear_accessed_dirty: bits other than accessed/dirty" });
    }
    Ok(())
}

#[inline]
fn check_index(index: usize) -> Result<(), PvError> {
    if index >= ENTRIES_PER_TABLE {
        return Err(PvError::BadIndex { index });
    }
    Ok(())
}

impl<M: PhysMem + ?Sized + 'static> PvMmuOps for NativeBackend<M> {
    fn name(&self) -> &'static str {
        "native"
    }

    fn reserved_l4_slots(&self) -> Range<usize> {
        0..0
    }

    #[inline]
    fn pgd_alloc(&self, _mm: &dyn MmServices, _pgd: Pfn) -> Result<(), PvError> {
        Ok(())
    }

    fn pgd_free(&self, _mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.check_unloaded(pgd, "pgd_free of the loaded pgd")
    }

    #[inline]
    fn alloc_pt(&self, _mm: &dyn MmServices, _root: Pfn, _level: Level, _pfn: Pfn) -> Result<(), PvError> {
        Ok(())
    }

    #[inline]
    fn release_pt(&self, _mm: &dyn MmServices, _root: Pfn, _level: Level, _pfn: Pfn) -> Result<(), PvError> {
        Ok(())
    }

    #[inline]
    fn set_entry(
        &self,
        _mm: &dyn MmServices,
        _level: Level,
        table: Pfn,
        index: usize,
        pte: Pte,
    ) -> Result<(), PvError> {
        check_index(index)?;
        self.mem.write_entry(table, index, pte.0);
        Ok(())
    }

    #[inline]
    fn read_entry(&self, _level: Level, table: Pfn, index: usize) -> Result<Pte, PvError> {
        check_index(index)?;
        Ok(Pte(self.mem.read_entry(table, index)))
    }

    #[inline]
    fn write_cr3(&self, _mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.cpu.write_cr3(pgd.0 << PAGE_SHIFT);
        // The record follows the load: until it does, another CPU checking
        // the old root sees it still loaded here (a spurious `RootInUse`, the
        // safe direction), never the new one unloaded. (`this_cpu` is
        // `< MAX_CPUS` by contract; a CPU beyond it is not recorded.) Every
        // access is through a field, so inlined at a static-dispatch call
        // site it costs no more than at a direct one.
        if let Some(slot) = self.roots.get(self.cpus.this_cpu()) {
            slot.store(pgd.0, Ordering::Release);
        }
        Ok(())
    }

    #[inline]
    fn read_cr3(&self) -> Pfn {
        Pfn::containing(self.cpu.read_cr3() & pvops::pte::flags::ADDR_MASK)
    }

    #[inline]
    fn activate_mm(&self, _mm: &dyn MmServices, _pgd: Pfn) -> Result<(), PvError> {
        Ok(())
    }

    fn exit_mm(&self, _mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.check_unloaded(pgd, "exit_mm of the loaded pgd")
    }

    fn flush_tlb_all(&self) -> Result<(), PvError> {
        self.cpu.flush_all();
        Ok(())
    }

    #[inline]
    fn flush_tlb_one(&self, va: VirtAddr) -> Result<(), PvError> {
        self.cpu.invlpg(va);
        Ok(())
    }

    /// The trait's portable default (a local flush, a cross-call running
    /// the same on every other online target), written out here so a
    /// static-dispatch call site inlines it: a flush of this CPU alone —
    /// every unmap of a space only it has loaded — asks for neither the
    /// online set nor a cross-call.
    #[inline]
    fn flush_tlb_multi(&self, cpus: CpuMask, flush: Flush) -> Result<(), PvError> {
        let me = self.cpus.this_cpu();
        let others = cpus.without(me);
        let others = if others.is_empty() { others } else { others.and(self.cpus.online()) };
        let remote = if others.is_empty() { Ok(()) } else { self.cpus.call_on(others, &|| self.flush_here(flush)) };
        let here = if cpus.contains(me) { self.flush_here(flush) } else { Ok(()) };
        remote.and(here)
    }

    #[inline]
    fn cpus(&self) -> &dyn Cpus {
        self.cpus
    }

    /// Natively every store takes effect at once: nothing is ever queued,
    /// so sections nest trivially (an inner leave issues nothing, because
    /// there is nothing) and no failure is ever deferred.
    #[inline]
    fn lazy_mmu_enter(&self) {}

    #[inline]
    fn lazy_mmu_leave(&self) -> Result<(), PvError> {
        Ok(())
    }

    #[inline]
    fn lazy_mmu_flush(&self) -> Result<(), PvError> {
        Ok(())
    }

    /// `ptep_get_and_clear`: an atomic exchange with 0 (Linux's native
    /// `ptep_modify_prot_start`, arch/x86/include/asm/pgtable.h). Once the
    /// slot is empty no CPU can set A/D in it: a walk that would set one
    /// finds it not present and faults.
    #[inline]
    fn protect_start(&self, _mm: &dyn MmServices, table: Pfn, index: usize) -> Result<Pte, PvError> {
        check_index(index)?;
        let mut cur = self.mem.read_entry(table, index);
        loop {
            if cur & flags::PRESENT == 0 {
                return Err(PvError::WrongState { what: "protect_start of a non-present entry" });
            }
            match self.mem.compare_exchange_entry(table, index, cur, 0) {
                Ok(_) => return Ok(Pte(cur)),
                Err(actual) => cur = actual,
            }
        }
    }

    /// A store of `new` with `old`'s A/D bits into the slot `protect_start`
    /// emptied, as a `cmpxchg` from what the slot holds: an empty entry,
    /// or one holding only A/D bits — a CPU without CET that writes
    /// through a translation it cached before the exchange ORs D into the
    /// withdrawn entry (SDM vol. 3A §4.8), and that bit is kept too.
    /// Anything else means no `protect_start` emptied the slot: refused.
    #[inline]
    fn protect_commit(
        &self,
        _mm: &dyn MmServices,
        table: Pfn,
        index: usize,
        old: Pte,
        new: Pte,
    ) -> Result<(), PvError> {
        check_index(index)?;
        check_protection_change(old, new)?;
        let value = new.0 | (old.0 & AD);
        let mut cur = self.mem.read_entry(table, index);
        loop {
            if cur & !AD != 0 {
                return Err(PvError::WrongState { what: "protect_commit of a slot protect_start did not empty" });
            }
            match self.mem.compare_exchange_entry(table, index, cur, value | cur) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    /// A `cmpxchg` loop clearing `bits` (Linux uses `lock btr`; the same
    /// atomicity against the hardware's locked A/D updates).
    fn clear_accessed_dirty(&self, _mm: &dyn MmServices, table: Pfn, index: usize, bits: u64) -> Result<Pte, PvError> {
        check_index(index)?;
        check_ad_bits(bits)?;
        let mut cur = self.mem.read_entry(table, index);
        loop {
            if cur & flags::PRESENT == 0 {
                return Err(PvError::WrongState { what: "clear_accessed_dirty of a non-present entry" });
            }
            if cur & bits == 0 {
                return Ok(Pte(cur));
            }
            match self.mem.compare_exchange_entry(table, index, cur, cur & !bits) {
                Ok(_) => return Ok(Pte(cur)),
                Err(actual) => cur = actual,
            }
        }
    }

    fn make_entry(&self, pte: Pte) -> Result<u64, PvError> {
        Ok(pte.0)
    }

    fn entry_value(&self, raw: u64) -> Pte {
        Pte(raw)
    }
}
