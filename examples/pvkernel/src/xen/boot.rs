//! Xen PV bring-up of memory management: the xen64 backend's platform
//! handles, built from what the start of day left us.
//!
//! ```text
//! XenPlatform {
//!     mem:        the direct map (pvops_native::DirectMap, 4 KiB pages, tables read-only)
//!     transport:  the hypercall page (xen::transport::TRANSPORT)
//!     p2m:        start_info.mfn_list + Xen's M2P
//!     direct_map_base, boot_root: start_info.pt_base as a pfn (pinned, loaded)
//! }
//! ```
//! then the same [`vm::boot`] as natively: the registry picks `xen64` from
//! the Xen PV entry, no configuration.

use alloc::boxed::Box;

use pvops::{EntryKind, Pfn};
use pvops_native::DirectMap;
use pvops_xen64::XenPlatform;

use super::transport::{XenP2m, TRANSPORT};
use crate::{directmap, vm, workload};

/// Builds the Xen platform handles, boots the memory manager and runs the
/// workload. Never returns.
pub fn run() -> ! {
    let Some(region) = super::initial_region() else { panic!("no start_info") };
    let Some(si) = super::start_info() else { panic!("no start_info") };
    let nr_frames = super::nr_pages();
    if directmap::mapped_from_zero() < nr_frames {
        panic!("direct map covers {} of {} frames", directmap::mapped_from_zero(), nr_frames);
    }
    // SAFETY: `directmap::init_xen` mapped every pfn below `nr_pages`
    // (page-table frames read-only) and the direct map is never torn down.
    let mem: &'static DirectMap = Box::leak(Box::new(unsafe { DirectMap::new(directmap::DIRECT_MAP_BASE, nr_frames) }));
    static P2M: XenP2m = XenP2m;
    let boot_root = Pfn(region.pt_start_pfn);
    // The backend stores through a counting seam and traps through the
    // counting transport (behind a sabotage wrapper in broken kernels).
    let platform: &'static XenPlatform = Box::leak(Box::new(XenPlatform {
        mem: crate::seams::count_backend_stores(mem),
        transport: crate::sabotage::xen_transport(&TRANSPORT),
        p2m: &P2M,
        direct_map_base: directmap::DIRECT_MAP_BASE,
        boot_root,
        cpus: &pvops::SingleCpu,
    }));
    let handover = si.magic_str();
    match vm::boot(EntryKind::XenPv, handover, platform, mem, nr_frames, boot_root) {
        Ok(v) => {
            log::info!("xen: transport so far: {}", TRANSPORT.counts());
            workload::run(v)
        }
        Err(e) => panic!("memory management: {}", e),
    }
}
