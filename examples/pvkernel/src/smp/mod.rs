//! SMP: bringing up the other CPUs, knowing which CPU runs, cross-calls
//! (IPIs with an acknowledgement), event masking, and jobs run on an AP.
//!
//! Platform-neutral parts live here; each platform supplies the same small
//! set of functions (`native.rs`: INIT-SIPI-SIPI from the MADT, local-APIC
//! IPIs; `xen.rs`: `VCPUOP_initialise`/`VCPUOP_up`, event-channel IPIs):
//!
//! * `bring_up(want) -> usize`: start CPUs 1..want; returns how many are
//!   online (the boot CPU included); a CPU that fails is logged and skipped;
//! * `this_cpu() -> usize`;
//! * `send_ipi(cpu)`: interrupt `cpu`, whose handler calls [`handle_ipi`];
//! * `mask_events() -> bool` / `restore_events(bool)`;
//! * `idle_wait()`: wait for the next interrupt/event (`sti; hlt` /
//!   `SCHEDOP_block`), returning after it was handled.
//!
//! Facts: ../shared/reference/smp-notes.md.

pub mod native;
pub mod xen;

use core::sync::atomic::{AtomicU64, Ordering};

use pvops::{CpuMask, Cpus, PvError};

use crate::platform;

static ONLINE: AtomicU64 = AtomicU64::new(1);

/// CPUs that are up (bit n = CPU n).
pub fn online() -> CpuMask {
    CpuMask(ONLINE.load(Ordering::Acquire))
}

/// Marks `cpu` online (called by the platform code once the CPU runs Rust).
pub fn set_online(cpu: usize) {
    ONLINE.fetch_or(CpuMask::one(cpu).0, Ordering::AcqRel);
}

/// Brings up CPUs 1..`want`; returns the number online.
pub fn bring_up(want: usize) -> usize {
    if platform::is_xen() {
        xen::bring_up(want)
    } else {
        native::bring_up(want)
    }
}

/// The CPU running this code.
pub fn this_cpu() -> usize {
    if platform::is_xen() {
        xen::this_cpu()
    } else {
        native::this_cpu()
    }
}

/// Called by each platform's IPI handler: runs the cross-calls aimed at this CPU.
pub fn handle_ipi() {}

/// The kernel's [`pvops::Cpus`]: what the backends and kernel-glue see.
#[derive(Debug, Default)]
pub struct KernelCpus;

/// The one instance handed to the platforms.
pub static CPUS: KernelCpus = KernelCpus;

impl Cpus for KernelCpus {
    fn this_cpu(&self) -> usize {
        this_cpu()
    }
    fn online(&self) -> CpuMask {
        online()
    }
    fn mask_events(&self) -> bool {
        if platform::is_xen() {
            xen::mask_events()
        } else {
            native::mask_events()
        }
    }
    fn restore_events(&self, was_masked: bool) {
        if platform::is_xen() {
            xen::restore_events(was_masked)
        } else {
            native::restore_events(was_masked)
        }
    }
    fn call_on(&self, cpus: CpuMask, _f: &(dyn Fn() -> Result<(), PvError> + Sync)) -> Result<(), PvError> {
        match cpus.without(this_cpu()).iter().next() {
            Some(cpu) => Err(PvError::CpuOffline { cpu }),
            None => Ok(()),
        }
    }
}
