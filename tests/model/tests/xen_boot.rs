//! The xen64 backend before frame metadata exists (the seed's early path),
//! and the switch to steady state.

use pvops::{Level, MmServices, Pfn, Pte, PvError, VirtAddr};
use pvops_model::xen::guest::{KERNEL_PAGE, KERNEL_TABLE};
use pvops_model::xen::{GuestMm, XenGuest, XenModel};
use pvops_xen64::XenBackend;

const KVA: u64 = 0xffff_8880_0010_0000;

/// A guest whose frame metadata does not exist yet.
fn early() -> XenGuest {
    let model = XenModel::leaked(256, 5);
    let mm: &'static GuestMm = Box::leak(Box::new(GuestMm::early(model)));
    let backend = Box::leak(Box::new(XenBackend::new(model.platform())));
    XenGuest { model, mm, backend }
}

#[test]
fn early_updates_go_out_as_single_raw_hypercalls_even_in_lazy_mode() {
    let g = early();
    let l3 = g.mm.alloc_zeroed_frame().unwrap();
    g.ops().lazy_mmu_enter();
    g.ops().alloc_pt(g.mm, g.init_pgd(), Level::L3, l3).unwrap();
    assert_eq!(g.model.counters().hypercalls, 1, "read-only at once");
    assert!(!g.model.alias_writable(l3));
    g.ops().set_pgd(g.mm, g.init_pgd(), 273, Pte::new(l3, KERNEL_TABLE)).unwrap();
    let c = g.model.counters();
    assert_eq!((c.hypercalls, c.mmu_updates, c.multicalls), (2, 1, 0));
    g.ops().lazy_mmu_leave().unwrap();
    assert_eq!(g.model.counters().hypercalls, 2);
    assert!(g.model.violations().is_empty(), "the boot root was never stored to directly");
    assert_eq!(g.ops().read_entry(Level::L4, g.init_pgd(), 273).unwrap().pfn(), l3);
}

#[test]
fn early_boot_treats_every_table_as_pinned() {
    let g = early();
    let page = g.mm.alloc_zeroed_frame().unwrap();
    g.map(g.init_pgd(), KVA, page, KERNEL_PAGE).unwrap();
    assert!(g.model.violations().is_empty(), "{:?}", g.model.violations());
    assert_eq!(g.ops().stats().direct_writes, 0);
    assert_eq!(g.model.typed_count(), 4, "boot L4 + L3 + L2 + L1 validated");
    assert_eq!(g.model.access(KVA, false, true), Ok(page));
}

#[test]
fn early_write_cr3_sets_only_the_kernel_base_pointer() {
    let g = early();
    g.model.reset_counters();
    g.ops().write_cr3(g.mm, g.init_pgd()).unwrap();
    let c = g.model.counters();
    assert_eq!((c.hypercalls, c.new_baseptrs, c.new_user_baseptrs), (1, 1, 0));
    assert_eq!(g.ops().read_cr3(), g.init_pgd());
}

#[test]
fn early_pgd_alloc_is_refused_and_pinning_waits_for_metadata() {
    let g = early();
    let pgd = g.mm.alloc_zeroed_frame().unwrap();
    let allocated = g.mm.allocated_frames();
    // No page structures: no user pgd can be attached, and a space without one
    // would crash the domain on its first return to user mode.
    assert!(matches!(g.ops().pgd_alloc(g.mm, pgd), Err(PvError::WrongState { .. })));
    assert_eq!(g.mm.allocated_frames(), allocated);
    assert!(matches!(g.ops().activate_mm(g.mm, pgd), Err(PvError::WrongState { .. })));
    assert!(matches!(g.ops().exit_mm(g.mm, pgd), Err(PvError::WrongState { .. })));
}

#[test]
fn leaving_early_boot_marks_the_boot_tables_pinned() {
    let g = early();
    let page = g.mm.alloc_zeroed_frame().unwrap();
    g.map(g.init_pgd(), KVA, page, KERNEL_PAGE).unwrap();
    let va = VirtAddr::try_new(KVA).unwrap();
    let l1 = g.table_for(g.init_pgd(), va, Level::L1).unwrap().unwrap();
    g.mm.set_has_metadata(true);
    g.ops().adopt_boot_root(g.mm, g.init_pgd()).unwrap();
    for pfn in [g.init_pgd(), l1] {
        assert!(g.mm.is_pinned(pfn).unwrap(), "{pfn:?}");
    }
    // So steady-state writes to them still go by hypercall.
    let other = g.mm.alloc_zeroed_frame().unwrap();
    g.map(g.init_pgd(), KVA + 0x1000, other, KERNEL_PAGE).unwrap();
    assert!(g.model.violations().is_empty(), "{:?}", g.model.violations());
    assert_eq!(g.model.access(KVA + 0x1000, false, false), Ok(other));
    assert!(matches!(g.ops().adopt_boot_root(g.mm, Pfn(100)), Err(PvError::WrongState { .. })));
}

/// The boot tables are marked at one documented point,
/// `frame_metadata_ready`; a call that finds metadata before it is refused
/// (no lazy marking on the first call) and changes nothing.
#[test]
fn frame_metadata_ready_is_the_point_the_boot_tables_are_marked() {
    let g = early();
    let page = g.mm.alloc_zeroed_frame().unwrap();
    g.map(g.init_pgd(), KVA, page, KERNEL_PAGE).unwrap();
    let va = VirtAddr::try_new(KVA).unwrap();
    let l1 = g.table_for(g.init_pgd(), va, Level::L1).unwrap().unwrap();
    g.mm.set_has_metadata(true);
    let other = g.mm.alloc_zeroed_frame().unwrap();
    let hypercalls = g.model.counters().hypercalls;
    let e = g.ops().set_pte(g.mm, l1, va.index(Level::L1) + 1, Pte::new(other, KERNEL_PAGE));
    assert!(matches!(e, Err(PvError::WrongState { .. })), "{e:?}");
    assert_eq!(g.model.counters().hypercalls, hypercalls, "refused, nothing issued");
    assert!(!g.mm.is_pinned(g.init_pgd()).unwrap(), "not marked by a refused call");
    g.ops().frame_metadata_ready(g.mm).unwrap();
    for pfn in [g.init_pgd(), l1] {
        assert!(g.mm.is_pinned(pfn).unwrap(), "{pfn:?}");
    }
    g.ops().frame_metadata_ready(g.mm).unwrap();
    g.map(g.init_pgd(), KVA + 0x1000, other, KERNEL_PAGE).unwrap();
    assert!(g.model.violations().is_empty(), "{:?}", g.model.violations());
    assert_eq!(g.model.access(KVA + 0x1000, false, false), Ok(other));
}

/// Before metadata exists the point is refused: there is nowhere to mark.
#[test]
fn frame_metadata_ready_before_metadata_is_refused() {
    let g = early();
    assert!(matches!(g.ops().frame_metadata_ready(g.mm), Err(PvError::WrongState { .. })));
}
