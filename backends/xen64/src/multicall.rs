//! Hypercall batching, after Linux's `arch/x86/xen/multicalls.c`.
//!
//! Page-table work comes in bursts (a pin is dozens of remaps and two pins;
//! a `munmap` is hundreds of pte updates). Each trap into Xen is expensive,
//! so records queue in a [`Batch`] and go out as one `multicall`:
//!
//! * fixed capacity, like Linux's per-CPU `mc_buffer`: a number of multicall
//!   entries chosen when the backend is made ([`MAX_ENTRIES`] by default) and
//!   [`MAX_ARG_BYTES`] of argument records; a record that does not fit
//!   flushes the batch first (the reason is counted) — always, pins included
//!   (Linux's `__xen_mc_entry` flushes a full `mc_buffer` the same way);
//! * no heap after the batch is made: every buffer (records, entries, the
//!   call list handed to the transport, the per-entry outcomes, callbacks,
//!   pairs, failures) is allocated once with its final capacity and never
//!   grows (`tests/integration/tests/no_heap.rs` counts);
//! * consecutive `mmu_update` (or `mmuext_op`) records extend the previous
//!   entry's array instead of taking a new entry;
//! * a batch of exactly one entry is issued as that plain hypercall;
//! * callbacks (publishing the current cr3) run only after the batch has
//!   really been issued, and only if the record they depend on took effect.
//!
//! Unlike Linux, every entry's result is checked: a failure becomes a
//! [`PvError::Hypercall`] naming the record, and the records that did not
//! take effect are kept (as id ranges) so callers (pin/unpin) can undo exactly
//! the ones that did ([`Batch::completed`]). Xen runs every entry of a
//! multicall whatever an earlier one returned, and stops an array at its
//! first failing record (`done`). A multicall that fails itself
//! (`xen/common/multicall.c` `do_multicall`: -EFAULT copying entry k) has
//! still run entries 0..k, whose results count; entries the transport leaves
//! at [`Outcome::NOT_RUN`] did not take effect.
//!
//! Failures belong to whoever queued the failing record: every operation
//! claims only the records it queued (ids from its own mark on, see
//! [`Batch::issue_from`]); a failure of a record queued earlier in a lazy-MMU
//! section, issued because a later record found the batch full, stays in the
//! batch until that section's owner flushes or leaves. The failure table is
//! fixed too: past its capacity, failures older than the running operation
//! are merged (their owners still hear that something failed, perhaps with an
//! earlier record's error), and only then does the newest lose precision.
//!
//! A *pair* (a kernel pgd slot and its user pgd twin, see `mmu_update`) is
//! all-or-nothing: if the user record fails after the kernel record took
//! effect, the kernel slot is put back to the user slot's value in a follow-up
//! `mmu_update` before the flush returns.

use alloc::vec::Vec;

use pvops::{OpStats, Pfn, PhysMem, PvError};

use crate::abi::{mmuext, Call, MmuUpdate, MmuextOp, MMUEXT_OP_BYTES, MMU_UPDATE_BYTES};
use crate::transport::{HypercallTransport, Outcome};

/// Multicall entries per batch by default (Linux's `MC_BATCH` is 32; see
/// `docs/PERFORMANCE.md` for the measurement behind this choice).
pub const MAX_ENTRIES: usize = 32;
/// Bytes of argument records per batch (Linux: `MC_ARGS`).
pub const MAX_ARG_BYTES: usize = 512;
/// Post-issue callbacks per batch.
pub const MAX_CALLBACKS: usize = 32;
/// Pairs per batch: each is two `mmu_update` records, so the argument space
/// holds at most this many ([`Batch::push_two`] flushes first otherwise).
const MAX_PAIRS: usize = MAX_ARG_BYTES / (2 * MMU_UPDATE_BYTES);
/// Smallest accepted entry capacity: a pair of base pointers, or of pgd
/// slots, must fit one batch.
pub(crate) const MIN_ENTRIES: usize = 2;

/// Bytes of buffers one vCPU's batch holds with `entries` multicall entries
/// (allocated once, at the vCPU's first call): entries, the call list and
/// outcomes handed to the transport, argument records, callbacks, pairs and
/// failures, and the batch itself.
pub fn batch_bytes(entries: usize) -> usize {
    use core::mem::size_of;
    let entries = entries.max(MIN_ENTRIES);
    size_of::<Batch>()
        + entries * (size_of::<Entry>() + size_of::<Call<'static>>() + size_of::<Outcome>())
        + (MAX_ARG_BYTES / MMU_UPDATE_BYTES) * size_of::<MmuUpdate>()
        + (MAX_ARG_BYTES / MMUEXT_OP_BYTES) * size_of::<MmuextOp>()
        + MAX_CALLBACKS * size_of::<Callback>()
        + MAX_PAIRS * size_of::<Pair>()
        + failure_slots(entries) * size_of::<Failure>()
}

/// Failures one batch keeps: one flush can fail in every entry and every
/// pair's repair; room for that, the multicall's own status and two older
/// failures (merged when the table is full).
fn failure_slots(entries: usize) -> usize {
    entries + MAX_PAIRS + 3
}

/// Names one queued record, across flushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RecordId(u64);

impl RecordId {
    /// The first id ever given: a mark covering every record.
    pub(crate) const FIRST: RecordId = RecordId(0);

    /// The id `n` records after this one.
    pub(crate) fn plus(self, n: u64) -> RecordId {
        RecordId(self.0 + n)
    }
}

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

impl FlushCounts {
    /// Adds `other`'s counts (a sum over vCPUs).
    pub(crate) fn add(&mut self, other: FlushCounts) {
        self.explicit += other.explicit;
        self.entries_full += other.entries_full;
        self.args_full += other.args_full;
        self.callbacks_full += other.callbacks_full;
    }
}

/// What a claim found: the first failure among the claimed records.
#[derive(Clone, Copy, Debug, Default)]
#[must_use = "a report may hold a hypercall failure"]
pub(crate) struct Report {
    error: Option<PvError>,
}

impl Report {
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

/// Records `first..end` failed with `error` (`undone`: none of them took
/// effect; otherwise an error with no record to blame, such as a multicall
/// status). Records `claimed_from..end` have been reported to their owner.
#[derive(Clone, Copy, Debug)]
struct Failure {
    first: u64,
    end: u64,
    undone: bool,
    error: PvError,
    claimed_from: u64,
}

impl Failure {
    /// True when some records at or after `mark` are not reported yet.
    fn unclaimed_from(&self, mark: u64) -> bool {
        self.claimed_from > self.first.max(mark)
    }
}

/// The failures of issued records, in issue order, until claimed (and, once
/// claimed, until the operation that claimed them ends: it may still ask
/// which of its records took effect). Fixed capacity, see the module doc.
#[derive(Debug)]
struct Failures {
    list: Vec<Failure>,
    cap: usize,
    /// Failures that found the table full with nothing older to merge:
    /// one range, the first error (never counted as undone).
    lost: Option<Failure>,
    /// The running operation's mark: failures below it may be merged.
    op_mark: u64,
}

impl Failures {
    fn with_capacity(capacity: usize) -> Self {
        Failures { list: Vec::with_capacity(capacity), cap: capacity, lost: None, op_mark: 0 }
    }

    fn all(&self) -> impl Iterator<Item = &Failure> {
        self.list.iter().chain(self.lost.as_ref())
    }

    fn add(&mut self, first: u64, end: u64, undone: bool, error: PvError) {
        let new = Failure { first, end, undone, error, claimed_from: end };
        if let Some(last) = self.list.last_mut() {
            if last.end == first && last.undone == undone && last.error == error && last.claimed_from == last.end {
                // One failure reported entry by entry (a stopped multicall).
                last.end = end;
                last.claimed_from = end;
                return;
            }
        }
        if self.list.len() == self.cap {
            // Merge the two oldest failures of earlier operations (their
            // owners only learn that something failed, and the first error).
            let older = self.list.iter().take_while(|f| f.end <= self.op_mark).count();
            if older >= 2 {
                let second = self.list.remove(1);
                let merged = &mut self.list[0];
                let unclaimed = merged.claimed_from > merged.first || second.claimed_from > second.first;
                merged.end = merged.end.max(second.end);
                merged.undone |= second.undone;
                // Still unclaimed in part: claimable again as a whole.
                merged.claimed_from = if unclaimed { merged.end } else { merged.first };
            } else {
                log::warn!("xen64: failure table full; records {first}..{end} reported without precision");
                let lost = self.lost.get_or_insert(Failure { undone: false, ..new });
                lost.first = lost.first.min(first);
                lost.end = lost.end.max(end);
                lost.claimed_from = lost.end;
                return;
            }
        }
        self.list.push(new);
    }

    fn completed(&self, id: u64) -> bool {
        !self.all().any(|f| f.undone && (f.first..f.end).contains(&id))
    }

    /// The error of the failure holding record `id`, if it failed.
    fn error_of(&self, id: u64) -> Option<PvError> {
        self.all().find(|f| f.undone && (f.first..f.end).contains(&id)).map(|f| f.error)
    }

    fn unclaimed_from(&self, mark: u64) -> bool {
        self.all().any(|f| f.unclaimed_from(mark))
    }

    /// Claims every unreported failure of records `mark` and later.
    fn claim_from(&mut self, mark: u64) -> Report {
        let mut error = None;
        for f in self.list.iter_mut().chain(self.lost.as_mut()) {
            if f.unclaimed_from(mark) {
                error = error.or(Some(f.error));
                f.claimed_from = f.first.max(mark);
            }
        }
        Report { error }
    }

    /// A new operation begins at `mark`: failures already reported are dropped.
    fn begin(&mut self, mark: u64) {
        self.list.retain(|f| f.claimed_from > f.first);
        if self.lost.is_some_and(|f| f.claimed_from <= f.first) {
            self.lost = None;
        }
        self.op_mark = mark;
    }
}

/// A kernel pgd slot update and its user pgd twin, queued together.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pair {
    /// The kernel pgd's record.
    pub(crate) kernel: RecordId,
    /// The user pgd's record (right after `kernel`, in the same array).
    pub(crate) user: RecordId,
    /// `MmuUpdate::ptr` of the kernel slot.
    pub(crate) kernel_ptr: u64,
    /// The user pgd and slot, read back to undo the kernel half.
    pub(crate) user_pgd: Pfn,
    /// The slot (same in both).
    pub(crate) index: usize,
}

/// A multicall batch under construction: one per vCPU, every buffer
/// allocated when it is made.
pub(crate) struct Batch {
    /// Multicall entries per batch.
    capacity: usize,
    mmu: Vec<MmuUpdate>,
    ext: Vec<MmuextOp>,
    entries: Vec<Entry>,
    /// The call list handed to the transport: empty between flushes, its
    /// allocation reused by each flush (see [`recycle`]).
    calls: Vec<Call<'static>>,
    /// Per-entry outcomes of the last flush.
    outcomes: Vec<Outcome>,
    arg_bytes: usize,
    callbacks: Vec<Callback>,
    pairs: Vec<Pair>,
    next_id: u64,
    /// Id of the first record still queued (everything below is issued).
    queued_from: u64,
    failures: Failures,
    published_cr3: Pfn,
    /// Table memory, to read a user pgd slot back when its pair is undone.
    mem: &'static dyn PhysMem,
    pub(crate) stats: OpStats,
    pub(crate) flushes: FlushCounts,
}

impl core::fmt::Debug for Batch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Batch")
            .field("entries", &self.entries.len())
            .field("capacity", &self.capacity)
            .field("next_id", &self.next_id)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug)]
enum Reason {
    Explicit,
    EntriesFull,
    ArgsFull,
    CallbacksFull,
}

/// Empties `calls` and hands back its allocation typed for another borrow.
/// `Vec<Call<'a>>` and `Vec<Call<'b>>` differ only in lifetimes (same size
/// and alignment), so the standard library's in-place `collect` reuses the
/// buffer and its capacity instead of allocating; the allocation test
/// (`no_heap.rs`) fails if a toolchain ever stops doing so.
fn recycle<'b>(mut calls: Vec<Call<'_>>) -> Vec<Call<'b>> {
    calls.clear();
    calls.into_iter().map(|_| Call::UpdateVaMapping { va: 0, val: 0, flags: 0 }).collect()
}

impl Batch {
    /// An empty batch of `capacity` entries (at least [`MIN_ENTRIES`]);
    /// `cr3` is the root loaded now. The only allocations the batch makes.
    pub(crate) fn new(cr3: Pfn, mem: &'static dyn PhysMem, capacity: usize) -> Self {
        let capacity = capacity.max(MIN_ENTRIES);
        Batch {
            capacity,
            mmu: Vec::with_capacity(MAX_ARG_BYTES / MMU_UPDATE_BYTES),
            ext: Vec::with_capacity(MAX_ARG_BYTES / MMUEXT_OP_BYTES),
            entries: Vec::with_capacity(capacity),
            calls: Vec::with_capacity(capacity),
            outcomes: Vec::with_capacity(capacity),
            arg_bytes: 0,
            callbacks: Vec::with_capacity(MAX_CALLBACKS),
            pairs: Vec::with_capacity(MAX_PAIRS),
            next_id: 0,
            queued_from: 0,
            failures: Failures::with_capacity(failure_slots(capacity)),
            published_cr3: cr3,
            mem,
            stats: OpStats::default(),
            flushes: FlushCounts::default(),
        }
    }

    /// An operation begins (its first record will be [`Batch::mark`]):
    /// failures reported to earlier operations are forgotten.
    pub(crate) fn begin_op(&mut self) {
        self.failures.begin(self.next_id);
    }

    /// The root whose `NEW_BASEPTR` was last seen to take effect.
    pub(crate) fn published_cr3(&self) -> Pfn {
        self.published_cr3
    }

    /// Sets the reported root when the caller knows better than a callback
    /// (an undo of a switch that could not be undone).
    pub(crate) fn set_published_cr3(&mut self, pgd: Pfn) {
        self.published_cr3 = pgd;
    }

    /// The id the next queued record gets: an operation's mark.
    pub(crate) fn mark(&self) -> RecordId {
        RecordId(self.next_id)
    }

    /// True unless record `id` was issued in this operation (or is an
    /// unclaimed record of an earlier one) and did not take effect. A
    /// record still queued counts as completed.
    pub(crate) fn completed(&self, id: RecordId) -> bool {
        self.failures.completed(id.0)
    }

    /// True when a record from `mark` on has failed and not been claimed
    /// yet (a pin stops queuing at its first failing flush).
    pub(crate) fn failed_since(&self, mark: RecordId) -> bool {
        self.failures.unclaimed_from(mark.0)
    }

    /// True when records of kind `mmu_update` are queued: lets `read_entry`
    /// skip the p2m lookup and the search in the common case (a fast path only).
    pub(crate) fn has_queued_updates(&self) -> bool {
        !self.mmu.is_empty()
    }

    /// The value the last queued `mmu_update` writes at machine address
    /// `ptr` (whatever its command bits), if one is queued: what a read must
    /// see before the batch is issued.
    pub(crate) fn queued_value(&self, ptr: u64) -> Option<u64> {
        self.mmu.iter().rev().find(|u| u.ptr & !7 == ptr & !7).map(|u| u.val)
    }

    fn merges(&self, record: &Record) -> bool {
        matches!(
            (self.entries.last(), record),
            (Some(Entry::Mmu { .. }), Record::Mmu(_)) | (Some(Entry::Ext { .. }), Record::Ext(_))
        )
    }

    /// Queues a record, flushing first if it does not fit.
    pub(crate) fn push(&mut self, transport: &dyn HypercallTransport, record: Record) -> RecordId {
        self.make_room(transport, &record);
        self.queue(record)
    }

    /// Flushes the batch if `record` does not fit in it.
    pub(crate) fn make_room(&mut self, transport: &dyn HypercallTransport, record: &Record) {
        if self.arg_bytes + record.arg_bytes() > MAX_ARG_BYTES {
            self.flush(transport, Reason::ArgsFull);
        } else if !self.merges(record) && self.entries.len() == self.capacity {
            self.flush(transport, Reason::EntriesFull);
        }
    }

    /// [`Batch::push`], unless making room issued a record from `mark` on
    /// that failed: then nothing is queued (a pin stops at its first
    /// failing batch instead of queuing more work to undo).
    pub(crate) fn push_unless_failed(
        &mut self,
        transport: &dyn HypercallTransport,
        record: Record,
        mark: RecordId,
    ) -> Option<RecordId> {
        self.make_room(transport, &record);
        if self.failed_since(mark) {
            return None;
        }
        Some(self.queue(record))
    }

    /// Queues two records that must go out in the same flush (a pair, or a
    /// kernel and user base pointer): flushes first if both do not fit.
    pub(crate) fn push_two(
        &mut self,
        transport: &dyn HypercallTransport,
        a: Record,
        b: Record,
    ) -> (RecordId, RecordId) {
        let bytes = a.arg_bytes() + b.arg_bytes();
        if self.arg_bytes + bytes > MAX_ARG_BYTES {
            self.flush(transport, Reason::ArgsFull);
        } else if self.entries.len() + 2 > self.capacity {
            self.flush(transport, Reason::EntriesFull);
        }
        (self.queue(a), self.queue(b))
    }

    /// Registers a pair queued with [`Batch::push_two`] (which left room:
    /// a batch's argument space holds at most `MAX_PAIRS` pairs).
    pub(crate) fn add_pair(&mut self, pair: Pair) {
        debug_assert!(self.pairs.len() < MAX_PAIRS);
        self.pairs.push(pair);
    }

    /// Places a record that fits (the callers checked the capacity).
    fn queue(&mut self, record: Record) -> RecordId {
        let bytes = record.arg_bytes();
        let id = RecordId(self.next_id);
        self.next_id += 1;
        self.arg_bytes += bytes;
        match record {
            Record::Mmu(u) => {
                self.mmu.push(u);
                match self.entries.last_mut() {
                    // Consecutive records of one kind share an entry (see `merges`).
                    Some(Entry::Mmu { len, .. }) => *len += 1,
                    _ => self.entries.push(Entry::Mmu { start: self.mmu.len() - 1, len: 1, first: id }),
                }
            }
            Record::Ext(op) => {
                self.ext.push(op);
                match self.entries.last_mut() {
                    Some(Entry::Ext { len, .. }) => *len += 1,
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

    /// Issues everything queued; returns what happened to records `first`
    /// and later (the caller's own), including in earlier automatic flushes.
    /// What happened to older records stays for their owner.
    pub(crate) fn issue_from(&mut self, transport: &dyn HypercallTransport, first: RecordId) -> Report {
        self.flush(transport, Reason::Explicit);
        self.failures.claim_from(first.0)
    }

    /// Issues nothing; returns what is known about records `first` and later.
    pub(crate) fn take_from(&mut self, first: RecordId) -> Report {
        self.failures.claim_from(first.0)
    }

    /// Issues everything queued, claiming nothing (the failures stay for
    /// their owners).
    pub(crate) fn flush_queued(&mut self, transport: &dyn HypercallTransport) {
        self.flush(transport, Reason::Explicit);
    }

    /// One call on its own, now (after anything queued, to keep order); its
    /// result alone.
    pub(crate) fn raw(&mut self, transport: &dyn HypercallTransport, record: Record) -> Result<(), PvError> {
        // (An empty batch flushes nothing.)
        self.flush(transport, Reason::Explicit);
        let id = self.push(transport, record);
        self.issue_from(transport, id).into_result()
    }

    fn run_callback(&mut self, callback: Callback) {
        match callback {
            Callback::PublishCr3 { pgd, after } => {
                if self.completed(after) {
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
        let mut calls = recycle(core::mem::take(&mut self.calls));
        calls.extend(self.entries.iter().map(|e| match *e {
            Entry::Mmu { start, len, .. } => Call::MmuUpdate(&self.mmu[start..start + len]),
            Entry::Ext { start, len, .. } => Call::MmuextOp(&self.ext[start..start + len]),
            Entry::Uvm { va, val, flags, .. } => Call::UpdateVaMapping { va, val, flags },
        }));
        // The transport overwrites the outcome of every entry Xen ran; the
        // others keep this marker (see `HypercallTransport::multicall`).
        let mut outcomes = core::mem::take(&mut self.outcomes);
        outcomes.clear();
        outcomes.resize(calls.len(), Outcome::NOT_RUN);
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
        self.calls = recycle(calls);

        let mut batch_index = 0;
        let mut all_ran = true;
        for (entry, outcome) in self.entries.iter().zip(&outcomes) {
            let (first, len) = entry.first_and_len();
            if !outcome.ran() {
                // Xen stopped the multicall before this entry: none of it ran.
                let code = if multicall_status != 0 { multicall_status } else { -crate::abi::errno::EFAULT };
                let error = PvError::Hypercall { op: "multicall", index: batch_index, code };
                if all_ran {
                    log::warn!("xen64: multicall failed with {code} before record {batch_index} of the batch");
                }
                all_ran = false;
                self.failures.add(first.0, first.0 + len as u64, true, error);
            } else if !outcome.is_ok() {
                let done = (outcome.done as usize).min(len.saturating_sub(1));
                let op = match *entry {
                    Entry::Mmu { .. } => "mmu_update",
                    Entry::Ext { start, .. } => {
                        self.ext.get(start + done).map_or("mmuext_op", |op| mmuext::name(op.cmd))
                    }
                    Entry::Uvm { .. } => "update_va_mapping",
                };
                let error = PvError::Hypercall { op, index: batch_index + done, code: outcome.status };
                self.failures.add(first.0 + done as u64, first.0 + len as u64, true, error);
                log::warn!("xen64: {op} failed with {} (record {} of the batch)", outcome.status, batch_index + done);
            }
            batch_index += len;
        }
        self.outcomes = outcomes;
        if multicall_status != 0 && all_ran {
            // A transport that reports a failed multicall but every entry as
            // run breaks its contract; the last record's owner hears of it.
            log::error!("xen64: multicall returned {multicall_status} but ran every entry");
            let error = PvError::Hypercall { op: "multicall", index: batch_index, code: multicall_status };
            self.failures.add(self.next_id - 1, self.next_id, false, error);
        }
        log::trace!("xen64: issued {} entries ({} records)", self.entries.len(), batch_index);

        self.repair_pairs(transport);
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

    /// Undoes the kernel half of every pair whose user half failed: the kernel
    /// slot is set back to what the user slot holds (its value before the
    /// pair, since the twins agreed), in one `mmu_update`. A kernel record
    /// undone this way is reported as not taken effect, with the user
    /// record's error. If Xen refuses the undo, the slots differ (kernel new,
    /// user old): logged, and the operation's error stands.
    fn repair_pairs(&mut self, transport: &dyn HypercallTransport) {
        let mut repairs = [MmuUpdate::default(); MAX_PAIRS];
        let mut broken = [None::<Pair>; MAX_PAIRS];
        let mut n = 0;
        for p in &self.pairs {
            if n < MAX_PAIRS && self.completed(p.kernel) && !self.completed(p.user) {
                repairs[n] = MmuUpdate { ptr: p.kernel_ptr, val: self.mem.read_entry(p.user_pgd, p.index) };
                broken[n] = Some(*p);
                n += 1;
            }
        }
        self.pairs.clear();
        if n == 0 {
            return;
        }
        let outcome = transport.call(&Call::MmuUpdate(&repairs[..n]));
        self.stats.hypercalls += 1;
        self.stats.mmu_updates += n as u64;
        let done = if outcome.is_ok() { n } else { (outcome.done as usize).min(n) };
        for (k, pair) in broken[..n].iter().flatten().enumerate() {
            if k < done {
                if let Some(error) = self.failures.error_of(pair.user.0) {
                    self.failures.add(pair.kernel.0, pair.kernel.0 + 1, true, error);
                }
            } else {
                log::error!(
                    "xen64: cannot undo kernel pgd slot {} after its user twin failed ({}): the two pgds differ",
                    pair.index,
                    outcome.status
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::mmuext;
    use std::sync::Mutex;
    use std::vec::Vec as StdVec;

    /// Records the shape of every trap: `(is_multicall, [records per entry])`.
    #[derive(Default)]
    struct Recorder {
        traps: Mutex<StdVec<(bool, StdVec<usize>)>>,
        /// Every `mmu_update` record seen, in order.
        mmu_seen: Mutex<StdVec<MmuUpdate>>,
        /// One shot: entry `.0` of the next trap fails after `.1` records.
        fail: Mutex<Option<(usize, u32)>>,
        /// One shot: the next multicall stops (-EFAULT) before entry `k`.
        stop_at: Mutex<Option<usize>>,
    }

    impl Recorder {
        fn failing(entry: usize, done: u32) -> Self {
            Recorder { fail: Mutex::new(Some((entry, done))), ..Recorder::default() }
        }
        fn run(&self, i: usize, c: &Call<'_>, fail: Option<(usize, u32)>) -> Outcome {
            if let Call::MmuUpdate(r) = c {
                self.mmu_seen.lock().unwrap().extend_from_slice(r);
            }
            match fail {
                Some((e, done)) if e == i => Outcome::failed(-16, done),
                _ => Outcome::ok(shape(c) as u32),
            }
        }
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
            let fail = self.fail.lock().unwrap().take();
            self.run(0, call, fail)
        }
        fn multicall(&self, calls: &[Call<'_>], outcomes: &mut [Outcome]) -> i64 {
            self.traps.lock().unwrap().push((true, calls.iter().map(shape).collect()));
            let fail = self.fail.lock().unwrap().take();
            let stop = self.stop_at.lock().unwrap().take();
            for (i, (c, o)) in calls.iter().zip(outcomes.iter_mut()).enumerate() {
                if stop == Some(i) {
                    return -14;
                }
                *o = self.run(i, c, fail);
            }
            0
        }
    }

    /// Table memory for pair repairs: word `index` of frame `pfn` reads `pfn * 1000 + index`.
    struct FakeMem;
    impl PhysMem for FakeMem {
        fn read_entry(&self, pfn: Pfn, index: usize) -> u64 {
            pfn.0 * 1000 + index as u64
        }
        fn write_entry(&self, _pfn: Pfn, _index: usize, _value: u64) {}
        fn compare_exchange_entry(&self, pfn: Pfn, index: usize, _: u64, _: u64) -> Result<u64, u64> {
            Err(self.read_entry(pfn, index))
        }
    }
    static FAKE_MEM: FakeMem = FakeMem;

    fn batch(cr3: u64) -> Batch {
        Batch::new(Pfn(cr3), &FAKE_MEM, MAX_ENTRIES)
    }

    fn finish(b: &mut Batch, t: &Recorder) -> Result<(), PvError> {
        b.issue_from(t, RecordId::FIRST).into_result()
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
        let mut b = batch(0);
        for i in 0..5 {
            b.push(&t, mmu(i));
        }
        finish(&mut b, &t).unwrap();
        assert_eq!(*t.traps.lock().unwrap(), std::vec![(false, std::vec![5])]);
        assert_eq!(b.stats.hypercalls, 1);
        assert_eq!(b.stats.multicall_entries, 0);
    }

    #[test]
    fn different_kinds_take_separate_entries_of_one_multicall() {
        let t = Recorder::default();
        let mut b = batch(0);
        b.push(&t, uvm());
        b.push(&t, mmu(1));
        b.push(&t, mmu(2));
        b.push(&t, ext());
        b.push(&t, ext());
        b.push(&t, mmu(3));
        finish(&mut b, &t).unwrap();
        assert_eq!(*t.traps.lock().unwrap(), std::vec![(true, std::vec![1, 2, 2, 1])]);
        assert_eq!(b.stats.multicall_entries, 4);
    }

    #[test]
    fn a_full_entry_table_flushes_before_the_next_entry() {
        let t = Recorder::default();
        let mut b = batch(0);
        for _ in 0..MAX_ENTRIES + 1 {
            b.push(&t, uvm());
        }
        assert_eq!(t.traps.lock().unwrap().len(), 1, "flushed when the 33rd entry arrived");
        finish(&mut b, &t).unwrap();
        let traps = t.traps.lock().unwrap();
        assert_eq!(traps[0].1.len(), MAX_ENTRIES);
        assert_eq!(traps[1], (false, std::vec![1]));
        assert_eq!(b.flushes.entries_full, 1);
    }

    #[test]
    fn full_argument_space_flushes_even_when_merging() {
        let t = Recorder::default();
        let mut b = batch(0);
        let per_batch = MAX_ARG_BYTES / MMU_UPDATE_BYTES;
        for i in 0..per_batch as u64 + 1 {
            b.push(&t, mmu(i));
        }
        finish(&mut b, &t).unwrap();
        let traps = t.traps.lock().unwrap();
        assert_eq!(traps.len(), 2);
        assert_eq!(traps[0], (false, std::vec![per_batch]));
        assert_eq!(b.flushes.args_full, 1);
    }

    #[test]
    fn push_two_never_splits_the_two_across_flushes() {
        let t = Recorder::default();
        let mut b = batch(0);
        for _ in 0..MAX_ENTRIES - 1 {
            b.push(&t, uvm());
        }
        let (x, y) = b.push_two(&t, ext(), mmu(1));
        assert_eq!(t.traps.lock().unwrap().len(), 1, "flushed first: only one entry was left");
        assert!(x.0 >= b.queued_from && y.0 >= b.queued_from, "both still queued");
        finish(&mut b, &t).unwrap();
        assert_eq!(t.traps.lock().unwrap()[1], (true, std::vec![1, 1]));
    }

    #[test]
    fn a_failing_entry_is_reported_with_its_record_index_and_the_undone_records() {
        let t = Recorder::failing(1, 1);
        let mut b = batch(0);
        let a = b.push(&t, uvm());
        let m1 = b.push(&t, mmu(1));
        let m2 = b.push(&t, mmu(2));
        let m3 = b.push(&t, mmu(3));
        let c = b.push(&t, ext());
        let report = b.issue_from(&t, RecordId::FIRST);
        assert_eq!(report.error(), Some(PvError::Hypercall { op: "mmu_update", index: 2, code: -16 }));
        assert!(b.completed(a) && b.completed(m1) && b.completed(c));
        assert!(!b.completed(m2) && !b.completed(m3));
    }

    #[test]
    fn a_multicall_stopped_at_entry_k_keeps_the_results_of_the_entries_before_it() {
        let t = Recorder::default();
        *t.stop_at.lock().unwrap() = Some(2);
        let mut b = batch(0);
        let a = b.push(&t, uvm());
        let m = b.push(&t, mmu(1));
        let c = b.push(&t, ext());
        let d = b.push(&t, uvm());
        let report = b.issue_from(&t, RecordId::FIRST);
        assert!(b.completed(a) && b.completed(m), "entries 0 and 1 ran");
        assert!(!b.completed(c) && !b.completed(d), "entries 2 and 3 did not");
        assert_eq!(report.error(), Some(PvError::Hypercall { op: "multicall", index: 2, code: -14 }));
    }

    #[test]
    fn a_failure_in_an_automatic_flush_belongs_to_the_record_owner_not_the_next_caller() {
        let t = Recorder::failing(0, 0);
        let mut b = batch(0);
        // Owner X queues MAX_ENTRIES entries; the first one will fail.
        let x = b.mark();
        for _ in 0..MAX_ENTRIES {
            b.push(&t, uvm());
        }
        // Caller Y's record finds the batch full: X's records go out now.
        let y = b.mark();
        b.push(&t, ext());
        let mine = b.issue_from(&t, y);
        assert_eq!(mine.error(), None, "Y's own record took effect");
        let owners = b.issue_from(&t, x);
        assert!(matches!(owners.error(), Some(PvError::Hypercall { op: "update_va_mapping", .. })), "{owners:?}");
        assert_eq!(b.issue_from(&t, RecordId::FIRST).error(), None, "claimed once");
    }

    #[test]
    fn a_pair_whose_user_half_fails_puts_the_kernel_half_back_from_the_user_slot() {
        // One array [kernel, user]: Xen stops after the first record.
        let t = Recorder::failing(0, 1);
        let mut b = batch(0);
        let (k, u) = b.push_two(&t, mmu(1), mmu(2));
        b.add_pair(Pair { kernel: k, user: u, kernel_ptr: 0x5008, user_pgd: Pfn(7), index: 1 });
        let report = b.issue_from(&t, RecordId::FIRST);
        assert!(!b.completed(u));
        assert!(!b.completed(k), "the kernel half counts as undone");
        assert!(report.error().is_some());
        let seen = t.mmu_seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "the pair, then one repair");
        assert_eq!(seen[2], MmuUpdate { ptr: 0x5008, val: 7001 }, "kernel slot := user slot");
        assert_eq!(t.traps.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_pair_that_fully_succeeds_or_fully_fails_needs_no_repair() {
        for fail in [None, Some((0, 0))] {
            let t = Recorder { fail: Mutex::new(fail), ..Recorder::default() };
            let mut b = batch(0);
            let (k, u) = b.push_two(&t, mmu(1), mmu(2));
            b.add_pair(Pair { kernel: k, user: u, kernel_ptr: 0x5008, user_pgd: Pfn(7), index: 1 });
            let _ = b.issue_from(&t, RecordId::FIRST);
            assert_eq!(t.traps.lock().unwrap().len(), 1, "{fail:?}: no repair call");
        }
    }

    #[test]
    fn callbacks_run_after_issue_and_only_if_their_record_took_effect() {
        let t = Recorder::default();
        let mut b = batch(1);
        let id = b.push(&t, ext());
        b.add_callback(&t, Callback::PublishCr3 { pgd: Pfn(7), after: id });
        assert_eq!(b.published_cr3(), Pfn(1), "not before the batch is issued");
        finish(&mut b, &t).unwrap();
        assert_eq!(b.published_cr3(), Pfn(7));

        let t = Recorder::failing(0, 0);
        let id = b.push(&t, ext());
        b.add_callback(&t, Callback::PublishCr3 { pgd: Pfn(9), after: id });
        assert!(finish(&mut b, &t).is_err());
        assert_eq!(b.published_cr3(), Pfn(7));
    }

    fn busy(index: usize) -> PvError {
        PvError::Hypercall { op: "mmu_update", index, code: -16 }
    }

    #[test]
    fn a_full_failure_table_merges_older_operations_failures_and_keeps_the_running_ones_exact() {
        let mut f = Failures::with_capacity(4);
        f.begin(0);
        for i in 0..3u64 {
            f.add(i * 10, i * 10 + 1, true, busy(i as usize));
        }
        // A new operation from record 100: its own failures must stay exact.
        f.begin(100);
        f.add(100, 101, true, busy(100));
        f.add(102, 103, true, busy(102));
        f.add(104, 105, true, busy(104));
        assert_eq!(f.list.len(), 4, "the table never grows");
        assert!(f.lost.is_none(), "older failures were merged to make room");
        for id in [100, 102, 104] {
            assert!(!f.completed(id), "record {id} failed");
        }
        for id in [101, 103] {
            assert!(f.completed(id), "record {id} took effect");
        }
        // The operation claims its own; the older owner still hears its first error.
        assert_eq!(f.claim_from(100).error(), Some(busy(100)));
        assert_eq!(f.claim_from(0).error(), Some(busy(0)));
        assert_eq!(f.claim_from(0).error(), None, "claimed once");
    }

    #[test]
    fn past_capacity_with_nothing_older_to_merge_a_failure_is_still_reported() {
        let mut f = Failures::with_capacity(2);
        f.begin(0);
        f.add(0, 1, true, busy(0));
        f.add(2, 3, true, busy(2));
        f.add(4, 5, true, busy(4));
        assert_eq!(f.list.len(), 2);
        assert!(!f.completed(0) && !f.completed(2), "the first ones stay exact");
        assert_eq!(f.claim_from(3).error(), Some(busy(4)), "the lost one is still an error for its owner");
        assert_eq!(f.claim_from(0).error(), Some(busy(0)));
    }

    #[test]
    fn an_empty_batch_issues_nothing() {
        let t = Recorder::default();
        let mut b = batch(0);
        finish(&mut b, &t).unwrap();
        assert!(t.traps.lock().unwrap().is_empty());
    }

    #[test]
    fn debug_shows_what_is_queued() {
        let t = Recorder::default();
        let mut b = batch(0);
        b.push(&t, uvm());
        let shown = std::format!("{b:?}");
        assert!(shown.starts_with("Batch {") && shown.contains("entries: 1"), "{shown}");
    }

    /// The shape of every trap so far.
    fn shapes(t: &Recorder) -> StdVec<(bool, StdVec<usize>)> {
        t.traps.lock().unwrap().clone()
    }

    #[test]
    fn a_pair_that_exactly_fits_the_argument_space_goes_with_the_batch() {
        let t = Recorder::default();
        let per_batch = MAX_ARG_BYTES / MMU_UPDATE_BYTES;
        let mut b = batch(0);
        for i in 0..per_batch as u64 - 2 {
            b.push(&t, mmu(i));
        }
        b.push_two(&t, mmu(100), mmu(101));
        assert!(shapes(&t).is_empty(), "nothing issued while the pair still fits");
        finish(&mut b, &t).unwrap();
        assert_eq!(shapes(&t), std::vec![(false, std::vec![per_batch])]);
        assert_eq!(b.flushes, FlushCounts { explicit: 1, ..FlushCounts::default() });
    }

    #[test]
    fn a_pair_that_does_not_fit_the_argument_space_flushes_first_and_stays_together() {
        let t = Recorder::default();
        let per_batch = MAX_ARG_BYTES / MMU_UPDATE_BYTES;
        let mut b = batch(0);
        for i in 0..per_batch as u64 - 1 {
            b.push(&t, mmu(i));
        }
        b.push_two(&t, mmu(100), mmu(101));
        finish(&mut b, &t).unwrap();
        assert_eq!(shapes(&t), std::vec![(false, std::vec![per_batch - 1]), (false, std::vec![2])]);
        assert_eq!(b.flushes, FlushCounts { explicit: 1, args_full: 1, ..FlushCounts::default() });
    }

    #[test]
    fn a_pair_takes_the_last_two_entries_or_flushes_first() {
        for (before, traps) in
            [(MAX_ENTRIES - 2, std::vec![MAX_ENTRIES]), (MAX_ENTRIES - 1, std::vec![MAX_ENTRIES - 1, 2])]
        {
            let t = Recorder::default();
            let mut b = batch(0);
            for _ in 0..before {
                b.push(&t, uvm());
            }
            b.push_two(&t, uvm(), uvm());
            finish(&mut b, &t).unwrap();
            let got: StdVec<usize> = shapes(&t).iter().map(|(_, entries)| entries.len()).collect();
            assert_eq!(got, traps, "{before} entries queued before the pair");
            let full = u64::from(traps.len() == 2);
            assert_eq!(b.flushes, FlushCounts { explicit: 1, entries_full: full, ..FlushCounts::default() });
        }
    }

    #[test]
    fn a_full_callback_table_flushes_before_the_next_callback() {
        let t = Recorder::default();
        let mut b = batch(0);
        let id = b.push(&t, ext());
        for i in 0..MAX_CALLBACKS as u64 {
            b.add_callback(&t, Callback::PublishCr3 { pgd: Pfn(i + 1), after: id });
        }
        assert!(shapes(&t).is_empty(), "32 callbacks fit");
        b.add_callback(&t, Callback::PublishCr3 { pgd: Pfn(99), after: id });
        assert_eq!(shapes(&t).len(), 1, "the 33rd callback flushed the batch first");
        assert_eq!(b.published_cr3(), Pfn(99), "and, its record issued, ran at once");
        finish(&mut b, &t).unwrap();
        assert_eq!(shapes(&t).len(), 1, "nothing left to issue");
        assert_eq!(b.flushes, FlushCounts { callbacks_full: 1, ..FlushCounts::default() });
    }
}
