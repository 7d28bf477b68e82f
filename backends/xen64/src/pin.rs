//! Pinning: turning an address space's tables into live, Xen-validated page
//! tables, and back (Linux's `xen_pgd_pin`/`xen_pgd_unpin`, with the seed's
//! user pgd).
//!
//! To pin, every table page of the user half must first lose its writable
//! direct-map alias (notes §6.1), then both top levels are pinned as L4s:
//!
//! ```text
//! one batch: update_va_mapping(RO) × each L3/L2/L1 page below USER_LIMIT
//!            update_va_mapping(RO) kernel pgd, user pgd
//!            mmuext_op { PIN_L4_TABLE kernel pgd, PIN_L4_TABLE user pgd }
//! ```
//!
//! Only the kernel pgd is walked: the user pgd shares its lower tables. The
//! walk stops at `USER_LIMIT` — Xen's hole (256..272) is not ours and the
//! kernel half is init_mm's, pinned since boot. It is one multicall however
//! many table pages there are: Xen caps neither a multicall nor its arrays. Unpin is the reverse: unpin both, then make every
//! page writable again.
//!
//! Failure policy: Xen runs every multicall entry even after one fails, so
//! after a failure the backend undoes exactly the records that took effect,
//! newest first (an unpin before the remaps it protected), and returns the
//! first failure. Metadata changes only after success. Nothing is left
//! half-pinned — unless Xen refuses part of the undo too: then the refused
//! steps stay in effect (pages read-only, a root pinned) while the metadata
//! says unpinned, and the refusal is logged (`run_steps`).

use alloc::vec::Vec;

use pvops::pte::flags;
use pvops::{Level, Mfn, MmServices, Pfn, PvError, ENTRIES_PER_TABLE, USER_PGD_SLOTS};

use crate::backend::Cx;
use crate::multicall::Record;
use crate::{boot, mmuext, user_pgd};

/// One step of a pin or unpin, invertible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Remap { pfn: Pfn, writable: bool },
    Pin { level: Level, mfn: Mfn },
    Unpin { level: Level, mfn: Mfn },
}

impl Step {
    fn record(&self, cx: &Cx<'_>) -> Result<Record, PvError> {
        match *self {
            Step::Remap { pfn, writable } => cx.remap(pfn, writable),
            Step::Pin { level, mfn } => Ok(mmuext::pin(level, mfn)),
            Step::Unpin { mfn, .. } => Ok(mmuext::unpin(mfn)),
        }
    }

    fn inverse(&self) -> Step {
        match *self {
            Step::Remap { pfn, writable } => Step::Remap { pfn, writable: !writable },
            Step::Pin { level, mfn } => Step::Unpin { level, mfn },
            Step::Unpin { level, mfn } => Step::Pin { level, mfn },
        }
    }
}

/// Issues `steps` in order as one multicall, whatever their number (the
/// operation's own batch, not the 32-entry update buffer: Xen has no cap on a
/// multicall); on any failure undoes the steps that took effect and returns
/// the first failure.
fn run_steps(cx: &mut Cx<'_>, steps: &[Step]) -> Result<(), PvError> {
    // Whatever was queued before belongs to someone else (a lazy section's
    // owner, who hears of its failures): out it goes first, unclaimed.
    cx.st.batch.flush_queued(cx.platform.transport);
    let mut records = Vec::with_capacity(steps.len());
    for step in steps {
        records.push(step.record(cx)?);
    }
    let ids: Vec<_> = records.into_iter().map(|r| cx.push_unbounded(r)).collect();
    let report = cx.issue();
    let Some(error) = report.error() else {
        return Ok(());
    };
    let undo: Vec<Step> =
        steps.iter().zip(&ids).filter(|(_, id)| report.completed(**id)).map(|(step, _)| step.inverse()).rev().collect();
    for step in &undo {
        match step.record(cx) {
            Ok(r) => {
                cx.push_unbounded(r);
            }
            Err(e) => log::error!("xen64: cannot undo {step:?}: {e}"),
        }
    }
    if let Some(undo_error) = cx.issue().error() {
        log::error!("xen64: undo after {error} failed too: {undo_error}");
    }
    Err(error)
}

/// The table pages of `pgd`'s user half, each parent before its children.
fn user_half_tables(cx: &Cx<'_>, pgd: Pfn) -> Result<Vec<(Level, Pfn)>, PvError> {
    let mut out = Vec::new();
    for index in 0..USER_PGD_SLOTS {
        collect(cx, Level::L4, pgd, index, &mut out)?;
    }
    Ok(out)
}

/// Collects the table under slot `index` of `table` (a `level` table), and its subtree.
pub(crate) fn collect(
    cx: &Cx<'_>,
    level: Level,
    table: Pfn,
    index: usize,
    out: &mut Vec<(Level, Pfn)>,
) -> Result<(), PvError> {
    let Some(lower) = level.lower() else { return Ok(()) };
    let raw = cx.platform.mem.read_entry(table, index);
    if raw & flags::PRESENT == 0 || raw & flags::HUGE != 0 {
        return Ok(());
    }
    let child = cx
        .platform
        .p2m
        .mfn_to_pfn(Mfn((raw & flags::ADDR_MASK) >> 12))
        .ok_or(PvError::WrongState { what: "a table entry points outside guest memory" })?;
    out.push((lower, child));
    if lower != Level::L1 {
        for i in 0..ENTRIES_PER_TABLE {
            collect(cx, lower, child, i, out)?;
        }
    }
    Ok(())
}

fn set_pinned_all(mm: &dyn MmServices, frames: &[Pfn], pinned: bool) -> Result<(), PvError> {
    for &pfn in frames {
        mm.set_pinned(pfn, pinned)?;
    }
    Ok(())
}

/// `PvMmuOps::activate_mm`: pin `pgd` and its user pgd.
pub(crate) fn pin_mm(cx: &mut Cx<'_>, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
    if !cx.steady(mm)? {
        return Err(PvError::WrongState { what: "activate_mm before frame metadata exists" });
    }
    if mm.is_pinned(pgd)? {
        return Err(PvError::WrongState { what: "activate_mm: pgd already pinned" });
    }
    // The walk below reads table memory: queued links must be in it first.
    cx.st.batch.flush_queued(cx.platform.transport);
    let user = user_pgd::attached(mm, pgd)?;
    if let Some(u) = user {
        if mm.is_pinned(u)? {
            return Err(PvError::WrongState { what: "activate_mm: user pgd already pinned" });
        }
    }
    let mut frames = Vec::new();
    for (_, pfn) in user_half_tables(cx, pgd)? {
        if !mm.is_pinned(pfn)? && !frames.contains(&pfn) {
            frames.push(pfn);
        }
    }
    frames.push(pgd);
    frames.extend(user);
    let mut steps: Vec<Step> = frames.iter().map(|&pfn| Step::Remap { pfn, writable: false }).collect();
    steps.push(Step::Pin { level: Level::L4, mfn: cx.mfn(pgd)? });
    if let Some(u) = user {
        steps.push(Step::Pin { level: Level::L4, mfn: cx.mfn(u)? });
    }
    run_steps(cx, &steps)?;
    if let Err(e) = set_pinned_all(mm, &frames, true) {
        let undo: Vec<Step> = steps.iter().rev().map(Step::inverse).collect();
        let _ = run_steps(cx, &undo);
        let _ = set_pinned_all(mm, &frames, false);
        return Err(e);
    }
    log::trace!("xen64: pinned {pgd:?} ({} table pages)", frames.len());
    Ok(())
}

/// `PvMmuOps::exit_mm`: unpin `pgd` and its user pgd.
pub(crate) fn unpin_mm(cx: &mut Cx<'_>, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
    if !cx.steady(mm)? {
        return Err(PvError::WrongState { what: "exit_mm before frame metadata exists" });
    }
    if pgd == cx.st.batch.published_cr3() {
        return Err(PvError::WrongState { what: "exit_mm of the loaded pgd" });
    }
    if pgd == cx.st.boot_root {
        return Err(PvError::WrongState { what: "exit_mm of init_mm's pgd" });
    }
    if let Some(cpu) = cx.loaded_elsewhere(pgd) {
        return Err(PvError::RootInUse { pgd, cpu });
    }
    if !mm.is_pinned(pgd)? {
        return Err(PvError::WrongState { what: "exit_mm: pgd not pinned" });
    }
    // The walk below reads table memory: queued links must be in it first.
    cx.st.batch.flush_queued(cx.platform.transport);
    let user = user_pgd::attached(mm, pgd)?;
    let mut steps = Vec::new();
    steps.push(Step::Unpin { level: Level::L4, mfn: cx.mfn(pgd)? });
    let mut frames = Vec::new();
    if let Some(u) = user {
        steps.push(Step::Unpin { level: Level::L4, mfn: cx.mfn(u)? });
        frames.push(u);
    }
    for (_, pfn) in user_half_tables(cx, pgd)? {
        if mm.is_pinned(pfn)? && !frames.contains(&pfn) {
            frames.push(pfn);
        }
    }
    frames.push(pgd);
    steps.extend(frames.iter().map(|&pfn| Step::Remap { pfn, writable: true }));
    run_steps(cx, &steps)?;
    if let Err(e) = set_pinned_all(mm, &frames, false) {
        let undo: Vec<Step> = steps.iter().rev().map(Step::inverse).collect();
        let _ = run_steps(cx, &undo);
        let _ = set_pinned_all(mm, &frames, true);
        return Err(e);
    }
    log::trace!("xen64: unpinned {pgd:?} ({} table pages)", frames.len());
    Ok(())
}

/// `PvMmuOps::alloc_pt`: a new table under a pinned root must be read-only
/// before it is linked (Xen validates it then), and is written by hypercall
/// from now on. Queued like any update in lazy mode.
pub(crate) fn alloc_pt(
    cx: &mut Cx<'_>,
    mm: &dyn MmServices,
    root: Pfn,
    _level: Level,
    pfn: Pfn,
) -> Result<(), PvError> {
    if !cx.steady(mm)? {
        return boot::alloc_pt(cx, pfn);
    }
    if !mm.is_pinned(root)? || mm.is_pinned(pfn)? {
        return Ok(());
    }
    let record = cx.remap(pfn, false)?;
    let id = cx.push(record);
    mm.set_pinned(pfn, true)?;
    if cx.lazy() {
        return Ok(());
    }
    let report = cx.issue();
    let Some(error) = report.error() else {
        return Ok(());
    };
    // The flag follows what happened to *this* record (the report covers this
    // operation's records only; outside a lazy section that is just this one).
    if !report.completed(id) {
        let _ = mm.set_pinned(pfn, false);
    }
    Err(error)
}

/// `PvMmuOps::release_pt`: an unlinked table of a pinned tree becomes an
/// ordinary frame again. Issued at once (with anything queued before it,
/// such as the unlinking update), because the caller may free and reuse the
/// frame right after.
pub(crate) fn release_pt(
    cx: &mut Cx<'_>,
    mm: &dyn MmServices,
    _root: Pfn,
    _level: Level,
    pfn: Pfn,
) -> Result<(), PvError> {
    if !cx.steady(mm)? {
        return boot::release_pt(cx, pfn);
    }
    if !mm.is_pinned(pfn)? {
        return Ok(());
    }
    let record = cx.remap(pfn, true)?;
    let id = cx.push(record);
    let report = cx.issue();
    // As in `alloc_pt`: the flag follows this record, whatever else failed.
    if report.completed(id) {
        mm.set_pinned(pfn, false)?;
    }
    report.into_result()
}
