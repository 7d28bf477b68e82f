//! Hypercall batching, after Linux's `arch/x86/xen/multicalls.c`.
//!
//! Page-table work comes in bursts (a pin is dozens of remaps and two pins;
//! a `munmap` is hundreds of pte updates). Each trap into Xen is expensive,
//! so records queue in a [`Batch`] and go out as one `multicall`:
//!
//! * fixed capacity, like Linux's per-CPU buffer: [`MAX_ENTRIES`] multicall
//!   entries and [`MAX_ARG_BYTES`] of argument records; a record that does
//!   not fit flushes the batch first (the reason is counted);
//! * consecutive `mmu_update` (or `mmuext_op`) records extend the previous
//!   entry's array instead of taking a new entry;
//! * a batch of exactly one entry is issued as that plain hypercall;
//! * callbacks (publishing the current cr3) run only after the batch has
//!   really been issued, and only if the record they depend on took effect.
//!
//! Unlike Linux, every entry's result is checked: a failure becomes a
//! [`PvError::Hypercall`] naming the record, and the ids of the records that
//! did not take effect are kept so callers (pin/unpin) can undo exactly the
//! ones that did. Xen runs every entry of a multicall whatever an earlier one
//! returned, and stops an array at its first failing record (`done`).

use alloc::vec::Vec;

use pvops::{OpStats, Pfn, PvError};

use crate::abi::{mmuext, Call, MmuUpdate, MmuextOp, MMUEXT_OP_BYTES, MMU_UPDATE_BYTES};
use crate::transport::{HypercallTransport, Outcome};

/// Multicall entries per batch (Linux: `MC_BATCH`).
pub const MAX_ENTRIES: usize = 32;
/// Bytes of argument records per batch (Linux: `MC_ARGS`).
pub const MAX_ARG_BYTES: usize = 512;
/// Post-issue callbacks per batch.
pub const MAX_CALLBACKS: usize = 32;

/// Names one queued record, across flushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RecordId(u64);

/// One request, before it is placed in a batch entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// One `mmu_update` request.
    Mmu(MmuUpdate),
    /// One `mmuext_op` request.
    Ext(MmuextOp),
    /// One `update_va_mapping` (arguments travel in registers: no arg bytes).
    Uvm {
        /// Virtual address whose L1 entry changes.
        va: u64,
        /// New L1 entry (machine form).
        val: u64,
        /// `uvmf::*`.
        flags: u64,
    },
}

impl Record {
    fn arg_bytes(&self) -> usize {
        match self {
            Record::Mmu(_) => MMU_UPDATE_BYTES,
            Record::Ext(_) => MMUEXT_OP_BYTES,
            Record::Uvm { .. } => 0,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Entry {
    Mmu { start: usize, len: usize, first: RecordId },
    Ext { start: usize, len: usize, first: RecordId },
    Uvm { va: u64, val: u64, flags: u64, id: RecordId },
}

impl Entry {
    fn first_and_len(&self) -> (RecordId, usize) {
        match *self {
            Entry::Mmu { first, len, .. } | Entry::Ext { first, len, .. } => (first, len),
            Entry::Uvm { id, .. } => (id, 1),
        }
    }
}

/// Work that must wait until the batch has been issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Callback {
    /// The cr3 the backend reports becomes `pgd` once record `after`
    /// (the `NEW_BASEPTR`) has taken effect.
    PublishCr3 {
        /// The new root.
        pgd: Pfn,
        /// The `NEW_BASEPTR` record.
        after: RecordId,
    },
}

/// Why batches were flushed (observability, like Linux's `mc_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushCounts {
    /// Flushed because an operation (or lazy-mode leave/flush) asked.
    pub explicit: u64,
    /// Flushed because all entries were used.
    pub entries_full: u64,
    /// Flushed because the argument space was used up.
    pub args_full: u64,
    /// Flushed because the callback slots were used up.
    pub callbacks_full: u64,
}

/// What issued records did, accumulated until taken.
#[derive(Debug, Default)]
#[must_use = "a report may hold a hypercall failure"]
pub(crate) struct Report {
    failed: Vec<RecordId>,
    error: Option<PvError>,
}

impl Report {
    /// True when record `id` (issued since the report began) took effect.
    pub(crate) fn completed(&self, id: RecordId) -> bool {
        !self.failed.contains(&id)
    }

    /// The first failure, if any.
    pub(crate) fn error(&self) -> Option<PvError> {
        self.error
    }

    /// `Err` with the first failure.
    pub(crate) fn into_result(self) -> Result<(), PvError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A multicall batch under construction.
#[derive(Debug)]
pub(crate) struct Batch {
    mmu: Vec<MmuUpdate>,
    ext: Vec<MmuextOp>,
    entries: Vec<Entry>,
    arg_bytes: usize,
    callbacks: Vec<Callback>,
    next_id: u64,
    /// Id of the first record still queued (everything below is issued).
    queued_from: u64,
    report: Report,
    published_cr3: Pfn,
    pub(crate) stats: OpStats,
    pub(crate) flushes: FlushCounts,
}

#[derive(Clone, Copy, Debug)]
enum Reason {
    Explicit,
    EntriesFull,
    ArgsFull,
    CallbacksFull,
}

impl Batch {
    /// An empty batch; `cr3` is the root loaded now.
    pub(crate) fn new(cr3: Pfn) -> Self {
        Batch {
            mmu: Vec::with_capacity(MAX_ARG_BYTES / MMU_UPDATE_BYTES),
            ext: Vec::with_capacity(MAX_ARG_BYTES / MMUEXT_OP_BYTES),
            entries: Vec::with_capacity(MAX_ENTRIES),
            arg_bytes: 0,
            callbacks: Vec::with_capacity(MAX_CALLBACKS),
            next_id: 0,
            queued_from: 0,
            report: Report::default(),
            published_cr3: cr3,
            stats: OpStats::default(),
            flushes: FlushCounts::default(),
        }
    }

    /// The root whose `NEW_BASEPTR` was last seen to take effect.
    pub(crate) fn published_cr3(&self) -> Pfn {
        self.published_cr3
    }

    /// True when nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn merges(&self, record: &Record) -> bool {
        matches!(
            (self.entries.last(), record),
            (Some(Entry::Mmu { .. }), Record::Mmu(_)) | (Some(Entry::Ext { .. }), Record::Ext(_))
        )
    }

    /// Queues a record, flushing first if it does not fit.
    pub(crate) fn push(&mut self, transport: &dyn HypercallTransport, record: Record) -> RecordId {
        let bytes = record.arg_bytes();
        if self.arg_bytes + bytes > MAX_ARG_BYTES {
            self.flush(transport, Reason::ArgsFull);
        } else if !self.merges(&record) && self.entries.len() == MAX_ENTRIES {
            self.flush(transport, Reason::EntriesFull);
        }
        self.push_unbounded(record)
    }

    /// Queues a record without the fixed capacity: for one operation whose
    /// records must go out in a single multicall however many there are (pin
    /// and unpin). Xen itself puts no cap on a multicall's length — it preempts
    /// a long one with a continuation — nor on an `mmu_update`/`mmuext_op` array.
    pub(crate) fn push_unbounded(&mut self, record: Record) -> RecordId {
        let bytes = record.arg_bytes();
        let merges = self.merges(&record);
        let id = RecordId(self.next_id);
        self.next_id += 1;
        self.arg_bytes += bytes;
        match record {
            Record::Mmu(u) => {
                self.mmu.push(u);
                match self.entries.last_mut() {
                    Some(Entry::Mmu { len, .. }) if merges => *len += 1,
                    _ => self.entries.push(Entry::Mmu { start: self.mmu.len() - 1, len: 1, first: id }),
                }
            }
            Record::Ext(op) => {
                self.ext.push(op);
                match self.entries.last_mut() {
                    Some(Entry::Ext { len, .. }) if merges => *len += 1,
                    _ => self.entries.push(Entry::Ext { start: self.ext.len() - 1, len: 1, first: id }),
                }
            }
            Record::Uvm { va, val, flags } => self.entries.push(Entry::Uvm { va, val, flags, id }),
        }
        id
    }

    /// Adds a callback to run once the batch is issued.
    pub(crate) fn add_callback(&mut self, transport: &dyn HypercallTransport, callback: Callback) {
        if self.callbacks.len() == MAX_CALLBACKS {
            self.flush(transport, Reason::CallbacksFull);
        }
        let Callback::PublishCr3 { after, .. } = callback;
        if after.0 < self.queued_from {
            // Its record went out with that flush: run it now.
            self.run_callback(callback);
        } else {
            self.callbacks.push(callback);
        }
    }

    /// Issues everything queued and returns what happened since the last
    /// report was taken (including automatic flushes).
    pub(crate) fn issue(&mut self, transport: &dyn HypercallTransport) -> Report {
        self.flush(transport, Reason::Explicit);
        core::mem::take(&mut self.report)
    }

    /// [`Batch::issue`], as a result.
    pub(crate) fn finish(&mut self, transport: &dyn HypercallTransport) -> Result<(), PvError> {
        self.issue(transport).into_result()
    }

    /// One call on its own, now (after anything queued, to keep order).
    pub(crate) fn raw(&mut self, transport: &dyn HypercallTransport, record: Record) -> Result<(), PvError> {
        if !self.is_empty() {
            self.flush(transport, Reason::Explicit);
        }
        self.push(transport, record);
        self.finish(transport)
    }

    fn run_callback(&mut self, callback: Callback) {
        match callback {
            Callback::PublishCr3 { pgd, after } => {
                if self.report.completed(after) {
                    self.published_cr3 = pgd;
                }
            }
        }
    }

    fn flush(&mut self, transport: &dyn HypercallTransport, reason: Reason) {
        if self.entries.is_empty() {
            return;
        }
        match reason {
            Reason::Explicit => self.flushes.explicit += 1,
            Reason::EntriesFull => self.flushes.entries_full += 1,
            Reason::ArgsFull => self.flushes.args_full += 1,
            Reason::CallbacksFull => self.flushes.callbacks_full += 1,
        }
        let calls: Vec<Call<'_>> = self
            .entries
            .iter()
            .map(|e| match *e {
                Entry::Mmu { start, len, .. } => Call::MmuUpdate(&self.mmu[start..start + len]),
                Entry::Ext { start, len, .. } => Call::MmuextOp(&self.ext[start..start + len]),
                Entry::Uvm { va, val, flags, .. } => Call::UpdateVaMapping { va, val, flags },
            })
            .collect();
        let mut outcomes = alloc::vec![Outcome::default(); calls.len()];
        self.stats.hypercalls += 1;
        let mut multicall_status = 0;
        if let [only] = calls.as_slice() {
            outcomes[0] = transport.call(only);
        } else {
            self.stats.multicall_entries += calls.len() as u64;
            multicall_status = transport.multicall(&calls, &mut outcomes);
        }
        self.stats.mmu_updates += self.mmu.len() as u64;
        self.stats.mmuext_ops += self.ext.len() as u64;
        self.stats.update_va_mappings +=
            calls.iter().filter(|c| matches!(c, Call::UpdateVaMapping { .. })).count() as u64;
        drop(calls);

        let mut batch_index = 0;
        for (entry, outcome) in self.entries.iter().zip(&outcomes) {
            let (first, len) = entry.first_and_len();
            let outcome = if multicall_status != 0 { Outcome::failed(multicall_status, 0) } else { *outcome };
            if !outcome.is_ok() {
                let done = (outcome.done as usize).min(len.saturating_sub(1));
                for k in done..len {
                    self.report.failed.push(RecordId(first.0 + k as u64));
                }
                if self.report.error.is_none() {
                    let op = if multicall_status != 0 {
                        "multicall"
                    } else {
                        match *entry {
                            Entry::Mmu { .. } => "mmu_update",
                            Entry::Ext { start, .. } => {
                                self.ext.get(start + done).map_or("mmuext_op", |op| mmuext::name(op.cmd))
                            }
                            Entry::Uvm { .. } => "update_va_mapping",
                        }
                    };
                    self.report.error =
                        Some(PvError::Hypercall { op, index: batch_index + done, code: outcome.status });
                    log::warn!(
                        "xen64: {op} failed with {} (record {} of the batch)",
                        outcome.status,
                        batch_index + done
                    );
                }
            }
            batch_index += len;
        }
        log::trace!("xen64: issued {} entries ({} records)", self.entries.len(), batch_index);

        self.entries.clear();
        self.mmu.clear();
        self.ext.clear();
        self.arg_bytes = 0;
        self.queued_from = self.next_id;
        let callbacks = core::mem::take(&mut self.callbacks);
        for cb in &callbacks {
            self.run_callback(*cb);
        }
        self.callbacks = callbacks;
        self.callbacks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::mmuext;
    use std::vec::Vec as StdVec;

    /// Records the shape of every trap: `(is_multicall, [records per entry])`.
    #[derive(Default)]
    struct Recorder {
        traps: std::sync::Mutex<StdVec<(bool, StdVec<usize>)>>,
        fail_entry: Option<usize>,
    }

    fn shape(c: &Call<'_>) -> usize {
        match c {
            Call::MmuUpdate(r) => r.len(),
            Call::MmuextOp(r) => r.len(),
            Call::UpdateVaMapping { .. } => 1,
        }
    }

    impl HypercallTransport for Recorder {
        fn call(&self, call: &Call<'_>) -> Outcome {
            self.traps.lock().unwrap().push((false, std::vec![shape(call)]));
            if self.fail_entry == Some(0) {
                return Outcome::failed(-22, 0);
            }
            Outcome::ok(shape(call) as u32)
        }
        fn multicall(&self, calls: &[Call<'_>], outcomes: &mut [Outcome]) -> i64 {
            self.traps.lock().unwrap().push((true, calls.iter().map(shape).collect()));
            for (i, (c, o)) in calls.iter().zip(outcomes.iter_mut()).enumerate() {
                *o = if self.fail_entry == Some(i) { Outcome::failed(-16, 1) } else { Outcome::ok(shape(c) as u32) };
            }
            0
        }
    }

    fn mmu(i: u64) -> Record {
        Record::Mmu(MmuUpdate { ptr: i * 8, val: i })
    }
    fn ext() -> Record {
        Record::Ext(MmuextOp { cmd: mmuext::TLB_FLUSH_LOCAL, arg1: 0, arg2: 0 })
    }
    fn uvm() -> Record {
        Record::Uvm { va: 0x1000, val: 0, flags: 0 }
    }

    #[test]
    fn consecutive_mmu_updates_merge_into_one_entry_issued_as_a_plain_call() {
        let t = Recorder::default();
        let mut b = Batch::new(Pfn(0));
        for i in 0..5 {
            b.push(&t, mmu(i));
        }
        b.finish(&t).unwrap();
        assert_eq!(*t.traps.lock().unwrap(), std::vec![(false, std::vec![5])]);
        assert_eq!(b.stats.hypercalls, 1);
        assert_eq!(b.stats.multicall_entries, 0);
    }

    #[test]
    fn different_kinds_take_separate_entries_of_one_multicall() {
        let t = Recorder::default();
        let mut b = Batch::new(Pfn(0));
        b.push(&t, uvm());
        b.push(&t, mmu(1));
        b.push(&t, mmu(2));
        b.push(&t, ext());
        b.push(&t, ext());
        b.push(&t, mmu(3));
        b.finish(&t).unwrap();
        assert_eq!(*t.traps.lock().unwrap(), std::vec![(true, std::vec![1, 2, 2, 1])]);
        assert_eq!(b.stats.multicall_entries, 4);
    }

    #[test]
    fn a_full_entry_table_flushes_before_the_next_entry() {
        let t = Recorder::default();
        let mut b = Batch::new(Pfn(0));
        for _ in 0..MAX_ENTRIES + 1 {
            b.push(&t, uvm());
        }
        assert_eq!(t.traps.lock().unwrap().len(), 1, "flushed when the 33rd entry arrived");
        b.finish(&t).unwrap();
        let traps = t.traps.lock().unwrap();
        assert_eq!(traps[0].1.len(), MAX_ENTRIES);
        assert_eq!(traps[1], (false, std::vec![1]));
        assert_eq!(b.flushes.entries_full, 1);
    }

    #[test]
    fn full_argument_space_flushes_even_when_merging() {
        let t = Recorder::default();
        let mut b = Batch::new(Pfn(0));
        let per_batch = MAX_ARG_BYTES / MMU_UPDATE_BYTES;
        for i in 0..per_batch as u64 + 1 {
            b.push(&t, mmu(i));
        }
        b.finish(&t).unwrap();
        let traps = t.traps.lock().unwrap();
        assert_eq!(traps.len(), 2);
        assert_eq!(traps[0], (false, std::vec![per_batch]));
        assert_eq!(b.flushes.args_full, 1);
    }

    #[test]
    fn a_failing_entry_is_reported_with_its_record_index_and_the_undone_records() {
        let t = Recorder { fail_entry: Some(1), ..Recorder::default() };
        let mut b = Batch::new(Pfn(0));
        let a = b.push(&t, uvm());
        let m1 = b.push(&t, mmu(1));
        let m2 = b.push(&t, mmu(2));
        let m3 = b.push(&t, mmu(3));
        let c = b.push(&t, ext());
        let report = b.issue(&t);
        assert_eq!(report.error(), Some(PvError::Hypercall { op: "mmu_update", index: 2, code: -16 }));
        assert!(report.completed(a) && report.completed(m1) && report.completed(c));
        assert!(!report.completed(m2) && !report.completed(m3));
    }

    #[test]
    fn callbacks_run_after_issue_and_only_if_their_record_took_effect() {
        let t = Recorder::default();
        let mut b = Batch::new(Pfn(1));
        let id = b.push(&t, ext());
        b.add_callback(&t, Callback::PublishCr3 { pgd: Pfn(7), after: id });
        assert_eq!(b.published_cr3(), Pfn(1), "not before the batch is issued");
        b.finish(&t).unwrap();
        assert_eq!(b.published_cr3(), Pfn(7));

        let t = Recorder { fail_entry: Some(0), ..Recorder::default() };
        let id = b.push(&t, ext());
        b.add_callback(&t, Callback::PublishCr3 { pgd: Pfn(9), after: id });
        assert!(b.finish(&t).is_err());
        assert_eq!(b.published_cr3(), Pfn(7));
    }

    #[test]
    fn an_empty_batch_issues_nothing() {
        let t = Recorder::default();
        let mut b = Batch::new(Pfn(0));
        b.finish(&t).unwrap();
        assert!(t.traps.lock().unwrap().is_empty());
    }
}
