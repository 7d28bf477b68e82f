//! The backends this kernel is built with, dispatched statically.
//!
//! The registry still chooses (its own `select` over every linked backend,
//! by probe and priority) and the choice is published for `pvops::ops()`;
//! but the kernel keeps the chosen backend by value in [`KernelOps`], so every
//! MMU call from kernel-glue is a tag test and a direct, inlinable call rather
//! than a vtable call (`docs/PERFORMANCE.md`: +2 instructions over calling the
//! backend directly, against +15..18 through `&dyn PvMmuOps`). The native
//! backend is typed over the kernel's memory ([`seams::BackendMem`]), so its
//! page-table words are inlined loads and stores too, not `&dyn PhysMem` calls.

use pvops::{BootEnv, PvError};
use pvops_native::NativeBackend;
use pvops_xen64::XenBackend;
use pvops_xen_pvh::XenPvhBackend;

use crate::seams::{self, BackendMem};

pvops::static_dispatch! {
    /// The registry-selected backend of this boot.
    pub enum KernelOps {
        /// A registered backend that is not built in, through its vtable.
        dyn Other,
        /// Bare metal / PVH (declared first: its calls take the fast path).
        Native(NativeBackend<BackendMem>) = "native" => native_on_backend_mem,
        /// Xen PV64.
        Xen64(XenBackend) = "xen64" => XenBackend::from_env,
        /// Xen PVH: the native backend underneath, chosen by Xen's CPUID leaves.
        XenPvh(XenPvhBackend) = "xen-pvh" => XenPvhBackend::from_env,
    }
}

/// The native backend over the platform's memory by its type: the counted
/// direct map `seams::count_backend_stores` made for the platform.
fn native_on_backend_mem(env: &BootEnv<'_>) -> Result<NativeBackend<BackendMem>, PvError> {
    let mem = seams::backend_mem().ok_or(PvError::WrongState { what: "native: no counted direct map yet" })?;
    NativeBackend::from_env_with(env, mem)
}
