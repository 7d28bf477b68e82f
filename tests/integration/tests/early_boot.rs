//! The early-boot path: before frame metadata exists, init_mm can be built
//! (kernel mappings) but no user address space can be created, on any backend
//! — on Xen such a space would have no user pgd and crash the domain on its
//! first return to user mode.

use kernel_glue::{FrameAllocator, Mm};
use pvops::{Pfn, PvError, PvMmuOps};
use pvops_integration::{platforms, HostPlatform};
use pvops_native as _;
use pvops_xen64 as _;

/// A backend booted on `host` in early boot: the boot root adopted, every
/// frame but the reserved ones free, no frame metadata yet.
fn early_mm(
    desc: &pvops::BackendDesc,
    host: &HostPlatform,
) -> (&'static dyn PvMmuOps, &'static FrameAllocator<'static>, Mm<'static>) {
    let h = host.base().boot_early(desc).expect("boot");
    let mm = Mm::adopt_boot(h.ops, h.frames, h.boot_pgd).expect("adopt");
    (h.ops, h.frames, mm)
}

#[test]
fn no_user_address_space_before_frame_metadata() {
    for host in platforms() {
        let desc = pvops::select(&host.env(), &pvops::backends(), None).expect("a backend");
        let (ops, frames, mm) = early_mm(desc, &host);
        let kpage = frames.alloc_zeroed_frame().expect("frame");
        mm.map_kernel(pvops_integration::KERNEL_VA, kpage, true).expect("early kernel mapping");
        let free = frames.free_count();
        let err = mm.create().expect_err("create before metadata");
        assert!(matches!(err, PvError::WrongState { .. }), "{}: {err}", host.label);
        assert_eq!(frames.free_count(), free, "{}: a refused create allocated", host.label);
        // The backend refuses too, for callers that bypass kernel-glue.
        if desc.name == "xen64" {
            let pgd = frames.alloc_zeroed_frame().expect("frame");
            assert!(matches!(ops.pgd_alloc(frames, pgd), Err(PvError::WrongState { .. })));
            frames.free_frame(pgd).expect("free");
        }
        mm.init_metadata().expect("metadata");
        let s = mm.create().expect("create after metadata");
        mm.exit(s).map_err(|(e, _)| e).expect("exit");
        // A second init_metadata keeps what the first set up.
        mm.init_metadata().expect("metadata again");
        (host.invariants)(frames, &[]).expect("invariants");
    }
}

/// An early-boot kernel mapping that runs out of frames half-way gives back the
/// tables it built, on every backend: each is free again and, on Xen, its
/// direct-map alias writable again (else the next user of the frame would store
/// through a read-only alias) — measured by the model, not the backend.
#[test]
fn an_early_kernel_mapping_that_fails_half_way_gives_back_its_tables() {
    for host in platforms() {
        let desc = pvops::select(&host.env(), &pvops::backends(), None).expect("a backend");
        for fail_at in 0..3 {
            let (_, frames, mm) = early_mm(desc, &host);
            let kpage = frames.alloc_zeroed_frame().expect("frame");
            let free = frames.free_count();
            // A kernel-half address whose L3, L2 and L1 do not exist yet (slot 300).
            let va = 0xffff_9600_0000_0000;
            frames.fail_allocation_after(Some(fail_at));
            let err = mm.map_kernel(va, kpage, true).expect_err("out of frames");
            frames.fail_allocation_after(None);
            assert_eq!(err, PvError::OutOfMemory, "{} fail_at {fail_at}", host.label);
            assert_eq!(frames.free_count(), free, "{} fail_at {fail_at}: tables kept", host.label);
            if let Some(model) = host.xen {
                for pfn in (0..host.nr_frames).map(Pfn).filter(|&p| frames.is_free(p)) {
                    assert!(model.alias_writable(pfn), "{} fail_at {fail_at}: free {pfn:?} read-only", host.label);
                }
                model.check_invariants().expect("model invariants");
            }
        }
    }
}
