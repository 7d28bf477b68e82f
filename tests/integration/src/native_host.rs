//! The native host platform: a [`Machine`] behind `NativePlatform`.

use pvops::{EntryKind, Pfn};
use pvops_conformance::Machine as Oracle;
use pvops_model::{Access, Machine};
use pvops_native::NativePlatform;

use crate::platform::HostPlatform;

/// Frame 0 is never handed out; frame 1 is the boot root.
const BOOT_PGD: Pfn = Pfn(1);

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
    let machine = Machine::leaked_smp(nr_frames, vcpus);
    for cpu in 0..vcpus {
        pvops_model::on_vcpu(cpu, || machine.set_cr3(BOOT_PGD.addr()));
    }
    let platform: &'static NativePlatform =
        Box::leak(Box::new(NativePlatform { mem: machine, cpu: machine, cpus: machine.cpus() }));
    HostPlatform {
        label: "native-model",
        entry: EntryKind::Pvh,
        handover: "hvm_start_info 0x336ec578",
        platform,
        mem: machine,
        oracle: Box::leak(Box::new(NativeOracle(machine))),
        nr_frames,
        boot_pgd: BOOT_PGD,
        reserved: vec![Pfn(0), BOOT_PGD],
        counters: Box::new(String::new),
        // The machine's TLB: no frame freed or reused while a TLB may reach it,
        // no write through a stale translation.
        invariants: Box::new(move |_, _| machine.check_tlb()),
        xen: None,
        machine,
        quiescent: Box::new(move || machine.check_tlb()),
    }
}
