//! Registration in the pvops registry, and the platform handles.

use alloc::boxed::Box;

use linkme::distributed_slice;
use pvops::{BackendDesc, BootEnv, EntryKind, Pfn, PhysMem, PvError, PvMmuOps, BACKENDS};

use crate::backend::XenBackend;
use crate::transport::{HypercallTransport, P2m};

/// What the xen64 backend needs from the platform, passed in `BootEnv::platform`.
#[derive(Clone, Copy)]
pub struct XenPlatform {
    /// Page-table memory through the direct map (reads always; stores only to
    /// tables that are not live).
    pub mem: &'static dyn PhysMem,
    /// Hypercalls.
    pub transport: &'static dyn HypercallTransport,
    /// pfn ↔ mfn.
    pub p2m: &'static dyn P2m,
    /// Virtual address of pfn 0 in the direct map (`update_va_mapping` target).
    pub direct_map_base: u64,
    /// The root Xen's builder loaded and pinned (`start_info.pt_base` as a pfn):
    /// init_mm's pgd.
    pub boot_root: Pfn,
    /// The vCPUs: which one runs a call (per-vCPU batches and roots), event masking.
    pub cpus: &'static dyn pvops::Cpus,
}

impl core::fmt::Debug for XenPlatform {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XenPlatform")
            .field("direct_map_base", &format_args!("{:#x}", self.direct_map_base))
            .field("boot_root", &self.boot_root)
            .finish_non_exhaustive()
    }
}

/// Above native (0): on a Xen PV entry with a Xen platform, xen64 wins.
pub const PRIORITY: i32 = 10;

fn probe(env: &BootEnv<'_>) -> Result<(), &'static str> {
    if env.entry != EntryKind::XenPv {
        return Err("not entered as a Xen PV guest");
    }
    if env.platform.downcast_ref::<XenPlatform>().is_none() {
        return Err("platform is not a XenPlatform");
    }
    Ok(())
}

impl XenBackend {
    /// The backend for the platform in `env` (a [`XenPlatform`]), by value:
    /// for `pvops::static_dispatch!` enums; the registry's `instantiate` uses it too.
    pub fn from_env(env: &BootEnv<'_>) -> Result<Self, PvError> {
        let p = env
            .platform
            .downcast_ref::<XenPlatform>()
            .ok_or(PvError::WrongState { what: "xen64: platform is not a XenPlatform" })?;
        Ok(XenBackend::new(*p))
    }
}

fn instantiate(env: &BootEnv<'_>) -> Result<&'static dyn PvMmuOps, PvError> {
    Ok(Box::leak(Box::new(XenBackend::from_env(env)?)))
}

#[distributed_slice(BACKENDS)]
static XEN64: BackendDesc = BackendDesc { name: "xen64", priority: PRIORITY, probe, instantiate };
