//! Counting at the kernel's seams, independently of the backend's own
//! statistics: [`CountingMem`] counts the stores that reach page-table memory
//! through the `PhysMem` handed to the backend (its only way to store into a
//! frame), and [`SeamCounts`] pairs them with the hypercall transport's trap
//! counts (`xen::transport::TrapCounts`, decoded per multicall entry). These
//! are the figures the kernel prints (`HCSTEP`, `HCDEMO`, `RESULT hypercalls=`).

pub use pvops_conformance::workload::CountingMem;
use pvops_native::DirectMap;

use crate::platform;
use crate::xen::transport::{TrapCounts, TRANSPORT};

/// The backend's memory: the direct map behind the store counter, both by
/// type, so the native backend typed over it inlines every word access.
pub type BackendMem = CountingMem<DirectMap>;

/// The backend's `PhysMem` seam, set once at boot.
static BACKEND_MEM: crate::sync::SpinLock<Option<&'static BackendMem>> = crate::sync::SpinLock::new(None);

/// Wraps `mem` in a counter and remembers it; hand the result to the backend.
pub fn count_backend_stores(mem: &'static DirectMap) -> &'static BackendMem {
    let c: &'static BackendMem = alloc::boxed::Box::leak(alloc::boxed::Box::new(CountingMem::of(mem)));
    *BACKEND_MEM.lock() = Some(c);
    c
}

/// The seam [`count_backend_stores`] made (none before it ran).
pub fn backend_mem() -> Option<&'static BackendMem> {
    *BACKEND_MEM.lock()
}

/// Hypervisor traffic and direct stores, as measured at the seams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeamCounts {
    /// What the hypercall transport trapped (all zero natively).
    pub traps: TrapCounts,
    /// Stores through the backend's `PhysMem`.
    pub direct_stores: u64,
}

impl SeamCounts {
    /// The counts so far.
    pub fn now() -> Self {
        let traps = if platform::is_xen() { TRANSPORT.counts() } else { TrapCounts::default() };
        let direct_stores = BACKEND_MEM.lock().map_or(0, |m| m.stores());
        SeamCounts { traps, direct_stores }
    }

    /// `self - earlier`.
    pub fn since(&self, earlier: &SeamCounts) -> SeamCounts {
        SeamCounts {
            traps: self.traps.since(&earlier.traps),
            direct_stores: self.direct_stores - earlier.direct_stores,
        }
    }

    /// Traps into the hypervisor.
    pub fn hypercalls(&self) -> u64 {
        self.traps.traps()
    }
}

impl core::fmt::Display for SeamCounts {
    /// The six per-kind columns of the README table, as `key=value` words.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let t = &self.traps;
        write!(
            f,
            "hypercalls={} multicall_entries={} mmu_updates={} mmuext_ops={} update_va_mappings={} direct_writes={}",
            t.traps(),
            t.multicall_entries,
            t.mmu_update_records,
            t.mmuext_op_records,
            t.update_va_mapping_calls,
            self.direct_stores
        )
    }
}
