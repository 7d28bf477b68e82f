//! `trace` under kernel-glue's `Mm` on both host models, set up the one way
//! (`pvops_model::host`): the platform, the backend from the registry, `Mm`.

use kernel_glue::{Mm, PageFlags};
use pvops::{PvError, VirtAddr};
use pvops_model::host::Platform;
use pvops_model::Access;
use pvops_native as _;
use pvops_trace as _;
use pvops_xen64 as _;

#[test]
fn mm_runs_on_the_trace_backend_on_both_host_models() -> Result<(), PvError> {
    for platform in [Platform::native(1024, 1), Platform::xen64(1024, 1, 7)] {
        let trace = pvops::backends().into_iter().find(|d| d.name == "trace").ok_or(PvError::UnknownBackend)?;
        let h = platform.boot_with(trace)?;
        let mm = Mm::adopt_boot(h.ops, h.frames, h.boot_pgd)?;
        let space = mm.create()?;
        let page = mm.map(&space, 0x40_0000, PageFlags::DATA)?;
        mm.activate(&space)?;
        let va = VirtAddr::try_new(0x40_0000)?;
        // Asked of the model, not of the backend: user mode reaches the page.
        assert_eq!(h.oracle().reach(va, Access::USER_WRITE), Ok(page), "{:?}", h.platform);
        mm.activate_init()?;
        mm.exit(space).map_err(|(e, _)| e)?;
        assert_eq!(h.ops.name(), "trace");
    }
    Ok(())
}
