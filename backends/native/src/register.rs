//! Registration in the pvops registry.

use alloc::boxed::Box;

use linkme::distributed_slice;
use pvops::{BackendDesc, BootEnv, Cpus, EntryKind, PhysMem, PvError, PvMmuOps, BACKENDS};

use crate::backend::NativeBackend;
use crate::cpu::NativeCpu;

/// The hardware handles the native backend needs, passed in `BootEnv::platform`.
#[derive(Clone, Copy)]
pub struct NativePlatform {
    /// Page-table memory.
    pub mem: &'static dyn PhysMem,
    /// cr3 and TLB (of the CPU that runs the call).
    pub cpu: &'static dyn NativeCpu,
    /// The CPUs: which one runs a call, cross-calls for remote TLB flushes.
    pub cpus: &'static dyn Cpus,
}

impl core::fmt::Debug for NativePlatform {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("NativePlatform")
    }
}

fn probe(env: &BootEnv<'_>) -> Result<(), &'static str> {
    if env.entry != EntryKind::Pvh {
        return Err("not entered natively (PVH)");
    }
    if env.platform.downcast_ref::<NativePlatform>().is_none() {
        return Err("platform is not a NativePlatform");
    }
    Ok(())
}

impl NativeBackend {
    /// The backend for the platform in `env` (a [`NativePlatform`]), by value:
    /// for `pvops::static_dispatch!` enums; the registry's `instantiate` uses it too.
    pub fn from_env(env: &BootEnv<'_>) -> Result<Self, PvError> {
        let p = env
            .platform
            .downcast_ref::<NativePlatform>()
            .ok_or(PvError::WrongState { what: "native: platform is not a NativePlatform" })?;
        Ok(NativeBackend::new(p.mem, p.cpu).with_cpus(p.cpus))
    }
}

fn instantiate(env: &BootEnv<'_>) -> Result<&'static dyn PvMmuOps, PvError> {
    Ok(Box::leak(Box::new(NativeBackend::from_env(env)?)))
}

#[distributed_slice(BACKENDS)]
static NATIVE: BackendDesc = BackendDesc { name: "native", priority: 0, probe, instantiate };
