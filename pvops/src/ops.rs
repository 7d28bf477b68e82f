//! The `PvMmuOps` interface: everything core kernel code needs from the MMU,
//! whichever hypervisor (or none) it runs on.
//!
//! Each method's doc is a contract; the conformance suite (`tests/conformance`)
//! has a case for each MUST.

use core::ops::Range;

use crate::addr::{Level, Pfn, VirtAddr};
use crate::cpu::{CpuMask, Cpus, Flush};
use crate::error::PvError;
use crate::pte::Pte;
use crate::services::MmServices;

/// Counters a backend keeps about its own traffic to the hypervisor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpStats {
    /// Traps into the hypervisor (one per hypercall, a multicall counts once).
    pub hypercalls: u64,
    /// Multicall entries issued.
    pub multicall_entries: u64,
    /// Individual `mmu_update` records.
    pub mmu_updates: u64,
    /// Individual `mmuext_op` records.
    pub mmuext_ops: u64,
    /// `update_va_mapping` calls (alone or in a multicall).
    pub update_va_mappings: u64,
    /// Direct stores to page-table memory.
    pub direct_writes: u64,
}

impl OpStats {
    /// The traffic between `earlier` and `self` (counters only grow).
    ///
    /// ```
    /// use pvops::OpStats;
    /// let a = OpStats { hypercalls: 3, ..OpStats::default() };
    /// let b = OpStats { hypercalls: 5, mmu_updates: 2, ..OpStats::default() };
    /// assert_eq!(b.since(a), OpStats { hypercalls: 2, mmu_updates: 2, ..OpStats::default() });
    /// ```
    pub fn since(self, earlier: OpStats) -> OpStats {
        OpStats {
            hypercalls: self.hypercalls.saturating_sub(earlier.hypercalls),
            multicall_entries: self.multicall_entries.saturating_sub(earlier.multicall_entries),
            mmu_updates: self.mmu_updates.saturating_sub(earlier.mmu_updates),
            mmuext_ops: self.mmuext_ops.saturating_sub(earlier.mmuext_ops),
            update_va_mappings: self.update_va_mappings.saturating_sub(earlier.update_va_mappings),
            direct_writes: self.direct_writes.saturating_sub(earlier.direct_writes),
        }
    }
}

/// The paravirt MMU interface.
///
/// Tables are named by their frame; entries are pfn based ([`Pte`]). Every
/// method returns an error rather than panicking; an error leaves the state
/// as it was unless the method says otherwise.
///
/// An error belongs to the call whose update failed. A method's result
/// reports only the updates that call made or queued; a failure of an update
/// queued earlier in a lazy-MMU section (issued now only because a batch
/// filled up, or because this call had to issue) is reported to that section's
/// owner at [`PvMmuOps::lazy_mmu_flush`] or [`PvMmuOps::lazy_mmu_leave`],
/// never to an unrelated later call.
pub trait PvMmuOps: Sync {
    /// The backend's registry name.
    fn name(&self) -> &'static str;

    /// L4 slots the guest MUST NOT use (Xen's 256..272; empty natively).
    fn reserved_l4_slots(&self) -> Range<usize>;

    /// The platform booted on `pgd` and it is live (loaded; on Xen also pinned by
    /// the domain builder). It becomes `init_mm`'s root, which never has a user pgd.
    fn adopt_boot_root(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        let _ = (mm, pgd);
        Ok(())
    }

    /// Frame metadata exists from now on ([`MmServices::has_metadata`]): the
    /// end of early boot, called once by the core right after it creates the
    /// metadata (kernel-glue's `Mm::init_metadata`), or by its adopt of the
    /// boot root when the metadata already existed. A backend that keeps
    /// state there records the boot tables now (xen64 marks them pinned,
    /// Linux's `xen_mark_init_mm_pinned`), so what the metadata says is true
    /// from this point on, before any other call. Called on the boot CPU
    /// before other CPUs use the backend (xen64 refuses a call that finds
    /// metadata but no marking yet). Idempotent. Default: nothing. A wrapper
    /// backend forwards it.
    fn frame_metadata_ready(&self, mm: &dyn MmServices) -> Result<(), PvError> {
        let _ = mm;
        Ok(())
    }

    /// A new top-level table `pgd` (zeroed, kernel half filled by the caller)
    /// is about to be used by an address space. MUST fail with
    /// [`PvError::OutOfMemory`] and change nothing when a needed frame cannot be had.
    fn pgd_alloc(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError>;

    /// `pgd` is about to be freed; release what `pgd_alloc` attached.
    /// MUST fail with [`PvError::WrongState`] if `pgd` is still pinned.
    fn pgd_free(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError>;

    /// Frame `pfn` (zeroed) becomes a table of `level` in the address space rooted at `root`,
    /// before it is linked into its parent.
    fn alloc_pt(&self, mm: &dyn MmServices, root: Pfn, level: Level, pfn: Pfn) -> Result<(), PvError>;

    /// Frame `pfn`, already unlinked from its parent, stops being a table of `level`.
    fn release_pt(&self, mm: &dyn MmServices, root: Pfn, level: Level, pfn: Pfn) -> Result<(), PvError>;

    /// Writes slot `index` of the `level` table in frame `table`.
    /// MUST reject `index >= 512` and, for L4, the reserved slots.
    ///
    /// An L4 slot below [`USER_PGD_SLOTS`] that a backend mirrors elsewhere
    /// (xen64: the user pgd) MUST change in both places or in neither. Only
    /// if the hypervisor refuses both the update and its undo may they
    /// differ; then the call fails, the table holds the new value and the
    /// mirror the old one, and writing the slot again (e.g. clearing it)
    /// makes them agree.
    fn set_entry(&self, mm: &dyn MmServices, level: Level, table: Pfn, index: usize, pte: Pte) -> Result<(), PvError>;

    /// Reads slot `index` of the `level` table in frame `table`, as a pfn-based entry.
    /// MUST return what the last [`PvMmuOps::set_entry`] of that slot wrote,
    /// also while that write is still queued in a lazy-MMU section.
    fn read_entry(&self, level: Level, table: Pfn, index: usize) -> Result<Pte, PvError>;

    /// Switches to the address space rooted at `pgd` (both roots on Xen).
    ///
    /// On error the previous address space MUST still be loaded, whole (on
    /// Xen: a refused user root is undone by loading the previous kernel root
    /// again). Only if the hypervisor refuses that undo too is `pgd`'s kernel
    /// root left loaded, with no user root (never the previous one under the
    /// new kernel root); [`PvMmuOps::read_cr3`] then names `pgd`.
    fn write_cr3(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError>;

    /// The (kernel) root that is really loaded now on the calling CPU, also
    /// after a failed [`PvMmuOps::write_cr3`].
    fn read_cr3(&self) -> Pfn;

    /// The CPUs this backend runs on: the platform seam it uses for its
    /// per-CPU state. Kernel-glue takes the CPU set from here, so the two
    /// can never disagree. Required (no default), so that a wrapper backend
    /// cannot silently turn an SMP backend into a uniprocessor one: it MUST
    /// return its inner backend's; a backend that only ever runs on one
    /// CPU returns `&pvops::SingleCpu`.
    fn cpus(&self) -> &dyn Cpus;

    /// Flushes `flush` from the TLB of every CPU in `cpus` (the caller's own
    /// included if it is in the set), in whatever address space each has
    /// loaded. MUST NOT return `Ok` (outside a lazy-MMU section; inside one,
    /// before the section's flush or outermost leave returns) until every
    /// target has flushed. Offline CPUs in `cpus` are skipped.
    ///
    /// The default is the portable one: a local flush, and a cross-call
    /// ([`Cpus::call_on`]) that runs the same local flush on each other
    /// target (natively an IPI, acknowledged). It runs the remote part at
    /// once, so it is only right for a backend whose writes take effect at
    /// once (never deferred in a lazy section); a backend that defers MUST
    /// override it (Xen: `MMUEXT_TLB_FLUSH_MULTI` / `MMUEXT_INVLPG_MULTI`,
    /// queued behind the writes, no IPI), and a wrapper MUST forward it.
    fn flush_tlb_multi(&self, cpus: CpuMask, flush: Flush) -> Result<(), PvError> {
        let me = self.cpus().this_cpu();
        let local = || match flush {
            Flush::Page(va) => self.flush_tlb_one(va),
            Flush::Range { start, pages } if pages <= 32 => (0..pages).try_for_each(|i| {
                self.flush_tlb_one(VirtAddr::try_new(start.as_u64().wrapping_add(i << crate::PAGE_SHIFT))?)
            }),
            Flush::Range { .. } | Flush::All => self.flush_tlb_all(),
        };
        // The online set only matters when another CPU is a target.
        let others = cpus.without(me);
        let others = if others.is_empty() { others } else { others.and(self.cpus().online()) };
        let remote = if others.is_empty() { Ok(()) } else { self.cpus().call_on(others, &local) };
        let here = if cpus.contains(me) { local() } else { Ok(()) };
        remote.and(here)
    }

    /// First use of an address space (Xen: pin both pgds). Idempotent per pin state:
    /// MUST fail with [`PvError::WrongState`] when already pinned.
    ///
    /// On error nothing is pinned: what took effect is undone. Only if the
    /// hypervisor refuses part of that undo too can table pages stay
    /// read-only or a root stay pinned while the frame metadata says
    /// unpinned; the error is returned and the refusal logged.
    fn activate_mm(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError>;

    /// The address space is exiting (Xen: unpin). MUST fail when `pgd` is
    /// loaded on the calling CPU ([`PvError::WrongState`]) or on any other
    /// ([`PvError::RootInUse`]): the caller first makes every CPU that holds
    /// it switch away (Linux's `xen_drop_mm_ref`). Which root another CPU
    /// has loaded is published after its switch, so the caller MUST also
    /// rule out a switch *to* `pgd` racing with this call (kernel-glue:
    /// `Mm::exit` owns the space).
    ///
    /// On error it is still pinned, as before; the same exception as
    /// [`PvMmuOps::activate_mm`] applies when an undo is refused.
    fn exit_mm(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError>;

    /// Flushes the whole (non-global) TLB.
    fn flush_tlb_all(&self) -> Result<(), PvError>;

    /// Flushes one address from the TLB.
    fn flush_tlb_one(&self, va: VirtAddr) -> Result<(), PvError>;

    /// Opens a lazy-MMU section: updates MAY be queued until the section is
    /// flushed or the outermost section is left.
    ///
    /// Sections MUST nest: entering inside an open section opens an inner
    /// one (a library call such as `Mm::map` brackets itself, and must not
    /// end its caller's section). Each section owns the updates queued while
    /// it is the innermost one.
    fn lazy_mmu_enter(&self);

    /// Closes the innermost section. Leaving an inner section MUST NOT issue
    /// anything or end the enclosing one: its updates stay queued for the
    /// enclosing section (which then owns their failures); the result reports
    /// failures of its updates already issued (by a full batch or an issuing
    /// call). Leaving the outermost section issues everything queued; every
    /// update made in any section MUST have taken effect, or its failure been
    /// reported by one of these calls, when it returns.
    fn lazy_mmu_leave(&self) -> Result<(), PvError>;

    /// Issues everything queued (the enclosing sections' updates too) without
    /// leaving any section; reports the failures of the innermost section's
    /// updates (outside any section: of every update not reported yet).
    fn lazy_mmu_flush(&self) -> Result<(), PvError>;

    /// Begins a protection change of the live L1 (leaf) entry `index` of
    /// table `table` (Linux's `ptep_modify_prot_start`) and returns the entry
    /// as it is now, with every accessed/dirty bit the hardware has set so far.
    /// The caller MUST follow it with [`PvMmuOps::protect_commit`] of the same
    /// slot, holding whatever lock keeps other writers off the slot, and
    /// flush the TLBs that may hold it after the commit.
    ///
    /// A backend MAY withdraw the entry until the commit (natively an atomic
    /// exchange with 0, so the hardware can set no bit that the commit would
    /// then overwrite; an access in between faults and is retried by its
    /// handler) or leave it live (xen64: a read; the commit keeps what the
    /// hardware sets in between). MUST reject `index >= 512`
    /// ([`PvError::BadIndex`]) and a non-present entry ([`PvError::WrongState`]),
    /// changing nothing. `table` MUST be an L1 table: backends cannot always
    /// tell an L1 from a higher level by its contents.
    fn protect_start(&self, mm: &dyn MmServices, table: Pfn, index: usize) -> Result<Pte, PvError>;

    /// Ends the protection change [`PvMmuOps::protect_start`] began (Linux's
    /// `ptep_modify_prot_commit`): the slot becomes `new` with the
    /// accessed/dirty bits of `old` (what `protect_start` returned) and every
    /// accessed/dirty bit the hardware set on the entry since — none MUST be
    /// lost. Natively a store of `new | (old & (A|D))` into the withdrawn slot;
    /// on xen64 an `mmu_update` with `MMU_PT_UPDATE_PRESERVE_AD`, queued in a
    /// lazy-MMU section like any other update. Flushes nothing.
    ///
    /// `new` MUST be present and name the same frame as `old` (a protection
    /// change, not a remap), else [`PvError::WrongState`] and nothing changes;
    /// `index >= 512`: [`PvError::BadIndex`]. A backend that withdrew the entry
    /// MUST refuse ([`PvError::WrongState`], nothing changed) a commit with no
    /// start before it (the slot is not the empty entry its start left).
    fn protect_commit(&self, mm: &dyn MmServices, table: Pfn, index: usize, old: Pte, new: Pte) -> Result<(), PvError>;

    /// Clears the accessed/dirty bits `bits` (a subset of
    /// `ACCESSED | DIRTY`) of the present L1 entry `index` of `table` and
    /// returns the entry as it was just before (Linux's
    /// `ptep_test_and_clear_young` / `ptep_clear_flush_dirty` without the
    /// flush). MUST be atomic with respect to the hardware setting A/D: no
    /// bit outside `bits` may be lost, and a bit in `bits` the hardware sets
    /// after the clear stays set. Takes effect at once, also inside a
    /// lazy-MMU section (a queued update of the same slot is issued first).
    /// The caller flushes the TLB if it needs the hardware to set a cleared
    /// bit again (a cached translation may still carry it).
    ///
    /// A backend MAY withdraw the entry for the duration of the call
    /// (xen64: Xen has no atomic clear, see its `protect` module; natively
    /// a `cmpxchg` loop on the live entry): like the window between
    /// [`PvMmuOps::protect_start`] and [`PvMmuOps::protect_commit`], a fault
    /// taken there must be resolved under the page-table lock the caller
    /// holds, by looking at the entry again. On error the entry is as it
    /// was; only if the hypervisor refuses to put a withdrawn entry back
    /// does it stay withdrawn (the error is returned and logged).
    ///
    /// MUST reject `index >= 512` ([`PvError::BadIndex`]), `bits` outside A/D
    /// and a non-present entry ([`PvError::WrongState`]), changing nothing.
    fn clear_accessed_dirty(&self, mm: &dyn MmServices, table: Pfn, index: usize, bits: u64) -> Result<Pte, PvError>;

    /// Encodes a pfn-based entry as the hardware will see it (identity natively).
    fn make_entry(&self, pte: Pte) -> Result<u64, PvError>;

    /// Decodes a hardware entry back to pfn-based form.
    fn entry_value(&self, raw: u64) -> Pte;

    /// Hypervisor traffic so far.
    fn stats(&self) -> OpStats {
        OpStats::default()
    }

    /// Convenience: [`PvMmuOps::set_entry`] at L4.
    fn set_pgd(&self, mm: &dyn MmServices, table: Pfn, index: usize, pte: Pte) -> Result<(), PvError> {
        self.set_entry(mm, Level::L4, table, index, pte)
    }
    /// Convenience: [`PvMmuOps::set_entry`] at L3.
    fn set_pud(&self, mm: &dyn MmServices, table: Pfn, index: usize, pte: Pte) -> Result<(), PvError> {
        self.set_entry(mm, Level::L3, table, index, pte)
    }
    /// Convenience: [`PvMmuOps::set_entry`] at L2.
    fn set_pmd(&self, mm: &dyn MmServices, table: Pfn, index: usize, pte: Pte) -> Result<(), PvError> {
        self.set_entry(mm, Level::L2, table, index, pte)
    }
    /// Convenience: [`PvMmuOps::set_entry`] at L1.
    fn set_pte(&self, mm: &dyn MmServices, table: Pfn, index: usize, pte: Pte) -> Result<(), PvError> {
        self.set_entry(mm, Level::L1, table, index, pte)
    }
}

/// Top of user space, rounded up to an L4 boundary (the seed's `USER_LIMIT`).
/// Everything below is user; user pgds mirror exactly the slots below it.
pub const USER_LIMIT: u64 = 0x0000_8000_0000_0000;

/// `pgd_index(USER_LIMIT)`: the first L4 slot that is never user.
pub const USER_PGD_SLOTS: usize = (USER_LIMIT >> 39) as usize;
