//! Lazy-MMU sections nest, and `Mm` never lets a lazy section outlive the
//! lock of the space it changed: `Mm::map` inside a caller's section issues
//! its own updates before it returns (another CPU may take the space's lock
//! next and must see them), and leaves the caller's section open.
//! Counted by the Xen model (its own counters) and observed by its page walk.

use kernel_glue::PageFlags;
use pvops_integration::xen_host::boot_xen64;
use pvops_native as _;

const VA: u64 = 0x40_0000;

#[test]
fn maps_inside_a_callers_section_are_in_effect_when_they_return_and_the_section_stays_open() {
    use pvops::{Level, Pte};
    let (model, b) = boot_xen64(1024);
    let (mm, ops) = (b.mm, b.ops);
    let s = mm.create().unwrap();
    mm.map(&s, VA, PageFlags::DATA).unwrap();
    mm.activate(&s).unwrap();

    model.reset_counters();
    ops.lazy_mmu_enter();
    // The first needs new L2 and L1 tables; the second lands in the same L1.
    let f = mm.map(&s, VA + (1 << 30), PageFlags::DATA).unwrap();
    assert_eq!(model.counters().hypercalls, 1, "one batch for the map and its new tables");
    assert_eq!(model.probe(VA + (1 << 30), true, true), Ok(f), "in effect when map returns");
    let g = mm.map(&s, VA + (1 << 30) + 0x1000, PageFlags::DATA).unwrap();
    assert_eq!(model.counters().hypercalls, 2);
    assert_eq!(model.probe(VA + (1 << 30) + 0x1000, true, true), Ok(g));

    // The caller's section is still open: its own update stays queued.
    let l1 = pvops_conformance::l1_of(ops, s.pgd(), VA).unwrap();
    let (frame, _) = mm.translate(&s, VA).unwrap().unwrap();
    let leaf = Pte::new(frame, pvops::pte::flags::PRESENT | pvops::pte::flags::USER);
    ops.set_entry(b.frames, Level::L1, l1, 2, leaf).unwrap();
    assert_eq!(model.counters().hypercalls, 2, "the caller's update waits for its leave");
    assert_eq!(model.probe(VA + 0x2000, true, false).ok(), None, "not in effect yet");
    ops.lazy_mmu_leave().unwrap();
    assert_eq!(model.counters().hypercalls, 3);
    assert_eq!(model.probe(VA + 0x2000, true, false), Ok(frame));
    ops.set_entry(b.frames, Level::L1, l1, 2, Pte::EMPTY).unwrap();

    // Leaving more often than entering is harmless: it issues what is queued.
    ops.lazy_mmu_leave().unwrap();
    mm.activate_init().unwrap();
    mm.exit(s).map_err(|(e, _)| e).unwrap();
    model.check_quiescent().unwrap();
}

/// Straight on the backend: an inner leave issues nothing; the outer leave
/// issues the inner section's updates too. A failure issued while the inner
/// section was open (a full batch) is the inner section's to report; one of
/// its updates still queued at its leave is the outer section's.
#[test]
fn an_inner_leave_issues_nothing_and_each_section_hears_of_its_own_failures() {
    use pvops::{Level, Pte};
    use pvops_xen64::abi::errno;
    let (model, b) = boot_xen64(1024);
    let (mm, ops) = (b.mm, b.ops);
    let s = mm.create().unwrap();
    mm.map(&s, VA, PageFlags::DATA).unwrap();
    mm.activate(&s).unwrap();
    let l1 = pvops_conformance::l1_of(ops, s.pgd(), VA).unwrap();
    let clear = |i: usize| ops.set_entry(mm.frames(), Level::L1, l1, i, Pte::EMPTY).unwrap();

    model.reset_counters();
    ops.lazy_mmu_enter();
    ops.lazy_mmu_enter();
    clear(100);
    assert_eq!(ops.lazy_mmu_leave(), Ok(()), "nothing of the inner section was issued yet");
    assert_eq!(model.counters().hypercalls, 0, "the inner leave issued nothing");
    ops.lazy_mmu_leave().unwrap();
    assert_eq!(model.counters().hypercalls, 1, "the outer leave issued it");

    // A full batch inside the inner section: its failure is the inner section's.
    ops.lazy_mmu_enter();
    ops.lazy_mmu_enter();
    model.inject_subop_failure(0, -errno::EINVAL);
    for i in 0..33 {
        clear(100 + i); // 32 records fill the argument space: the 33rd flushes them
    }
    assert!(ops.lazy_mmu_leave().is_err(), "the inner section hears of its refused record");
    assert_eq!(ops.lazy_mmu_leave(), Ok(()), "the outer one does not hear it again");

    // Still queued at the inner leave: the outer section's.
    ops.lazy_mmu_enter();
    ops.lazy_mmu_enter();
    clear(101);
    ops.lazy_mmu_leave().unwrap();
    model.inject_subop_failure(0, -errno::EINVAL);
    assert!(ops.lazy_mmu_leave().is_err(), "issued by the outer leave: its failure is reported there");

    mm.activate_init().unwrap();
    mm.exit(s).map_err(|(e, _)| e).unwrap();
    model.check_quiescent().unwrap();
}
