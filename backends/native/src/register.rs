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

impl<M: PhysMem + 'static> NativeBackend<M> {
    /// [`NativeBackend::from_env`] with the platform's memory by its type:
    /// `mem` must be the very object the [`NativePlatform`] in `env` holds
    /// (the registry's backend and this one then write the same memory
    /// through the same seam), else `WrongState`. A `pvops::static_dispatch!`
    /// constructor for a kernel that keeps its [`DirectMap`](crate::DirectMap)
    /// (say) where a plain function can reach it.
    ///
    /// ```
    /// use pvops::{BootEnv, EntryKind, Level, Pfn, PhysMem, PvMmuOps, SingleCpu};
    /// use pvops_native::{BareMetalCpu, DirectMap, NativeBackend, NativePlatform};
    ///
    /// let frames: &'static mut [u64] = Box::leak(vec![0u64; 2 * 512].into_boxed_slice());
    /// // SAFETY: the leaked buffer holds 2 frames and lives forever.
    /// let mem: &'static DirectMap = Box::leak(Box::new(unsafe { DirectMap::new(frames.as_mut_ptr() as u64, 2) }));
    /// let platform = NativePlatform { mem, cpu: &BareMetalCpu, cpus: &SingleCpu };
    /// let env = BootEnv { entry: EntryKind::Pvh, handover: "", platform: &platform };
    ///
    /// let backend: NativeBackend<DirectMap> = NativeBackend::from_env_with(&env, mem)?;
    /// mem.write_entry(Pfn(1), 3, 0x1234);
    /// assert_eq!(backend.read_entry(Level::L1, Pfn(1), 3)?.0, 0x1234);
    ///
    /// // Another object over the same memory is not the platform's.
    /// let other: &'static DirectMap = Box::leak(Box::new(*mem));
    /// assert!(NativeBackend::from_env_with(&env, other).is_err());
    /// # Ok::<(), pvops::PvError>(())
    /// ```
    pub fn from_env_with(env: &BootEnv<'_>, mem: &'static M) -> Result<Self, PvError> {
        let p = env
            .platform
            .downcast_ref::<NativePlatform>()
            .ok_or(PvError::WrongState { what: "native: platform is not a NativePlatform" })?;
        // The very object, compared by address: so a zero-sized `M` (every
        // one shares a dangling address) can never prove it.
        if core::mem::size_of_val(mem) == 0 || !core::ptr::addr_eq(mem as *const M, p.mem as *const dyn PhysMem) {
            return Err(PvError::WrongState { what: "native: memory is not the platform's" });
        }
        Ok(NativeBackend::with_mem(mem, p.cpu).with_cpus(p.cpus))
    }
}

fn instantiate(env: &BootEnv<'_>) -> Result<&'static dyn PvMmuOps, PvError> {
    Ok(Box::leak(Box::new(NativeBackend::from_env(env)?)))
}

#[distributed_slice(BACKENDS)]
static NATIVE: BackendDesc = BackendDesc { name: "native", priority: 0, probe, instantiate };
