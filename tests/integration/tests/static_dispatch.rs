//! kernel-glue over a statically dispatched backend (`Mm<Builtin>`): the
//! registry's choice, no vtable on the hot path, same behaviour.

use kernel_glue::{Mm, PageFlags};
use pvops_integration::builtin::Builtin;
use pvops_integration::platforms;
use pvops_native as _;
use pvops_xen64 as _;

#[test]
fn address_spaces_work_over_the_static_dispatch_enum_on_every_platform() {
    for host in platforms() {
        let ops: &'static Builtin = Box::leak(Box::new(Builtin::init(&host.env()).expect("a backend")));
        assert!(ops.is_builtin(), "{}: expected a built-in backend", host.label);
        let frames = host.base().frames();
        let mm: Mm<'_, Builtin> = Mm::adopt_boot(ops, frames, host.boot_pgd).expect("adopt");
        let kpage = frames.alloc_zeroed_frame().expect("frame");
        mm.map_kernel(pvops_integration::KERNEL_VA, kpage, true).expect("kernel page");
        mm.init_metadata().expect("metadata");
        let before = frames.free_count();

        let a = mm.create().expect("create");
        let f = mm.map(&a, 0x40_0000, PageFlags::DATA).expect("map");
        mm.poke(&a, 0x40_0000, 7).expect("poke");
        mm.activate(&a).expect("activate");
        assert_eq!(host.oracle.user_access(0x40_0000, true), Some(f), "{}", host.label);
        assert_eq!(host.oracle.user_access(pvops_integration::KERNEL_VA, false), None, "{}", host.label);
        let b = mm.fork(&a).expect("fork");
        mm.activate(&b).expect("switch");
        assert_eq!(mm.peek(&b, 0x40_0000), Ok(7));
        assert_ne!(host.oracle.user_access(0x40_0000, false), Some(f), "{}: child shares the frame", host.label);
        mm.activate_init().expect("init");
        mm.exit(a).map_err(|(e, _)| e).expect("exit a");
        mm.exit(b).map_err(|(e, _)| e).expect("exit b");
        assert_eq!(frames.free_count(), before, "{}: frames leaked", host.label);

        // The whole conformance suite, statically dispatched.
        let env = pvops_conformance::Env { mm: &mm, machine: host.oracle, kernel_va: pvops_integration::KERNEL_VA };
        let mut failures = Vec::new();
        let summary = pvops_conformance::run_all(&env, &mut |case, r| {
            if let Err(why) = r {
                failures.push(format!("{}: {why}", case.name));
            }
        });
        assert!(failures.is_empty(), "{}: {failures:?}", host.label);
        assert_eq!(summary.total, pvops_conformance::CASES.len());
        (host.invariants)(frames, &[]).expect("invariants");
        (host.quiescent)().expect("quiescent");
    }
}
