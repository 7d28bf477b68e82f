//! The guest's direct map as real L1 entries: slot `p` (the L1e for
//! `direct_map_base + p * 4096`) maps some machine frame, read-only or
//! writable, or nothing.
//!
//! A writable slot is a writable mapping of its target: in Xen each writable
//! L1e takes one `PGT_writable_page` type reference on the frame it names
//! (`get_page_from_l1e` → `get_page_type`, xen/arch/x86/mm.c), whichever pfn's
//! slot it is. So a frame becomes a table only when no slot (and no validated
//! L1e) maps it writable, a writable slot naming a table is -EBUSY, and slot
//! `p` may name pfn `q`'s frame (calibrated: tests/calibration,
//! `alias-other-frame`). The model counts slot references per mfn next to
//! [`super::FrameInfo::type_count`] (which holds the references of validated
//! tables, pins and base pointers); Xen's one count is their sum.
//!
//! The slots are not in any modelled page table, so the machine's TLB cannot
//! see them; the stale translations a slot change leaves (`lost`, as for any
//! L1e) are kept here, for every vCPU (the direct map is in the kernel half
//! every vCPU has loaded), and dropped on a vCPU by the same flushes there
//! (`invlpg` of the address, a full flush).

use pvops_xen64::abi::errno;

use super::types::{Hv, PageType};
use crate::tlb::{TlbHazard, TlbViolation};

/// What one direct-map slot maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The machine frame.
    pub mfn: u64,
    /// Writable (holds a writable-type reference on `mfn`).
    pub writable: bool,
}

/// A translation of a direct-map address the TLB may still hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StaleSlot {
    pub(crate) pfn: u64,
    pub(crate) slot: Slot,
    /// The vCPUs that may still hold it (bit n = vCPU n).
    pub(crate) vcpus: u64,
}

/// The slots, the per-frame writable counts, and their stale translations.
#[derive(Debug)]
pub(crate) struct DirectMap {
    slots: Vec<Option<Slot>>,
    /// Every vCPU (bit n = vCPU n).
    all_vcpus: u64,
    /// Per mfn: writable slots naming it.
    writable: Vec<u32>,
    stale: Vec<StaleSlot>,
    /// Hazards seen through stale slot translations (frames as mfns).
    pub(crate) hazards: Vec<TlbViolation>,
}

impl DirectMap {
    /// As the domain builder leaves it: every pfn mapped to its own frame
    /// (`p2m[pfn]`), writable but for `read_only`; `vcpus` vCPUs.
    pub(crate) fn identity(p2m: impl Iterator<Item = u64>, nr_mfns: u64, read_only: u64, vcpus: usize) -> Self {
        let mut writable = vec![0; nr_mfns as usize];
        let slots = p2m
            .enumerate()
            .map(|(pfn, mfn)| {
                let w = pfn as u64 != read_only;
                if let (true, Some(c)) = (w, writable.get_mut(mfn as usize)) {
                    *c += 1;
                }
                Some(Slot { mfn, writable: w })
            })
            .collect();
        let all_vcpus = pvops::CpuMask::first(vcpus).0;
        DirectMap { slots, all_vcpus, writable, stale: Vec::new(), hazards: Vec::new() }
    }

    /// Slot `pfn`.
    pub(crate) fn slot(&self, pfn: u64) -> Option<Slot> {
        self.slots.get(pfn as usize).copied().flatten()
    }

    /// Writable slots naming `mfn`.
    pub(crate) fn writable_count(&self, mfn: u64) -> u32 {
        self.writable.get(mfn as usize).copied().unwrap_or(0)
    }

    /// `vcpu`'s TLB may hold a writable translation of slot `pfn` other
    /// than its live one: the frame a store may reach instead (the worst case).
    pub(crate) fn stale_writable(&self, vcpu: usize, pfn: u64) -> Option<u64> {
        let live = self.slot(pfn).filter(|s| s.writable).map(|s| s.mfn);
        let bit = pvops::CpuMask::one(vcpu).0;
        self.stale
            .iter()
            .find(|s| s.pfn == pfn && s.vcpus & bit != 0 && s.slot.writable && Some(s.slot.mfn) != live)
            .map(|s| s.slot.mfn)
    }

    /// Drops what `invlpg` of slot `pfn`'s address drops on `vcpu`.
    pub(crate) fn invlpg(&mut self, vcpu: usize, pfn: u64) {
        let bit = pvops::CpuMask::one(vcpu).0;
        for s in self.stale.iter_mut().filter(|s| s.pfn == pfn) {
            s.vcpus &= !bit;
        }
        self.stale.retain(|s| s.vcpus != 0);
    }

    /// Drops every stale translation on `vcpu` (a full flush; they are not global).
    pub(crate) fn flush(&mut self, vcpu: usize) {
        let bit = pvops::CpuMask::one(vcpu).0;
        for s in &mut self.stale {
            s.vcpus &= !bit;
        }
        self.stale.retain(|s| s.vcpus != 0);
    }
}

impl Hv<'_> {
    /// Writable references on `mfn` in Xen's sense: writable slots plus
    /// validated writable L1es.
    pub(crate) fn writable_refs(&self, mfn: u64) -> u32 {
        let typed = self.st.frames.get(mfn as usize).filter(|f| f.page_type == PageType::Writable);
        self.st.direct.writable_count(mfn) + typed.map_or(0, |f| f.type_count)
    }

    /// Sets slot `pfn` the way Xen's `mod_l1_entry` changes an L1e: the new
    /// entry's reference is taken first (a writable one on a table is -EBUSY,
    /// its first one is a type change with its flush), then the entry is
    /// written, then the old entry's reference goes (the last one stamps the
    /// frame). A translation the change takes away stays cached until flushed.
    pub(crate) fn set_slot(&mut self, pfn: u64, new: Option<Slot>) -> Result<(), i64> {
        if pfn as usize >= self.st.p2m.nr_pages() as usize {
            return Err(-errno::EINVAL);
        }
        if let Some(Slot { mfn, writable: true }) = new {
            if self.st.frames.get(mfn as usize).is_some_and(|f| f.is_table()) {
                return Err(-errno::EBUSY);
            }
            if self.writable_refs(mfn) == 0 {
                self.type_change_flush(mfn, PageType::Writable);
                if let Some(t) = self.st.last_type.get_mut(mfn as usize) {
                    *t = PageType::Writable;
                }
            }
            if let Some(c) = self.st.direct.writable.get_mut(mfn as usize) {
                *c += 1;
            }
        }
        let old = self.st.direct.slot(pfn);
        if let Some(s) = self.st.direct.slots.get_mut(pfn as usize) {
            *s = new;
        }
        if let Some(old) = old {
            // tlb.rs `lost`: gone, another frame, or write permission taken away.
            let lost = new.is_none_or(|n| n.mfn != old.mfn || (old.writable && !n.writable));
            if lost {
                let vcpus = self.st.direct.all_vcpus;
                self.st.direct.stale.push(StaleSlot { pfn, slot: old, vcpus });
            }
            if old.writable {
                if let Some(c) = self.st.direct.writable.get_mut(old.mfn as usize) {
                    *c = c.saturating_sub(1);
                }
                if self.writable_refs(old.mfn) == 0 {
                    self.stamp(old.mfn);
                }
            }
        }
        Ok(())
    }

    /// `mfn` is becoming a table: a writable translation of it that a slot
    /// change left cached is the hazard the type-change flush exists for.
    pub(crate) fn check_stale_slots(&mut self, mfn: u64) {
        let base = self.st.direct_map_base;
        let hit = self.st.direct.stale.iter().find(|s| s.slot.writable && s.slot.mfn == mfn);
        if let Some(s) = hit {
            let va = base + s.pfn * pvops::PAGE_SIZE;
            let v = TlbViolation { hazard: TlbHazard::BecameTable, frame: mfn, va, stale: true };
            self.st.direct.hazards.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use pvops::pte::flags;
    use pvops::Pfn;
    use pvops_xen64::abi::{uvmf, Call};
    use pvops_xen64::HypercallTransport;

    use super::super::types::Hv;
    use super::super::XenModel;
    use crate::tlb::TlbHazard;

    /// Xen's type-change flush always comes first (the stamp is never older
    /// than a stale slot), so the check is asked directly here.
    #[test]
    fn a_stale_writable_slot_of_a_frame_becoming_a_table_is_a_hazard() {
        let m = XenModel::boot(32, 5);
        let mfn = m.mfn_of(Pfn(10)).map_or(0, |m| m.0);
        let va = m.direct_map_va(Pfn(10));
        let ro = Call::UpdateVaMapping { va, val: (mfn << 12) | flags::PRESENT, flags: uvmf::NONE };
        assert!(m.call(&ro).is_ok());
        let mut st = m.lock();
        Hv::new(&mut st, &m.mem).check_stale_slots(mfn);
        let h = st.direct.hazards.clone();
        drop(st);
        assert_eq!(
            h.iter().map(|v| (v.hazard, v.frame, v.va)).collect::<Vec<_>>(),
            [(TlbHazard::BecameTable, mfn, va)]
        );
        assert_eq!(m.tlb_violations().len(), 1, "reported with the machine TLB's hazards");
    }
}
