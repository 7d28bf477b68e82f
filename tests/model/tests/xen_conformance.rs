//! The shared conformance suite on the xen64 backend over the Xen model,
//! booted the way the kernel boots (early path, adopt the boot root, map a
//! kernel page, then frame metadata). The model's own checks ride along:
//! no direct store to a live table, no pin left, no crash.

use kernel_glue::{FrameAllocator, Mm};
use pvops::{BootEnv, EntryKind, MmServices, Pfn};
use pvops_conformance::Machine as Oracle;
use pvops_model::xen::XenModel;
use pvops_native as _;

const KERNEL_VA: u64 = 0xffff_8880_0000_0000;

struct XenOracle(&'static XenModel);

impl Oracle for XenOracle {
    fn user_access(&self, va: u64, write: bool) -> Option<Pfn> {
        self.0.access(va, true, write).ok()
    }
    fn kernel_access(&self, va: u64, write: bool) -> Option<Pfn> {
        self.0.access(va, false, write).ok()
    }
}

#[test]
fn conformance_xen64_over_the_xen_model() {
    let model = XenModel::leaked(4096, 0x5eed);
    let platform: &'static pvops_xen64::XenPlatform = Box::leak(Box::new(model.platform()));
    let env = BootEnv { entry: EntryKind::XenPv, handover: "xen-3.0-x86_64", platform };
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64 registered");
    let ops = (desc.instantiate)(&env).unwrap();
    let frames: &'static FrameAllocator<'static> = Box::leak(Box::new(FrameAllocator::new(model, model.nr_pages())));
    frames.add_free_range(Pfn(0), model.nr_pages());
    for &r in model.reserved_pfns() {
        frames.reserve(r);
    }
    let mm: &'static Mm<'static> = Box::leak(Box::new(Mm::adopt_boot(ops, model, frames, model.pt_base()).unwrap()));
    let kpage = frames.alloc_zeroed_frame().unwrap();
    mm.map_kernel(KERNEL_VA, kpage, true).unwrap();
    frames.init_metadata();

    let oracle = XenOracle(model);
    let env = pvops_conformance::Env { mm, machine: &oracle, kernel_va: KERNEL_VA };
    let mut failures = Vec::new();
    let summary = pvops_conformance::run_all(&env, &mut |case, r| {
        if let Err(why) = r {
            failures.push(format!("{}: {why}", case.name));
        }
        let v = model.violations();
        if !v.is_empty() {
            failures.push(format!("{}: direct stores to live tables: {v:?}", case.name));
            model.clear_violations();
        }
    });
    println!("conformance xen64: {}/{} passed", summary.passed, summary.total);
    println!("{:?}", model.counters());
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    assert_eq!(model.pinned_count(), 1, "only the boot root is still pinned");
    assert_eq!(model.user_base().0, 0);
}
