//! The guest's own view of its memory: the direct map, by pfn.
//!
//! Reads always work. A store goes through the pfn's direct-map alias: if
//! that alias is read-only (the frame is a live table, or was made ready to
//! become one) the store is not performed and is recorded as a violation —
//! on real Xen it would be a page fault (or, with writable_pagetables,
//! emulated for L1 only). Tests assert `violations()` is empty.

use pvops::{Mfn, Pfn, PhysMem};
use pvops_xen64::P2m;

use super::model::{Violation, XenModel};
use crate::tlb::TlbHazard;

impl XenModel {
    fn store(&self, pfn: Pfn, index: Option<usize>, value: u64) -> Option<u64> {
        let mut st = self.lock();
        let mfn = st.p2m.pfn_to_mfn(pfn.0);
        match mfn {
            Some(mfn) if st.alias_writable(pfn.0) => Some(mfn),
            _ => {
                st.violations.push(Violation { pfn, index, value });
                None
            }
        }
    }
}

impl PhysMem for XenModel {
    fn read_entry(&self, pfn: Pfn, index: usize) -> u64 {
        self.read_guest(pfn, index)
    }

    fn write_entry(&self, pfn: Pfn, index: usize, value: u64) {
        if let Some(mfn) = self.store(pfn, Some(index), value) {
            self.mem.write(mfn, index, value);
        }
    }

    fn zero_frame(&self, pfn: Pfn) {
        // Only allocators zero frames: this is reuse.
        if let Some(mfn) = self.mfn_of(pfn) {
            self.mem.tlb_check_frame(mfn.0, TlbHazard::Reused, false);
        }
        if let Some(mfn) = self.store(pfn, None, 0) {
            for index in 0..pvops::ENTRIES_PER_TABLE {
                self.mem.write(mfn, index, 0);
            }
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
