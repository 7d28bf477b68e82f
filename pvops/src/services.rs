//! What backends need from the core kernel, and what they need from hardware.
//!
//! Backends never name kernel-glue's types: the glue implements [`MmServices`]
//! (frames and per-frame metadata, Linux's `struct page`), and the platform
//! implements [`PhysMem`] (page-table memory by frame).

use crate::addr::Pfn;
use crate::error::PvError;

/// Frame allocation and per-frame metadata, provided by the core kernel.
///
/// During early boot the metadata does not exist yet: [`MmServices::has_metadata`]
/// is false and backends take their early path (the seed's
/// "page structures are not available").
pub trait MmServices {
    /// True once per-frame metadata is set up.
    fn has_metadata(&self) -> bool;
    /// Allocates one zeroed frame.
    fn alloc_zeroed_frame(&self) -> Result<Pfn, PvError>;
    /// Returns a frame to the allocator.
    fn free_frame(&self, pfn: Pfn) -> Result<(), PvError>;
    /// The frame's private word (Linux's `page->private`).
    fn private(&self, pfn: Pfn) -> Result<u64, PvError>;
    /// Sets the frame's private word.
    fn set_private(&self, pfn: Pfn, value: u64) -> Result<(), PvError>;
    /// The frame's pinned flag (Linux's `PG_pinned`).
    fn is_pinned(&self, pfn: Pfn) -> Result<bool, PvError>;
    /// Sets the frame's pinned flag.
    fn set_pinned(&self, pfn: Pfn, pinned: bool) -> Result<(), PvError>;
}

/// Access to page-table memory by frame: the one hardware seam every backend shares.
///
/// Natively this is the kernel's direct map; on Xen it is the direct map too, and
/// a store to a pinned table is a fault — which is why backends only call
/// [`PhysMem::write_entry`] on tables they know are not live.
pub trait PhysMem: Sync {
    /// Reads the 64-bit word `index` of frame `pfn`.
    fn read_entry(&self, pfn: Pfn, index: usize) -> u64;
    /// Writes the 64-bit word `index` of frame `pfn`.
    fn write_entry(&self, pfn: Pfn, index: usize, value: u64);
    /// Atomically replaces word `index` of frame `pfn` with `new` if it
    /// still holds `current` (a locked `cmpxchg`): `Ok(current)` when it
    /// did, else `Err(actual)` and nothing was written. MUST be atomic with
    /// respect to other CPUs and to the hardware setting accessed/dirty bits
    /// in the word; it is how backends change a live entry without losing
    /// those bits. Required, with no read-then-write default, so that a
    /// wrapper (a counting layer, say) cannot silently lose the atomicity.
    ///
    /// On Xen PV, as with [`PhysMem::write_entry`], only for tables that are
    /// not live: a live table is read-only to the guest, and Xen emulates a
    /// store to it (`ptwr_emulated_cmpxchg`, xen/arch/x86/pv/ro-page-fault.c)
    /// only for L1 tables and only with `VMASST_TYPE_writable_pagetables`
    /// enabled, which the example kernel does not do.
    fn compare_exchange_entry(&self, pfn: Pfn, index: usize, current: u64, new: u64) -> Result<u64, u64>;
    /// Zeroes every word of frame `pfn`, and no other memory.
    ///
    /// The default stores word by word through [`PhysMem::write_entry`], so
    /// an implementation that only has word access keeps working; one that
    /// can reach the whole frame (a direct map, a host model) should do it in
    /// one go — it is most of what allocating a frame costs. Only for frames
    /// the caller owns and no live table maps (a frame being handed out): on
    /// Xen PV a pinned table is read-only through the direct map and a store
    /// to it faults, as for [`PhysMem::write_entry`].
    fn zero_frame(&self, pfn: Pfn) {
        for i in 0..crate::ENTRIES_PER_TABLE {
            self.write_entry(pfn, i, 0);
        }
    }
    /// Copies every word of frame `from` into frame `to` (`to` ends equal to
    /// `from`, no other memory changes); `from == to` leaves it as it is.
    ///
    /// The default copies word by word through [`PhysMem::read_entry`] and
    /// [`PhysMem::write_entry`]; an implementation that can reach whole
    /// frames should copy in one go (Linux's `copy_page`): fork and
    /// copy-on-write copy every page they duplicate through it, into a frame
    /// just allocated and not zeroed first. `to` must be a frame the caller
    /// owns and nothing maps (a frame being handed out; host models check
    /// that no TLB still reaches it, as for [`PhysMem::zero_frame`]): on Xen
    /// PV a pinned table is read-only through the direct map, so `to` is
    /// never one. `from` is only read; it may be any frame, a table too.
    fn copy_frame(&self, from: Pfn, to: Pfn) {
        for i in 0..crate::ENTRIES_PER_TABLE {
            self.write_entry(to, i, self.read_entry(from, i));
        }
    }
    /// The allocator got `pfn` back. Nothing to do on real hardware; host
    /// models use it to check that no TLB can still reach the frame.
    fn frame_freed(&self, _pfn: Pfn) {}
}
