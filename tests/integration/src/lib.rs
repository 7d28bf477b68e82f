//! Host platforms: a machine model, the matching boot environment and a booted
//! memory manager, so tests (and `cargo xtask run`) can drive any registered
//! backend exactly as the kernel would.
#![warn(missing_docs)]

pub mod builtin;
pub mod conformance;
pub mod differential;
pub mod inject;
pub mod native_host;
pub mod platform;
pub mod workload;
pub mod xen_host;

pub use platform::{boot_backend, platforms, HostPlatform, KERNEL_VA};
