//! The backends this kernel is built with, dispatched statically.
//!
//! The registry still chooses (its own `select` over every linked backend,
//! by probe and priority) and the choice is published for `pvops::ops()`;
//! but the kernel keeps the chosen backend by value in [`KernelOps`], so every
//! MMU call from kernel-glue is a tag test and a direct, inlinable call rather
//! than a vtable call (`docs/PERFORMANCE.md`: +2 instructions over calling the
//! backend directly, against +15..18 through `&dyn PvMmuOps`).

use pvops_native::NativeBackend;
use pvops_xen64::XenBackend;
use pvops_xen_pvh::XenPvhBackend;

pvops::static_dispatch! {
    /// The registry-selected backend of this boot.
    pub enum KernelOps {
        /// A registered backend that is not built in, through its vtable.
        dyn Other,
        /// Bare metal / PVH (declared first: its calls take the fast path).
        Native(NativeBackend) = "native" => NativeBackend::from_env,
        /// Xen PV64.
        Xen64(XenBackend) = "xen64" => XenBackend::from_env,
        /// Xen PVH: the native backend underneath, chosen by Xen's CPUID leaves.
        XenPvh(XenPvhBackend) = "xen-pvh" => XenPvhBackend::from_env,
    }
}
