//! The Xen PV MMU model enforces the rules of the reference notes §6.
//! Each test drives raw hypercalls, as a careless guest could.

use pvops::pte::flags;
use pvops::{Mfn, Pfn, PhysMem};
use pvops_model::xen::{PageType, XenFault, XenModel};
use pvops_model::Fault;
use pvops_xen64::abi::{errno, mmuext, Call, MmuextOp, PAGE_GUEST_KERNEL};
use pvops_xen64::{HypercallTransport, Outcome, P2m};

mod common;
use common::{entry, mfn, mmu};

const RW: u64 = flags::PRESENT | flags::WRITABLE;
const URW: u64 = RW | flags::USER;

fn model() -> &'static XenModel {
    XenModel::leaked(64, 7)
}

fn ext(m: &XenModel, cmd: u32, pfn: u64) -> Outcome {
    let arg1 = if pfn == u64::MAX { 0 } else { mfn(m, pfn).0 };
    m.call(&Call::MmuextOp(&[MmuextOp { cmd, arg1, arg2: 0 }]))
}

fn remap(m: &XenModel, pfn: u64, writable: bool) -> Outcome {
    let f = if writable { RW } else { flags::PRESENT };
    m.call(&Call::UpdateVaMapping { va: m.direct_map_va(Pfn(pfn)), val: entry(m, pfn, f), flags: 0 })
}

fn err(code: i64) -> i64 {
    -code
}

#[test]
fn boot_leaves_a_pinned_loaded_read_only_l4_and_no_user_root() {
    let m = model();
    let root = m.pt_base();
    assert!(m.reserved_pfns().contains(&root));
    assert!(m.is_pinned(root));
    assert_eq!(m.page_type(root), PageType::Table(pvops::Level::L4));
    assert!(!m.alias_writable(root));
    assert_eq!(m.kernel_base(), m.mfn_of(root).unwrap());
    assert_eq!(m.user_base(), Mfn(0));
    assert_eq!((m.pinned_count(), m.typed_count()), (1, 1));
    assert_eq!(m.counters().hypercalls, 0);
}

#[test]
fn the_p2m_is_scrambled_and_consistent() {
    let m = model();
    let mfns: Vec<u64> = (0..m.nr_pages()).map(|p| mfn(m, p).0).collect();
    assert!(mfns.iter().enumerate().all(|(p, &f)| p as u64 != f), "no identity entry");
    assert!(mfns.windows(2).any(|w| w[0] > w[1]), "not monotonic");
    assert!(!mfns.contains(&0), "mfn 0 is the none sentinel");
    for p in 0..m.nr_pages() {
        assert_eq!(m.mfn_to_pfn(Mfn(mfns[p as usize])), Some(Pfn(p)));
    }
    let again = XenModel::boot(64, 7);
    assert!((0..64).all(|p| again.mfn_of(Pfn(p)) == m.mfn_of(Pfn(p))), "deterministic from the seed");
}

#[test]
fn a_frame_with_a_writable_alias_cannot_become_a_table() {
    let m = model();
    assert_eq!(ext(m, mmuext::PIN_L1_TABLE, 10).status, err(errno::EINVAL));
    assert_eq!(m.typed_count(), 1);
    assert!(remap(m, 10, false).is_ok());
    assert!(ext(m, mmuext::PIN_L1_TABLE, 10).is_ok());
    assert_eq!(m.page_type(Pfn(10)), PageType::Table(pvops::Level::L1));
}

#[test]
fn a_tables_alias_cannot_be_made_writable_again() {
    let m = model();
    assert!(remap(m, 10, false).is_ok());
    assert!(ext(m, mmuext::PIN_L2_TABLE, 10).is_ok());
    assert_eq!(remap(m, 10, true).status, err(errno::EBUSY));
    assert!(!m.alias_writable(Pfn(10)));
    assert!(ext(m, mmuext::UNPIN_TABLE, 10).is_ok());
    assert!(remap(m, 10, true).is_ok());
}

#[test]
fn pinning_twice_and_unpinning_an_unpinned_frame_are_errors() {
    let m = model();
    assert!(remap(m, 10, false).is_ok());
    assert!(ext(m, mmuext::PIN_L1_TABLE, 10).is_ok());
    assert_eq!(ext(m, mmuext::PIN_L1_TABLE, 10).status, err(errno::EINVAL));
    assert!(ext(m, mmuext::UNPIN_TABLE, 10).is_ok());
    assert_eq!(ext(m, mmuext::UNPIN_TABLE, 10).status, err(errno::EINVAL));
    assert_eq!(m.pinned_count(), 1);
}

#[test]
fn xens_l4_slots_are_refused_and_filled_by_xen() {
    let m = model();
    let root = m.pt_base().0;
    assert!(remap(m, 10, false).is_ok());
    for slot in [256, 263, 271] {
        assert_eq!(mmu(m, root, slot, entry(m, 10, RW)).status, err(errno::EINVAL), "slot {slot}");
    }
    assert_ne!(m.read_guest(Pfn(root), 256), 0, "Xen wrote its own slots when it validated the L4");
    assert!(mmu(m, root, 272, entry(m, 10, RW)).is_ok());
    assert!(mmu(m, root, 255, 0).is_ok());
}

#[test]
fn linking_validates_the_next_lower_level_and_counts_types() {
    let m = model();
    let root = m.pt_base().0;
    for p in [10, 11, 12] {
        assert!(remap(m, p, false).is_ok());
    }
    // L2 (pfn 11) → L1 (pfn 12) → data page 20 writable.
    PhysMem::write_entry(m, Pfn(13), 0, 0);
    assert!(mmu(m, 12, 5, entry(m, 20, RW)).is_ok(), "an untyped frame takes a plain write");
    assert!(mmu(m, 11, 0, entry(m, 12, RW)).is_ok());
    assert!(mmu(m, 10, 0, entry(m, 11, RW)).is_ok());
    assert_eq!(m.typed_count(), 1, "nothing is typed until linked under a live table");
    assert!(mmu(m, root, 0, entry(m, 10, RW)).is_ok());
    assert_eq!(m.typed_count(), 4);
    assert_eq!(m.page_type(Pfn(12)), PageType::Table(pvops::Level::L1));
    assert_eq!(m.page_type(Pfn(20)), PageType::Writable);
    assert_eq!(remap(m, 20, true).status, 0, "a data page may stay writable");
    // Clearing the link releases the whole subtree.
    assert!(mmu(m, root, 0, 0).is_ok());
    assert_eq!(m.typed_count(), 1);
    assert_eq!(m.page_type(Pfn(20)), PageType::None);
}

#[test]
fn a_table_of_the_wrong_level_is_refused() {
    let m = model();
    let root = m.pt_base().0;
    assert!(remap(m, 10, false).is_ok());
    assert!(ext(m, mmuext::PIN_L1_TABLE, 10).is_ok());
    assert_eq!(mmu(m, root, 0, entry(m, 10, RW)).status, err(errno::EINVAL), "an L1 is no L3");
}

#[test]
fn a_writable_l1_entry_to_a_table_is_ebusy() {
    let m = model();
    let root = m.pt_base().0;
    for p in [10, 11, 12] {
        assert!(remap(m, p, false).is_ok());
    }
    assert!(mmu(m, 11, 0, entry(m, 12, RW)).is_ok());
    assert!(mmu(m, 10, 0, entry(m, 11, RW)).is_ok());
    assert!(mmu(m, root, 0, entry(m, 10, RW)).is_ok());
    // The live L1 (12) maps the L3 (10): writable is -EBUSY, read-only is fine.
    assert_eq!(mmu(m, 12, 1, entry(m, 10, RW)).status, err(errno::EBUSY));
    assert!(mmu(m, 12, 1, entry(m, 10, flags::PRESENT)).is_ok());
}

#[test]
fn pse_in_l2_and_l3_is_refused() {
    let m = model();
    let root = m.pt_base().0;
    for p in [10, 11] {
        assert!(remap(m, p, false).is_ok());
    }
    assert!(mmu(m, root, 0, entry(m, 10, RW)).is_ok());
    assert_eq!(mmu(m, 10, 0, entry(m, 11, RW | flags::HUGE)).status, err(errno::EINVAL));
    assert!(mmu(m, 10, 0, entry(m, 11, RW)).is_ok());
    assert_eq!(mmu(m, 11, 0, entry(m, 30, RW | flags::HUGE)).status, err(errno::EINVAL));
}

#[test]
fn xen_rewrites_present_entries() {
    let m = model();
    let root = m.pt_base().0;
    for p in [10, 11, 12] {
        assert!(remap(m, p, false).is_ok());
    }
    assert!(mmu(m, root, 0, entry(m, 10, RW)).is_ok());
    assert!(mmu(m, 10, 0, entry(m, 11, RW)).is_ok());
    assert!(mmu(m, 11, 0, entry(m, 12, RW)).is_ok());
    assert!(mmu(m, 12, 0, entry(m, 20, RW)).is_ok());
    assert!(mmu(m, 12, 1, entry(m, 21, URW)).is_ok());
    assert_eq!(m.read_guest(Pfn(root), 0), entry(m, 10, RW | flags::USER | flags::ACCESSED));
    assert_eq!(m.read_guest(Pfn(10), 0), entry(m, 11, RW | flags::USER));
    assert_eq!(m.read_guest(Pfn(11), 0), entry(m, 12, RW | flags::USER));
    assert_eq!(m.read_guest(Pfn(12), 0), entry(m, 20, RW | flags::USER | PAGE_GUEST_KERNEL));
    assert_eq!(m.read_guest(Pfn(12), 1), entry(m, 21, URW | flags::GLOBAL));
}

#[test]
fn a_direct_store_to_a_read_only_alias_is_a_violation_and_not_performed() {
    let m = model();
    let root = m.pt_base();
    m.write_entry(root, 3, 0x1234);
    assert_eq!(m.read_guest(root, 3), 0);
    let v = m.violations();
    assert_eq!(v.len(), 1);
    assert_eq!((v[0].pfn, v[0].index, v[0].value), (root, Some(3), 0x1234));
    m.write_entry(Pfn(40), 3, 0x1234);
    assert_eq!(m.read_guest(Pfn(40), 3), 0x1234);
    assert_eq!(m.violations().len(), 1);
}

#[test]
fn user_mode_without_a_user_root_crashes_the_domain() {
    let m = model();
    assert_eq!(m.access(0x40_0000, true, false), Err(XenFault::DomainCrashed));
    assert!(m.crashed().unwrap().contains("no user page tables"));
}

#[test]
fn the_two_base_pointers_translate_kernel_and_user_mode_separately() {
    let m = model();
    let root = m.pt_base().0;
    // A user L4 (pfn 9) sharing an L3 with the kernel root; one user page.
    for p in [9, 10, 11, 12] {
        assert!(remap(m, p, false).is_ok());
    }
    assert!(mmu(m, 12, 0, entry(m, 20, URW)).is_ok());
    assert!(mmu(m, 11, 0, entry(m, 12, URW)).is_ok());
    assert!(mmu(m, 10, 0, entry(m, 11, URW)).is_ok());
    assert!(mmu(m, root, 0, entry(m, 10, URW)).is_ok());
    assert_eq!(m.access(0, false, true), Ok(Pfn(20)), "kernel mode through the kernel root");
    assert!(ext(m, mmuext::NEW_USER_BASEPTR, 9).is_ok());
    assert_eq!(m.access(0, true, false), Err(XenFault::Page(Fault::NotPresent(pvops::Level::L4))));
    assert!(mmu(m, 9, 0, entry(m, 10, URW)).is_ok());
    assert_eq!(m.access(0, true, true), Ok(Pfn(20)));
    // mfn 0 = none again: the next user-mode entry crashes.
    assert!(ext(m, mmuext::NEW_USER_BASEPTR, u64::MAX).is_ok());
    assert_eq!(m.user_base(), Mfn(0));
    assert_eq!(m.access(0, true, false), Err(XenFault::DomainCrashed));
}

/// The hardware rule, no software convention: Xen sets U (and bit 52,
/// `_PAGE_GUEST_KERNEL`) on the guest kernel's L1 entries, so a user root that
/// maps a kernel page gives it to user mode. Only leaving it out of the user
/// root protects it.
#[test]
fn a_kernel_page_is_reachable_from_user_mode_exactly_when_the_user_root_maps_it() {
    let m = model();
    let root = m.pt_base().0;
    for p in [10, 11, 12] {
        assert!(remap(m, p, false).is_ok());
    }
    assert!(mmu(m, 12, 0, entry(m, 20, RW)).is_ok());
    assert!(mmu(m, 11, 0, entry(m, 12, URW)).is_ok());
    assert!(mmu(m, 10, 0, entry(m, 11, URW)).is_ok());
    assert!(mmu(m, root, 0, entry(m, 10, URW)).is_ok());
    let l1e = m.read_guest(Pfn(12), 0);
    assert_eq!(l1e & (flags::USER | PAGE_GUEST_KERNEL), flags::USER | PAGE_GUEST_KERNEL, "Xen's rewrite");
    assert!(ext(m, mmuext::NEW_USER_BASEPTR, root).is_ok());
    assert_eq!(m.access(0, false, false), Ok(Pfn(20)));
    assert_eq!(m.access(0, true, false), Ok(Pfn(20)), "bit 52 protects nothing");
    // A user root that does not map it: user mode cannot reach it.
    assert!(remap(m, 9, false).is_ok());
    assert!(ext(m, mmuext::NEW_USER_BASEPTR, 9).is_ok());
    assert!(ext(m, mmuext::TLB_FLUSH_LOCAL, u64::MAX).is_ok());
    assert_eq!(m.access(0, true, false), Err(XenFault::Page(Fault::NotPresent(pvops::Level::L4))));
}

#[test]
fn new_baseptr_needs_an_l4_and_releases_the_old_root() {
    let m = model();
    let old = m.pt_base();
    assert_eq!(ext(m, mmuext::NEW_BASEPTR, 10).status, err(errno::EINVAL), "writable alias");
    assert!(remap(m, 10, false).is_ok());
    assert!(ext(m, mmuext::NEW_BASEPTR, 10).is_ok());
    assert_eq!(m.kernel_base(), mfn(m, 10));
    assert_eq!(m.frame_info(old).type_count, 1, "only the pin holds the boot root now");
    assert_eq!(m.frame_info(Pfn(10)).type_count, 1);
}

#[test]
fn a_multicall_runs_every_entry_and_records_each_result() {
    let m = model();
    let ops = [MmuextOp { cmd: mmuext::PIN_L1_TABLE, arg1: mfn(m, 10).0, arg2: 0 }];
    let calls = [
        Call::MmuextOp(&ops), // fails: the alias is writable
        Call::UpdateVaMapping { va: m.direct_map_va(Pfn(10)), val: entry(m, 10, flags::PRESENT), flags: 0 },
        Call::MmuextOp(&ops), // now works
    ];
    let mut out = [Outcome::default(); 3];
    assert_eq!(m.multicall(&calls, &mut out), 0);
    assert_eq!(out, [Outcome::failed(err(errno::EINVAL), 0), Outcome::ok(1), Outcome::ok(1)]);
    let c = m.counters();
    assert_eq!((c.hypercalls, c.multicalls, c.multicall_entries), (1, 1, 3));
    assert_eq!((c.pins, c.update_va_mappings, c.failures), (2, 1, 1));
}

#[test]
fn an_array_stops_at_its_first_failing_record_and_reports_done() {
    let m = model();
    assert!(remap(m, 10, false).is_ok());
    let ops = [
        MmuextOp { cmd: mmuext::PIN_L1_TABLE, arg1: mfn(m, 10).0, arg2: 0 },
        MmuextOp { cmd: mmuext::PIN_L1_TABLE, arg1: mfn(m, 10).0, arg2: 0 },
        MmuextOp { cmd: mmuext::TLB_FLUSH_LOCAL, arg1: 0, arg2: 0 },
    ];
    assert_eq!(m.call(&Call::MmuextOp(&ops)), Outcome::failed(err(errno::EINVAL), 1));
    assert_eq!(m.counters().tlb_flushes, 0);
}

#[test]
fn injected_failures_hit_exactly_the_chosen_operation() {
    let m = model();
    m.inject_subop_failure(1, -errno::ENOMEM);
    assert!(remap(m, 10, false).is_ok());
    assert_eq!(remap(m, 11, false).status, -errno::ENOMEM);
    assert!(m.alias_writable(Pfn(11)), "a failed operation has no effect");
    assert!(remap(m, 11, false).is_ok());
    m.inject_hypercall_failure(0, -errno::EFAULT);
    let mut out = [Outcome::default(); 1];
    let calls = [Call::UpdateVaMapping { va: m.direct_map_va(Pfn(12)), val: entry(m, 12, flags::PRESENT), flags: 0 }];
    assert_eq!(m.multicall(&calls, &mut out), -errno::EFAULT);
    assert!(m.alias_writable(Pfn(12)));
    assert!(!m.clear_injections());
}

#[test]
fn update_va_mapping_only_knows_the_direct_map() {
    let m = model();
    // Another frame, read-only: accepted, and pfn 10 has no alias of its own left
    // (tests/xen_direct_map.rs has the rest: writable, counts, stores).
    let ro =
        m.call(&Call::UpdateVaMapping { va: m.direct_map_va(Pfn(10)), val: entry(m, 11, flags::PRESENT), flags: 0 });
    assert_eq!(ro.status, 0);
    assert!(!m.alias_writable(Pfn(10)));
    let outside = m.call(&Call::UpdateVaMapping { va: 0x1000, val: entry(m, 10, flags::PRESENT), flags: 0 });
    assert_eq!(outside.status, err(errno::EINVAL));
    let past_the_domain = m.direct_map_va(Pfn(m.nr_pages()));
    let past = m.call(&Call::UpdateVaMapping { va: past_the_domain, val: 0, flags: 0 });
    assert_eq!(past.status, err(errno::EINVAL));
}
