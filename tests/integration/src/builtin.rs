//! The registry-selected backend with static dispatch of the built-ins: what a
//! kernel that links `pvops-native` and `pvops-xen64` declares with
//! [`pvops::static_dispatch!`].

use pvops_native::NativeBackend;
use pvops_xen64::XenBackend;

pvops::static_dispatch! {
    /// The backends built into the kernel, selected by the registry and
    /// dispatched by `match`; any other registered backend goes through its vtable.
    pub enum Builtin {
        /// A backend that is not built in (e.g. `examples/custom-backend`).
        dyn Other,
        /// Bare metal / PVH.
        Native(NativeBackend) = "native" => NativeBackend::from_env,
        /// Xen PV64.
        Xen64(XenBackend) = "xen64" => XenBackend::from_env,
    }
}
