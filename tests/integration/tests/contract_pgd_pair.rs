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
