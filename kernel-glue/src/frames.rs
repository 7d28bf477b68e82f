//! The physical frame allocator and per-frame metadata (Linux's `struct page`).
//!
//! A bitmap over the frames handed over at boot. Metadata (the private word a
//! backend may use, the pinned flag) is created by [`FrameAllocator::init_metadata`];
//! before that the allocator still works — that is the early-boot path, and
//! [`MmServices::has_metadata`] tells backends which path they are on.

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use pvops::{MmServices, Pfn, PhysMem, PvError};

/// Per-frame metadata.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameInfo {
    /// Backend-private word (xen64 keeps the user pgd here).
    pub private: u64,
    /// The frame is part of a pinned page table.
    pub pinned: bool,
}

/// Frame allocator with a bitmap and optional metadata.
pub struct FrameAllocator<'m> {
    mem: &'m dyn PhysMem,
    nr_frames: u64,
    /// Bit set = frame free.
    free: RefCell<Vec<u64>>,
    free_count: Cell<u64>,
    meta: RefCell<Option<Vec<FrameInfo>>>,
    allocations: Cell<u64>,
    fail_at: Cell<Option<u64>>,
    hint: Cell<u64>,
}

impl core::fmt::Debug for FrameAllocator<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "FrameAllocator({} of {} free)", self.free_count.get(), self.nr_frames)
    }
}

impl<'m> FrameAllocator<'m> {
    /// An allocator over frames `0..nr_frames`, all initially reserved;
    /// add usable memory with [`FrameAllocator::add_free_range`].
    ///
    /// ```
    /// # struct Mem; impl pvops::PhysMem for Mem { fn read_entry(&self, _: pvops::Pfn, _: usize) -> u64 { 0 } fn write_entry(&self, _: pvops::Pfn, _: usize, _: u64) {} }
    /// use kernel_glue::FrameAllocator;
    /// use pvops::{MmServices, Pfn};
    /// let frames = FrameAllocator::new(&Mem, 64);
    /// frames.add_free_range(Pfn(16), 48);
    /// let f = frames.alloc_zeroed_frame().unwrap();
    /// assert_eq!(frames.free_frames(), 47);
    /// frames.free_frame(f).unwrap();
    /// ```
    pub fn new(mem: &'m dyn PhysMem, nr_frames: u64) -> Self {
        FrameAllocator {
            mem,
            nr_frames,
            free: RefCell::new(vec![0; nr_frames.div_ceil(64) as usize]),
            free_count: Cell::new(0),
            meta: RefCell::new(None),
            allocations: Cell::new(0),
            fail_at: Cell::new(None),
            hint: Cell::new(0),
        }
    }

    /// Marks `count` frames from `start` free (idempotent; out-of-range ignored).
    pub fn add_free_range(&self, start: Pfn, count: u64) {
        let mut bits = self.free.borrow_mut();
        let end = start.0.saturating_add(count).min(self.nr_frames);
        for f in start.0..end {
            let (w, b) = ((f / 64) as usize, f % 64);
            if bits[w] & (1 << b) == 0 {
                bits[w] |= 1 << b;
                self.free_count.set(self.free_count.get() + 1);
            }
        }
    }

    /// Marks a frame used (e.g. reserved by firmware after the fact).
    pub fn reserve(&self, pfn: Pfn) {
        let mut bits = self.free.borrow_mut();
        if pfn.0 < self.nr_frames {
            let (w, b) = ((pfn.0 / 64) as usize, pfn.0 % 64);
            if bits[w] & (1 << b) != 0 {
                bits[w] &= !(1 << b);
                self.free_count.set(self.free_count.get() - 1);
            }
        }
    }

    /// Creates per-frame metadata: the end of early boot.
    /// Idempotent: a second call keeps the metadata (pins, private words) it has.
    pub fn init_metadata(&self) {
        let mut meta = self.meta.borrow_mut();
        if meta.is_none() {
            *meta = Some(vec![FrameInfo::default(); self.nr_frames as usize]);
        }
    }

    /// Frames currently free.
    pub fn free_frames(&self) -> u64 {
        self.free_count.get()
    }

    /// Total frames.
    pub fn nr_frames(&self) -> u64 {
        self.nr_frames
    }

    /// Successful allocations so far.
    pub fn allocations(&self) -> u64 {
        self.allocations.get()
    }

    /// Fault injection: the `k`-th allocation from now (0 = the next) fails; `None` disarms.
    pub fn fail_allocation_after(&self, k: Option<u64>) {
        self.fail_at.set(k);
    }

    /// True while an injected allocation failure is still pending.
    pub fn injection_armed(&self) -> bool {
        self.fail_at.get().is_some()
    }

    /// The metadata of a frame, if metadata exists.
    pub fn info(&self, pfn: Pfn) -> Option<FrameInfo> {
        self.meta.borrow().as_ref().and_then(|m| m.get(pfn.0 as usize).copied())
    }

    fn with_meta<R>(&self, pfn: Pfn, f: impl FnOnce(&mut FrameInfo) -> R) -> Result<R, PvError> {
        let mut meta = self.meta.borrow_mut();
        let m = meta.as_mut().ok_or(PvError::WrongState { what: "frame metadata not initialised" })?;
        m.get_mut(pfn.0 as usize).map(f).ok_or(PvError::BadFrame { pfn })
    }

    /// True when `pfn` is free in the allocator.
    pub fn is_free(&self, pfn: Pfn) -> bool {
        let bits = self.free.borrow();
        pfn.0 < self.nr_frames && bits[(pfn.0 / 64) as usize] & (1 << (pfn.0 % 64)) != 0
    }
}

impl MmServices for FrameAllocator<'_> {
    fn has_metadata(&self) -> bool {
        self.meta.borrow().is_some()
    }

    fn alloc_zeroed_frame(&self) -> Result<Pfn, PvError> {
        if let Some(k) = self.fail_at.get() {
            if k == 0 {
                self.fail_at.set(None);
                return Err(PvError::OutOfMemory);
            }
            self.fail_at.set(Some(k - 1));
        }
        let words = self.nr_frames.div_ceil(64) as usize;
        let pfn = {
            let mut bits = self.free.borrow_mut();
            // Next fit: from the word the last allocation came from (always < words).
            let start = self.hint.get() as usize;
            let found = (0..words).map(|i| (start + i) % words).find(|&w| bits[w] != 0);
            let Some(w) = found else {
                return Err(PvError::OutOfMemory);
            };
            let b = bits[w].trailing_zeros() as u64;
            bits[w] &= !(1 << b);
            self.hint.set(w as u64);
            Pfn(w as u64 * 64 + b)
        };
        self.free_count.set(self.free_count.get() - 1);
        self.allocations.set(self.allocations.get() + 1);
        if let Some(m) = self.meta.borrow_mut().as_mut() {
            m[pfn.0 as usize] = FrameInfo::default();
        }
        self.mem.zero_frame(pfn);
        Ok(pfn)
    }

    fn free_frame(&self, pfn: Pfn) -> Result<(), PvError> {
        if pfn.0 >= self.nr_frames || self.is_free(pfn) {
            return Err(PvError::BadFrame { pfn });
        }
        if self.info(pfn).is_some_and(|i| i.pinned) {
            return Err(PvError::WrongState { what: "freeing a pinned frame" });
        }
        if let Some(m) = self.meta.borrow_mut().as_mut() {
            m[pfn.0 as usize] = FrameInfo::default();
        }
        self.free.borrow_mut()[(pfn.0 / 64) as usize] |= 1 << (pfn.0 % 64);
        self.free_count.set(self.free_count.get() + 1);
        self.mem.frame_freed(pfn);
        Ok(())
    }

    fn private(&self, pfn: Pfn) -> Result<u64, PvError> {
        self.with_meta(pfn, |m| m.private)
    }

    fn set_private(&self, pfn: Pfn, value: u64) -> Result<(), PvError> {
        self.with_meta(pfn, |m| m.private = value)
    }

    fn is_pinned(&self, pfn: Pfn) -> Result<bool, PvError> {
        self.with_meta(pfn, |m| m.pinned)
    }

    fn set_pinned(&self, pfn: Pfn, pinned: bool) -> Result<(), PvError> {
        self.with_meta(pfn, |m| m.pinned = pinned)
    }
}
