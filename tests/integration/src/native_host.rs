//! The native host platform: a [`Machine`] behind `NativePlatform`.

use pvops::Pfn;
use pvops_conformance::Machine as Oracle;
use pvops_model::{Access, Machine};

use crate::platform::HostPlatform;

struct NativeOracle(&'static Machine);

impl Oracle for NativeOracle {
    fn user_access(&self, va: u64, write: bool) -> Option<Pfn> {
        let va = pvops::VirtAddr::try_new(va).ok()?;
        let a = if write { Access::USER_WRITE } else { Access::USER_READ };
        self.0.access(va, a).ok().map(Pfn)
    }

    fn kernel_access(&self, va: u64, write: bool) -> Option<Pfn> {
        let va = pvops::VirtAddr::try_new(va).ok()?;
        let a = Access { user: false, write, execute: false };
        self.0.access(va, a).ok().map(Pfn)
    }

    /// A kernel read on vCPU `cpu`: through its cr3 and its TLB.
    fn read_on(&self, cpu: usize, va: u64) -> Option<u64> {
        if cpu >= self.0.nr_vcpus() {
            return None;
        }
        let v = pvops::VirtAddr::try_new(va).ok()?;
        let frame = pvops_model::on_vcpu(cpu, || self.0.access(v, Access::KERNEL_READ)).ok()?;
        self.0.read(frame, ((va & 0xfff) / 8) as usize)
    }
}

/// A bare-metal-like machine with `nr_frames` frames, booted on an empty root.
pub fn native_platform(nr_frames: u64) -> HostPlatform {
    native_platform_smp(nr_frames, 1)
}

/// [`native_platform`] with `vcpus` vCPUs, every one on the boot root (the
/// APs' trampoline leaves them on init_mm's root, as Linux's `swapper_pg_dir`).
/// Its `Cpus` are the machine's ([`pvops_model::ModelCpus`]): cross-calls
/// are IPIs the other vCPUs take at their preemption points.
pub fn native_platform_smp(nr_frames: u64, vcpus: usize) -> HostPlatform {
    let base = pvops_model::host::Platform::native(nr_frames, vcpus);
    let machine: &'static Machine = base.machine;
    HostPlatform {
        label: "native-model",
        entry: base.entry,
        handover: base.handover,
        platform: base.platform,
        mem: base.mem,
        oracle: Box::leak(Box::new(NativeOracle(machine))),
        nr_frames,
        boot_pgd: base.boot_pgd,
        reserved: base.reserved,
        counters: Box::new(String::new),
        // The machine's TLB: no frame freed or reused while a TLB may reach it,
        // no write through a stale translation.
        invariants: Box::new(move |_, _| machine.check_tlb()),
        xen: None,
        machine,
        quiescent: Box::new(move || machine.check_tlb()),
    }
}
