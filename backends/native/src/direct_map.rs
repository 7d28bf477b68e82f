//! Page-table memory through the kernel's direct map of physical memory.

use pvops::{Pfn, PhysMem, ENTRIES_PER_TABLE, PAGE_SIZE};

/// `PhysMem` over a direct map at `base` (all RAM mapped at `base + paddr`).
///
/// Used by the bare-metal kernel on both platforms: natively every frame is
/// writable there; on Xen a live table's alias is read-only and the xen64
/// backend never stores through it.
#[derive(Debug, Clone, Copy)]
pub struct DirectMap {
    base: u64,
    nr_frames: u64,
}

impl DirectMap {
    /// # Safety
    /// `base + pfn * 4096` must map every frame below `nr_frames`, for as long
    /// as the value is used.
    pub const unsafe fn new(base: u64, nr_frames: u64) -> Self {
        DirectMap { base, nr_frames }
    }

    fn slot(&self, pfn: Pfn, index: usize) -> Option<*mut u64> {
        if pfn.0 >= self.nr_frames || index >= ENTRIES_PER_TABLE {
            return None;
        }
        Some((self.base + pfn.0 * PAGE_SIZE + index as u64 * 8) as *mut u64)
    }
}

impl PhysMem for DirectMap {
    fn read_entry(&self, pfn: Pfn, index: usize) -> u64 {
        match self.slot(pfn, index) {
            // SAFETY: 1. in range, mapped per `new`'s contract; volatile because
            // the hardware (A/D bits) and the hypervisor change entries.
            Some(p) => unsafe { p.read_volatile() },
            None => 0,
        }
    }

    fn write_entry(&self, pfn: Pfn, index: usize, value: u64) {
        if let Some(p) = self.slot(pfn, index) {
            // SAFETY: 2. in range, mapped per `new`'s contract; callers only
            // write frames they own.
            unsafe { p.write_volatile(value) }
        }
    }

    /// A locked `cmpxchg` on the word (on Xen PV: never on a live table, see
    /// the trait).
    fn compare_exchange_entry(&self, pfn: Pfn, index: usize, current: u64, new: u64) -> Result<u64, u64> {
        let Some(p) = self.slot(pfn, index) else { return Err(0) };
        // SAFETY: 3. in range, mapped per `new`'s contract, 8-byte aligned
        // (frame base + 8 * index); the hardware updates entries only with
        // locked operations, so an atomic view of the word is sound.
        let atomic = unsafe { core::sync::atomic::AtomicU64::from_ptr(p) };
        atomic.compare_exchange(
            current,
            new,
            core::sync::atomic::Ordering::SeqCst,
            core::sync::atomic::Ordering::SeqCst,
        )
    }
}
