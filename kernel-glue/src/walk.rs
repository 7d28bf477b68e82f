//! Walking and building page tables through `PvMmuOps` only.

use pvops::pte::flags;
use pvops::{CpuMask, Flush, Level, MmServices, Pfn, Pte, PvError, PvMmuOps, VirtAddr};

/// Flags for intermediate tables: present, writable, user. The leaf decides
/// the real permission.
pub(crate) const TABLE_FLAGS: u64 = flags::PRESENT | flags::WRITABLE | flags::USER;

/// Flags for kernel intermediate tables (no user bit).
pub(crate) const KERNEL_TABLE_FLAGS: u64 = flags::PRESENT | flags::WRITABLE;

/// Finds the L1 table covering `va` below `root`, without building anything.
/// Inlined: it is most of every single-page operation's own work.
#[inline(always)]
pub(crate) fn find_l1<O: PvMmuOps + ?Sized>(ops: &O, root: Pfn, va: VirtAddr) -> Result<Option<Pfn>, PvError> {
    let mut table = root;
    for level in [Level::L4, Level::L3, Level::L2] {
        let e = ops.read_entry(level, table, va.index(level))?;
        if !e.is_present() {
            return Ok(None);
        }
        table = e.pfn();
    }
    Ok(Some(table))
}

/// (parent table, parent level, slot, new table).
type Made = (Pfn, Level, usize, Pfn);

/// Tables created by one [`ensure_l1`] call, so a failure can undo them.
/// `None` beyond `len` (a byte each: `Level`'s niche), so an empty one —
/// every map into existing tables — costs a few stores, not three tuples.
pub(crate) struct NewTables {
    created: [Option<Made>; 3],
    len: usize,
}

impl Default for NewTables {
    #[inline]
    fn default() -> Self {
        NewTables { created: [None; 3], len: 0 }
    }
}

impl NewTables {
    /// Records one more table (at most one per level below L4: three).
    fn push(&mut self, made: Made) {
        if let Some(slot) = self.created.get_mut(self.len) {
            *slot = Some(made);
            self.len += 1;
        }
    }

    /// The tables recorded, newest first.
    fn newest_first(&self) -> impl Iterator<Item = Made> + '_ {
        self.created[..self.len].iter().rev().flatten().copied()
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Finds or builds the L1 table covering `va` below `root`; returns it and the
/// tables this call created (for [`undo`] if a later step fails). On failure
/// every table this call created is unlinked and freed again, flushed from
/// the CPUs `holders` names (asked only then: the caller holds the space's
/// lock, so the answer is the same as before the build).
pub(crate) fn ensure_l1<O: PvMmuOps + ?Sized>(
    ops: &O,
    mm: &dyn MmServices,
    root: Pfn,
    va: VirtAddr,
    table_flags: u64,
    holders: impl FnOnce() -> CpuMask,
) -> Result<(Pfn, NewTables), PvError> {
    let mut made = NewTables::default();
    match build(ops, mm, root, va, table_flags, &mut made) {
        Ok(l1) => Ok((l1, made)),
        Err(e) => {
            undo(ops, mm, root, &made, holders());
            Err(e)
        }
    }
}

fn build<O: PvMmuOps + ?Sized>(
    ops: &O,
    mm: &dyn MmServices,
    root: Pfn,
    va: VirtAddr,
    table_flags: u64,
    made: &mut NewTables,
) -> Result<Pfn, PvError> {
    let mut table = root;
    for level in [Level::L4, Level::L3, Level::L2] {
        let slot = va.index(level);
        let e = ops.read_entry(level, table, slot)?;
        if e.is_present() {
            table = e.pfn();
            continue;
        }
        let lower = level.lower().ok_or(PvError::WrongState { what: "no level below L1" })?;
        let new = mm.alloc_zeroed_frame()?;
        if let Err(err) = ops.alloc_pt(mm, root, lower, new) {
            // Its own step may have taken effect even though the call failed.
            let _ = ops.release_pt(mm, root, lower, new);
            let _ = mm.free_frame(new);
            return Err(err);
        }
        if let Err(err) = ops.set_entry(mm, level, table, slot, Pte::new(new, table_flags)) {
            // A refused link normally changed nothing; if the entry points at
            // the new table anyway (a half-done pgd pair whose repair was
            // refused too), it is part of the space now: record it, so the
            // caller's undo unlinks it before anything is freed.
            if links(ops, level, table, slot) {
                made.push((table, level, slot, new));
                return Err(err);
            }
            let _ = ops.release_pt(mm, root, lower, new);
            let _ = mm.free_frame(new);
            return Err(err);
        }
        made.push((table, level, slot, new));
        table = new;
    }
    Ok(table)
}

/// Unlinks (whether or not the link took effect), releases and frees the
/// tables `made` lists, newest first. Each unlink is issued and its result
/// checked before the next: if the hypervisor refuses one, that table and
/// the older ones above it stay linked, part of the space (`Mm::exit` frees them) —
/// unlinking a parent that still holds a child would orphan the child. The
/// tables unlinked are released and freed only after a TLB flush on every
/// CPU in `holders` (those that may have the space loaded): they may have
/// been reachable from a loaded root, and a paging-structure cache may still
/// hold them (a failure path: the full flush costs nothing that matters). Runs in a lazy-MMU section of its own, so it neither reports
/// nor swallows failures of an enclosing section's updates. One whose
/// release is refused is kept (lost, logged), never freed while still a
/// table; so is everything if the flush is refused.
#[cold]
#[inline(never)]
pub(crate) fn undo<O: PvMmuOps + ?Sized>(ops: &O, mm: &dyn MmServices, root: Pfn, made: &NewTables, holders: CpuMask) {
    if made.is_empty() {
        return;
    }
    ops.lazy_mmu_enter();
    let mut unlinked = 0;
    for (parent, level, slot, new) in made.newest_first() {
        // These only fail if the hypervisor already refused us once. A failed
        // unlink counts as not done even if the slot reads empty: a mirrored
        // slot (xen64's user pgd) may still hold the link.
        if ops.set_entry(mm, level, parent, slot, Pte::EMPTY).and(ops.lazy_mmu_flush()).is_err() {
            log::error!("undo: {new:?} is still linked at slot {slot} of {parent:?}; it and the tables above it stay");
            break;
        }
        unlinked += 1;
    }
    let flushed = ops.flush_tlb_multi(holders, Flush::All).and(ops.lazy_mmu_flush());
    for (_, level, _, new) in made.newest_first().take(unlinked) {
        let lower = level.lower().unwrap_or(Level::L1);
        if let Err(e) = flushed {
            log::error!("undo: no TLB flush after unlinking {new:?} ({e}); frame kept");
            continue;
        }
        if let Err(e) = ops.release_pt(mm, root, lower, new) {
            // Still a table to the hypervisor: never hand it out as a frame.
            log::error!("undo: release of {new:?} refused ({e}); frame kept");
            continue;
        }
        let _ = mm.free_frame(new);
    }
    let _ = ops.lazy_mmu_flush();
    let _ = ops.lazy_mmu_leave();
}

/// True when slot `slot` of the `level` table `parent` still links the table
/// a build put there (or cannot be read: assume the worst). The slot was
/// empty before the build linked it, so anything present there is that table.
fn links<O: PvMmuOps + ?Sized>(ops: &O, level: Level, parent: Pfn, slot: usize) -> bool {
    ops.read_entry(level, parent, slot).map_or(true, |e| e.is_present())
}
