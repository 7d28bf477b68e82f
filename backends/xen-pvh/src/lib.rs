//! # The Xen PVH backend
//!
//! A PVH guest runs with hardware-assisted paging (HAP): its page tables are
//! written directly and loaded with `mov cr3`, exactly as on bare metal, and
//! Xen has no PV MMU interface for it (`mmu_update` and friends are -ENOSYS
//! for an HVM caller, `xen/include/hypercall-defs.c`). So this backend *is* the
//! native backend, held by composition ([`XenPvhBackend`] wraps a
//! [`pvops_native::NativeBackend`] and forwards every hook), under its own
//! name and probe. Linux does the same for PVH/HVM: `xen_hvm_init_mmu_ops`
//! (`arch/x86/xen/mmu_hvm.c`) keeps the native TLB and page-table ops.
//!
//! What makes it a separate backend is the probe: a PVH entry is taken both by
//! bare QEMU/Firecracker and by Xen's PVH builder, and only the hypervisor
//! CPUID leaves tell them apart ([`find_xen`]). The kernel hands a
//! [`XenPvhPlatform`] (the native handles plus a CPUID seam) on a PVH boot
//! under Xen; `native`'s probe rejects that type, and this probe checks the
//! Xen signature itself.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

extern crate alloc;

mod backend;
mod cpuid;
mod register;

pub use backend::XenPvhBackend;
pub use cpuid::{find_xen, XenLeaves, XEN_SIGNATURE};
pub use register::XenPvhPlatform;
