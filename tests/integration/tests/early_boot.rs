//! The early-boot path: before frame metadata exists, init_mm can be built
//! (kernel mappings) but no user address space can be created, on any backend
//! — on Xen such a space would have no user pgd and crash the domain on its
//! first return to user mode.

use kernel_glue::{FrameAllocator, Mm};
use pvops::{MmServices, Pfn, PvError};
use pvops_integration::platforms;
use pvops_native as _;
use pvops_xen64 as _;

#[test]
fn no_user_address_space_before_frame_metadata() {
    for host in platforms() {
        let desc = pvops::select(&host.env(), &pvops::backends(), None).expect("a backend");
        let ops = (desc.instantiate)(&host.env()).expect("instantiate");
        let frames: &'static FrameAllocator<'static> =
            Box::leak(Box::new(FrameAllocator::new(host.mem, host.nr_frames)));
        frames.add_free_range(Pfn(0), host.nr_frames);
        for &r in &host.reserved {
            frames.reserve(r);
        }
        let mm = Mm::adopt_boot(ops, host.mem, frames, host.boot_pgd).expect("adopt");
        let kpage = frames.alloc_zeroed_frame().expect("frame");
        mm.map_kernel(pvops_integration::KERNEL_VA, kpage, true).expect("early kernel mapping");
        let free = frames.free_frames();
        let err = mm.create().expect_err("create before metadata");
        assert!(matches!(err, PvError::WrongState { .. }), "{}: {err}", host.label);
        assert_eq!(frames.free_frames(), free, "{}: a refused create allocated", host.label);
        // The backend refuses too, for callers that bypass kernel-glue.
        if desc.name == "xen64" {
            let pgd = frames.alloc_zeroed_frame().expect("frame");
            assert!(matches!(ops.pgd_alloc(frames, pgd), Err(PvError::WrongState { .. })));
            frames.free_frame(pgd).expect("free");
        }
        frames.init_metadata();
        let s = mm.create().expect("create after metadata");
        mm.exit(s).map_err(|(e, _)| e).expect("exit");
        // A second init_metadata keeps what the first set up.
        frames.init_metadata();
        (host.invariants)(frames, &[]).expect("invariants");
    }
}
