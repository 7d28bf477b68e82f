//! A pinned `set_pgd` below `USER_LIMIT` writes a kernel pgd slot and its user
//! pgd twin: all-or-nothing. When Xen refuses the user record after the kernel
//! one took effect, the kernel slot is put back. Checked on the Xen model's
//! own memory (the words Xen stores), not through the backend.

use pvops::pte::flags;
use pvops::{Level, MmServices, Pfn, Pte, PvError};
use pvops_model::xen::guest::USER_PAGE;
use pvops_model::xen::XenGuest;
use pvops_native as _;
use pvops_xen64::abi::errno;

const UVA: u64 = 0x40_0000;
const SLOT: usize = 9;

/// A pinned space (one page mapped) and a fresh L3, made a table, not linked.
fn pinned_space_and_l3() -> (XenGuest, Pfn, Pfn, Pfn) {
    let g = XenGuest::boot(512, 11);
    let pgd = g.new_pgd().unwrap();
    let page = g.mm.alloc_zeroed_frame().unwrap();
    g.map(pgd, UVA, page, USER_PAGE).unwrap();
    g.ops().activate_mm(g.mm, pgd).unwrap();
    let user = g.backend.get_user_pgd(g.mm, pgd, 0).unwrap().expect("user pgd").pgd;
    let l3 = g.mm.alloc_zeroed_frame().unwrap();
    g.ops().alloc_pt(g.mm, pgd, Level::L3, l3).unwrap();
    (g, pgd, user, l3)
}

fn link(l3: Pfn) -> Pte {
    Pte::new(l3, flags::PRESENT | flags::WRITABLE | flags::USER)
}

fn twins(g: &XenGuest, pgd: Pfn, user: Pfn) -> (u64, u64) {
    (g.model.read_guest(pgd, SLOT), g.model.read_guest(user, SLOT))
}

#[test]
fn a_refused_user_twin_leaves_both_pgds_as_they_were() {
    let (g, pgd, user, l3) = pinned_space_and_l3();
    // The pair is one mmu_update array: kernel record (0), user record (1).
    g.model.inject_subop_failure(1, -errno::EINVAL);
    let e = g.ops().set_pgd(g.mm, pgd, SLOT, link(l3)).unwrap_err();
    assert!(matches!(e, PvError::Hypercall { op: "mmu_update", .. }), "{e}");
    assert_eq!(twins(&g, pgd, user), (0, 0), "kernel slot put back");
    g.model.check_invariants().unwrap();
    g.model.check_user_pgd_mirrors(g.mm).unwrap();
    // And the link still works afterwards.
    g.ops().set_pgd(g.mm, pgd, SLOT, link(l3)).unwrap();
    let (k, u) = twins(&g, pgd, user);
    assert!(k & flags::PRESENT != 0 && k == u, "{k:#x} {u:#x}");
}

#[test]
fn a_refused_user_twin_queued_in_a_lazy_section_is_put_back_too() {
    let (g, pgd, user, l3) = pinned_space_and_l3();
    g.ops().lazy_mmu_enter();
    g.ops().set_pgd(g.mm, pgd, SLOT, link(l3)).unwrap();
    g.model.inject_subop_failure(1, -errno::EINVAL);
    assert!(g.ops().lazy_mmu_leave().is_err(), "the section's owner hears of it");
    assert_eq!(twins(&g, pgd, user), (0, 0));
    g.model.check_user_pgd_mirrors(g.mm).unwrap();
}

#[test]
fn a_pair_whose_repair_is_refused_too_is_an_error_and_leaves_what_the_doc_says() {
    let (g, pgd, user, l3) = pinned_space_and_l3();
    // Trap 0: the pair (its user record refused); trap 1: the repair (refused).
    g.model.inject_subop_failure(1, -errno::EINVAL);
    g.model.inject_hypercall_failure(1, -errno::ENOMEM);
    assert!(g.ops().set_pgd(g.mm, pgd, SLOT, link(l3)).is_err());
    let (k, u) = twins(&g, pgd, user);
    assert!(k & flags::PRESENT != 0 && u == 0, "documented: kernel new, user old ({k:#x} {u:#x})");
    // Clearing the pair converges both again.
    g.ops().set_pgd(g.mm, pgd, SLOT, Pte::EMPTY).unwrap();
    assert_eq!(twins(&g, pgd, user), (0, 0));
    g.model.check_invariants().unwrap();
}

/// Through `Mm`: a map into a loaded space that needs a new L4 slot, whose
/// user twin Xen refuses and whose repair Xen refuses too. The map fails, and
/// its undo unlinks the half-linked L3 before freeing anything: both pgds
/// agree again, no frame is lost, and no freed frame is still a table.
#[test]
fn a_map_whose_half_done_pgd_pair_cannot_be_repaired_is_still_undone_whole() {
    use kernel_glue::PageFlags;
    use pvops_integration::xen_host::boot_xen64;
    use pvops_model::xen::PageType;

    let (model, b) = boot_xen64(1024);
    let mm = b.mm;
    let s = mm.create().unwrap();
    mm.map(&s, UVA, PageFlags::DATA).unwrap();
    mm.activate(&s).unwrap();
    let user = pvops_xen64::attached_user_pgd(mm.frames(), s.pgd()).unwrap().unwrap();
    let free_before = b.frames.free_count();
    let failures_before = model.counters().failures;

    // One multicall: remap L3 (sub-op 0), kernel slot (1), user slot (2), ...
    model.inject_subop_failure(2, -errno::EINVAL);
    // ... and the repair, the next trap.
    model.inject_hypercall_failure(1, -errno::ENOMEM);
    let va = UVA + (1 << 39);
    assert!(mm.map(&s, va, PageFlags::DATA).is_err());
    assert_eq!(model.counters().failures - failures_before, 2, "the user twin and its repair were refused");
    assert!(!model.clear_injections(), "both injections fired");
    assert_eq!((model.read_guest(s.pgd(), 1), model.read_guest(user, 1)), (0, 0), "the undo cleared the pair");
    assert_eq!(b.frames.free_count(), free_before, "every frame of the failed map is back");
    for pfn in (0..b.frames.nr_frames()).map(Pfn) {
        if b.frames.is_free(pfn) {
            assert!(
                model.page_type(pfn) == PageType::None && model.alias_writable(pfn),
                "free {pfn:?} is still a table"
            );
        }
    }
    model.check_invariants().unwrap();
    model.check_user_pgd_mirrors(mm.frames()).unwrap();
    mm.activate_init().unwrap();
    mm.exit(s).map_err(|(e, _)| e).unwrap();
    model.check_quiescent().unwrap();
}

/// Double failures in `Mm::map`: its batch stops part-way, then any one
/// sub-operation of its undo is refused too. Whatever is lost (logged), no
/// frame handed back to the allocator is still a table or read-only, and after
/// `exit` nothing stays pinned or typed. (A safety net: the allocator also
/// refuses frames still marked pinned.)
#[test]
fn a_map_whose_undo_is_refused_never_frees_a_frame_that_is_still_a_table() {
    use kernel_glue::PageFlags;
    use pvops_integration::xen_host::boot_xen64;
    use pvops_model::xen::PageType;

    let (model, b) = boot_xen64(1024);
    let mm = b.mm;
    let mut lost = 0;
    for k in 0..24u64 {
        let free_before = b.frames.free_count();
        let s = mm.create().unwrap();
        mm.map(&s, UVA, PageFlags::DATA).unwrap();
        mm.activate(&s).unwrap();
        // The map's multicall stops before its last entry; then, counting
        // from the map's first sub-operation, the k-th one is refused.
        model.inject_multicall_failure(0, 7, -errno::EFAULT);
        model.inject_subop_failure(k, -errno::EINVAL);
        let r = mm.map(&s, UVA + (1 << 39), PageFlags::DATA);
        model.clear_injections();
        let what = format!("k={k} ({r:?})");
        for pfn in (0..b.frames.nr_frames()).map(Pfn) {
            if b.frames.is_free(pfn) {
                assert!(
                    model.page_type(pfn) == PageType::None && model.alias_writable(pfn),
                    "{what}: free {pfn:?} is still a table or read-only"
                );
            }
        }
        model.check_invariants().unwrap_or_else(|e| panic!("{what}: {e}"));
        mm.activate_init().unwrap();
        mm.exit(s).map_err(|(e, _)| e).unwrap_or_else(|e| panic!("{what}: exit: {e}"));
        model.check_quiescent().unwrap_or_else(|e| panic!("{what}: {e}"));
        lost += free_before - b.frames.free_count();
    }
    println!("{lost} frame(s) kept out of circulation over the double failures");
}
