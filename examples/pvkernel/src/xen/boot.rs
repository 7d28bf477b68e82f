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
        cpus: crate::sabotage::backend_cpus(),
    }));
    let handover = si.magic_str();
    match vm::boot(EntryKind::XenPv, handover, platform, mem, nr_frames, boot_root) {
        Ok(v) => {
            log::info!("xen: transport so far: {}", TRANSPORT.counts());
            start_other_vcpus();
            workload::run(v)
        }
        Err(e) => panic!("memory management: {}", e),
    }
}

/// Starts every vCPU Xen gave the domain and checks the event plumbing on
/// vCPU 0 and, against every other online vCPU, the IPI and remote-flush
/// plumbing (see `smp::xen::probe`). A vCPU that does not start is logged
/// and left out; a failing check fails the run.
fn start_other_vcpus() {
    let n = crate::smp::bring_up(pvops::MAX_CPUS);
    let me = crate::smp::this_cpu();
    if let Err(e) = crate::smp::xen::probe::events(me) {
        panic!("xen smp event masking: {e}");
    }
    let others = crate::smp::online().without(me);
    if others.is_empty() {
        log::info!("xen smp: one vCPU online, no cross-vCPU check");
    }
    for other in others.iter() {
        match crate::smp::xen::probe::run(other) {
            Ok(r) => log::info!(
                "xen smp check vCPU {other}: ok ({n} vCPUs; stale reads seen before the MULTI flushes: {:?}; IPI round trip min {} us, mean {} us)",
                r.stale,
                r.ipi_min_ns / 1000,
                r.ipi_mean_ns / 1000
            ),
            Err(e) => panic!("xen smp check on vCPU {other}: {e}"),
        }
    }
}
