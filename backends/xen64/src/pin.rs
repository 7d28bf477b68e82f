//! Pinning: turning an address space's tables into live, Xen-validated page
//! tables, and back (Linux's `xen_pgd_pin`/`xen_pgd_unpin`, with the seed's
//! user pgd).
//!
//! To pin, every table page of the user half must first lose its writable
//! direct-map alias (notes §6.1), then both top levels are pinned as L4s:
//!
//! ```text
//! batch: update_va_mapping(RO) × each L3/L2/L1 page below USER_LIMIT
//!        update_va_mapping(RO) kernel pgd, user pgd
//!        mmuext_op { PIN_L4_TABLE kernel pgd, PIN_L4_TABLE user pgd }
//! ```
//!
//! Only the kernel pgd is walked: the user pgd shares its lower tables. The
//! walk stops at `USER_LIMIT` — Xen's hole (256..272) is not ours and the
//! kernel half is init_mm's, pinned since boot. The records go through the
//! vCPU's fixed batch like any other: one multicall while they fit, and a
//! full batch is issued before the next record (Linux's `xen_pgd_pin` does
//! the same through `xen_mc_entry`), so a pin allocates nothing and takes
//! ⌈entries / capacity⌉ hypercalls. Unpin is the reverse: unpin both, then
//! make every page writable again.
//!
//! A page is marked pinned in frame metadata as its remap is queued (Linux's
//! `PageTestSetPinned` in `xen_pin_page`): that is how a table linked twice is
//! remapped once, without a list of visited pages. So every table below an
//! unpinned pgd must be unpinned, and every table below a pinned one pinned;
//! anything else is refused before a record is queued.
//!
//! Failure policy: a pin stops queuing at the first flush that reports a
//! failure, then undoes exactly the records that took effect (the record of
//! the n-th remapped page is the n-th after the operation's mark; a second
//! walk in the same order finds the pages again) and puts their metadata
//! back, and returns the first failure. Nothing is left half-pinned —
//! unless Xen refuses part of the undo too: then the refused steps stay in
//! effect (pages read-only, a root pinned) while the metadata says
//! unpinned, and the refusal is logged.

use pvops::pte::flags;
use pvops::{Level, Mfn, MmServices, Pfn, PvError, ENTRIES_PER_TABLE, USER_PGD_SLOTS};

use crate::backend::Cx;
use crate::multicall::{Record, RecordId};
use crate::register::XenPlatform;
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

/// Visits the table under slot `index` of `table` (a `level` table), then
/// its subtree, parent before children; `visit` returns `Ok(false)` to stop
/// the walk (then so does this).
pub(crate) fn walk(
    platform: &XenPlatform,
    level: Level,
    table: Pfn,
    index: usize,
    visit: &mut dyn FnMut(Level, Pfn) -> Result<bool, PvError>,
) -> Result<bool, PvError> {
    let Some(lower) = level.lower() else { return Ok(true) };
    let raw = platform.mem.read_entry(table, index);
    if raw & flags::PRESENT == 0 || raw & flags::HUGE != 0 {
        return Ok(true);
    }
    let child = platform
        .p2m
        .mfn_to_pfn(Mfn((raw & flags::ADDR_MASK) >> 12))
        .ok_or(PvError::WrongState { what: "a table entry points outside guest memory" })?;
    if !visit(lower, child)? {
        return Ok(false);
    }
    if lower != Level::L1 {
        for i in 0..ENTRIES_PER_TABLE {
            if !walk(platform, lower, child, i, visit)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// [`walk`] over the table pages of `pgd`'s user half.
fn walk_user_half(
    platform: &XenPlatform,
    pgd: Pfn,
    visit: &mut dyn FnMut(Level, Pfn) -> Result<bool, PvError>,
) -> Result<bool, PvError> {
    for index in 0..USER_PGD_SLOTS {
        if !walk(platform, Level::L4, pgd, index, visit)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Most root steps of one run: two root remaps and two (un)pins.
const ROOT_STEPS: usize = 4;

/// One pin (`pin`) or unpin of `pgd` and its user pgd, as queued so far:
/// enough to undo exactly what took effect, without a list of pages.
struct Run {
    pin: bool,
    pgd: Pfn,
    /// Steps on the roots, with their records, in queue order.
    roots: [Option<(Step, RecordId)>; ROOT_STEPS],
    /// How many of `roots` were queued before the table remaps.
    roots_before_tables: usize,
    /// The first table remap's record; the others follow it.
    first_table: RecordId,
    /// Table remaps queued (one per page whose metadata this run changed).
    tables: u64,
}

impl Run {
    fn new(pin: bool, pgd: Pfn, cx: &Cx<'_>) -> Self {
        Run { pin, pgd, roots: [None; ROOT_STEPS], roots_before_tables: 0, first_table: cx.st.batch.mark(), tables: 0 }
    }

    /// Queues a step on a root; `Ok(false)` when an earlier record of this
    /// operation has failed (nothing queued).
    fn queue_root(&mut self, cx: &mut Cx<'_>, step: Step) -> Result<bool, PvError> {
        let record = step.record(cx)?;
        let slot = self
            .roots
            .iter_mut()
            .find(|s| s.is_none())
            .ok_or(PvError::WrongState { what: "pin: more root steps than planned" })?;
        let Some(id) = cx.st.batch.push_unless_failed(cx.platform.transport, record, cx.mark) else {
            return Ok(false);
        };
        *slot = Some((step, id));
        Ok(true)
    }

    fn start_tables(&mut self, cx: &Cx<'_>) {
        self.roots_before_tables = self.roots.iter().flatten().count();
        self.first_table = cx.st.batch.mark();
    }

    /// Queues a remap of every table page whose metadata says the opposite
    /// of the goal, marking it as it goes; stops at the first flush that
    /// reports a failure of this operation's records (`Ok(false)`).
    fn queue_tables(&mut self, cx: &mut Cx<'_>, mm: &dyn MmServices) -> Result<bool, PvError> {
        self.start_tables(cx);
        let platform = cx.platform;
        let (pin, tables) = (self.pin, &mut self.tables);
        walk_user_half(platform, self.pgd, &mut |_, pfn| {
            if mm.is_pinned(pfn)? == pin {
                // Already remapped by this run: linked twice.
                return Ok(true);
            }
            let record = cx.remap(pfn, !pin)?;
            // Room first: a full batch goes out, and if it reports a failure
            // this page is left alone.
            cx.st.batch.make_room(cx.platform.transport, &record);
            if cx.st.batch.failed_since(cx.mark) {
                return Ok(false);
            }
            mm.set_pinned(pfn, pin)?;
            cx.push(record);
            *tables += 1;
            Ok(true)
        })
    }

    /// Issues what is queued, then queues and issues the inverse of every
    /// step that took effect, newest first (root steps after the tables,
    /// then the tables, then root steps before them), putting the tables'
    /// metadata back. Failures of the undo are logged.
    fn undo(&self, cx: &mut Cx<'_>, mm: &dyn MmServices) {
        let _ = cx.issue();
        let undo_mark = cx.st.batch.mark();
        let (before, after) = self.roots.split_at(self.roots_before_tables);
        for (step, id) in after.iter().rev().flatten() {
            undo_step(cx, *step, *id);
        }
        if self.tables > 0 {
            let platform = cx.platform;
            let mut n = 0;
            let walked = walk_user_half(platform, self.pgd, &mut |_, pfn| {
                if mm.is_pinned(pfn)? != self.pin {
                    // Not changed by this run, or already put back (linked twice).
                    return Ok(true);
                }
                if let Err(e) = mm.set_pinned(pfn, !self.pin) {
                    log::error!("xen64: cannot put back the metadata of {pfn:?}: {e}");
                }
                undo_step(cx, Step::Remap { pfn, writable: !self.pin }, self.first_table.plus(n));
                n += 1;
                Ok(n < self.tables)
            });
            if let Err(e) = walked {
                log::error!("xen64: undo stopped walking {:?}: {e}", self.pgd);
            }
        }
        for (step, id) in before.iter().rev().flatten() {
            undo_step(cx, *step, *id);
        }
        if let Some(e) = cx.st.batch.issue_from(cx.platform.transport, undo_mark).error() {
            log::error!("xen64: undo of a failed {} failed too: {e}", if self.pin { "pin" } else { "unpin" });
        }
    }
}

/// Queues the inverse of `step` if its record `id` took effect.
fn undo_step(cx: &mut Cx<'_>, step: Step, id: RecordId) {
    if !cx.st.batch.completed(id) {
        return;
    }
    let inverse = step.inverse();
    match inverse.record(cx) {
        Ok(r) => {
            cx.push(r);
        }
        Err(e) => log::error!("xen64: cannot undo {step:?}: {e}"),
    }
}

/// Refuses a tree whose table pages are not all `pinned` in metadata (see
/// the module doc: the run marks pages as it goes).
fn check_tables(cx: &Cx<'_>, mm: &dyn MmServices, pgd: Pfn, pinned: bool) -> Result<(), PvError> {
    walk_user_half(cx.platform, pgd, &mut |_, pfn| {
        if mm.is_pinned(pfn)? != pinned {
            return Err(PvError::WrongState {
                what: if pinned {
                    "exit_mm: a table under the pgd is not marked pinned"
                } else {
                    "activate_mm: a table under the pgd is already pinned"
                },
            });
        }
        Ok(true)
    })
    .map(|_| ())
}

/// Marks the roots; on failure puts back the ones marked and returns the error.
fn mark_roots(mm: &dyn MmServices, pgd: Pfn, user: Option<Pfn>, pinned: bool) -> Result<(), PvError> {
    mm.set_pinned(pgd, pinned)?;
    if let Some(u) = user {
        if let Err(e) = mm.set_pinned(u, pinned) {
            let _ = mm.set_pinned(pgd, !pinned);
            return Err(e);
        }
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
    // Whatever was queued before belongs to someone else (a lazy section's
    // owner, who hears of its failures), and the walk reads table memory:
    // out it goes first, unclaimed.
    cx.st.batch.flush_queued(cx.platform.transport);
    let user = user_pgd::attached(mm, pgd)?;
    if let Some(u) = user {
        if mm.is_pinned(u)? {
            return Err(PvError::WrongState { what: "activate_mm: user pgd already pinned" });
        }
    }
    check_tables(cx, mm, pgd, false)?;
    let mut run = Run::new(true, pgd, cx);
    let queued = (|| {
        if !run.queue_tables(cx, mm)? {
            return cx.finish();
        }
        let mut steps = [Some(Step::Remap { pfn: pgd, writable: false }), None, None, None];
        if let Some(u) = user {
            steps[1] = Some(Step::Remap { pfn: u, writable: false });
            steps[3] = Some(Step::Pin { level: Level::L4, mfn: cx.mfn(u)? });
        }
        steps[2] = Some(Step::Pin { level: Level::L4, mfn: cx.mfn(pgd)? });
        for step in steps.into_iter().flatten() {
            if !run.queue_root(cx, step)? {
                break;
            }
        }
        cx.finish()?;
        mark_roots(mm, pgd, user, true)
    })();
    if let Err(e) = queued {
        run.undo(cx, mm);
        return Err(e);
    }
    log::trace!("xen64: pinned {pgd:?} ({} table pages)", run.tables + 1 + u64::from(user.is_some()));
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
    // As in `pin_mm`: earlier records out first, unclaimed.
    cx.st.batch.flush_queued(cx.platform.transport);
    let user = user_pgd::attached(mm, pgd)?;
    check_tables(cx, mm, pgd, true)?;
    let mut run = Run::new(false, pgd, cx);
    let queued = (|| {
        // (A batch holds at least two entries: these cannot fail before the tables.)
        run.queue_root(cx, Step::Unpin { level: Level::L4, mfn: cx.mfn(pgd)? })?;
        if let Some(u) = user {
            run.queue_root(cx, Step::Unpin { level: Level::L4, mfn: cx.mfn(u)? })?;
            run.queue_root(cx, Step::Remap { pfn: u, writable: true })?;
        }
        if run.queue_tables(cx, mm)? {
            run.queue_root(cx, Step::Remap { pfn: pgd, writable: true })?;
        }
        cx.finish()?;
        mark_roots(mm, pgd, user, false)
    })();
    if let Err(e) = queued {
        run.undo(cx, mm);
        return Err(e);
    }
    log::trace!("xen64: unpinned {pgd:?} ({} table pages)", run.tables + 1 + u64::from(user.is_some()));
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
    if !cx.st.batch.completed(id) {
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
    if cx.st.batch.completed(id) {
        mm.set_pinned(pfn, false)?;
    }
    report.into_result()
}
