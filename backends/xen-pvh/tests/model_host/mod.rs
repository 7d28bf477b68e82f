//! The Xen PVH host platform: the native machine model re-labelled as a PVH
//! boot under Xen (Xen's CPUID leaves) with a model `HVMOP_flush_tlbs`.
//! Shared by this crate's tests and its `host-report` example.
#![allow(dead_code)] // each user takes what it needs

use std::sync::atomic::{AtomicU64, Ordering};

use pvops::PvError;
use pvops_integration::native_host::native_platform;
use pvops_integration::platform::HostPlatform;
use pvops_model::Machine;
use pvops_native::NativePlatform;
use pvops_xen_pvh::{XenHvm, XenPvhPlatform, XEN_SIGNATURE};

/// `HVMOP_flush_tlbs` on the machine model: every vCPU's TLB emptied, global
/// entries too (what Xen does, `pvh-notes.md` §8); or, `broken`, nothing.
pub struct ModelHvm {
    /// The machine whose vCPUs' TLBs Xen flushes.
    pub machine: &'static Machine,
    /// Does nothing (a backend relying on it must be caught).
    pub broken: bool,
    /// Calls seen.
    pub calls: AtomicU64,
}

impl XenHvm for ModelHvm {
    fn flush_tlbs(&self) -> Result<(), PvError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.broken {
            (0..self.machine.nr_vcpus()).for_each(|v| self.machine.tlb_flush_everything_of(v));
        }
        Ok(())
    }
}

/// CPUID under Xen: "XenVMMXenVMM" at 0x40000000, leaves up to 0x40000005.
pub fn xen_cpuid(leaf: u32) -> [u32; 4] {
    match leaf {
        0x4000_0000 => [0x4000_0005, XEN_SIGNATURE[0], XEN_SIGNATURE[1], XEN_SIGNATURE[2]],
        0x4000_0002 => [1, 0x4000_0000, 0, 0],
        _ => [0; 4],
    }
}

/// CPUID under bare QEMU TCG (measured): a hypervisor leaf, not Xen's.
pub fn tcg_cpuid(leaf: u32) -> [u32; 4] {
    match leaf {
        0x4000_0000 => [0x4000_0001, 0x5447_4354, 0x4354_4743, 0x4743_5447],
        _ => [0; 4],
    }
}

/// A native host platform re-labelled as a PVH boot under Xen whose CPUID is `cpuid`.
pub fn xen_pvh_host(cpuid: fn(u32) -> [u32; 4]) -> HostPlatform {
    // The integration crate's own size (`platforms()`): big enough for the suite.
    relabel(native_platform(4096), cpuid, false).0
}

/// `host` as a Xen PVH boot, with a model `HVMOP_flush_tlbs` (a no-op one if `broken`).
pub fn relabel(host: HostPlatform, cpuid: fn(u32) -> [u32; 4], broken: bool) -> (HostPlatform, &'static ModelHvm) {
    let native = *host.platform.downcast_ref::<NativePlatform>().expect("a native host");
    let hvm: &'static ModelHvm =
        Box::leak(Box::new(ModelHvm { machine: host.machine, broken, calls: AtomicU64::new(0) }));
    let platform: &'static XenPvhPlatform = Box::leak(Box::new(XenPvhPlatform { native, cpuid, hvm }));
    (HostPlatform { label: "xen-pvh (model)", platform, ..host }, hvm)
}
