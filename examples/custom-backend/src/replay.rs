//! Replaying a trace onto another backend.

use pvops::{MmServices, PvError, PvMmuOps};

use crate::event::{Event, ParseError};

/// Why a replay stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// Line `line` (1-based) did not parse.
    Parse {
        /// The line number.
        line: usize,
        /// Why.
        error: ParseError,
    },
    /// Line `line` failed on the target backend.
    Op {
        /// The line number.
        line: usize,
        /// The backend's error.
        error: PvError,
    },
}

/// Applies one event to `ops`.
pub fn apply(ops: &dyn PvMmuOps, mm: &dyn MmServices, e: &Event) -> Result<(), PvError> {
    match *e {
        Event::AdoptBootRoot(p) => ops.adopt_boot_root(mm, p),
        Event::MetadataReady => ops.frame_metadata_ready(mm),
        Event::PgdAlloc(p) => ops.pgd_alloc(mm, p),
        Event::PgdFree(p) => ops.pgd_free(mm, p),
        Event::AllocPt(r, l, p) => ops.alloc_pt(mm, r, l, p),
        Event::ReleasePt(r, l, p) => ops.release_pt(mm, r, l, p),
        Event::SetEntry(l, t, i, pte) => ops.set_entry(mm, l, t, i, pte),
        Event::WriteCr3(p) => ops.write_cr3(mm, p),
        Event::ActivateMm(p) => ops.activate_mm(mm, p),
        Event::ExitMm(p) => ops.exit_mm(mm, p),
        Event::FlushAll => ops.flush_tlb_all(),
        Event::FlushOne(va) => ops.flush_tlb_one(va),
        Event::LazyEnter => {
            ops.lazy_mmu_enter();
            Ok(())
        }
        Event::LazyLeave => ops.lazy_mmu_leave(),
        Event::Protect(t, i, new) => {
            let old = ops.protect_start(mm, t, i)?;
            ops.protect_commit(mm, t, i, old, new).inspect_err(|_| {
                // Not left withdrawn: the old entry goes back.
                let _ = ops.protect_commit(mm, t, i, old, old);
            })
        }
        Event::ClearAd(t, i, bits) => ops.clear_accessed_dirty(mm, t, i, bits).map(|_| ()),
    }
}

/// Replays a text trace (as written by `TraceBackend::trace_text`) onto `ops`.
/// Returns the number of events applied. `mm` must hand out the same frames
/// the original run used (the trace names frames, it does not allocate them).
pub fn replay(text: &str, ops: &dyn PvMmuOps, mm: &dyn MmServices) -> Result<usize, ReplayError> {
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e: Event = line.parse().map_err(|error| ReplayError::Parse { line: i + 1, error })?;
        apply(ops, mm, &e).map_err(|error| ReplayError::Op { line: i + 1, error })?;
        n += 1;
    }
    ops.lazy_mmu_flush().map_err(|error| ReplayError::Op { line: n, error })?;
    Ok(n)
}
