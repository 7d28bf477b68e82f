//! The guest's own view of its memory: the direct map, by pfn.
//!
//! Every access to pfn `p` goes through direct-map slot `p`
//! ([`super::direct_map`]), which may name another frame than `p`'s. A store
//! lands in the slot's frame if the slot is writable; through a read-only
//! slot or an empty one it is not performed and is recorded as a
//! [`Violation`] — on real Xen a page fault (or, with writable_pagetables,
//! emulated for L1 only). A read through an empty slot is one too (it reads
//! 0). The TLB may still hold a writable translation the slot no longer
//! gives: a store then reaches that frame (the worst case) and is a
//! [`TlbHazard::StaleWrite`]. Tests assert `violations()` is empty.

use pvops::{Mfn, Pfn, PhysMem};
use pvops_xen64::P2m;

use super::model::{Violation, XenModel};
use crate::sched::Point;
use crate::tlb::{TlbHazard, TlbViolation};

impl XenModel {
    /// [`crate::Machine::touch_after_guest_read`] of guest frame `pfn`: the
    /// hardware sets `bits` in its word `index` right after the guest next
    /// reads it.
    pub fn touch_after_guest_read(&self, pfn: Pfn, index: usize, bits: u64) {
        if let Some(mfn) = self.mfn_of(pfn) {
            self.mem.touch_after_guest_read(mfn.0, index, bits);
        }
    }

    /// The frame a store to `pfn` reaches, or `None` (recorded) if it faults.
    fn store(&self, pfn: Pfn, index: Option<usize>, value: u64) -> Option<u64> {
        let mut st = self.lock();
        let me = st.me();
        if let Some(stale) = st.direct.stale_writable(me, pfn.0) {
            let va = st.direct_map_base + pfn.0 * pvops::PAGE_SIZE;
            let v = TlbViolation { hazard: TlbHazard::StaleWrite, frame: stale, va, stale: true };
            st.direct.hazards.push(v);
            return Some(stale);
        }
        match st.direct.slot(pfn.0) {
            Some(slot) if slot.writable => Some(slot.mfn),
            _ => {
                st.violations.push(Violation { pfn, index, value, write: true });
                None
            }
        }
    }

    /// The frame a read of `pfn` reaches, or `None` (recorded) if it faults.
    fn load(&self, pfn: Pfn, index: Option<usize>) -> Option<u64> {
        let mut st = self.lock();
        let slot = st.direct.slot(pfn.0);
        if slot.is_none() {
            st.violations.push(Violation { pfn, index, value: 0, write: false });
        }
        slot.map(|s| s.mfn)
    }
}

/// The calling vCPU's accesses; each is a preemption point.
impl PhysMem for XenModel {
    fn read_entry(&self, pfn: Pfn, index: usize) -> u64 {
        self.cpus().yield_point(Point::Load);
        self.load(pfn, Some(index)).map_or(0, |mfn| {
            let v = self.read_machine(Mfn(mfn), index);
            self.mem.guest_read_done(mfn, index);
            v
        })
    }

    /// Through a writable slot a plain locked `cmpxchg`. Through a read-only
    /// or empty one it faults like any store ([`Violation`]): the booted
    /// domain does not enable `VMASST_TYPE_writable_pagetables`, without
    /// which Xen emulates no store to a table.
    fn compare_exchange_entry(&self, pfn: Pfn, index: usize, current: u64, new: u64) -> Result<u64, u64> {
        self.cpus().yield_point(Point::Store);
        let mut st = self.lock();
        let me = st.me();
        if let Some(stale) = st.direct.stale_writable(me, pfn.0) {
            // As `store`: the worst case, through the stale translation.
            let va = st.direct_map_base + pfn.0 * pvops::PAGE_SIZE;
            st.direct.hazards.push(TlbViolation { hazard: TlbHazard::StaleWrite, frame: stale, va, stale: true });
            drop(st);
            return self.mem.compare_exchange(stale, index, current, new);
        }
        match st.direct.slot(pfn.0) {
            Some(slot) if slot.writable => {
                drop(st);
                self.mem.compare_exchange(slot.mfn, index, current, new)
            }
            slot => {
                st.violations.push(Violation { pfn, index: Some(index), value: new, write: true });
                Err(slot.map_or(0, |s| self.mem.read(s.mfn, index).unwrap_or(0)))
            }
        }
    }

    fn write_entry(&self, pfn: Pfn, index: usize, value: u64) {
        self.cpus().yield_point(Point::Store);
        if let Some(mfn) = self.store(pfn, Some(index), value) {
            self.mem.write(mfn, index, value);
        }
    }

    fn zero_frame(&self, pfn: Pfn) {
        self.cpus().yield_point(Point::Zero);
        // Only allocators zero frames: this is reuse.
        if let Some(mfn) = self.mfn_of(pfn) {
            self.mem.tlb_check_frame(mfn.0, TlbHazard::Reused, false);
        }
        if let Some(mfn) = self.store(pfn, None, 0) {
            self.mem.clear_frame(mfn);
        }
    }

    /// One whole-frame load of `from` and store to `to` through their
    /// direct-map slots, each checked once (a faulting slot is one
    /// [`Violation`]), then one locked copy in the machine. `to` must be
    /// writable: a pinned table is not, so only a data or fresh frame can
    /// be the destination. A source slot that faults reads as zeros.
    fn copy_frame(&self, from: Pfn, to: Pfn) {
        self.cpus().yield_point(Point::Store);
        // As with zeroing: only allocators copy into a frame: this is reuse.
        if let Some(mfn) = self.mfn_of(to) {
            self.mem.tlb_check_frame(mfn.0, TlbHazard::Reused, false);
        }
        let src = self.load(from, None);
        let Some(dst) = self.store(to, None, 0) else { return };
        match src {
            Some(src) => {
                self.mem.copy(src, dst);
            }
            None => self.mem.clear_frame(dst),
        }
    }

    fn frame_freed(&self, pfn: Pfn) {
        if let Some(mfn) = self.mfn_of(pfn) {
            self.mem.tlb_check_frame(mfn.0, TlbHazard::Freed, false);
        }
    }
}

impl P2m for XenModel {
    fn pfn_to_mfn(&self, pfn: Pfn) -> Option<Mfn> {
        self.mfn_of(pfn)
    }

    fn mfn_to_pfn(&self, mfn: Mfn) -> Option<Pfn> {
        self.pfn_of(mfn)
    }
}
