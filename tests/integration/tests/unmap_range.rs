//! `Mm::unmap_range` on Xen: the clears ride in full batches and the whole
//! range costs one flush, counted by the Xen model (its own counters).

use kernel_glue::PageFlags;
use pvops_integration::xen_host::boot_xen64;
use pvops_native as _;

const VA: u64 = 0x40_0000;
/// A page in the same L1 table as the ranges, outside them.
const KEEP: u64 = VA + 0x10_0000;

#[test]
fn forty_pages_are_two_hypercalls_with_one_flush() {
    let (model, b) = boot_xen64(1024);
    let mm = b.mm;
    let s = mm.create().unwrap();
    for i in 0..40 {
        mm.map(&s, VA + i * 0x1000, PageFlags::DATA).unwrap();
    }
    // Outside the range, in the same L1: the tables stay (see `lifecycle` for freed tables).
    mm.map(&s, KEEP, PageFlags::DATA).unwrap();
    mm.activate(&s).unwrap();
    let free = b.frames.free_count();
    model.reset_counters();
    assert_eq!(mm.unmap_range(&s, VA, 40).unwrap(), 40);
    let c = model.counters();
    // 32 mmu_update records fill a batch's argument space (512 bytes); the
    // other 8 and the one flush for the range go in the second.
    assert_eq!((c.hypercalls, c.mmu_updates, c.mmuext_ops), (2, 40, 1), "{c:?}");
    assert_eq!(b.frames.free_count(), free + 40, "every frame back after the flush");
    for i in 0..40 {
        assert_eq!(model.probe(VA + i * 0x1000, true, false).ok(), None);
    }
    mm.activate_init().unwrap();
    mm.exit(s).map_err(|(e, _)| e).unwrap();
    model.check_quiescent().unwrap();
}

#[test]
fn a_range_past_user_space_is_refused_and_changes_nothing() {
    let (_model, b) = boot_xen64(1024);
    let mm = b.mm;
    let s = mm.create().unwrap();
    mm.map(&s, VA, PageFlags::DATA).unwrap();
    let top = pvops::USER_LIMIT - 0x1000;
    assert!(mm.unmap_range(&s, top, 2).is_err(), "crosses USER_LIMIT");
    assert!(mm.unmap_range(&s, VA, u64::MAX).is_err(), "overflows");
    assert!(mm.unmap_range(&s, VA + 1, 1).is_err(), "unaligned");
    assert!(mm.translate(&s, VA).unwrap().is_some(), "nothing changed");
    mm.exit(s).map_err(|(e, _)| e).unwrap();
}

/// Nothing mapped in the range: nothing to clear, nothing to flush.
#[test]
fn an_empty_range_costs_no_hypercall() {
    let (model, b) = boot_xen64(1024);
    let mm = b.mm;
    let s = mm.create().unwrap();
    mm.map(&s, VA, PageFlags::DATA).unwrap();
    mm.activate(&s).unwrap();
    model.reset_counters();
    assert_eq!(mm.unmap_range(&s, VA + 0x10_0000, 16).unwrap(), 0);
    assert_eq!(model.counters().hypercalls, 0, "{:?}", model.counters());
    mm.activate_init().unwrap();
    mm.exit(s).map_err(|(e, _)| e).unwrap();
}

/// The batch's clears ran but its flush never did (the multicall stopped
/// before that entry): the pages are unmapped, and their frames are freed
/// only after a second, full flush — never while the TLB still holds them.
#[test]
fn a_range_whose_flush_never_ran_is_flushed_again_before_its_frames_are_freed() {
    use pvops_integration::platform::{assert_invariants, boot_builtin_backends};
    use pvops_xen64::abi::errno;
    let (name, host, booted) = boot_builtin_backends().into_iter().find(|p| p.0 == "xen64").expect("xen64");
    let model = host.xen.expect("xen model");
    let mm = booted.mm;
    let s = mm.create().unwrap();
    for i in 0..3 {
        mm.map(&s, VA + i * 0x1000, PageFlags::DATA).unwrap();
    }
    mm.map(&s, KEEP, PageFlags::DATA).unwrap();
    mm.activate(&s).unwrap();
    for i in 0..3 {
        assert!(host.oracle.user_access(VA + i * 0x1000, true).is_some(), "the TLB caches page {i}");
    }
    let free = booted.frames.free_count();
    // Entry 0: the three clears; entry 1: the flush, which never runs.
    model.inject_multicall_failure(0, 1, -errno::EFAULT);
    let r = mm.unmap_range(&s, VA, 3);
    model.clear_injections();
    assert!(r.is_err(), "the flush's failure is reported: {r:?}");
    assert_invariants(name, &host, &booted, "after the failed range");
    for i in 0..3 {
        assert_eq!(host.oracle.user_access(VA + i * 0x1000, false), None, "page {i} still reachable");
    }
    assert_eq!(booted.frames.free_count(), free + 3, "freed after the second flush");
    mm.activate_init().unwrap();
    mm.exit(s).map_err(|(e, _)| e).unwrap();
}
