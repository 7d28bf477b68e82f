//! Page-table memory through the kernel's direct map of physical memory.

use pvops::{Pfn, PhysMem, ENTRIES_PER_TABLE, PAGE_SIZE};

/// `PhysMem` over a direct map at `base` (all RAM mapped at `base + paddr`).
///
/// Used by the bare-metal kernel on both platforms: natively every frame is
/// writable there; on Xen a live table's alias is read-only and the xen64
/// backend never stores through it. The whole-frame stores
/// ([`PhysMem::zero_frame`], [`PhysMem::copy_frame`]) only target frames
/// being handed out by the frame allocator — data pages and tables not yet
/// pinned (Xen pins a table only after its contents are written) — so they
/// hold on Xen PV too; a pinned table is at most their source.
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

    /// The whole frame `pfn`, as its first word.
    fn frame(&self, pfn: Pfn) -> Option<*mut u64> {
        self.slot(pfn, 0)
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

    /// The whole frame at once: Linux's `clear_page_rep` (`rep stosq`,
    /// arch/x86/lib/clear_page_64.S) on x86-64, `write_bytes` elsewhere —
    /// not 512 calls. (A plain `write_bytes` becomes a `memset` call, which
    /// a C library may do with `rep stosb`: 4096 iterations, each counted by
    /// Callgrind, dearer there than the word loop.) A frame out of range is
    /// left alone, as `write_entry` does.
    fn zero_frame(&self, pfn: Pfn) {
        if let Some(p) = self.frame(pfn) {
            // SAFETY: 4. the whole frame is in range and mapped per `new`'s
            // contract, and 8-byte aligned; the caller owns it (the trait's
            // contract: a frame no live table maps, so neither the hardware
            // nor another CPU writes it meanwhile).
            unsafe { zero_words(p) }
        }
    }

    /// The whole frame at once: Linux's `copy_page` (`rep movsq`,
    /// arch/x86/lib/copy_page_64.S) on x86-64, `copy_nonoverlapping`
    /// elsewhere — not 1024 calls. As word by word: a source out of range
    /// reads as zeros, a destination out of range is left alone.
    fn copy_frame(&self, from: Pfn, to: Pfn) {
        let Some(dst) = self.frame(to) else { return };
        match self.frame(from) {
            Some(src) if src != dst => {
                // SAFETY: 5. both frames are in range and mapped per `new`'s
                // contract, 8-byte aligned, and distinct frames of one linear
                // map, so they do not overlap; `to` is the caller's own (the
                // trait's contract) and nothing else writes it meanwhile.
                // `from` is only read (the hardware may set A/D bits in it
                // meanwhile if it is a table: each word is copied as it was
                // at some instant, as word-by-word reads would).
                unsafe { copy_words(src, dst) }
            }
            Some(_) => {}
            None => self.zero_frame(to),
        }
    }
}

/// Zeroes the 512 words at `dst`.
///
/// # Safety
/// `dst` must be valid for writes of 4096 bytes, 8-byte aligned.
#[inline(always)]
unsafe fn zero_words(dst: *mut u64) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: 6. per the caller, rdi..rdi+4096 is writable; `rep stosq`
    // stores exactly rcx = 512 quadwords of rax = 0 upwards from rdi (the
    // direction flag is clear on entry to an asm block, Rust reference
    // "Inline assembly", rules for x86) and touches no other memory, stack
    // or flag.
    unsafe {
        core::arch::asm!("rep stosq", inout("rcx") ENTRIES_PER_TABLE => _, inout("rdi") dst => _,
            in("rax") 0u64, options(nostack, preserves_flags));
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: 7. per the caller.
    unsafe {
        core::ptr::write_bytes(dst, 0, ENTRIES_PER_TABLE)
    }
}

/// Copies the 512 words at `src` to `dst`.
///
/// # Safety
/// `src` valid for reads and `dst` for writes of 4096 bytes, both 8-byte
/// aligned, not overlapping.
#[inline(always)]
unsafe fn copy_words(src: *const u64, dst: *mut u64) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: 8. per the caller; `rep movsq` copies exactly rcx = 512
    // quadwords from rsi to rdi upwards (direction flag clear, as above)
    // and touches no other memory, stack or flag.
    unsafe {
        core::arch::asm!("rep movsq", inout("rcx") ENTRIES_PER_TABLE => _, inout("rdi") dst => _,
            inout("rsi") src => _, options(nostack, preserves_flags));
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: 9. per the caller.
    unsafe {
        core::ptr::copy_nonoverlapping(src, dst, ENTRIES_PER_TABLE)
    }
}
