//! A failure belongs to the operation that queued the failing record. When a
//! later, unrelated operation finds the batch full and so issues records an
//! earlier operation queued in a lazy-MMU section, their failure is not its
//! error: it is reported to the section's owner at flush or leave. Checked
//! with the Xen model's fault injection and its base pointers.

use kernel_glue::PageFlags;
use pvops::{Level, Pte, VirtAddr};
use pvops_integration::xen_host::boot_xen64;
use pvops_native as _;
use pvops_xen64::abi::errno;

const VA: u64 = 0x40_0000;
/// `mmu_update` records that fill a batch's argument space but for one base-pointer pair.
const FILL: usize = 31;

#[test]
fn an_activate_that_loaded_its_space_is_not_blamed_for_an_earlier_lazy_failure() {
    for flush_instead_of_leave in [false, true] {
        let (model, b) = boot_xen64(1024);
        let (mm, ops) = (b.mm, b.ops);
        let s = mm.create().unwrap();
        mm.map(&s, VA, PageFlags::DATA).unwrap();
        mm.activate(&s).unwrap();
        mm.activate_init().unwrap();
        // The L1 holding VA: pinned, so its updates are queued records.
        let l1 = pvops_conformance::l1_of(ops, s.pgd(), VA).unwrap();

        ops.lazy_mmu_enter();
        model.inject_subop_failure(0, -errno::EINVAL);
        for i in 0..FILL {
            // Clearing empty slots: harmless, but the first one will be refused.
            ops.set_entry(mm.frames(), Level::L1, l1, 100 + i, Pte::EMPTY).unwrap();
        }
        // The switch's two records do not fit: the batch goes out first.
        let activated = mm.activate(&s);
        let loaded = model.kernel_base() == model.mfn_of(s.pgd()).unwrap();
        let owner = if flush_instead_of_leave {
            let r = ops.lazy_mmu_flush();
            ops.lazy_mmu_leave().unwrap();
            r
        } else {
            ops.lazy_mmu_leave()
        };
        assert!(loaded, "the switch took effect");
        assert_eq!(activated, Ok(()), "so activate reports success");
        assert!(owner.is_err(), "the section's owner hears of its refused record");
        assert!(model.counters().failures >= 1);
        mm.activate_init().unwrap();
        mm.exit(s).map_err(|(e, _)| e).unwrap();
        model.check_quiescent().unwrap();
    }
}

#[test]
fn a_map_issued_inside_a_section_does_not_report_the_sections_earlier_failure() {
    let (model, b) = boot_xen64(1024);
    let (mm, ops) = (b.mm, b.ops);
    let s = mm.create().unwrap();
    mm.map(&s, VA, PageFlags::DATA).unwrap();
    mm.activate(&s).unwrap();
    let l1 = pvops_conformance::l1_of(ops, s.pgd(), VA).unwrap();

    ops.lazy_mmu_enter();
    model.inject_subop_failure(0, -errno::EINVAL);
    ops.set_entry(mm.frames(), Level::L1, l1, 200, Pte::EMPTY).unwrap();
    // An entry of another kind, so unmap's record does not join the refused
    // array (Xen stops an array at its first failure: a record merged after it
    // would not run, and its owner would rightly hear of it).
    ops.flush_tlb_one(VirtAddr::try_new(VA + 0x5000).unwrap()).unwrap();
    // unmap must issue (it frees a frame): the section's refused record goes out with it.
    let unmapped = mm.unmap(&s, VA);
    let owner = ops.lazy_mmu_leave();
    assert_eq!(unmapped, Ok(()), "unmap's own records took effect");
    assert_eq!(model.probe(VA, true, false).ok(), None, "and the page is gone");
    assert!(owner.is_err(), "the owner hears of its own refused record");
    mm.activate_init().unwrap();
    mm.exit(s).map_err(|(e, _)| e).unwrap();
    model.check_quiescent().unwrap();
}
