//! The xen64 backend, behaviour by behaviour, against the Xen PV MMU model.
//! Each test names the claim it checks and fails if that behaviour goes.

use pvops::pte::flags;
use pvops::{BootEnv, EntryKind, Level, MmServices, Pfn, Pte, PvError, VirtAddr, USER_PGD_SLOTS};
use pvops_model::xen::guest::{KERNEL_PAGE, KERNEL_TABLE, USER_PAGE};
use pvops_model::xen::{XenFault, XenGuest};
use pvops_model::Fault;
use pvops_native as _;
use pvops_xen64::abi::errno;

/// A user address in L4 slot 0.
const UVA: u64 = 0x40_0000;
/// A kernel-half address (slot 273, Linux's direct map).
const KVA: u64 = 0xffff_8880_0010_0000;

fn guest() -> XenGuest {
    XenGuest::boot(512, 11)
}

/// A pgd mapping each of `vas` to a fresh user data page; returns (pgd, data pages).
fn space(g: &XenGuest, vas: &[u64]) -> (Pfn, Vec<Pfn>) {
    let pgd = g.new_pgd().unwrap();
    let mut data = Vec::new();
    for &va in vas {
        let frame = g.mm.alloc_zeroed_frame().unwrap();
        g.map(pgd, va, frame, USER_PAGE).unwrap();
        data.push(frame);
    }
    (pgd, data)
}

fn user_pgd(g: &XenGuest, pgd: Pfn) -> Pfn {
    g.backend.get_user_pgd(g.mm, pgd, 0).unwrap().expect("user pgd attached").pgd
}

/// Every frame of the address space that must be read-only while pinned.
fn pinned_set(g: &XenGuest, pgd: Pfn) -> Vec<Pfn> {
    let mut v: Vec<Pfn> = g.user_table_pages(pgd).unwrap().into_iter().map(|(_, p)| p).collect();
    v.push(pgd);
    v.push(user_pgd(g, pgd));
    v
}

fn assert_fully_unpinned(g: &XenGuest, pgd: Pfn, what: &str) {
    assert_eq!(g.model.pinned_count(), 1, "{what}: only the boot root stays pinned");
    assert_eq!(g.model.typed_count(), 1, "{what}: only the boot root stays typed");
    for pfn in pinned_set(g, pgd) {
        assert!(g.model.alias_writable(pfn), "{what}: {pfn:?} writable again");
        assert!(!g.mm.is_pinned(pfn).unwrap(), "{what}: {pfn:?} metadata unpinned");
    }
    assert!(g.model.violations().is_empty(), "{what}: {:?}", g.model.violations());
}

fn assert_fully_pinned(g: &XenGuest, pgd: Pfn, tables: usize, what: &str) {
    assert_eq!(g.model.pinned_count(), 3, "{what}: boot root + kernel pgd + user pgd");
    assert_eq!(g.model.typed_count(), 3 + tables, "{what}: every table validated");
    for pfn in pinned_set(g, pgd) {
        assert!(!g.model.alias_writable(pfn), "{what}: {pfn:?} read-only");
        assert!(g.mm.is_pinned(pfn).unwrap(), "{what}: {pfn:?} metadata pinned");
    }
    assert!(g.model.violations().is_empty(), "{what}: {:?}", g.model.violations());
}

// ---- registry -------------------------------------------------------------

#[test]
fn the_registry_picks_xen64_over_native_on_a_xen_pv_entry() {
    let g = guest();
    let platform = g.model.platform();
    let env = BootEnv { entry: EntryKind::XenPv, handover: "xen-3.0-x86_64", platform: &platform };
    let list = pvops::backends();
    let chosen = pvops::select(&env, &list, None).unwrap();
    assert_eq!(chosen.name, "xen64");
    let native = list.iter().find(|d| d.name == "native").expect("native linked");
    assert!(chosen.priority > native.priority);
    let ops = (chosen.instantiate)(&env).unwrap();
    assert_eq!(ops.name(), "xen64");
    assert_eq!(ops.read_cr3(), g.init_pgd(), "the boot root is loaded");

    let pvh = BootEnv { entry: EntryKind::Pvh, ..env };
    let err = pvops::select(&pvh, &list, None).unwrap_err();
    assert!(err.tried.iter().any(|(n, _)| *n == "xen64"), "xen64 refuses a PVH entry");
}

// ---- user pgd -------------------------------------------------------------

#[test]
fn get_user_pgd_has_a_slot_only_below_user_limit() {
    let g = guest();
    let pgd = g.new_pgd().unwrap();
    let user = user_pgd(&g, pgd);
    for index in [0, 1, 255] {
        let slot = g.backend.get_user_pgd(g.mm, pgd, index).unwrap().unwrap();
        assert_eq!((slot.pgd, slot.index), (user, index));
    }
    assert_eq!(USER_PGD_SLOTS, 256);
    for index in [256, 271, 272, 300, 511] {
        assert_eq!(g.backend.get_user_pgd(g.mm, pgd, index).unwrap(), None, "slot {index}");
    }
}

#[test]
fn pgd_alloc_attaches_a_zeroed_user_pgd_through_the_private_word() {
    let g = guest();
    let before = g.mm.allocated_frames();
    let pgd = g.new_pgd().unwrap();
    assert_eq!(g.mm.allocated_frames(), before + 2);
    let user = user_pgd(&g, pgd);
    assert_ne!(user, pgd);
    assert!(g.mm.is_allocated(user));
    assert_ne!(g.mm.private(pgd).unwrap(), 0);
    assert!((0..512).all(|i| g.model.read_guest(user, i) == 0));
    assert!(g.model.alias_writable(user), "not pinned yet");
}

#[test]
fn pgd_alloc_refuses_a_pinned_pgd_and_a_second_user_pgd() {
    let g = guest();
    let pgd = g.new_pgd().unwrap();
    assert!(matches!(g.ops().pgd_alloc(g.mm, pgd), Err(PvError::WrongState { .. })));
    let other = g.mm.alloc_zeroed_frame().unwrap();
    g.mm.set_pinned(other, true).unwrap();
    let allocated = g.mm.allocated_frames();
    assert!(matches!(g.ops().pgd_alloc(g.mm, other), Err(PvError::WrongState { .. })));
    assert_eq!(g.mm.allocated_frames(), allocated);
    assert_eq!(g.mm.private(other).unwrap(), 0);
}

#[test]
fn pgd_alloc_out_of_memory_is_an_error_and_changes_nothing() {
    let g = guest();
    let pgd = g.mm.alloc_zeroed_frame().unwrap();
    let allocated = g.mm.allocated_frames();
    g.mm.fail_allocation_after(Some(0));
    assert_eq!(g.ops().pgd_alloc(g.mm, pgd), Err(PvError::OutOfMemory));
    g.mm.fail_allocation_after(None);
    assert_eq!(g.mm.allocated_frames(), allocated);
    assert_eq!(g.mm.private(pgd).unwrap(), 0);
    assert!(g.ops().pgd_alloc(g.mm, pgd).is_ok(), "works once memory is back");
}

#[test]
fn pgd_free_frees_the_user_pgd_but_not_while_pinned() {
    let g = guest();
    let before = g.mm.allocated_frames();
    let (pgd, _) = space(&g, &[UVA]);
    let user = user_pgd(&g, pgd);
    g.ops().activate_mm(g.mm, pgd).unwrap();
    assert!(matches!(g.ops().pgd_free(g.mm, pgd), Err(PvError::WrongState { .. })));
    assert!(g.mm.is_allocated(user));
    g.destroy(pgd).unwrap();
    assert!(!g.mm.is_allocated(user));
    assert_eq!(g.mm.allocated_frames(), before + 1, "only the data page is left");
}

#[test]
fn init_mm_never_gets_a_user_pgd() {
    let g = guest();
    let allocated = g.mm.allocated_frames();
    g.ops().pgd_alloc(g.mm, g.init_pgd()).unwrap();
    assert_eq!(g.mm.allocated_frames(), allocated);
    assert_eq!(g.backend.get_user_pgd(g.mm, g.init_pgd(), 0).unwrap(), None);
    g.ops().write_cr3(g.mm, g.init_pgd()).unwrap();
    assert_eq!(g.model.user_base().0, 0);
}

// ---- set_pgd --------------------------------------------------------------

#[test]
fn set_pgd_on_an_unpinned_pgd_stores_both_entries_directly() {
    let g = guest();
    let pgd = g.new_pgd().unwrap();
    let l3 = g.mm.alloc_zeroed_frame().unwrap();
    g.model.reset_counters();
    let stats = g.ops().stats();
    g.ops().set_pgd(g.mm, pgd, 3, Pte::new(l3, flags::PRESENT | flags::WRITABLE | flags::USER)).unwrap();
    assert_eq!(g.model.counters().hypercalls, 0);
    assert_eq!(g.ops().stats().direct_writes - stats.direct_writes, 2);
    let user = user_pgd(&g, pgd);
    assert_eq!(g.model.read_guest(user, 3), g.model.read_guest(pgd, 3));
    assert_eq!(g.ops().read_entry(Level::L4, user, 3).unwrap().pfn(), l3);
}

#[test]
fn slots_at_and_above_user_limit_never_reach_the_user_pgd() {
    let g = guest();
    let pgd = g.new_pgd().unwrap();
    let user = user_pgd(&g, pgd);
    let l3 = g.mm.alloc_zeroed_frame().unwrap();
    for index in [272, 300, 511] {
        g.ops().set_pgd(g.mm, pgd, index, Pte::new(l3, KERNEL_TABLE)).unwrap();
        assert_ne!(g.model.read_guest(pgd, index), 0);
        assert_eq!(g.model.read_guest(user, index), 0, "slot {index} mirrored into the user pgd");
    }
    g.ops().set_pgd(g.mm, pgd, 255, Pte::new(l3, KERNEL_TABLE)).unwrap();
    assert_ne!(g.model.read_guest(user, 255), 0, "the last user slot is mirrored");
}

#[test]
fn xens_l4_slots_are_refused() {
    let g = guest();
    let pgd = g.new_pgd().unwrap();
    assert_eq!(g.ops().reserved_l4_slots(), 256..272);
    let l3 = g.mm.alloc_zeroed_frame().unwrap();
    for index in [256, 265, 271] {
        assert_eq!(g.ops().set_pgd(g.mm, pgd, index, Pte::new(l3, KERNEL_TABLE)), Err(PvError::ReservedSlot { index }));
        assert_eq!(g.ops().set_pgd(g.mm, g.init_pgd(), index, Pte::EMPTY), Err(PvError::ReservedSlot { index }));
    }
    assert_eq!(g.ops().set_pte(g.mm, l3, 512, Pte::EMPTY), Err(PvError::BadIndex { index: 512 }));
}

#[test]
fn set_pgd_on_a_pinned_pgd_is_one_hypercall_updating_both_pgds() {
    let g = guest();
    let (pgd, _) = space(&g, &[UVA]);
    g.ops().activate_mm(g.mm, pgd).unwrap();
    let l3 = g.mm.alloc_zeroed_frame().unwrap();
    g.ops().alloc_pt(g.mm, pgd, Level::L3, l3).unwrap();
    g.model.reset_counters();
    g.ops().set_pgd(g.mm, pgd, 7, Pte::new(l3, flags::PRESENT | flags::WRITABLE | flags::USER)).unwrap();
    let c = g.model.counters();
    assert_eq!((c.hypercalls, c.mmu_update_calls, c.mmu_updates), (1, 1, 2));
    let user = user_pgd(&g, pgd);
    assert_eq!(g.ops().read_entry(Level::L4, user, 7).unwrap().pfn(), l3);
    assert_eq!(g.ops().read_entry(Level::L4, pgd, 7).unwrap().pfn(), l3);
    assert!(g.model.violations().is_empty());
    assert_eq!(g.model.frame_info(l3).type_count, 2, "an L3 of both pgds");
}

// ---- write_cr3 ------------------------------------------------------------

#[test]
fn write_cr3_loads_both_base_pointers_in_one_hypercall() {
    let g = guest();
    let (pgd, data) = space(&g, &[UVA]);
    g.ops().activate_mm(g.mm, pgd).unwrap();
    g.model.reset_counters();
    g.ops().write_cr3(g.mm, pgd).unwrap();
    let c = g.model.counters();
    assert_eq!((c.hypercalls, c.new_baseptrs, c.new_user_baseptrs), (1, 1, 1));
    assert_eq!(g.model.kernel_base(), g.model.mfn_of(pgd).unwrap());
    assert_eq!(g.model.user_base(), g.model.mfn_of(user_pgd(&g, pgd)).unwrap());
    assert_eq!(g.ops().read_cr3(), pgd);
    assert_eq!(g.model.access(UVA, true, true), Ok(data[0]), "user mode runs on the user pgd");
    assert_eq!(g.model.crashed(), None);
    g.ops().write_cr3(g.mm, g.init_pgd()).unwrap();
    g.destroy(pgd).unwrap();
}

#[test]
fn switching_address_spaces_replaces_the_user_root_and_init_mm_clears_it() {
    let g = guest();
    let (a, da) = space(&g, &[UVA]);
    let (b, db) = space(&g, &[UVA]);
    for pgd in [a, b] {
        g.ops().activate_mm(g.mm, pgd).unwrap();
    }
    g.ops().write_cr3(g.mm, a).unwrap();
    assert_eq!(g.model.access(UVA, true, false), Ok(da[0]));
    g.ops().write_cr3(g.mm, b).unwrap();
    assert_eq!(g.model.access(UVA, true, false), Ok(db[0]), "not a's user pgd any more");
    g.ops().write_cr3(g.mm, g.init_pgd()).unwrap();
    assert_eq!(g.model.user_base().0, 0, "init_mm has no user tables");
    assert_eq!(g.model.access(UVA, true, false), Err(XenFault::DomainCrashed));
}

#[test]
fn read_cr3_changes_only_once_the_base_pointer_took_effect() {
    let g = guest();
    let (pgd, _) = space(&g, &[UVA]);
    g.ops().activate_mm(g.mm, pgd).unwrap();
    g.model.inject_subop_failure(0, -errno::EINVAL);
    let e = g.ops().write_cr3(g.mm, pgd).unwrap_err();
    assert_eq!(e, PvError::Hypercall { op: "mmuext_op(NEW_BASEPTR)", index: 0, code: -errno::EINVAL });
    assert_eq!(g.ops().read_cr3(), g.init_pgd());
    g.ops().write_cr3(g.mm, pgd).unwrap();
    assert_eq!(g.ops().read_cr3(), pgd);
    g.ops().write_cr3(g.mm, g.init_pgd()).unwrap();
}

#[test]
fn write_cr3_of_an_unpinned_pgd_is_refused_by_xen_and_reported() {
    let g = guest();
    let (pgd, _) = space(&g, &[UVA]);
    let e = g.ops().write_cr3(g.mm, pgd).unwrap_err();
    assert!(matches!(e, PvError::Hypercall { code, .. } if code == -errno::EINVAL), "{e:?}");
    assert_eq!(g.ops().read_cr3(), g.init_pgd());
}

// ---- kernel half ------------------------------------------------------------

#[test]
fn the_kernel_half_is_init_mms_and_hidden_from_user_mode() {
    let g = guest();
    let kpage = g.mm.alloc_zeroed_frame().unwrap();
    g.map(g.init_pgd(), KVA, kpage, KERNEL_PAGE).unwrap();
    assert!(g.model.violations().is_empty(), "init_mm's tables are pinned since boot");
    let (pgd, data) = space(&g, &[UVA]);
    let slot = VirtAddr::try_new(KVA).unwrap().index(Level::L4);
    let shared = g.ops().read_entry(Level::L4, g.init_pgd(), slot).unwrap();
    g.ops().set_pgd(g.mm, pgd, slot, shared).unwrap();
    g.ops().activate_mm(g.mm, pgd).unwrap();
    g.ops().write_cr3(g.mm, pgd).unwrap();
    assert_eq!(g.model.access(KVA, false, true), Ok(kpage));
    assert_eq!(g.model.access(UVA, false, false), Ok(data[0]));
    assert_eq!(g.model.access(KVA, true, false), Err(XenFault::Page(Fault::NotPresent(Level::L4))));
    assert_eq!(g.model.access(UVA, true, true), Ok(data[0]));
    g.ops().write_cr3(g.mm, g.init_pgd()).unwrap();
    g.ops().set_pgd(g.mm, pgd, slot, Pte::EMPTY).unwrap_or(());
    g.destroy(pgd).unwrap();
}

// ---- pin / unpin -------------------------------------------------------------

/// Three user addresses in different L3/L2 slots: 1 L3, 2 L2, 3 L1 = 6 tables.
const SPREAD: [u64; 3] = [UVA, UVA + 0x20_0000, 0x40_0000_0000 + UVA];

#[test]
fn activate_mm_pins_both_roots_and_every_user_table_in_one_hypercall() {
    let g = guest();
    let (pgd, _) = space(&g, &SPREAD);
    let tables = g.user_table_pages(pgd).unwrap().len();
    assert_eq!(tables, 6);
    g.model.reset_counters();
    g.ops().activate_mm(g.mm, pgd).unwrap();
    let c = g.model.counters();
    assert_eq!(c.hypercalls, 1, "one multicall");
    assert_eq!((c.update_va_mappings, c.pins), (tables as u64 + 2, 2));
    assert_eq!(c.multicall_entries, tables as u64 + 2 + 1, "both pins merged into one mmuext_op entry");
    assert_fully_pinned(&g, pgd, tables, "after activate_mm");
    assert!(g.model.is_pinned(pgd) && g.model.is_pinned(user_pgd(&g, pgd)));
}

#[test]
fn exit_mm_unpins_everything_in_one_hypercall() {
    let g = guest();
    let (pgd, _) = space(&g, &SPREAD);
    g.ops().activate_mm(g.mm, pgd).unwrap();
    g.model.reset_counters();
    g.ops().exit_mm(g.mm, pgd).unwrap();
    let c = g.model.counters();
    assert_eq!((c.hypercalls, c.unpins, c.update_va_mappings), (1, 2, 6 + 2));
    assert_fully_unpinned(&g, pgd, "after exit_mm");
}

#[test]
fn pin_state_errors_are_wrong_state() {
    let g = guest();
    let (pgd, _) = space(&g, &[UVA]);
    assert!(matches!(g.ops().exit_mm(g.mm, pgd), Err(PvError::WrongState { .. })), "not pinned");
    g.ops().activate_mm(g.mm, pgd).unwrap();
    assert!(matches!(g.ops().activate_mm(g.mm, pgd), Err(PvError::WrongState { .. })), "twice");
    g.ops().write_cr3(g.mm, pgd).unwrap();
    assert!(matches!(g.ops().exit_mm(g.mm, pgd), Err(PvError::WrongState { .. })), "loaded");
    assert!(matches!(g.ops().exit_mm(g.mm, g.init_pgd()), Err(PvError::WrongState { .. })), "init_mm");
    g.ops().write_cr3(g.mm, g.init_pgd()).unwrap();
    g.ops().exit_mm(g.mm, pgd).unwrap();
}

#[test]
fn a_pinned_table_is_written_by_hypercall_never_directly() {
    let g = guest();
    let (pgd, _) = space(&g, &[UVA]);
    g.ops().activate_mm(g.mm, pgd).unwrap();
    let frame = g.mm.alloc_zeroed_frame().unwrap();
    g.model.reset_counters();
    g.map(pgd, UVA + 0x1000, frame, USER_PAGE).unwrap();
    assert!(g.model.violations().is_empty(), "{:?}", g.model.violations());
    assert_eq!(g.model.counters().hypercalls, 1);
    g.ops().write_cr3(g.mm, pgd).unwrap();
    assert_eq!(g.model.access(UVA + 0x1000, true, true), Ok(frame));
    g.unmap(pgd, UVA + 0x1000).unwrap();
    // User mode used the page: until a flush its TLB entry may still be used.
    assert_eq!(g.model.access(UVA + 0x1000, true, false), Ok(frame));
    g.ops().flush_tlb_one(pvops::VirtAddr::try_new(UVA + 0x1000).unwrap()).unwrap();
    assert_eq!(g.model.access(UVA + 0x1000, true, false), Err(XenFault::Page(Fault::NotPresent(Level::L1))));
    assert!(g.model.violations().is_empty());
    assert!(g.model.tlb_violations().is_empty(), "{:?}", g.model.tlb_violations());
    g.ops().write_cr3(g.mm, g.init_pgd()).unwrap();
}

#[test]
fn a_new_table_under_a_pinned_root_is_read_only_before_it_is_linked() {
    let g = guest();
    let (pgd, _) = space(&g, &[UVA]);
    g.ops().activate_mm(g.mm, pgd).unwrap();
    let frame = g.mm.alloc_zeroed_frame().unwrap();
    // Slot 5 of the L4: a new L3, L2 and L1, each alloc_pt'd then linked.
    g.map(pgd, 5 << 39, frame, USER_PAGE).unwrap();
    assert!(g.model.violations().is_empty());
    let tables = g.user_table_pages(pgd).unwrap();
    assert_eq!(tables.len(), 6);
    assert_fully_pinned(&g, pgd, 6, "after growing a pinned tree");
    g.ops().exit_mm(g.mm, pgd).unwrap();
    assert_fully_unpinned(&g, pgd, "the grown tree unpins completely");
}

#[test]
fn release_pt_makes_an_unlinked_table_an_ordinary_frame_again() {
    let g = guest();
    let (pgd, _) = space(&g, &[UVA, 5 << 39]);
    g.ops().activate_mm(g.mm, pgd).unwrap();
    let l3 = g.ops().read_entry(Level::L4, pgd, 5).unwrap().pfn();
    assert!(!g.model.alias_writable(l3));
    // Unlink the whole slot-5 subtree; release its tables bottom-up.
    let subtree: Vec<(Level, Pfn)> = g
        .user_table_pages(pgd)
        .unwrap()
        .into_iter()
        .filter(|(_, p)| *p == l3 || g.model.page_type(*p) != pvops_model::xen::PageType::None)
        .collect();
    g.ops().set_pgd(g.mm, pgd, 5, Pte::EMPTY).unwrap();
    let freed: Vec<Pfn> =
        subtree.iter().map(|(_, p)| *p).filter(|p| g.model.page_type(*p) == pvops_model::xen::PageType::None).collect();
    assert_eq!(freed.len(), 3, "L3, L2 and L1 of slot 5 lost their type");
    for pfn in &freed {
        g.ops().release_pt(g.mm, pgd, Level::L1, *pfn).unwrap();
        assert!(g.model.alias_writable(*pfn));
        assert!(!g.mm.is_pinned(*pfn).unwrap());
        g.mm.free_frame(*pfn).unwrap();
    }
    // Reused at once: zeroing through the direct map is legal.
    let again = g.mm.alloc_zeroed_frame().unwrap();
    assert!(freed.contains(&again));
    assert!(g.model.violations().is_empty());
}

// ---- batching and lazy mode ----------------------------------------------------

#[test]
fn lazy_mode_queues_updates_until_leave_and_merges_them() {
    let g = guest();
    let (pgd, _) = space(&g, &[UVA]);
    g.ops().activate_mm(g.mm, pgd).unwrap();
    let l1 = g.table_for(pgd, VirtAddr::try_new(UVA).unwrap(), Level::L1).unwrap().unwrap();
    let frame = g.mm.alloc_zeroed_frame().unwrap();
    g.model.reset_counters();
    g.ops().lazy_mmu_enter();
    for i in 10..20 {
        g.ops().set_pte(g.mm, l1, i, Pte::new(frame, USER_PAGE)).unwrap();
    }
    assert_eq!(g.model.counters().hypercalls, 0, "queued");
    assert_eq!(g.model.read_guest(l1, 10), 0);
    g.ops().lazy_mmu_flush().unwrap();
    let c = g.model.counters();
    assert_eq!((c.hypercalls, c.mmu_update_calls, c.mmu_updates), (1, 1, 10));
    g.ops().set_pte(g.mm, l1, 20, Pte::new(frame, USER_PAGE)).unwrap();
    g.ops().flush_tlb_all().unwrap();
    assert_eq!(g.model.counters().hypercalls, 1, "still lazy after a flush");
    g.ops().lazy_mmu_leave().unwrap();
    let c = g.model.counters();
    assert_eq!((c.hypercalls, c.multicall_entries, c.tlb_flushes), (2, 2, 1));
    g.ops().set_pte(g.mm, l1, 21, Pte::new(frame, USER_PAGE)).unwrap();
    assert_eq!(g.model.counters().hypercalls, 3, "not lazy any more");
    assert!(g.model.violations().is_empty());
}

#[test]
fn a_failure_queued_in_lazy_mode_is_returned_at_leave() {
    let g = guest();
    let (pgd, _) = space(&g, &[UVA]);
    g.ops().activate_mm(g.mm, pgd).unwrap();
    let l1 = g.table_for(pgd, VirtAddr::try_new(UVA).unwrap(), Level::L1).unwrap().unwrap();
    g.ops().lazy_mmu_enter();
    // A writable mapping of a live table: Xen refuses it with -EBUSY.
    g.ops().set_pte(g.mm, l1, 10, Pte::new(pgd, USER_PAGE)).unwrap();
    let e = g.ops().lazy_mmu_leave().unwrap_err();
    assert_eq!(e, PvError::Hypercall { op: "mmu_update", index: 0, code: -errno::EBUSY });
}

#[test]
fn pins_and_updates_split_only_at_capacity() {
    let g = guest();
    // 40 L1 tables: 1 L3 + 1 L2 + 40 L1 + 2 pgds = 44 remaps + 1 pin entry:
    // more than the 32-entry batch, so the full batch is issued mid-pin
    // (the batch never grows, as Linux's `mc_buffer`).
    let vas: Vec<u64> = (0..40).map(|i| UVA + i * 0x20_0000).collect();
    let (pgd, _) = space(&g, &vas);
    g.model.reset_counters();
    let full_before = g.backend.flush_counts().entries_full;
    g.ops().activate_mm(g.mm, pgd).unwrap();
    let c = g.model.counters();
    assert_eq!(c.hypercalls, 2, "a pin of 45 entries is two multicalls of 32 and 13");
    assert_eq!(c.multicall_entries, 45);
    assert_eq!(g.backend.flush_counts().entries_full, full_before + 1);
    assert_fully_pinned(&g, pgd, 42, "a large pin");

    // 40 mmu_updates (640 bytes) do not fit the 512-byte argument space.
    let l1 = g.table_for(pgd, VirtAddr::try_new(UVA).unwrap(), Level::L1).unwrap().unwrap();
    let frame = g.mm.alloc_zeroed_frame().unwrap();
    g.model.reset_counters();
    g.ops().lazy_mmu_enter();
    for i in 100..140 {
        g.ops().set_pte(g.mm, l1, i, Pte::new(frame, USER_PAGE)).unwrap();
    }
    g.ops().lazy_mmu_leave().unwrap();
    let c = g.model.counters();
    assert_eq!((c.hypercalls, c.mmu_updates, c.multicall_entries), (2, 40, 0));
    assert!(g.backend.flush_counts().args_full >= 1);
}

#[test]
fn tlb_flushes_are_mmuext_ops_never_native_instructions() {
    let g = guest();
    g.model.reset_counters();
    g.ops().flush_tlb_all().unwrap();
    g.ops().flush_tlb_one(VirtAddr::try_new(UVA).unwrap()).unwrap();
    let c = g.model.counters();
    assert_eq!((c.hypercalls, c.tlb_flushes, c.invlpgs), (2, 1, 1));
    let (invlpg, full, _) = g.model.machine().tlb_counts();
    assert_eq!((invlpg, full), (0, 0), "no native flush reached the machine");
}

#[test]
fn the_backends_stats_agree_with_the_hypervisors_counts() {
    let g = guest();
    let before = g.ops().stats();
    let (pgd, _) = space(&g, &SPREAD);
    g.ops().activate_mm(g.mm, pgd).unwrap();
    g.ops().write_cr3(g.mm, pgd).unwrap();
    g.map(pgd, UVA + 0x3000, g.mm.alloc_zeroed_frame().unwrap(), USER_PAGE).unwrap();
    g.ops().flush_tlb_all().unwrap();
    g.ops().write_cr3(g.mm, g.init_pgd()).unwrap();
    g.destroy(pgd).unwrap();
    let s = g.ops().stats();
    let c = g.model.counters();
    assert_eq!(s.hypercalls - before.hypercalls, c.hypercalls);
    assert_eq!(s.mmu_updates - before.mmu_updates, c.mmu_updates);
    assert_eq!(s.mmuext_ops - before.mmuext_ops, c.mmuext_ops);
    assert_eq!(s.update_va_mappings - before.update_va_mappings, c.update_va_mappings);
    assert_eq!(s.multicall_entries - before.multicall_entries, c.multicall_entries);
    assert!(s.direct_writes > before.direct_writes);
}

// ---- entry encoding -----------------------------------------------------------

#[test]
fn entries_are_translated_pfn_to_mfn_on_write_and_back_on_read() {
    let g = guest();
    let pte = Pte::new(Pfn(100), USER_PAGE | flags::NO_EXECUTE);
    let raw = g.ops().make_entry(pte).unwrap();
    assert_eq!(raw & flags::ADDR_MASK, g.model.mfn_of(Pfn(100)).unwrap().addr());
    assert_ne!(g.model.mfn_of(Pfn(100)).unwrap().0, 100);
    assert_eq!(g.ops().entry_value(raw), pte);
    assert_eq!(
        g.ops().make_entry(Pte::new(Pfn(1 << 30), USER_PAGE)),
        Err(PvError::NoTranslation { pfn: Pfn(1 << 30) })
    );

    let (pgd, data) = space(&g, &[UVA]);
    let l1 = g.table_for(pgd, VirtAddr::try_new(UVA).unwrap(), Level::L1).unwrap().unwrap();
    let index = VirtAddr::try_new(UVA).unwrap().index(Level::L1);
    let written = Pte::new(data[0], USER_PAGE);
    assert_eq!(g.ops().read_entry(Level::L1, l1, index).unwrap(), written);
    g.ops().activate_mm(g.mm, pgd).unwrap();
    assert_ne!(g.model.read_guest(l1, index), g.ops().make_entry(written).unwrap(), "Xen rewrote it");
    assert_eq!(g.ops().read_entry(Level::L1, l1, index).unwrap(), written, "decoding undoes Xen's G");
    assert_eq!(g.ops().read_entry(Level::L4, pgd, 256).unwrap(), Pte::EMPTY, "Xen's slot reads empty");
}

// ---- failures -------------------------------------------------------------------

#[test]
fn a_pin_failing_at_any_step_is_returned_and_leaves_nothing_half_pinned() {
    let g = guest();
    let (pgd, _) = space(&g, &SPREAD);
    let steps = 6 + 2 + 2;
    for k in 0..steps {
        g.model.inject_subop_failure(k, -errno::ENOMEM);
        let e = g.ops().activate_mm(g.mm, pgd).unwrap_err();
        assert!(matches!(e, PvError::Hypercall { code, .. } if code == -errno::ENOMEM), "step {k}: {e:?}");
        assert!(!g.model.clear_injections(), "step {k} was reached");
        assert_fully_unpinned(&g, pgd, &format!("pin failing at step {k}"));
    }
    g.model.inject_hypercall_failure(0, -errno::EFAULT);
    let e = g.ops().activate_mm(g.mm, pgd).unwrap_err();
    assert_eq!(e, PvError::Hypercall { op: "multicall", index: 0, code: -errno::EFAULT });
    assert_fully_unpinned(&g, pgd, "a failed multicall");
    g.ops().activate_mm(g.mm, pgd).unwrap();
    assert_fully_pinned(&g, pgd, 6, "then it works");
}

#[test]
fn an_unpin_failing_at_any_step_is_returned_and_leaves_everything_pinned() {
    let g = guest();
    let (pgd, _) = space(&g, &SPREAD);
    g.ops().activate_mm(g.mm, pgd).unwrap();
    let steps = 2 + 6 + 2;
    for k in 0..steps {
        g.model.inject_subop_failure(k, -errno::ENOMEM);
        let e = g.ops().exit_mm(g.mm, pgd).unwrap_err();
        assert!(matches!(e, PvError::Hypercall { code, .. } if code == -errno::ENOMEM), "step {k}: {e:?}");
        assert!(!g.model.clear_injections());
        assert_fully_pinned(&g, pgd, 6, &format!("unpin failing at step {k}"));
    }
    g.ops().exit_mm(g.mm, pgd).unwrap();
    assert_fully_unpinned(&g, pgd, "then it works");
}

#[test]
fn a_failed_pinned_set_pgd_is_an_error_not_ignored() {
    let g = guest();
    let (pgd, _) = space(&g, &[UVA]);
    g.ops().activate_mm(g.mm, pgd).unwrap();
    let l3 = g.mm.alloc_zeroed_frame().unwrap();
    // Not alloc_pt'd: its alias is writable, so Xen refuses to link it.
    let e = g.ops().set_pgd(g.mm, pgd, 9, Pte::new(l3, flags::PRESENT | flags::WRITABLE | flags::USER)).unwrap_err();
    assert_eq!(e, PvError::Hypercall { op: "mmu_update", index: 0, code: -errno::EINVAL });
}

// ---- teardown ------------------------------------------------------------------------

#[test]
fn a_full_lifecycle_leaks_no_frame_and_no_pin() {
    let g = guest();
    let before = g.mm.allocated_frames();
    for round in 0..3 {
        let (pgd, data) = space(&g, &SPREAD);
        g.ops().activate_mm(g.mm, pgd).unwrap();
        g.ops().write_cr3(g.mm, pgd).unwrap();
        assert_eq!(g.model.access(SPREAD[2], true, false), Ok(data[2]), "round {round}");
        g.ops().write_cr3(g.mm, g.init_pgd()).unwrap();
        g.destroy(pgd).unwrap();
        for d in data {
            g.mm.free_frame(d).unwrap();
        }
    }
    assert_eq!(g.mm.allocated_frames(), before);
    assert_eq!((g.model.pinned_count(), g.model.typed_count()), (1, 1));
    assert!(g.model.violations().is_empty());
    assert_eq!(g.model.crashed(), None);
}

#[test]
fn the_backend_names_itself_and_keeps_the_root_xen_booted_it_on() {
    let model = pvops_model::XenModel::leaked(64, 3);
    let backend = pvops_xen64::XenBackend::new(model.platform());
    assert_eq!(format!("{backend:?}"), "XenBackend");
    assert!(format!("{:?}", model.platform()).starts_with("XenPlatform"));
    assert_eq!(backend.boot_root(), model.pt_base());
    assert_ne!(model.pt_base(), Pfn(0), "the check needs a boot root other than the default");
}
