//! The Xen host platform: a [`XenModel`] (strict PV MMU rules) behind `XenPlatform`.

use kernel_glue::FrameAllocator;
use pvops::{MmServices, Pfn};
use pvops_conformance::Machine as Oracle;
use pvops_model::XenModel;

use crate::platform::HostPlatform;

struct XenOracle(&'static XenModel);

impl Oracle for XenOracle {
    fn user_access(&self, va: u64, write: bool) -> Option<Pfn> {
        // With no user pgd loaded, user mode cannot run at all (Xen would crash
        // the domain on the way there): it reaches nothing. `probe` asks without
        // recording a crash.
        self.0.probe(va, true, write).ok()
    }

    fn kernel_access(&self, va: u64, write: bool) -> Option<Pfn> {
        self.0.probe(va, false, write).ok()
    }

    /// A kernel read on vCPU `cpu`: through its kernel base pointer and its TLB.
    fn read_on(&self, cpu: usize, va: u64) -> Option<u64> {
        if cpu >= self.0.nr_vcpus() {
            return None;
        }
        let pfn = pvops_model::on_vcpu(cpu, || self.0.probe(va, false, false)).ok()?;
        Some(self.0.read_guest(pfn, ((va & 0xfff) / 8) as usize))
    }
}

/// Every Xen rule the property tests check after each step: the model's own
/// checks, plus that every live pgd has a user pgd.
fn invariants(model: &'static XenModel, frames: &FrameAllocator<'static>, pgds: &[Pfn]) -> Result<(), String> {
    model.check_invariants()?;
    model.check_user_pgd_mirrors(frames)?;
    for &pgd in pgds {
        if frames.private(pgd).map_err(|e| e.to_string())? == 0 {
            return Err(format!("{pgd:?} has no user pgd"));
        }
    }
    Ok(())
}

/// A Xen PV domain of `nr_pages` pages as the builder leaves it.
pub fn xen_platform(nr_pages: u64) -> HostPlatform {
    xen_platform_seeded(nr_pages, crate::platform::DEFAULT_P2M_SEED)
}

/// [`xen_platform`] with the p2m scrambled from `p2m_seed`.
pub fn xen_platform_seeded(nr_pages: u64, p2m_seed: u64) -> HostPlatform {
    xen_platform_smp(nr_pages, p2m_seed, 1)
}

/// [`xen_platform_seeded`] with `vcpus` vCPUs, every one up on the boot L4
/// (`VCPUOP_initialise` with `ctrlreg[3]` = `pt_base`). Its `Cpus` are the
/// model's: event masks are the vCPUs' upcall masks, cross-calls event-channel IPIs.
pub fn xen_platform_smp(nr_pages: u64, p2m_seed: u64, vcpus: usize) -> HostPlatform {
    let base = pvops_model::host::Platform::xen64(nr_pages, vcpus, p2m_seed);
    let model: &'static XenModel = match base.xen {
        Some(model) => model,
        None => unreachable!("Platform::xen64 has a Xen model"),
    };
    HostPlatform {
        label: "xen-model",
        entry: base.entry,
        handover: base.handover,
        platform: base.platform,
        mem: base.mem,
        oracle: Box::leak(Box::new(XenOracle(model))),
        nr_frames: nr_pages,
        boot_pgd: base.boot_pgd,
        reserved: base.reserved,
        counters: Box::new(move || {
            let c = model.counters();
            format!(
                "; model: {} hypercalls, {} multicall entries, {} mmu_updates, {} mmuext ops ({} pins, {} unpins), {} update_va_mappings, {} failures, pinned now {}",
                c.hypercalls, c.multicall_entries, c.mmu_updates, c.mmuext_ops, c.pins, c.unpins, c.update_va_mappings, c.failures, model.pinned_count()
            )
        }),
        invariants: Box::new(move |frames, pgds| invariants(model, frames, pgds)),
        xen: Some(model),
        machine: model.machine(),
        quiescent: Box::new(move || model.check_quiescent()),
    }
}

/// The xen64 backend booted on a fresh Xen model of `nr_pages` frames, as the
/// kernel boots it: the model (for its counters, probes and injections) and
/// the booted memory manager.
///
/// # Panics
/// If xen64 is not linked or does not boot on the model (test setup only).
pub fn boot_xen64(nr_pages: u64) -> (&'static XenModel, crate::platform::Booted) {
    let host = xen_platform(nr_pages);
    let model = host.xen.expect("a Xen host platform has a model");
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64 is linked");
    let booted = crate::platform::boot_backend(desc, &host).expect("xen64 boots on the model");
    (model, booted)
}
