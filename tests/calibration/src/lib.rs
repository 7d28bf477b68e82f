//! # Calibrating the Xen model against the real Xen, record by record
//!
//! A corpus of raw PV MMU hypercall sequences ([`corpus::CASES`]), valid and
//! hostile, written over *symbolic* scratch frames: frame `k` of the
//! [`Platform`]'s scratch list. The same code runs in the booted kernel on the
//! real Xen (through its hypercall page) and on the host against
//! `pvops_model::XenModel`; every hypercall's status and `done` count (and a
//! few read-backs of what Xen stored) becomes one [`Record`]. The kernel
//! prints them as `CAL` lines; the host side (feature `host`) runs the model,
//! parses the kernel's lines and compares them one by one.
//!
//! Rules the corpus keeps so the kernel survives it and its later checks are
//! unaffected:
//! * only hypercalls touch a frame whose direct-map alias is read-only: the
//!   context tracks each alias and refuses (and counts) a direct store to one
//!   that is not writable, instead of faulting;
//! * every alias change flushes (`UVMF_INVLPG`), so no stale translation of a
//!   scratch frame survives in the kernel's TLB;
//! * each case is followed by the same cleanup on both sides: the user base
//!   pointer is put back, every frame unpinned, every alias made writable and
//!   every frame zeroed. A frame whose alias cannot be restored (Xen still
//!   holds a type on it) is *poisoned*: the run stops and the kernel must not
//!   free it.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "host")]
extern crate std;

pub mod corpus;
#[cfg(feature = "host")]
pub mod host;

use alloc::vec::Vec;
use core::fmt;

use pvops::pte::flags;
use pvops::{Pfn, PhysMem, ENTRIES_PER_TABLE, PAGE_SIZE};
use pvops_xen64::abi::{mmuext, uvmf, Call, MmuUpdate, MmuextOp};
use pvops_xen64::{HypercallTransport, Outcome, P2m};

/// Scratch frames every case may use.
pub const SCRATCH_FRAMES: usize = 8;

/// What a platform hands the corpus.
pub struct Platform<'a> {
    /// The hypercall seam (the hypercall page, or the model).
    pub transport: &'a dyn HypercallTransport,
    /// pfn -> mfn.
    pub p2m: &'a dyn P2m,
    /// The direct map (reads, and stores to frames whose alias is writable).
    pub mem: &'a dyn PhysMem,
    /// Where pfn `p` is mapped: `direct_map_base + p * 4096`.
    pub direct_map_base: u64,
    /// [`SCRATCH_FRAMES`] frames the corpus owns: zeroed, untyped, with a
    /// writable direct-map alias, mapped by nothing else.
    pub scratch: &'a [Pfn],
    /// The user base pointer loaded now (mfn, 0 = none): cases that load
    /// another one put this one back.
    pub user_base: u64,
    /// The kernel base pointer loaded now (mfn): only ever reloaded as is.
    pub kernel_base: u64,
}

impl fmt::Debug for Platform<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Platform({} scratch frames, user base {:#x})", self.scratch.len(), self.user_base)
    }
}

/// One observation: a hypercall's outcome, or a read-back of a stored entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The case's name.
    pub case: &'static str,
    /// The record's number within its case.
    pub step: u32,
    /// What was done (no spaces).
    pub label: &'static str,
    /// Xen's status (0 or -errno); for a read-back, the entry's flag bits.
    pub status: i64,
    /// Xen's `done` count (1/0 for `update_va_mapping`, 0 for a read-back).
    pub done: u32,
}

impl fmt::Display for Record {
    /// `CAL <case> <step> <label> <status> <done>`: the line the kernel prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CAL {} {} {} {} {}", self.case, self.step, self.label, self.status, self.done)
    }
}

/// What a whole run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Cases run (all of them unless a frame was poisoned).
    pub cases: usize,
    /// Records produced.
    pub records: usize,
    /// Direct stores the context refused (a corpus bug: the alias was read-only).
    pub harness_errors: usize,
    /// Scratch frames that could not be given back (still typed): the kernel
    /// must not free them.
    pub poisoned: Vec<Pfn>,
}

impl fmt::Display for Summary {
    /// `CALSUM cases=.. records=.. harness_errors=.. poisoned=..`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CALSUM cases={} records={} harness_errors={} poisoned={}",
            self.cases,
            self.records,
            self.harness_errors,
            self.poisoned.len()
        )
    }
}

/// Entry flag bits the corpus uses.
pub mod f {
    use pvops::pte::flags;
    /// Present.
    pub const P: u64 = flags::PRESENT;
    /// Writable.
    pub const RW: u64 = flags::WRITABLE;
    /// User.
    pub const U: u64 = flags::USER;
    /// Accessed.
    pub const A: u64 = flags::ACCESSED;
    /// Dirty.
    pub const D: u64 = flags::DIRTY;
    /// PSE (a large page above L1).
    pub const PS: u64 = flags::HUGE;
    /// Global.
    pub const G: u64 = flags::GLOBAL;
}

/// `mmu_update` command 2: `MMU_PT_UPDATE_PRESERVE_AD` (xen/include/public/xen.h).
pub const MMU_PT_UPDATE_PRESERVE_AD: u64 = 2;
/// `update_va_mapping` flag: flush on every vCPU (`UVMF_ALL`, xen.h).
pub const UVMF_ALL: u64 = 4;

/// One case's view of the platform: symbolic frames, recording helpers.
pub struct Ctx<'p, 'a> {
    p: &'p Platform<'a>,
    case: &'static str,
    out: &'p mut Vec<Record>,
    mfns: Vec<u64>,
    alias: Vec<Alias>,
    harness_errors: usize,
}

/// What a scratch frame's direct-map alias maps now, as far as the corpus
/// changed it (it starts writable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alias {
    /// The frame, writable: stores are safe.
    Writable,
    /// The frame, read-only: reads are safe.
    ReadOnly,
    /// Nothing, or another frame: neither is safe.
    Elsewhere,
}

impl fmt::Debug for Ctx<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ctx({})", self.case)
    }
}

impl Ctx<'_, '_> {
    fn push(&mut self, label: &'static str, o: Outcome) -> Outcome {
        let step = self.out.iter().rev().take_while(|r| r.case == self.case).count() as u32;
        self.out.push(Record { case: self.case, step, label, status: o.status, done: o.done });
        o
    }

    /// Machine frame of scratch frame `k`.
    pub fn mfn(&self, k: usize) -> u64 {
        self.mfns.get(k).copied().unwrap_or(0)
    }

    /// An entry naming scratch frame `k` with `flags`.
    pub fn e(&self, k: usize, flags: u64) -> u64 {
        (self.mfn(k) << 12) | flags
    }

    /// The machine address of entry `index` of scratch frame `k` (an `mmu_update` ptr).
    pub fn at(&self, k: usize, index: usize) -> u64 {
        (self.mfn(k) << 12) | ((index as u64) * 8)
    }

    /// The direct-map address of scratch frame `k`.
    pub fn va(&self, k: usize) -> u64 {
        self.p.direct_map_base + self.p.scratch.get(k).map_or(0, |p| p.0) * PAGE_SIZE
    }

    /// The user base pointer that was loaded when the run started.
    pub fn old_user_base(&self) -> u64 {
        self.p.user_base
    }

    /// The kernel base pointer loaded now.
    pub fn kernel_base(&self) -> u64 {
        self.p.kernel_base
    }

    /// A plain store into scratch frame `k` through its alias: refused (and
    /// counted as a harness error) unless the alias is known to be writable.
    pub fn store(&mut self, k: usize, index: usize, value: u64) {
        match (self.p.scratch.get(k), self.alias.get(k)) {
            (Some(&pfn), Some(Alias::Writable)) if index < ENTRIES_PER_TABLE => {
                self.p.mem.write_entry(pfn, index, value)
            }
            _ => self.harness_errors += 1,
        }
    }

    /// Records the flag bits of entry `index` of frame `k` as Xen stored them
    /// (the frame number differs between platforms and is masked off).
    /// Refused (a harness error) while the alias maps something else.
    pub fn read(&mut self, label: &'static str, k: usize, index: usize) {
        let raw = match (self.p.scratch.get(k), self.alias.get(k)) {
            (Some(&pfn), Some(Alias::Writable | Alias::ReadOnly)) if index < ENTRIES_PER_TABLE => {
                self.p.mem.read_entry(pfn, index)
            }
            _ => {
                self.harness_errors += 1;
                0
            }
        };
        self.push(label, Outcome { status: (raw & !flags::ADDR_MASK) as i64, done: 0 });
    }

    /// `mmu_update` of `(ptr, val)` records.
    pub fn mmu(&mut self, label: &'static str, reqs: &[(u64, u64)]) -> Outcome {
        let reqs: Vec<MmuUpdate> = reqs.iter().map(|&(ptr, val)| MmuUpdate { ptr, val }).collect();
        let o = self.p.transport.call(&Call::MmuUpdate(&reqs));
        self.push(label, o)
    }

    /// `mmuext_op` of `(cmd, arg1)` records.
    pub fn ext(&mut self, label: &'static str, ops: &[(u32, u64)]) -> Outcome {
        let ops: Vec<MmuextOp> = ops.iter().map(|&(cmd, arg1)| MmuextOp { cmd, arg1, arg2: 0 }).collect();
        let o = self.p.transport.call(&Call::MmuextOp(&ops));
        self.push(label, o)
    }

    /// Pins scratch frame `k` as a table (`cmd` is one of `PIN_Ln_TABLE`).
    pub fn pin(&mut self, label: &'static str, cmd: u32, k: usize) -> Outcome {
        let mfn = self.mfn(k);
        self.ext(label, &[(cmd, mfn)])
    }

    /// Unpins scratch frame `k`.
    pub fn unpin(&mut self, label: &'static str, k: usize) -> Outcome {
        let mfn = self.mfn(k);
        self.ext(label, &[(mmuext::UNPIN_TABLE, mfn)])
    }

    /// `MMUEXT_NEW_USER_BASEPTR` with `mfn`.
    pub fn user_base(&mut self, label: &'static str, mfn: u64) -> Outcome {
        self.ext(label, &[(mmuext::NEW_USER_BASEPTR, mfn)])
    }

    fn track_alias(&mut self, va: u64, val: u64, o: Outcome) {
        if !o.is_ok() {
            return;
        }
        if let Some(k) = (0..self.p.scratch.len()).find(|&k| self.va(k) == va) {
            self.alias[k] = if val & flags::PRESENT == 0 || (val & flags::ADDR_MASK) >> 12 != self.mfn(k) {
                Alias::Elsewhere
            } else if val & flags::WRITABLE != 0 {
                Alias::Writable
            } else {
                Alias::ReadOnly
            };
        }
    }

    /// `update_va_mapping(va, val, flags)`.
    pub fn uvm(&mut self, label: &'static str, va: u64, val: u64, flags: u64) -> Outcome {
        let o = self.p.transport.call(&Call::UpdateVaMapping { va, val, flags });
        self.track_alias(va, val, o);
        self.push(label, o)
    }

    /// Makes scratch frame `k`'s alias read-only (with a flush).
    pub fn ro(&mut self, k: usize) -> Outcome {
        let (va, val) = (self.va(k), self.e(k, f::P | f::A));
        self.uvm("alias-ro", va, val, uvmf::INVLPG)
    }

    /// Makes scratch frame `k`'s alias writable again (with a flush).
    pub fn rw(&mut self, k: usize) -> Outcome {
        let (va, val) = (self.va(k), self.e(k, f::P | f::RW | f::A | f::D));
        self.uvm("alias-rw", va, val, uvmf::INVLPG)
    }

    /// One `multicall` of `calls`: a record for the multicall's own status,
    /// then one per entry, labelled `label`.
    pub fn multi(&mut self, label: &'static str, calls: &[Call<'_>]) {
        let mut outcomes = alloc::vec![Outcome::default(); calls.len()];
        let rc = self.p.transport.multicall(calls, &mut outcomes);
        self.push(label, Outcome { status: rc, done: calls.len() as u32 });
        for (call, o) in calls.iter().zip(outcomes) {
            if let Call::UpdateVaMapping { va, val, .. } = *call {
                self.track_alias(va, val, o);
            }
            self.push(label, o);
        }
    }

    /// Gives every frame back (see the crate docs); returns the poisoned ones.
    fn cleanup(&mut self) -> Vec<Pfn> {
        let old = self.p.user_base;
        self.user_base("cleanup-user-base", old);
        let mut unpinned = 0;
        for k in 0..self.p.scratch.len() {
            let op = [MmuextOp { cmd: mmuext::UNPIN_TABLE, arg1: self.mfn(k), arg2: 0 }];
            unpinned += u32::from(self.p.transport.call(&Call::MmuextOp(&op)).is_ok());
        }
        self.push("cleanup-unpinned", Outcome::ok(unpinned));
        let (mut restored, mut first_err, mut poisoned) = (0, 0, Vec::new());
        for k in 0..self.p.scratch.len() {
            let (va, val) = (self.va(k), self.e(k, f::P | f::RW | f::A | f::D));
            let o = self.p.transport.call(&Call::UpdateVaMapping { va, val, flags: uvmf::INVLPG });
            self.track_alias(va, val, o);
            if o.is_ok() {
                restored += 1;
                for i in 0..ENTRIES_PER_TABLE {
                    self.store(k, i, 0);
                }
            } else {
                if first_err == 0 {
                    first_err = o.status;
                }
                poisoned.push(self.p.scratch[k]);
            }
        }
        self.push("cleanup-restored", Outcome { status: first_err, done: restored });
        poisoned
    }
}

/// One case of the corpus.
#[derive(Clone, Copy)]
pub struct Case {
    /// Short name (no spaces), unique.
    pub name: &'static str,
    /// What it does and which Xen rule it probes.
    pub what: &'static str,
    /// The hypercall sequence.
    pub run: fn(&mut Ctx<'_, '_>),
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// Runs `cases` on `p`, appending every record to `out`. Stops after a case
/// that leaves a frame poisoned. Needs [`SCRATCH_FRAMES`] scratch frames.
pub fn run(p: &Platform<'_>, cases: &[Case], out: &mut Vec<Record>) -> Summary {
    let mut sum = Summary::default();
    let mfns: Vec<u64> = p.scratch.iter().map(|&pfn| p.p2m.pfn_to_mfn(pfn).map_or(0, |m| m.0)).collect();
    if p.scratch.len() < SCRATCH_FRAMES || mfns.contains(&0) || p.kernel_base == 0 {
        sum.harness_errors = 1;
        return sum;
    }
    let start = out.len();
    for case in cases {
        let mut cx = Ctx {
            p,
            case: case.name,
            out,
            mfns: mfns.clone(),
            alias: alloc::vec![Alias::Writable; p.scratch.len()],
            harness_errors: 0,
        };
        // The frames are zero: handed over so, and zeroed by every cleanup.
        (case.run)(&mut cx);
        let poisoned = cx.cleanup();
        sum.harness_errors += cx.harness_errors;
        sum.cases += 1;
        if !poisoned.is_empty() {
            sum.poisoned = poisoned;
            break;
        }
    }
    sum.records = out.len() - start;
    sum
}
