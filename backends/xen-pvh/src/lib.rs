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
//! Where Xen is cheaper it is used: a TLB flush that must reach other vCPUs
//! is one `HVMOP_flush_tlbs` ([`XenHvm`]) instead of a cross-call IPI per
//! CPU through the local APIC Xen emulates (measured on the real Xen PVH
//! dom0 under TCG: ≈104 k TSC cycles against ≈3 M for one cross-call,
//! `docs/PERFORMANCE.md`). Linux PVH keeps the IPIs (it never calls
//! `HVMOP_flush_tlbs`); the trade is a full flush of every vCPU for one exit.
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
mod hvm;
mod register;

pub use backend::XenPvhBackend;
pub use cpuid::{find_xen, XenLeaves, XEN_SIGNATURE};
pub use hvm::XenHvm;
pub use register::XenPvhPlatform;
