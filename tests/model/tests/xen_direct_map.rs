//! The Xen model's direct map as real L1 slots: slot `p` may name another
//! frame than `p`'s, each writable slot is a writable mapping of the frame it
//! names (Xen's `PGT_writable_page` count, xen/arch/x86/mm.c
//! `get_page_from_l1e`), stores and reads go through the slot, and a slot
//! change leaves its old translation in the TLB until Xen flushes it.

use pvops::pte::flags;
use pvops::{Mfn, Pfn, PhysMem};
use pvops_model::xen::{Slot, XenModel};
use pvops_model::TlbHazard;
use pvops_xen64::abi::{errno, mmuext, uvmf, Call, MmuextOp};
use pvops_xen64::{HypercallTransport, Outcome};

const RW: u64 = flags::PRESENT | flags::WRITABLE;

fn model() -> &'static XenModel {
    XenModel::leaked(64, 11)
}

fn mfn(m: &XenModel, pfn: u64) -> Mfn {
    m.mfn_of(Pfn(pfn)).expect("in range")
}

/// `update_va_mapping` of pfn `slot`'s direct-map address to frame `target`.
fn point(m: &XenModel, slot: u64, target: u64, writable: bool, uvm: u64) -> Outcome {
    let f = if writable { RW } else { flags::PRESENT };
    let val = mfn(m, target).addr() | f;
    m.call(&Call::UpdateVaMapping { va: m.direct_map_va(Pfn(slot)), val, flags: uvm })
}

fn unmap(m: &XenModel, slot: u64) -> Outcome {
    m.call(&Call::UpdateVaMapping { va: m.direct_map_va(Pfn(slot)), val: 0, flags: uvmf::INVLPG })
}

fn ext(m: &XenModel, cmd: u32, pfn: u64) -> Outcome {
    m.call(&Call::MmuextOp(&[MmuextOp { cmd, arg1: mfn(m, pfn).0, arg2: 0 }]))
}

#[test]
fn boot_maps_every_pfn_to_its_own_frame() {
    let m = model();
    for p in 0..m.nr_pages() {
        let writable = Pfn(p) != m.pt_base();
        assert_eq!(m.direct_map_slot(Pfn(p)), Some(Slot { mfn: mfn(m, p).0, writable }));
        assert_eq!(m.writable_mappings(Pfn(p)), u32::from(writable));
    }
}

#[test]
fn a_slot_may_name_another_frame_writable_and_that_frame_counts_it() {
    let m = model();
    assert_eq!(point(m, 10, 11, true, uvmf::INVLPG).status, 0, "real Xen accepts it (alias-other-frame)");
    assert_eq!(m.direct_map_slot(Pfn(10)), Some(Slot { mfn: mfn(m, 11).0, writable: true }));
    assert!(!m.alias_writable(Pfn(10)));
    assert_eq!((m.writable_mappings(Pfn(10)), m.writable_mappings(Pfn(11))), (0, 2));
    // Frame 10 is mapped writable by nothing now: it can become a table.
    assert!(ext(m, mmuext::PIN_L1_TABLE, 10).is_ok());
    // Frame 11 is still mapped writable by slot 10 after its own slot is
    // read-only: a per-pfn flag would let it become a table, Xen does not.
    assert!(point(m, 11, 11, false, uvmf::INVLPG).is_ok());
    assert_eq!(m.writable_mappings(Pfn(11)), 1);
    assert_eq!(ext(m, mmuext::PIN_L1_TABLE, 11).status, -errno::EINVAL);
    // A writable slot naming a table is refused, whichever slot it is.
    assert_eq!(point(m, 12, 10, true, uvmf::INVLPG).status, -errno::EBUSY);
    assert_eq!(m.direct_map_slot(Pfn(12)), Some(Slot { mfn: mfn(m, 12).0, writable: true }), "no effect");
    assert!(point(m, 12, 10, false, uvmf::INVLPG).is_ok(), "read-only is fine");
    // Slot 10 lets go of frame 11: now it can become a table.
    assert!(point(m, 10, 12, false, uvmf::INVLPG).is_ok());
    assert_eq!(m.writable_mappings(Pfn(11)), 0);
    assert!(ext(m, mmuext::PIN_L1_TABLE, 11).is_ok());
    assert!(m.violations().is_empty() && m.tlb_violations().is_empty());
}

#[test]
fn a_validated_writable_l1e_and_a_slot_count_together() {
    let m = model();
    // Pin an L1 (pfn 13) that maps data frame 20 writable: 20 has two writable
    // mappings, its slot and the L1e.
    PhysMem::write_entry(m, Pfn(13), 0, mfn(m, 20).addr() | RW);
    assert!(point(m, 13, 13, false, uvmf::INVLPG).is_ok());
    assert!(ext(m, mmuext::PIN_L1_TABLE, 13).is_ok());
    assert_eq!(m.writable_mappings(Pfn(20)), 2);
    // Dropping the slot leaves the L1e's: still no table.
    assert!(point(m, 20, 20, false, uvmf::INVLPG).is_ok());
    assert_eq!(m.writable_mappings(Pfn(20)), 1);
    assert_eq!(ext(m, mmuext::PIN_L1_TABLE, 20).status, -errno::EINVAL);
    assert!(ext(m, mmuext::UNPIN_TABLE, 13).is_ok());
    assert_eq!(m.writable_mappings(Pfn(20)), 0);
    assert!(ext(m, mmuext::PIN_L1_TABLE, 20).is_ok());
}

#[test]
fn stores_and_reads_go_through_the_slot() {
    let m = model();
    assert!(point(m, 14, 15, true, uvmf::INVLPG).is_ok());
    m.write_entry(Pfn(14), 3, 0xabc);
    assert_eq!(m.read_guest(Pfn(15), 3), 0xabc, "the store landed in the frame slot 14 names");
    assert_eq!(m.read_guest(Pfn(14), 3), 0, "not in pfn 14's own frame");
    assert_eq!(m.read_entry(Pfn(14), 3), 0xabc);
    assert!(m.violations().is_empty());
    // Read-only: the store is refused and recorded, the read still works.
    assert!(point(m, 14, 15, false, uvmf::INVLPG).is_ok());
    m.write_entry(Pfn(14), 3, 0xdef);
    assert_eq!(m.read_guest(Pfn(15), 3), 0xabc);
    assert_eq!(m.read_entry(Pfn(14), 3), 0xabc);
    let v = m.violations();
    assert_eq!((v.len(), v[0].pfn, v[0].write), (1, Pfn(14), true));
    // Nothing: both fault.
    m.clear_violations();
    assert!(unmap(m, 14).is_ok());
    assert_eq!(m.direct_map_slot(Pfn(14)), None);
    assert_eq!(m.read_entry(Pfn(14), 3), 0);
    m.zero_frame(Pfn(14));
    let v = m.violations();
    assert_eq!(v.iter().map(|v| (v.pfn, v.write)).collect::<Vec<_>>(), [(Pfn(14), false), (Pfn(14), true)]);
    assert_eq!(m.read_guest(Pfn(15), 3), 0xabc);
}

#[test]
fn a_store_through_an_unflushed_read_only_slot_is_a_stale_write() {
    let m = model();
    assert!(point(m, 16, 16, false, uvmf::NONE).is_ok());
    m.write_entry(Pfn(16), 0, 7);
    let hazards = m.tlb_violations();
    assert_eq!(hazards.len(), 1, "{hazards:x?}");
    assert_eq!((hazards[0].hazard, hazards[0].frame), (TlbHazard::StaleWrite, 16));
    assert_eq!(hazards[0].va, m.direct_map_va(Pfn(16)));
    assert_eq!(m.read_guest(Pfn(16), 0), 7, "the worst case: the stale translation was used");
    assert!(m.violations().is_empty());
}

#[test]
fn xen_flushes_drop_a_stale_slot_translation() {
    let m = model();
    // UVMF_INVLPG in the same call.
    assert!(point(m, 17, 17, false, uvmf::INVLPG).is_ok());
    m.write_entry(Pfn(17), 0, 7);
    assert_eq!(m.violations().len(), 1, "a plain refused store");
    // A later MMUEXT_INVLPG_LOCAL of the address.
    assert!(point(m, 18, 18, false, uvmf::NONE).is_ok());
    let op = MmuextOp { cmd: mmuext::INVLPG_LOCAL, arg1: m.direct_map_va(Pfn(18)), arg2: 0 };
    assert!(m.call(&Call::MmuextOp(&[op])).is_ok());
    m.write_entry(Pfn(18), 0, 7);
    // A full flush (UVMF_TLB_FLUSH of any address).
    assert!(point(m, 19, 19, false, uvmf::NONE).is_ok());
    assert!(point(m, 21, 21, false, uvmf::TLB_FLUSH).is_ok());
    m.write_entry(Pfn(19), 0, 7);
    assert_eq!(m.violations().len(), 3);
    assert!(m.tlb_violations().is_empty(), "{:x?}", m.tlb_violations());
    assert_eq!((m.read_guest(Pfn(17), 0), m.read_guest(Pfn(18), 0), m.read_guest(Pfn(19), 0)), (0, 0, 0));
}

#[test]
fn the_type_change_flush_drops_a_stale_slot_before_the_frame_becomes_a_table() {
    let m = model();
    // The backend's way (no flush flag, direct_map.rs): Xen's type change
    // from writable to table flushes (tlbflush_filter), so no writable
    // translation of the new table survives.
    assert!(point(m, 22, 22, false, uvmf::NONE).is_ok());
    assert!(ext(m, mmuext::PIN_L1_TABLE, 22).is_ok());
    assert!(m.tlb_violations().is_empty(), "{:x?}", m.tlb_violations());
    // And a store after it faults on the read-only slot.
    m.write_entry(Pfn(22), 0, 7);
    assert_eq!(m.violations().len(), 1);
    assert!(m.tlb_violations().is_empty());
}

#[test]
fn a_slot_checks_its_target_like_any_l1e() {
    let m = model();
    let va = m.direct_map_va(Pfn(25));
    let nr_mfns = m.machine().nr_frames();
    // Not RAM: I/O memory without permission (as `l1-maps-foreign` on Xen).
    let io = m.call(&Call::UpdateVaMapping { va, val: (nr_mfns << 12) | flags::PRESENT, flags: uvmf::INVLPG });
    assert_eq!(io.status, -errno::EPERM);
    // RAM the domain does not own.
    let spare = (1..nr_mfns).find(|&f| m.pfn_of(Mfn(f)).is_none()).expect("spare frames exist");
    let foreign = m.call(&Call::UpdateVaMapping { va, val: (spare << 12) | flags::PRESENT, flags: uvmf::INVLPG });
    assert_eq!(foreign.status, -errno::EINVAL);
    assert_eq!(m.direct_map_slot(Pfn(25)), Some(Slot { mfn: mfn(m, 25).0, writable: true }), "no effect");
}
