//! The Xen host platform: a [`XenModel`] (strict PV MMU rules) behind `XenPlatform`.

use kernel_glue::FrameAllocator;
use pvops::pte::flags;
use pvops::{EntryKind, MmServices, Pfn, ENTRIES_PER_TABLE, USER_PGD_SLOTS};
use pvops_conformance::Machine as Oracle;
use pvops_model::XenModel;
use pvops_xen64::abi::XEN_L4_END;

use crate::platform::HostPlatform;

struct XenOracle(&'static XenModel);

impl Oracle for XenOracle {
    fn user_access(&self, va: u64, write: bool) -> Option<Pfn> {
        // With no user pgd loaded, user mode cannot run at all (Xen would crash
        // the domain on the way there): it reaches nothing.
        if self.0.user_base().0 == 0 {
            return None;
        }
        self.0.access(va, true, write).ok()
    }

    fn kernel_access(&self, va: u64, write: bool) -> Option<Pfn> {
        self.0.access(va, false, write).ok()
    }
}

/// Every Xen rule the property tests check after each step.
fn invariants(model: &'static XenModel, frames: &FrameAllocator<'static>, pgds: &[Pfn]) -> Result<(), String> {
    let v = model.violations();
    if !v.is_empty() {
        return Err(format!("direct writes to protected tables: {v:?}"));
    }
    if let Some(c) = model.crashed() {
        return Err(format!("domain crashed: {c}"));
    }
    for &pgd in pgds {
        let user = frames.private(pgd).map_err(|e| e.to_string())?;
        if user == 0 {
            return Err(format!("{pgd:?} has no user pgd"));
        }
        let user = Pfn(user);
        for slot in 0..ENTRIES_PER_TABLE {
            let k = model.read_guest(pgd, slot);
            let u = model.read_guest(user, slot);
            let key = flags::ADDR_MASK | flags::PRESENT;
            if slot < USER_PGD_SLOTS && k & key != u & key {
                return Err(format!("{pgd:?} slot {slot}: user pgd {u:#x} does not mirror kernel pgd {k:#x}"));
            }
            if slot >= XEN_L4_END && u != 0 {
                return Err(format!("{pgd:?} slot {slot}: user pgd maps kernel space ({u:#x})"));
            }
        }
    }
    Ok(())
}

/// A Xen PV domain of `nr_pages` pages as the builder leaves it.
pub fn xen_platform(nr_pages: u64) -> HostPlatform {
    let model = XenModel::leaked(nr_pages, 0x5eed);
    let platform: &'static pvops_xen64::XenPlatform = Box::leak(Box::new(model.platform()));
    HostPlatform {
        label: "xen-model",
        entry: EntryKind::XenPv,
        handover: "xen-3.0-x86_64p",
        platform,
        mem: model,
        oracle: Box::leak(Box::new(XenOracle(model))),
        nr_frames: nr_pages,
        boot_pgd: model.pt_base(),
        reserved: model.reserved_pfns().to_vec(),
        counters: Box::new(move || {
            let c = model.counters();
            format!(
                "; model: {} hypercalls, {} multicall entries, {} mmu_updates, {} mmuext ops ({} pins, {} unpins), {} update_va_mappings, {} failures, pinned now {}",
                c.hypercalls, c.multicall_entries, c.mmu_updates, c.mmuext_ops, c.pins, c.unpins, c.update_va_mappings, c.failures, model.pinned_count()
            )
        }),
        invariants: Box::new(move |frames, pgds| invariants(model, frames, pgds)),
        quiescent: Box::new(move || {
            // Only init_mm's boot root stays pinned.
            match model.pinned_count() {
                1 => Ok(()),
                n => Err(format!("{n} pinned tables left (expected only the boot root)")),
            }
        }),
    }
}
