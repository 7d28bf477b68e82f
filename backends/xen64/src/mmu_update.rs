//! Writing and reading page-table entries (Linux's `xen_set_pte`/`set_pmd`/
//! `set_pud`/`set_pgd`).
//!
//! The rule (notes §6.3): a live table is read-only to the guest, so
//!
//! * an *unpinned* table (not yet part of a pinned tree) is written directly
//!   through the direct map — cheap, and legal because nothing validated
//!   refers to it;
//! * a *pinned* table is written with `mmu_update` at the entry's machine
//!   address; Xen validates the new entry. The record is queued and issued
//!   at once, or at lazy-MMU leave/flush.
//!
//! At L4, a slot below `USER_PGD_SLOTS` is mirrored into the user pgd: both
//! direct stores when unpinned, both `mmu_update`s in one array when pinned,
//! all-or-nothing: a user-slot failure puts the kernel slot back (see
//! `multicall::Batch::repair_pairs`). Only if Xen refuses that too are the
//! two slots left different (kernel new, user old); the error is returned and
//! logged.
//! Slots at and above `USER_LIMIT` never reach the user pgd, and Xen's slots
//! 256..272 are refused.

use pvops::{Level, Mfn, MmServices, Pfn, Pte, PvError, ENTRIES_PER_TABLE};

use crate::abi::{MmuUpdate, MMU_NORMAL_PT_UPDATE, XEN_L4_END, XEN_L4_FIRST};
use crate::backend::{check_slot, Cx};
use crate::multicall::{Batch, Pair, Record};
use crate::register::XenPlatform;
use crate::{boot, p2m, user_pgd};

/// `MMU_NORMAL_PT_UPDATE` of slot `index` of the table in machine frame `table`.
pub(crate) fn entry_update(table: Mfn, index: usize, val: u64) -> Record {
    debug_assert!(index < ENTRIES_PER_TABLE);
    Record::Mmu(MmuUpdate { ptr: (table.addr() + index as u64 * 8) | MMU_NORMAL_PT_UPDATE, val })
}

/// `PvMmuOps::set_entry`.
pub(crate) fn set_entry(
    cx: &mut Cx<'_>,
    mm: &dyn MmServices,
    level: Level,
    table: Pfn,
    index: usize,
    pte: Pte,
) -> Result<(), PvError> {
    check_slot(level, index)?;
    let raw = p2m::encode(cx.platform.p2m, pte)?;
    if !cx.steady(mm)? {
        return boot::set_entry(cx, table, index, raw);
    }
    let pinned = mm.is_pinned(table)?;
    let user = if level == Level::L4 { user_pgd::get_user_pgd(mm, table, index)? } else { None };
    if !pinned {
        if let Some(u) = user {
            if mm.is_pinned(u.pgd)? {
                return Err(PvError::WrongState { what: "user pgd pinned while its kernel pgd is not" });
            }
        }
        cx.store(table, index, raw);
        if let Some(u) = user {
            cx.store(u.pgd, u.index, raw);
        }
        return Ok(());
    }
    let table_mfn = cx.mfn(table)?;
    let kernel = entry_update(table_mfn, index, raw);
    match user {
        None => {
            cx.push(kernel);
        }
        Some(u) => {
            // Both updates in one array (same flush, kernel first): if the
            // kernel record fails Xen stops there and neither changes; if the
            // user record fails, the batch puts the kernel slot back.
            let user_update = entry_update(cx.mfn(u.pgd)?, u.index, raw);
            let (k, uid) = cx.st.batch.push_two(cx.platform.transport, kernel, user_update);
            let Record::Mmu(MmuUpdate { ptr: kernel_ptr, .. }) = kernel else {
                return Err(PvError::WrongState { what: "entry_update is an mmu_update" });
            };
            cx.st.batch.add_pair(Pair { kernel: k, user: uid, kernel_ptr, user_pgd: u.pgd, index });
        }
    }
    cx.issue_unless_lazy()
}

/// `PvMmuOps::read_entry`: reading is always allowed (the alias is readable).
///
/// Reads see queued writes: in a lazy-MMU section an `mmu_update` may still be
/// in the batch, and a caller that links a table and then walks through it
/// (two `Mm::map`s in one section) must find the link, or it would build and
/// link a second table over the first.
pub(crate) fn read_entry(
    platform: &XenPlatform,
    batch: &Batch,
    level: Level,
    table: Pfn,
    index: usize,
) -> Result<Pte, PvError> {
    if index >= ENTRIES_PER_TABLE {
        return Err(PvError::BadIndex { index });
    }
    if level == Level::L4 && (XEN_L4_FIRST..XEN_L4_END).contains(&index) {
        // Xen's own entries name frames the guest cannot name.
        return Ok(Pte::EMPTY);
    }
    if batch.has_queued_updates() {
        if let Some(mfn) = platform.p2m.pfn_to_mfn(table) {
            let Record::Mmu(MmuUpdate { ptr, .. }) = entry_update(mfn, index, 0) else {
                return Err(PvError::WrongState { what: "entry_update is an mmu_update" });
            };
            if let Some(raw) = batch.queued_value(ptr) {
                return Ok(p2m::decode(platform.p2m, raw));
            }
        }
    }
    Ok(p2m::decode(platform.p2m, platform.mem.read_entry(table, index)))
}
