//! Registration in the pvops registry.

use alloc::boxed::Box;

use linkme::distributed_slice;
use pvops::{BackendDesc, BootEnv, EntryKind, PvError, PvMmuOps, BACKENDS};
use pvops_native::{NativeBackend, NativePlatform};

use crate::backend::XenPvhBackend;
use crate::cpuid::find_xen;
use crate::hvm::XenHvm;

/// What a PVH boot under Xen passes in `BootEnv::platform`: the native
/// handles (the page tables are the guest's own) and the CPUID the probe
/// reads. A distinct type, so `native`'s probe (a `NativePlatform` downcast)
/// does not take a Xen PVH boot.
#[derive(Clone, Copy)]
pub struct XenPvhPlatform {
    /// Memory, CPU and CPUs, as natively.
    pub native: NativePlatform,
    /// The `cpuid` instruction (eax, ebx, ecx, edx of a leaf); a fake on the host.
    pub cpuid: fn(u32) -> [u32; 4],
    /// Xen's HVM hypercalls (the remote TLB flush).
    pub hvm: &'static dyn XenHvm,
}

impl core::fmt::Debug for XenPvhPlatform {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("XenPvhPlatform")
    }
}

/// PVH entry, a [`XenPvhPlatform`], and Xen's CPUID signature. The entry
/// decides PV against PVH (a PV dom0 under TCG sees no Xen leaves at all,
/// `pvh-notes.md` §1.8); CPUID decides Xen against bare PVH.
fn probe(env: &BootEnv<'_>) -> Result<(), &'static str> {
    if env.entry != EntryKind::Pvh {
        return Err("not a PVH entry");
    }
    let Some(p) = env.platform.downcast_ref::<XenPvhPlatform>() else {
        return Err("platform is not a XenPvhPlatform");
    };
    if find_xen(p.cpuid).is_none() {
        return Err("no XenVMMXenVMM CPUID signature");
    }
    Ok(())
}

impl XenPvhBackend {
    /// The backend for the platform in `env` (a [`XenPvhPlatform`]), by value:
    /// for `pvops::static_dispatch!` enums; the registry's `instantiate` uses it too.
    pub fn from_env(env: &BootEnv<'_>) -> Result<Self, PvError> {
        let p = env
            .platform
            .downcast_ref::<XenPvhPlatform>()
            .ok_or(PvError::WrongState { what: "xen-pvh: platform is not a XenPvhPlatform" })?;
        let n = p.native;
        Ok(XenPvhBackend::new(NativeBackend::new(n.mem, n.cpu).with_cpus(n.cpus), p.hvm))
    }
}

fn instantiate(env: &BootEnv<'_>) -> Result<&'static dyn PvMmuOps, PvError> {
    Ok(Box::leak(Box::new(XenPvhBackend::from_env(env)?)))
}

/// Priority above `native` (0): were a platform ever to satisfy both
/// probes, the more specific backend wins.
#[distributed_slice(BACKENDS)]
static XEN_PVH: BackendDesc = BackendDesc { name: "xen-pvh", priority: 5, probe, instantiate };
