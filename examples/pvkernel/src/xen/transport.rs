//! The xen64 backend's seams on the real hypervisor.
//!
//! * [`HypercallPage`]: `pvops_xen64::HypercallTransport` over the hypercall
//!   page. Each typed [`Call`] becomes the real hypercall (arguments in rdi,
//!   rsi, rdx, r10, r8: see [`hypercall::hypercall5`]); `mmu_update` and
//!   `mmuext_op` get a `done` pointer so a failed array reports how many
//!   records took effect; a multicall builds one `multicall_entry` per call,
//!   pointing at the call's records and at its own `done` slot, and reads
//!   every entry's result back. Every trap is counted by kind, independently
//!   of the backend's own statistics.
//!
//!   SMP: every argument buffer is the call's own (on its stack, on the heap
//!   only past the batch's fixed capacity) and the counters are atomics, so
//!   vCPUs may trap through it at once, and an event handler may too in
//!   the middle of an interrupted call: nothing is shared to lock.
//!   `MMUEXT_TLB_FLUSH_MULTI`/`INVLPG_MULTI` records carry their vCPU bitmap
//!   as a value in `arg2` (the typed record); Xen reads `arg2.vcpumask` as a
//!   guest pointer to u64 words (xen/include/public/xen.h,
//!   xen/arch/x86/mm.c `vcpumask_to_pcpumask`), so each such record goes out
//!   as a copy pointing at a word of the call's own that holds the bitmap.
//! * [`XenP2m`]: `pvops_xen64::P2m` over `start_info.mfn_list` (p2m) and
//!   Xen's read-only M2P (with the p2m round trip as a check).

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use pvops::{Mfn, Pfn};
use pvops_xen64::abi::{Call, MmuextOp, DOMID_SELF};
use pvops_xen64::{HypercallTransport, Outcome, P2m};

use super::hypercall::{self, MulticallEntry};

/// Hypercalls issued through the transport, by kind (traps into Xen).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapCounts {
    /// `mmu_update` traps.
    pub mmu_update: u64,
    /// `mmuext_op` traps.
    pub mmuext_op: u64,
    /// `update_va_mapping` traps.
    pub update_va_mapping: u64,
    /// `multicall` traps.
    pub multicall: u64,
    /// Calls carried inside multicalls.
    pub multicall_entries: u64,
    /// `mmu_update` records (alone or in multicalls).
    pub mmu_update_records: u64,
    /// `mmuext_op` records (alone or in multicalls).
    pub mmuext_op_records: u64,
    /// `update_va_mapping` calls (alone or in multicalls).
    pub update_va_mapping_calls: u64,
    /// Failed calls (negative status), alone or inside multicalls.
    pub failures: u64,
}

impl TrapCounts {
    /// Every trap into Xen.
    pub fn traps(&self) -> u64 {
        self.mmu_update + self.mmuext_op + self.update_va_mapping + self.multicall
    }

    /// `self - earlier`, kind by kind.
    pub fn since(&self, earlier: &TrapCounts) -> TrapCounts {
        TrapCounts {
            mmu_update: self.mmu_update - earlier.mmu_update,
            mmuext_op: self.mmuext_op - earlier.mmuext_op,
            update_va_mapping: self.update_va_mapping - earlier.update_va_mapping,
            multicall: self.multicall - earlier.multicall,
            multicall_entries: self.multicall_entries - earlier.multicall_entries,
            mmu_update_records: self.mmu_update_records - earlier.mmu_update_records,
            mmuext_op_records: self.mmuext_op_records - earlier.mmuext_op_records,
            update_va_mapping_calls: self.update_va_mapping_calls - earlier.update_va_mapping_calls,
            failures: self.failures - earlier.failures,
        }
    }
}

impl core::fmt::Display for TrapCounts {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "traps={} mmu_update={} mmuext_op={} update_va_mapping={} multicall={} (entries {}) records: mmu={} ext={} uvm={} failures={}",
            self.traps(),
            self.mmu_update,
            self.mmuext_op,
            self.update_va_mapping,
            self.multicall,
            self.multicall_entries,
            self.mmu_update_records,
            self.mmuext_op_records,
            self.update_va_mapping_calls,
            self.failures
        )
    }
}

/// The hypercall-page transport.
#[derive(Debug, Default)]
pub struct HypercallPage {
    mmu_update: AtomicU64,
    mmuext_op: AtomicU64,
    update_va_mapping: AtomicU64,
    multicall: AtomicU64,
    multicall_entries: AtomicU64,
    mmu_update_records: AtomicU64,
    mmuext_op_records: AtomicU64,
    update_va_mapping_calls: AtomicU64,
    failures: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The arguments of `call` as Xen reads them, `done` pointing at `*done`;
/// `ext` replaces an `mmuext_op` call's record array (its marshalled copy).
fn args(call: &Call<'_>, done: *mut u32, ext: Option<*const MmuextOp>) -> [u64; 5] {
    match *call {
        Call::MmuUpdate(reqs) => [reqs.as_ptr() as u64, reqs.len() as u64, done as u64, DOMID_SELF, 0],
        Call::MmuextOp(ops) => {
            let p = ext.unwrap_or(ops.as_ptr());
            [p as u64, ops.len() as u64, done as u64, DOMID_SELF, 0]
        }
        Call::UpdateVaMapping { va, val, flags } => [va, val, flags, 0, 0],
    }
}

/// The `mmuext_op` records of `call` if any of them carries a vCPU bitmap
/// (they must be marshalled, see [`marshal_ext`]).
fn ext_needing_marshal<'a>(call: &Call<'a>) -> Option<&'a [MmuextOp]> {
    match *call {
        Call::MmuextOp(ops) if ops.iter().any(|o| hypercall::takes_vcpumask(o.cmd)) => Some(ops),
        _ => None,
    }
}

/// Copies `ops` into `copy`; a record taking a vCPU bitmap gets the
/// address of its `masks` word, which receives the bitmap value. `copy` and
/// `masks` must stay where they are until Xen has read them.
fn marshal_ext(ops: &[MmuextOp], copy: &mut [MmuextOp], masks: &mut [u64]) {
    for ((op, c), m) in ops.iter().zip(copy.iter_mut()).zip(masks.iter_mut()) {
        *c = *op;
        if hypercall::takes_vcpumask(op.cmd) {
            *m = op.arg2;
            c.arg2 = (m as *const u64) as u64;
        }
    }
}

/// A call's argument buffer: `N` elements inline (on the caller's stack),
/// the heap only beyond (a batch past its fixed capacity: pins).
struct Scratch<T: Copy, const N: usize> {
    inline: [T; N],
    heap: Vec<T>,
    len: usize,
}

impl<T: Copy, const N: usize> Scratch<T, N> {
    fn new(len: usize, fill: T) -> Self {
        let heap = if len > N { vec![fill; len] } else { Vec::new() };
        Scratch { inline: [fill; N], heap, len }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        if self.len > N {
            &mut self.heap[..]
        } else {
            &mut self.inline[..self.len]
        }
    }
}

/// Records per call marshalled inline (a batch holds at most
/// `MAX_ARG_BYTES / 24` = 21 `mmuext_op` records; a lone flush has 1).
const INLINE_EXT: usize = 24;

/// Xen's `done` for an array call, or 1/0 for `update_va_mapping`.
fn outcome(call: &Call<'_>, status: i64, done: u32) -> Outcome {
    let done = match call {
        Call::UpdateVaMapping { .. } => u32::from(status == 0),
        _ => done,
    };
    if status == 0 {
        Outcome::ok(done)
    } else {
        Outcome::failed(status, done)
    }
}

impl HypercallPage {
    /// A transport with zeroed counters.
    pub const fn new() -> Self {
        HypercallPage {
            mmu_update: AtomicU64::new(0),
            mmuext_op: AtomicU64::new(0),
            update_va_mapping: AtomicU64::new(0),
            multicall: AtomicU64::new(0),
            multicall_entries: AtomicU64::new(0),
            mmu_update_records: AtomicU64::new(0),
            mmuext_op_records: AtomicU64::new(0),
            update_va_mapping_calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// The counters so far.
    pub fn counts(&self) -> TrapCounts {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TrapCounts {
            mmu_update: r(&self.mmu_update),
            mmuext_op: r(&self.mmuext_op),
            update_va_mapping: r(&self.update_va_mapping),
            multicall: r(&self.multicall),
            multicall_entries: r(&self.multicall_entries),
            mmu_update_records: r(&self.mmu_update_records),
            mmuext_op_records: r(&self.mmuext_op_records),
            update_va_mapping_calls: r(&self.update_va_mapping_calls),
            failures: r(&self.failures),
        }
    }

    /// Decodes one call (alone, or one multicall entry) by kind.
    fn count_records(&self, call: &Call<'_>) {
        match call {
            Call::MmuUpdate(r) => bump(&self.mmu_update_records, r.len() as u64),
            Call::MmuextOp(o) => bump(&self.mmuext_op_records, o.len() as u64),
            Call::UpdateVaMapping { .. } => bump(&self.update_va_mapping_calls, 1),
        }
    }
}

/// A multicall entry's `result` before Xen runs it: `Outcome::NOT_RUN`'s
/// status, which no hypercall returns (0 or -errno).
const NOT_RUN_RESULT: u64 = Outcome::NOT_RUN.status as u64;

impl HypercallTransport for HypercallPage {
    fn call(&self, call: &Call<'_>) -> Outcome {
        let mut done: u32 = 0;
        let ext = ext_needing_marshal(call);
        let n = ext.map_or(0, <[MmuextOp]>::len);
        let mut copy = Scratch::<MmuextOp, INLINE_EXT>::new(n, MmuextOp::default());
        let mut masks = Scratch::<u64, INLINE_EXT>::new(n, 0);
        let copy = copy.as_mut_slice();
        if let Some(ops) = ext {
            marshal_ext(ops, copy, masks.as_mut_slice());
        }
        let a = args(call, &raw mut done, ext.map(|_| copy.as_ptr()));
        // SAFETY: the arguments are those of `call`'s hypercall: pointers to
        // its record array (live for the duration of `call`, laid out as
        // Xen's `mmu_update`/`mmuext_op`, 16/24 bytes) or to its marshalled
        // copy and bitmap words (locals of this frame), and to `done`, a live
        // u32 on this stack; update_va_mapping takes scalars only.
        let rc = unsafe { hypercall::hypercall5(call.number(), a[0], a[1], a[2], a[3], a[4]) };
        match call {
            Call::MmuUpdate(_) => bump(&self.mmu_update, 1),
            Call::MmuextOp(_) => bump(&self.mmuext_op, 1),
            Call::UpdateVaMapping { .. } => bump(&self.update_va_mapping, 1),
        }
        self.count_records(call);
        if rc < 0 {
            bump(&self.failures, 1);
        }
        outcome(call, rc, done)
    }

    fn multicall(&self, calls: &[Call<'_>], outcomes: &mut [Outcome]) -> i64 {
        if calls.len() != outcomes.len() {
            return -22;
        }
        // Every buffer is sized once: the entries point into `dones` and
        // into the marshalled records, which point into `masks`.
        let n = calls.len();
        let mut dones = Scratch::<u32, { pvops_xen64::MAX_ENTRIES }>::new(n, 0);
        let mut entries = Scratch::<MulticallEntry, { pvops_xen64::MAX_ENTRIES }>::new(n, MulticallEntry::default());
        let n_ext: usize = calls.iter().filter_map(ext_needing_marshal).map(<[MmuextOp]>::len).sum();
        let mut copy = Scratch::<MmuextOp, INLINE_EXT>::new(n_ext, MmuextOp::default());
        let mut masks = Scratch::<u64, INLINE_EXT>::new(n_ext, 0);
        let (dones, entries) = (dones.as_mut_slice(), entries.as_mut_slice());
        let (copy, masks) = (copy.as_mut_slice(), masks.as_mut_slice());
        let mut off = 0;
        for (i, (call, entry)) in calls.iter().zip(entries.iter_mut()).enumerate() {
            let ext = ext_needing_marshal(call).map(|ops| {
                let (c, m) = (&mut copy[off..off + ops.len()], &mut masks[off..off + ops.len()]);
                marshal_ext(ops, c, m);
                off += ops.len();
                c.as_ptr()
            });
            let a = args(call, dones.as_mut_ptr().wrapping_add(i), ext);
            entry.op = call.number();
            entry.args[..5].copy_from_slice(&a);
            // Xen writes `result` only for entries it ran (do_multicall stops
            // at the first entry it cannot copy in): a value it never returns
            // marks the others, whose outcome stays `Outcome::NOT_RUN`.
            entry.result = NOT_RUN_RESULT;
        }
        // SAFETY: every entry's pointers name live memory of the right
        // layout: the calls' record arrays (borrowed for this call), their
        // marshalled copies and bitmap words, and the `dones` slots, none of
        // which is moved or resized until after it.
        let rc = unsafe { hypercall::multicall(entries) };
        bump(&self.multicall, 1);
        bump(&self.multicall_entries, calls.len() as u64);
        for (i, call) in calls.iter().enumerate() {
            self.count_records(call);
            if entries[i].result == NOT_RUN_RESULT {
                continue;
            }
            let status = entries[i].result as i64;
            if status < 0 {
                bump(&self.failures, 1);
            }
            outcomes[i] = outcome(call, status, dones[i]);
        }
        if rc != 0 {
            // The multicall itself failed part-way: one failure, whatever ran.
            bump(&self.failures, 1);
            log::error!("multicall of {} entries failed: {rc}", calls.len());
        }
        rc
    }
}

/// pfn ↔ mfn on the real hypervisor.
#[derive(Debug, Default, Clone, Copy)]
pub struct XenP2m;

impl P2m for XenP2m {
    fn pfn_to_mfn(&self, pfn: Pfn) -> Option<Mfn> {
        super::pfn_to_mfn(pfn.0).map(Mfn)
    }

    fn mfn_to_pfn(&self, mfn: Mfn) -> Option<Pfn> {
        super::mfn_to_pfn_checked(mfn.0).map(Pfn)
    }
}

/// The one transport of this kernel (its counters are read by the workload).
pub static TRANSPORT: HypercallPage = HypercallPage::new();
