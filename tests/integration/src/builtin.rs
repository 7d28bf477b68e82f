//! The registry-selected backend with static dispatch of the built-ins: what a
//! kernel that links `pvops-native` and `pvops-xen64` declares with
//! [`pvops::static_dispatch!`].

use pvops::{BootEnv, PvError};
use pvops_native::{NativeBackend, NativePlatform};
use pvops_xen64::{XenBackend, XenPlatform};

/// The native backend by value, from the platform the registry's probe accepted.
fn native_from_env(env: &BootEnv<'_>) -> Result<NativeBackend, PvError> {
    let p = env
        .platform
        .downcast_ref::<NativePlatform>()
        .ok_or(PvError::WrongState { what: "native: platform is not a NativePlatform" })?;
    Ok(NativeBackend::new(p.mem, p.cpu))
}

/// The xen64 backend by value, from the platform the registry's probe accepted.
fn xen64_from_env(env: &BootEnv<'_>) -> Result<XenBackend, PvError> {
    let p = env
        .platform
        .downcast_ref::<XenPlatform>()
        .ok_or(PvError::WrongState { what: "xen64: platform is not a XenPlatform" })?;
    Ok(XenBackend::new(*p))
}

pvops::static_dispatch! {
    /// The backends built into the kernel, selected by the registry and
    /// dispatched by `match`; any other registered backend goes through its vtable.
    pub enum Builtin {
        /// A backend that is not built in (e.g. `examples/custom-backend`).
        dyn Other,
        /// Bare metal / PVH.
        Native(NativeBackend) = "native" => native_from_env,
        /// Xen PV64.
        Xen64(XenBackend) = "xen64" => xen64_from_env,
    }
}
