//! Walking and building page tables through `PvMmuOps` only.

use pvops::pte::flags;
use pvops::{Level, MmServices, Pfn, Pte, PvError, PvMmuOps, VirtAddr};

/// Flags for intermediate tables: present, writable, user. The leaf decides
/// the real permission.
pub(crate) const TABLE_FLAGS: u64 = flags::PRESENT | flags::WRITABLE | flags::USER;

/// Flags for kernel intermediate tables (no user bit).
pub(crate) const KERNEL_TABLE_FLAGS: u64 = flags::PRESENT | flags::WRITABLE;

/// Finds the L1 table covering `va` below `root`, without building anything.
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

/// Tables created by one [`ensure_l1`] call, so a failure can undo them.
pub(crate) struct NewTables {
    /// (parent table, parent level, slot, new table).
    created: [(Pfn, Level, usize, Pfn); 3],
    len: usize,
}

impl Default for NewTables {
    fn default() -> Self {
        NewTables { created: [(Pfn(0), Level::L4, 0, Pfn(0)); 3], len: 0 }
    }
}

/// Finds or builds the L1 table covering `va` below `root`; returns it and the
/// tables this call created (for [`undo`] if a later step fails). On failure
/// every table this call created is unlinked and freed again.
pub(crate) fn ensure_l1<O: PvMmuOps + ?Sized>(
    ops: &O,
    mm: &dyn MmServices,
    root: Pfn,
    va: VirtAddr,
    table_flags: u64,
) -> Result<(Pfn, NewTables), PvError> {
    let mut made = NewTables::default();
    match build(ops, mm, root, va, table_flags, &mut made) {
        Ok(l1) => Ok((l1, made)),
        Err(e) => {
            undo(ops, mm, root, &made);
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
            let _ = ops.release_pt(mm, root, lower, new);
            let _ = mm.free_frame(new);
            return Err(err);
        }
        made.created[made.len] = (table, level, slot, new);
        made.len += 1;
        table = new;
    }
    Ok(table)
}

/// Unlinks (whether or not the link took effect), releases and frees the
/// tables `made` lists, newest first, and issues what that queued.
pub(crate) fn undo<O: PvMmuOps + ?Sized>(ops: &O, mm: &dyn MmServices, root: Pfn, made: &NewTables) {
    if made.len == 0 {
        return;
    }
    // Best effort: these only fail if the hypervisor already refused us once.
    for &(parent, level, slot, _) in made.created[..made.len].iter().rev() {
        let _ = ops.set_entry(mm, level, parent, slot, Pte::EMPTY);
    }
    let _ = ops.lazy_mmu_flush();
    // The links may have been live (a loaded space): a paging-structure cache
    // may still point at the new tables until a flush (Intel SDM 4.10.4), so
    // flush after unlinking and before the frames can be reused.
    let _ = ops.flush_tlb_all();
    for &(_, level, _, new) in made.created[..made.len].iter().rev() {
        let lower = level.lower().unwrap_or(Level::L1);
        let _ = ops.release_pt(mm, root, lower, new);
        let _ = mm.free_frame(new);
    }
    let _ = ops.lazy_mmu_flush();
}
