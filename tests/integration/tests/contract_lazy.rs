//! Lazy-MMU sections nest: `Mm::map` inside a caller's section issues nothing
//! until the caller's outermost leave, which issues everything as one batch.
//! Counted by the Xen model (its own counters) and observed by its page walk.

use kernel_glue::PageFlags;
use pvops_integration::platform::boot_backend;
use pvops_integration::xen_host::xen_platform;
use pvops_native as _;

const VA: u64 = 0x40_0000;

#[test]
fn maps_inside_a_callers_section_go_out_at_its_leave_as_one_hypercall() {
    let host = xen_platform(1024);
    let model = host.xen.expect("xen model");
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64");
    let b = boot_backend(desc, &host).expect("boot");
    let (mm, ops) = (b.mm, b.ops);
    let mut s = mm.create().unwrap();
    mm.map(&s, VA, PageFlags::DATA).unwrap();
    mm.activate(&mut s).unwrap();

    model.reset_counters();
    ops.lazy_mmu_enter();
    // The first needs new L2 and L1 tables; the second lands in the same L1.
    let f = mm.map(&s, VA + (1 << 30), PageFlags::DATA).unwrap();
    let g = mm.map(&s, VA + (1 << 30) + 0x1000, PageFlags::DATA).unwrap();
    assert_eq!(model.counters().hypercalls, 0, "nothing issued inside the caller's section");
    assert_eq!(model.probe(VA + (1 << 30), true, false).ok(), None, "not in effect yet");
    ops.lazy_mmu_leave().unwrap();
    let c = model.counters();
    assert_eq!(c.hypercalls, 1, "the outer leave issues both maps as one batch: {c:?}");
    assert_eq!(model.probe(VA + (1 << 30), true, true), Ok(f), "{c:?}");
    assert_eq!(model.probe(VA + (1 << 30) + 0x1000, true, true).ok(), Some(g));

    // Leaving more often than entering is harmless: it issues what is queued.
    ops.lazy_mmu_leave().unwrap();
    mm.activate_init().unwrap();
    mm.exit(s).map_err(|(e, _)| e).unwrap();
    model.check_quiescent().unwrap();
}
