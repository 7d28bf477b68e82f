//! The address-space lifecycle beyond map/unmap (issue 14): ranges,
//! permission changes that keep accessed/dirty bits, demand-zero regions,
//! copy-on-write fork and the page-fault entry point, pinning every space
//! around save/restore.
//!
//! Same rule as the rest of the crate: every page-table change goes through
//! [`PvMmuOps`], and a space changes only under its lock, with its updates
//! issued before the lock is released.

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use pvops::pte::flags;
use pvops::{Flush, Level, Pfn, Pte, PvError, PvMmuOps, VirtAddr, ENTRIES_PER_TABLE};

use crate::address_space::{
    lock, next_l1, user_range, user_va, AddressSpace, Backing, Mm, PageFlags, Region, SpaceState, SOFT_COW, SOFT_SHARED,
};
use crate::walk::{ensure_l1, find_l1, undo, NewTables, TABLE_FLAGS};

/// How [`Mm::handle_fault`] resolved a fault: the access can be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultFix {
    /// A write to a copy-on-write page shared with another space: the page
    /// was copied into a new frame, mapped writable here.
    CopiedOnWrite,
    /// A write to a copy-on-write page this space is the last holder of:
    /// made writable again, nothing copied.
    ReusedSoleOwner,
    /// A first touch of a demand-zero page: backed by a new zeroed frame.
    ZeroFilled,
    /// The entry already allows the access (another CPU resolved it first,
    /// or a stale TLB entry faulted; the fault itself dropped that entry).
    Spurious,
}

/// Why [`Mm::handle_fault`] refused a fault: the access is illegal (or
/// cannot be served) and the process must be killed. Nothing was changed
/// and nothing leaked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKill {
    /// Nothing is mapped or reserved there (or it is not a user address).
    NotMapped,
    /// A write to a page whose permission is read-only.
    WriteToReadOnly,
    /// No frame for the copy or the zero page (or a table to map it).
    OutOfMemory,
    /// The backend refused a page-table update.
    Backend(PvError),
}

impl core::fmt::Display for FaultKill {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FaultKill::NotMapped => write!(f, "page fault: nothing mapped"),
            FaultKill::WriteToReadOnly => write!(f, "page fault: write to a read-only page"),
            FaultKill::OutOfMemory => write!(f, "page fault: out of memory"),
            FaultKill::Backend(e) => write!(f, "page fault: {e}"),
        }
    }
}

fn kill(e: PvError) -> FaultKill {
    match e {
        PvError::OutOfMemory => FaultKill::OutOfMemory,
        e => FaultKill::Backend(e),
    }
}

/// Removes `start..end` from the demand-zero regions (splitting any that straddle it).
pub(crate) fn regions_remove(regions: &mut Vec<Region>, start: u64, end: u64) {
    let mut out = Vec::with_capacity(regions.len() + 1);
    for r in regions.drain(..) {
        if r.end <= start || r.start >= end {
            out.push(r);
            continue;
        }
        if r.start < start {
            out.push(Region { start: r.start, end: start, perm: r.perm });
        }
        if r.end > end {
            out.push(Region { start: end, end: r.end, perm: r.perm });
        }
    }
    *regions = out;
}

/// Gives the parts of the regions inside `start..end` the permission `perm`.
fn regions_set_perm(regions: &mut Vec<Region>, start: u64, end: u64, perm: PageFlags) {
    // Nothing reserved there (the common case): nothing to rebuild.
    if !regions.iter().any(|r| r.start < end && r.end > start) {
        return;
    }
    let inside: Vec<Region> = regions
        .iter()
        .filter(|r| r.start < end && r.end > start)
        .map(|r| Region { start: r.start.max(start), end: r.end.min(end), perm })
        .collect();
    regions_remove(regions, start, end);
    regions.extend(inside);
}

fn region_at(regions: &[Region], page: u64) -> Option<Region> {
    regions.iter().copied().find(|r| r.start <= page && page < r.end)
}

impl<'a, O: PvMmuOps + ?Sized> Mm<'a, O> {
    /// Maps `pages` new zeroed pages from `addr` with `perm`, all or
    /// nothing: if any page in the range is mapped already nothing is
    /// written ([`PvError::AlreadyMapped`]); on a later error every page and
    /// table it made is taken back. One table walk per L1 table and one
    /// lazy-MMU batch for the whole range (on Xen, into a live space,
    /// ⌈N/32⌉-ish multicalls).
    pub fn map_range(&self, space: &AddressSpace, addr: u64, pages: u64, perm: PageFlags) -> Result<(), PvError> {
        self.check_owner(space)?;
        let (_, end) = user_range(addr, pages)?;
        let _locked = self.lock(space);
        self.check_unmapped(space, addr, end)?;
        // Every page needs a frame: refuse what cannot fit before anything
        // is written, and reserve the bookkeeping up front, fallibly, so a
        // huge range is an error rather than a failed allocation (a panic).
        if pages > self.frames.free_count() {
            return Err(PvError::OutOfMemory);
        }
        let mut leaves = Vec::new();
        let mut made = Vec::new();
        let tables = pages.div_ceil(ENTRIES_PER_TABLE as u64) + 1;
        leaves.try_reserve_exact(pages as usize).map_err(|_| PvError::OutOfMemory)?;
        made.try_reserve_exact(tables as usize).map_err(|_| PvError::OutOfMemory)?;
        self.ops.lazy_mmu_enter();
        let built = self.map_range_queued(space, addr, end, perm.user_bits(), &mut leaves, &mut made);
        let flushed = self.ops.lazy_mmu_flush();
        let left = self.ops.lazy_mmu_leave();
        match built.and(flushed).and(left) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.take_back_range(space, &leaves, &made);
                Err(e)
            }
        }
    }

    /// [`PvError::AlreadyMapped`] for the first present page in `addr..end`.
    fn check_unmapped(&self, space: &AddressSpace, addr: u64, end: u64) -> Result<(), PvError> {
        let mut va = addr;
        while va < end {
            let chunk = next_l1(va).min(end);
            if let Some(l1) = find_l1(self.ops, space.pgd(), VirtAddr::try_new(va)?)? {
                for page in (va..chunk).step_by(pvops::PAGE_SIZE as usize) {
                    let v = VirtAddr::try_new(page)?;
                    if self.ops.read_entry(Level::L1, l1, v.index(Level::L1))?.is_present() {
                        return Err(PvError::AlreadyMapped { addr: v });
                    }
                }
            }
            va = chunk;
        }
        Ok(())
    }

    fn map_range_queued(
        &self,
        space: &AddressSpace,
        addr: u64,
        end: u64,
        bits: u64,
        leaves: &mut Vec<(Pfn, usize, Pfn)>,
        made: &mut Vec<NewTables>,
    ) -> Result<(), PvError> {
        let holders = self.holders(space);
        let mut va = addr;
        while va < end {
            let chunk = next_l1(va).min(end);
            let (l1, m) =
                ensure_l1(self.ops, self.frames, space.pgd(), VirtAddr::try_new(va)?, TABLE_FLAGS, || holders)?;
            made.push(m);
            for page in (va..chunk).step_by(pvops::PAGE_SIZE as usize) {
                let index = VirtAddr::try_new(page)?.index(Level::L1);
                let frame = self.frames.alloc_zeroed_frame()?;
                if let Err(e) = self.ops.set_entry(self.frames, Level::L1, l1, index, Pte::new(frame, bits)) {
                    if self.ops.read_entry(Level::L1, l1, index).map_or(true, |e| e.is_present()) {
                        leaves.push((l1, index, frame));
                    } else {
                        let _ = self.frames.put_frame(frame);
                    }
                    return Err(e);
                }
                leaves.push((l1, index, frame));
            }
            va = chunk;
        }
        Ok(())
    }

    /// Takes a failed `map_range` back: clears every leaf it wrote and
    /// flushes (one batch), frees their frames, then unlinks and frees the
    /// tables it built, newest first. If a clear is refused, that page and
    /// every table stay in the space (`exit` frees them): nothing still
    /// reachable is freed.
    fn take_back_range(&self, space: &AddressSpace, leaves: &[(Pfn, usize, Pfn)], made: &[NewTables]) {
        let holders = self.holders(space);
        let cleared = self.issued_now(|| {
            let mut first = Ok(());
            for &(l1, index, _) in leaves {
                first = first.and(self.ops.set_entry(self.frames, Level::L1, l1, index, Pte::EMPTY));
            }
            if !holders.is_empty() && !leaves.is_empty() {
                first = first.and(self.ops.flush_tlb_multi(holders, Flush::All));
            }
            first
        });
        let mut all_clear = true;
        for &(l1, index, frame) in leaves {
            if self.ops.read_entry(Level::L1, l1, index).map_or(true, |e| e.is_present()) {
                log::error!("map_range undo: {frame:?} is still mapped ({cleared:?}); left in the space");
                all_clear = false;
                continue;
            }
            if !holders.is_empty() && cleared.is_err() {
                log::error!("map_range undo: no flush after unmapping {frame:?}; frame kept");
                continue;
            }
            let _ = self.frames.put_frame(frame);
        }
        if all_clear {
            for m in made.iter().rev() {
                undo(self.ops, self.frames, space.pgd(), m, holders);
            }
        }
    }

    /// Reserves `pages` demand-zero pages from `addr` with `perm` (an
    /// anonymous `mmap`): nothing is written and no frame taken now; the
    /// first touch of a page backs it with a zeroed frame
    /// ([`Mm::handle_fault`]). Refused ([`PvError::AlreadyMapped`]) if any
    /// page in the range is mapped or already reserved; nothing changes.
    pub fn reserve_zero(&self, space: &AddressSpace, addr: u64, pages: u64, perm: PageFlags) -> Result<(), PvError> {
        self.check_owner(space)?;
        let (start, end) = user_range(addr, pages)?;
        if pages == 0 {
            return Ok(());
        }
        let _locked = self.lock(space);
        self.check_unmapped(space, addr, end)?;
        let mut regions = space.state().regions.lock();
        if let Some(r) = regions.iter().find(|r| r.start < end && r.end > addr) {
            return Err(PvError::AlreadyMapped { addr: VirtAddr::try_new(r.start.max(start.as_u64()))? });
        }
        regions.push(Region { start: addr, end, perm });
        Ok(())
    }

    /// The page-fault entry point for user faults at `addr` (`write`: the
    /// access was a write). A first touch of a demand-zero page backs it; a
    /// write to a copy-on-write page copies it, or makes it writable again
    /// when this space holds the frame's last reference. Anything else is
    /// illegal: [`FaultKill`] says why, the caller kills the process, and
    /// nothing was changed.
    ///
    /// Costs: a copy with the space on this CPU alone is one batch — entry
    /// cleared, local flush, new entry (on Xen one multicall: `mmu_update`,
    /// `INVLPG_LOCAL`, `mmu_update`); with other CPUs holding the space,
    /// two — the clear with the flush of every holder (`INVLPG_MULTI`),
    /// then the new entry. A reuse is one protection change (one hypercall).
    pub fn handle_fault(&self, space: &AddressSpace, addr: u64, write: bool) -> Result<FaultFix, FaultKill> {
        self.check_owner(space).map_err(FaultKill::Backend)?;
        let page = addr & !0xfff;
        let va = user_va(page).map_err(|_| FaultKill::NotMapped)?;
        let _locked = self.lock(space);
        let l1 = find_l1(self.ops, space.pgd(), va).map_err(kill)?;
        let index = va.index(Level::L1);
        let e = match l1 {
            Some(l1) => self.ops.read_entry(Level::L1, l1, index).map_err(kill)?,
            None => Pte::EMPTY,
        };
        if let (Some(l1), true) = (l1, e.is_present()) {
            if !write || e.is_writable() {
                return Ok(FaultFix::Spurious);
            }
            if e.0 & SOFT_COW == 0 {
                return Err(FaultKill::WriteToReadOnly);
            }
            return self.cow_fault(space, va, l1, e);
        }
        let region = region_at(&space.state().regions.lock(), page).ok_or(FaultKill::NotMapped)?;
        if write && !region.perm.writable {
            return Err(FaultKill::WriteToReadOnly);
        }
        self.map_locked(space, page, region.perm.user_bits(), None).map_err(kill)?;
        Ok(FaultFix::ZeroFilled)
    }

    /// A write fault on the copy-on-write leaf `e` (slot `index(va)` of `l1`).
    fn cow_fault(&self, space: &AddressSpace, va: VirtAddr, l1: Pfn, e: Pte) -> Result<FaultFix, FaultKill> {
        let index = va.index(Level::L1);
        let old = e.pfn();
        if self.frames.refcount(old) == 1 {
            // The last holder: no copy. Making it writable needs no flush
            // (a stale read-only entry only faults again, spuriously).
            self.issued_now(|| self.modify_leaf(l1, index, |cur| (cur | flags::WRITABLE) & !SOFT_COW)).map_err(kill)?;
            return Ok(FaultFix::ReusedSoleOwner);
        }
        // One whole-frame copy into a fresh frame (never a table), not
        // zeroed first.
        let new = self.frames.alloc_copy_of(old).map_err(kill)?;
        let bits = (e.flags() | flags::WRITABLE) & !(SOFT_COW | flags::ACCESSED | flags::DIRTY);
        let holders = self.holders(space);
        // Clear and flush, then install (Linux's `wp_page_copy`:
        // `ptep_clear_flush` before `set_pte_at`): no CPU may write the copy
        // while another still reads the old frame through a stale entry.
        // With the space on this CPU alone, one batch (nobody else can see
        // the page until this fault returns). With other holders, two: Xen
        // runs every entry of a multicall whatever an earlier one returned,
        // so an install queued behind a remote flush that failed would
        // still happen.
        let alone = holders.without(self.cpus().this_cpu()).is_empty();
        let clear = || {
            self.ops.set_entry(self.frames, Level::L1, l1, index, Pte::EMPTY)?;
            if !holders.is_empty() {
                self.ops.flush_tlb_multi(holders, Flush::Page(va))?;
            }
            Ok(())
        };
        let install = || self.ops.set_entry(self.frames, Level::L1, l1, index, Pte::new(new, bits));
        let installed = if alone {
            self.issued_now(|| clear().and_then(|()| install()))
        } else {
            self.issued_now(clear).and_then(|()| self.issued_now(install))
        };
        if let Err(err) = installed {
            let Ok(now) = self.ops.read_entry(Level::L1, l1, index) else {
                // Cannot tell whether the copy went in: keep both frames
                // (lost, logged) rather than free one that may be mapped.
                log::error!("COW fault at {:#x}: {err}; entry unreadable, {old:?} and {new:?} kept", va.as_u64());
                return Err(kill(err));
            };
            if !(now.is_present() && now.pfn() == new) {
                // Not installed: the copy goes back, and the old entry too if
                // the clear took effect (the page stays mapped, copy-on-write;
                // a stale copy of it reaches the same frame).
                let _ = self.frames.put_frame(new);
                if !now.is_present()
                    && self.issued_now(|| self.ops.set_entry(self.frames, Level::L1, l1, index, e)).is_err()
                {
                    log::error!("COW fault at {:#x}: old entry not restored; {old:?} keeps a reference", va.as_u64());
                }
                return Err(kill(err));
            }
            // Installed although a record was reported failed (alone: the
            // flush may be what failed): flush everything, or keep the old
            // frame's reference rather than let it be reused.
            if self.issued_now(|| self.ops.flush_tlb_multi(holders, Flush::All)).is_err() {
                log::error!("COW fault at {:#x}: no flush; {old:?} keeps a reference", va.as_u64());
                self.cow_copies.fetch_add(1, Ordering::Relaxed);
                return Err(kill(err));
            }
        }
        if let Err(err) = self.frames.put_frame(old) {
            log::error!("COW fault: dropping the reference on {old:?}: {err}");
        }
        self.cow_copies.fetch_add(1, Ordering::Relaxed);
        Ok(FaultFix::CopiedOnWrite)
    }

    /// Pages copied by copy-on-write faults so far.
    pub fn cow_copies(&self) -> u64 {
        self.cow_copies.load(Ordering::Relaxed)
    }

    /// Changes the permission bits of the live leaf in slot `index` of `l1`
    /// to `f(bits)`, keeping every accessed/dirty bit the hardware sets
    /// before or during the change (Linux's `ptep_modify_prot_start` /
    /// `commit`). Queued in the caller's lazy-MMU section.
    ///
    /// Natively the entry is withdrawn between the two (an access meanwhile
    /// faults, and [`Mm::handle_fault`] waits for the space's lock, which
    /// the caller holds, then finds the new entry: a spurious fault).
    pub(crate) fn modify_leaf(&self, l1: Pfn, index: usize, f: impl FnOnce(u64) -> u64) -> Result<(), PvError> {
        let old = self.ops.protect_start(self.frames, l1, index)?;
        let new = Pte::new(old.pfn(), f(old.flags()));
        self.ops.protect_commit(self.frames, l1, index, old, new)
    }

    /// A copy-on-write fork: the child gets `parent`'s pages without a
    /// copy. Each private page's frame gains a reference and both entries
    /// are write-protected (marked copy-on-write); a shared page
    /// ([`Mm::map_frame`]) is shared as it is; demand-zero reservations are
    /// copied as records. The parent's entries change through the
    /// protection start/commit pair (accessed/dirty bits survive) in one
    /// lazy-MMU batch with one flush of every CPU that may hold the parent
    /// (Linux's `copy_page_range` + `flush_tlb_mm`); the child's tables are
    /// not live yet (plain stores on Xen). On failure the partial child is
    /// destroyed (every reference it took dropped again); parent pages
    /// already write-protected stay so, harmlessly: their first write
    /// reuses the frame.
    pub fn fork_cow(&self, parent: &AddressSpace) -> Result<AddressSpace, PvError> {
        self.check_owner(parent)?;
        let _locked = self.lock(parent);
        let child = self.create()?;
        // The child is in the live list from `create` on: `pin_all` must not
        // pin it while it is being filled with plain stores (it waits here).
        let child_locked = self.lock(&child);
        *child.state().regions.lock() = parent.state().regions.lock().clone();
        let mut pages = Vec::new();
        let walked = self.for_each_user_page(parent.pgd(), &mut |va, l1, index, pte| pages.push((va, l1, index, pte)));
        let holders = self.holders(parent);
        self.ops.lazy_mmu_enter();
        let shared = walked.and_then(|()| {
            let mut protected = false;
            for &(va, l1, index, pte) in &pages {
                let private = pte.0 & SOFT_SHARED == 0;
                let cow = private && (pte.is_writable() || pte.0 & SOFT_COW != 0);
                let mut bits = pte.flags() & !flags::ACCESSED;
                if cow {
                    bits = (bits & !flags::WRITABLE) | SOFT_COW;
                }
                self.map_queued(&child, va.as_u64(), bits, Backing::Shared(pte.pfn()), &mut NewTables::default())?;
                if cow && pte.is_writable() {
                    self.modify_leaf(l1, index, |cur| (cur & !flags::WRITABLE) | SOFT_COW)?;
                    protected = true;
                }
            }
            if protected && !holders.is_empty() {
                self.ops.flush_tlb_multi(holders, Flush::All)?;
            }
            Ok(())
        });
        let left = self.ops.lazy_mmu_leave();
        drop(child_locked);
        match shared.and(left) {
            Ok(()) => Ok(child),
            Err(e) => {
                if let Err((first, child)) = self.exit(child) {
                    if let Err((again, child)) = self.exit(child) {
                        log::error!(
                            "fork_cow: teardown of {:?} refused ({first}, {again}); its frames are lost",
                            child.pgd()
                        );
                    }
                }
                Err(e)
            }
        }
    }

    /// `mprotect` of one page: [`Mm::protect_range`] of 1.
    pub fn protect(&self, space: &AddressSpace, addr: u64, perm: PageFlags) -> Result<(), PvError> {
        self.check_owner(space)?;
        // `protect_range` for one page, without its list of leaves (a heap
        // allocation): one walk, the same checks, writes and flush.
        let va = user_va(addr)?;
        let _locked = self.lock(space);
        let index = va.index(Level::L1);
        let leaf = match find_l1(self.ops, space.pgd(), va)? {
            Some(l1) => Some((l1, self.ops.read_entry(Level::L1, l1, index)?)).filter(|(_, e)| e.is_present()),
            None => None,
        };
        if leaf.is_none() && region_at(&space.state().regions.lock(), addr).is_none() {
            return Err(PvError::NotMapped { addr: va });
        }
        if let Some((l1, e)) = leaf {
            let new = self.with_perm(e, perm);
            if new(e.flags()) != e.flags() {
                let holders = self.holders(space);
                self.issued_now(|| {
                    self.modify_leaf(l1, index, new)?;
                    if !holders.is_empty() {
                        self.ops.flush_tlb_multi(holders, Flush::Range { start: va, pages: 1 })?;
                    }
                    Ok(())
                })?;
            }
        }
        regions_set_perm(&mut space.state().regions.lock(), addr, addr + pvops::PAGE_SIZE, perm);
        Ok(())
    }

    /// The flags of the present leaf `e` given `perm`: a private page shared
    /// by a copy-on-write fork stays write-protected when made writable.
    fn with_perm(&self, e: Pte, perm: PageFlags) -> impl Fn(u64) -> u64 {
        // The reference count only matters for a private page made writable.
        let writable = perm.writable && (e.0 & SOFT_SHARED != 0 || self.frames.refcount(e.pfn()) == 1);
        move |cur: u64| {
            let mut b = cur & !(flags::WRITABLE | flags::NO_EXECUTE | SOFT_COW);
            if perm.writable {
                b |= if writable { flags::WRITABLE } else { SOFT_COW };
            }
            if !perm.executable {
                b |= flags::NO_EXECUTE;
            }
            b
        }
    }

    /// `mprotect`: gives every page of `pages` pages from `addr` the
    /// permission `perm`; returns how many mapped entries were rewritten.
    /// Every page must be mapped or reserved demand-zero, else
    /// [`PvError::NotMapped`] and nothing changes (everything is checked
    /// before anything is written); reservations take `perm` too.
    ///
    /// Each entry changes through the protection start/commit pair, so an
    /// accessed or dirty bit the hardware sets meanwhile is kept; all of
    /// them in one lazy-MMU batch (on Xen ⌈N/32⌉ multicalls, Linux's lazy
    /// batches) with one flush of every CPU that may hold the space. A
    /// private page shared by a copy-on-write fork stays write-protected
    /// when made writable (copy-on-write), never writable in two spaces.
    pub fn protect_range(&self, space: &AddressSpace, addr: u64, pages: u64, perm: PageFlags) -> Result<u64, PvError> {
        self.check_owner(space)?;
        let (start, end) = user_range(addr, pages)?;
        let _locked = self.lock(space);
        let mut leaves = Vec::new();
        {
            let regions = space.state().regions.lock();
            let mut va = addr;
            while va < end {
                let chunk = next_l1(va).min(end);
                let l1 = find_l1(self.ops, space.pgd(), VirtAddr::try_new(va)?)?;
                for page in (va..chunk).step_by(pvops::PAGE_SIZE as usize) {
                    let v = VirtAddr::try_new(page)?;
                    let index = v.index(Level::L1);
                    let e = match l1 {
                        Some(l1) => self.ops.read_entry(Level::L1, l1, index)?,
                        None => Pte::EMPTY,
                    };
                    match (l1, e.is_present()) {
                        (Some(l1), true) => leaves.push((l1, index, e)),
                        _ if region_at(&regions, page).is_some() => {}
                        _ => return Err(PvError::NotMapped { addr: v }),
                    }
                }
                va = chunk;
            }
        }
        let holders = self.holders(space);
        let changed = self.issued_now(|| {
            let mut changed = 0u64;
            for &(l1, index, e) in &leaves {
                let new = self.with_perm(e, perm);
                if new(e.flags()) != e.flags() {
                    self.modify_leaf(l1, index, new)?;
                    changed += 1;
                }
            }
            if changed > 0 && !holders.is_empty() {
                self.ops.flush_tlb_multi(holders, Flush::Range { start, pages })?;
            }
            Ok(changed)
        })?;
        regions_set_perm(&mut space.state().regions.lock(), addr, end, perm);
        Ok(changed)
    }

    /// Pins every live address space not pinned yet (Linux's
    /// `xen_mm_pin_all`, before save: Xen then turns every table's mfns into
    /// pfns). Returns how many it pinned; [`Mm::unpin_all`] undoes exactly
    /// those (an activation in between makes the pin its own). On an error
    /// the others are still pinned and the first error is returned.
    pub fn pin_all(&self) -> Result<u64, PvError> {
        let spaces = self.live().clone();
        let mut pinned = 0;
        let mut first = Ok(());
        for s in spaces {
            let _locked = lock(self.cpus(), &s.lock);
            if s.pinned.load(Ordering::Acquire) || s.save_pinned.load(Ordering::Acquire) || !self.is_live(&s) {
                continue;
            }
            match self.ops.activate_mm(self.frames, s.pgd) {
                Ok(()) => {
                    s.save_pinned.store(true, Ordering::Release);
                    pinned += 1;
                }
                Err(e) => first = first.and(Err(e)),
            }
        }
        first.map(|()| pinned)
    }

    /// Unpins every space [`Mm::pin_all`] pinned and nothing activated
    /// since (Linux's `xen_mm_unpin_all`, after restore). Returns how many.
    pub fn unpin_all(&self) -> Result<u64, PvError> {
        let spaces = self.live().clone();
        let mut unpinned = 0;
        let mut first = Ok(());
        for s in spaces {
            let _locked = lock(self.cpus(), &s.lock);
            if !s.save_pinned.load(Ordering::Acquire) || !self.is_live(&s) {
                continue;
            }
            match self.ops.exit_mm(self.frames, s.pgd) {
                Ok(()) => {
                    s.save_pinned.store(false, Ordering::Release);
                    unpinned += 1;
                }
                Err(e) => first = first.and(Err(e)),
            }
        }
        first.map(|()| unpinned)
    }

    /// True while `s` is on the live list. With `s`'s lock held, it stays
    /// so (`exit` takes that lock before it takes a space off the list):
    /// a snapshot of the list may name a space that exited since.
    fn is_live(&self, s: &Arc<SpaceState>) -> bool {
        self.live().iter().any(|l| Arc::ptr_eq(l, s))
    }

    /// The number of live address spaces (Linux's `pgd_list` length).
    pub fn live_spaces(&self) -> usize {
        self.live().len()
    }
}
