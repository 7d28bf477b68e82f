//! The physical frame allocator and per-frame metadata (Linux's `struct page`).
//!
//! A bitmap over the frames handed over at boot. Metadata (the private word a
//! backend may use, the pinned flag) is created by [`FrameAllocator::init_metadata`];
//! before that the allocator still works — that is the early-boot path, and
//! [`MmServices::has_metadata`] tells backends which path they are on.
//!
//! Each frame also has a reference count (Linux's `page->_refcount`): an
//! allocation holds one reference, every user mapping of a shared frame
//! ([`crate::Mm::map_frame`], a copy-on-write fork) takes one more, and the
//! frame goes back to the allocator when the last is dropped
//! ([`FrameAllocator::put_frame`]).

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

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
///
/// `Sync`: one lock covers the bitmap, so CPUs may allocate and free at
/// once. Nothing inside the lock calls a seam (zeroing a frame and
/// [`PhysMem::frame_freed`] happen outside it), so a holder never waits on
/// hardware or on another CPU. Per-frame metadata is atomic and needs no
/// lock (like Linux's page flags): a backend call from an interrupt or event
/// handler (a drop-root cross-call's `write_cr3` reads it) can never spin on
/// a lock its own CPU holds. Handlers must not allocate or free frames.
pub struct FrameAllocator<'m> {
    mem: &'m dyn PhysMem,
    nr_frames: u64,
    inner: spin::Mutex<Inner>,
    meta: spin::Once<Vec<Meta>>,
}

struct Inner {
    /// Bit set = frame free.
    free: Vec<u64>,
    free_count: u64,
    allocations: u64,
    fail_at: Option<u64>,
    hint: u64,
}

/// One frame's metadata, lock-free.
#[derive(Default)]
struct Meta {
    private: AtomicU64,
    pinned: AtomicBool,
    /// References: 1 from allocation to the first put, +1 per extra mapping.
    refs: AtomicU32,
}

impl Meta {
    fn get(&self) -> FrameInfo {
        FrameInfo { private: self.private.load(Ordering::Acquire), pinned: self.pinned.load(Ordering::Acquire) }
    }
    #[inline]
    fn reset(&self) {
        self.private.store(0, Ordering::Release);
        self.pinned.store(false, Ordering::Release);
        self.refs.store(0, Ordering::Release);
    }
}

impl Inner {
    fn is_free(&self, nr_frames: u64, pfn: Pfn) -> bool {
        pfn.0 < nr_frames && self.free[(pfn.0 / 64) as usize] & (1 << (pfn.0 % 64)) != 0
    }
}

impl core::fmt::Debug for FrameAllocator<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "FrameAllocator({} of {} free)", self.free_count(), self.nr_frames)
    }
}

impl<'m> FrameAllocator<'m> {
    /// An allocator over frames `0..nr_frames`, all initially reserved;
    /// add usable memory with [`FrameAllocator::add_free_range`].
    ///
    /// ```
    /// # struct Mem; impl pvops::PhysMem for Mem { fn read_entry(&self, _: pvops::Pfn, _: usize) -> u64 { 0 } fn write_entry(&self, _: pvops::Pfn, _: usize, _: u64) {} fn compare_exchange_entry(&self, _: pvops::Pfn, _: usize, _: u64, _: u64) -> Result<u64, u64> { Err(0) } }
    /// use kernel_glue::FrameAllocator;
    /// use pvops::Pfn;
    /// let frames = FrameAllocator::new(&Mem, 64);
    /// frames.add_free_range(Pfn(16), 48);
    /// let f = frames.alloc_zeroed_frame().unwrap();
    /// assert_eq!(frames.free_count(), 47);
    /// frames.free_frame(f).unwrap();
    /// ```
    pub fn new(mem: &'m dyn PhysMem, nr_frames: u64) -> Self {
        FrameAllocator {
            mem,
            nr_frames,
            inner: spin::Mutex::new(Inner {
                free: vec![0; nr_frames.div_ceil(64) as usize],
                free_count: 0,
                allocations: 0,
                fail_at: None,
                hint: 0,
            }),
            meta: spin::Once::new(),
        }
    }

    /// Marks `count` frames from `start` free (idempotent; out-of-range ignored).
    pub fn add_free_range(&self, start: Pfn, count: u64) {
        let mut inner = self.inner.lock();
        let end = start.0.saturating_add(count).min(self.nr_frames);
        for f in start.0..end {
            let (w, b) = ((f / 64) as usize, f % 64);
            if inner.free[w] & (1 << b) == 0 {
                inner.free[w] |= 1 << b;
                inner.free_count += 1;
            }
        }
    }

    /// Marks a frame used (e.g. reserved by firmware after the fact).
    pub fn reserve(&self, pfn: Pfn) {
        let mut inner = self.inner.lock();
        if pfn.0 < self.nr_frames {
            let (w, b) = ((pfn.0 / 64) as usize, pfn.0 % 64);
            if inner.free[w] & (1 << b) != 0 {
                inner.free[w] &= !(1 << b);
                inner.free_count -= 1;
            }
        }
    }

    /// Creates per-frame metadata: the end of early boot.
    /// Idempotent: a second call keeps the metadata (pins, private words) it has.
    pub fn init_metadata(&self) {
        self.meta.call_once(|| (0..self.nr_frames).map(|_| Meta::default()).collect());
    }

    /// How many frames are free now (a count; [`MmServices::free_frame`]
    /// is the one that frees a frame).
    pub fn free_count(&self) -> u64 {
        self.inner.lock().free_count
    }

    /// Total frames.
    pub fn nr_frames(&self) -> u64 {
        self.nr_frames
    }

    /// The memory its frames live in: the one [`crate::Mm::adopt_boot`]
    /// uses, so an `Mm` and its allocator can never name different memories.
    pub fn mem(&self) -> &'m dyn PhysMem {
        self.mem
    }

    /// A new zeroed frame, holding one reference. The same as
    /// [`MmServices::alloc_zeroed_frame`], callable without importing the
    /// trait (the trait is how backends see the allocator).
    ///
    /// ```
    /// # struct Mem; impl pvops::PhysMem for Mem { fn read_entry(&self, _: pvops::Pfn, _: usize) -> u64 { 0 } fn write_entry(&self, _: pvops::Pfn, _: usize, _: u64) {} fn compare_exchange_entry(&self, _: pvops::Pfn, _: usize, _: u64, _: u64) -> Result<u64, u64> { Err(0) } }
    /// let frames = kernel_glue::FrameAllocator::new(&Mem, 64);
    /// frames.add_free_range(pvops::Pfn(1), 63);
    /// let f = frames.alloc_zeroed_frame()?;
    /// frames.free_frame(f)?;
    /// # Ok::<(), pvops::PvError>(())
    /// ```
    #[inline]
    pub fn alloc_zeroed_frame(&self) -> Result<pvops::Pfn, PvError> {
        MmServices::alloc_zeroed_frame(self)
    }

    /// Frees a frame nobody else references (see [`MmServices::free_frame`]);
    /// callable without importing the trait.
    #[inline]
    pub fn free_frame(&self, pfn: Pfn) -> Result<(), PvError> {
        MmServices::free_frame(self, pfn)
    }

    /// True once [`FrameAllocator::init_metadata`] ran (the end of early
    /// boot); callable without importing the trait.
    #[inline]
    pub fn has_metadata(&self) -> bool {
        MmServices::has_metadata(self)
    }

    /// Successful allocations so far.
    pub fn allocations(&self) -> u64 {
        self.inner.lock().allocations
    }

    /// Fault injection: the `k`-th allocation from now (0 = the next) fails; `None` disarms.
    pub fn fail_allocation_after(&self, k: Option<u64>) {
        self.inner.lock().fail_at = k;
    }

    /// True while an injected allocation failure is still pending.
    pub fn injection_armed(&self) -> bool {
        self.inner.lock().fail_at.is_some()
    }

    /// The metadata of a frame, if metadata exists.
    pub fn info(&self, pfn: Pfn) -> Option<FrameInfo> {
        self.meta.get().and_then(|m| m.get(pfn.0 as usize)).map(Meta::get)
    }

    fn meta_of(&self, pfn: Pfn) -> Result<&Meta, PvError> {
        let m = self.meta.get().ok_or(PvError::WrongState { what: "frame metadata not initialised" })?;
        m.get(pfn.0 as usize).ok_or(PvError::BadFrame { pfn })
    }

    /// The frame's reference count (0: free, or no metadata yet).
    pub fn refcount(&self, pfn: Pfn) -> u32 {
        self.meta.get().and_then(|m| m.get(pfn.0 as usize)).map_or(0, |m| m.refs.load(Ordering::Acquire))
    }

    /// Takes one more reference on an allocated frame (Linux's `get_page`);
    /// returns the new count. Refused for a frame nobody holds (free, or
    /// allocated before metadata existed): a reference cannot revive it.
    pub fn get_frame(&self, pfn: Pfn) -> Result<u32, PvError> {
        let m = self.meta_of(pfn)?;
        let mut n = m.refs.load(Ordering::Acquire);
        loop {
            if n == 0 {
                return Err(PvError::WrongState { what: "reference to a frame nobody holds" });
            }
            let more = n.checked_add(1).ok_or(PvError::WrongState { what: "frame reference count overflow" })?;
            match m.refs.compare_exchange_weak(n, more, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(more),
                Err(now) => n = now,
            }
        }
    }

    /// Drops one reference (Linux's `put_page`); the last one frees the
    /// frame. Returns true when it was freed. Without metadata (early boot)
    /// every frame has one owner: it is freed at once.
    #[inline]
    pub fn put_frame(&self, pfn: Pfn) -> Result<bool, PvError> {
        let Some(m) = self.meta.get() else {
            return self.free_frame(pfn).map(|()| true);
        };
        let m = m.get(pfn.0 as usize).ok_or(PvError::BadFrame { pfn })?;
        let mut n = m.refs.load(Ordering::Acquire);
        loop {
            if n == 0 {
                return Err(PvError::WrongState { what: "dropping a reference nobody holds" });
            }
            match m.refs.compare_exchange_weak(n, n - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        if n > 1 {
            return Ok(false);
        }
        // Ours was the last: nobody else can take one now (`get_frame` refuses 0).
        if let Err(e) = self.release(pfn, m) {
            m.refs.store(1, Ordering::Release);
            return Err(e);
        }
        Ok(true)
    }

    /// [`MmServices::free_frame`] of a frame whose last reference
    /// `put_frame` just dropped, `m` its metadata: the same checks and
    /// effects, less what that drop already settled — the count is 0 and
    /// stays 0 (so it is neither tested against 1 nor stored again), `m`
    /// is looked up once, `pfn` is in range. Inlined into `put_frame`: the
    /// free on every unmap of a private page.
    #[inline(always)]
    fn release(&self, pfn: Pfn, m: &Meta) -> Result<(), PvError> {
        {
            let mut inner = self.inner.lock();
            // `pfn < nr_frames`: `m` is its metadata. Its bitmap word is
            // found once, for the test and the store.
            let bit = 1 << (pfn.0 % 64);
            let Some(word) = inner.free.get_mut((pfn.0 / 64) as usize) else {
                return Err(PvError::BadFrame { pfn });
            };
            if *word & bit != 0 {
                return Err(PvError::BadFrame { pfn });
            }
            if m.pinned.load(Ordering::Acquire) {
                return Err(PvError::WrongState { what: "freeing a pinned frame" });
            }
            m.private.store(0, Ordering::Release);
            m.pinned.store(false, Ordering::Release);
            *word |= bit;
            inner.free_count += 1;
        }
        self.mem.frame_freed(pfn);
        Ok(())
    }

    /// A frame holding a copy of frame `from`, not zeroed first: fork and
    /// copy-on-write overwrite every word of it anyway (Linux allocates the
    /// page `wp_page_copy`, mm/memory.c, copies into without `__GFP_ZERO`).
    /// One allocation, counted and failure-injected like
    /// [`MmServices::alloc_zeroed_frame`]; the copy is one
    /// [`PhysMem::copy_frame`] into the fresh frame.
    #[inline]
    pub fn alloc_copy_of(&self, from: Pfn) -> Result<Pfn, PvError> {
        let pfn = self.take_frame()?;
        // Outside the lock: the frame is this caller's alone now.
        self.mem.copy_frame(from, pfn);
        Ok(pfn)
    }

    /// Takes a free frame off the bitmap (its contents as they are).
    /// Inlined: it is most of every allocation, on the map and fork paths.
    #[inline(always)]
    fn take_frame(&self) -> Result<Pfn, PvError> {
        let pfn = {
            let mut inner = self.inner.lock();
            if let Some(k) = inner.fail_at {
                if k == 0 {
                    inner.fail_at = None;
                    return Err(PvError::OutOfMemory);
                }
                inner.fail_at = Some(k - 1);
            }
            // Next fit: from the word the last allocation came from (always
            // < words), which still has a free frame on most calls: tested
            // first, without the scan's index arithmetic.
            let start = inner.hint as usize;
            let w = match inner.free.get(start) {
                Some(&bits) if bits != 0 => start,
                _ => {
                    let words = inner.free.len();
                    let found = (0..words).map(|i| (start + i) % words).find(|&w| inner.free[w] != 0);
                    let Some(w) = found else {
                        return Err(PvError::OutOfMemory);
                    };
                    inner.hint = w as u64;
                    w
                }
            };
            let bits = inner.free[w];
            let b = bits.trailing_zeros() as u64;
            inner.free[w] = bits & (bits - 1);
            let pfn = Pfn(w as u64 * 64 + b);
            inner.free_count -= 1;
            inner.allocations += 1;
            if let Some(m) = self.meta.get().and_then(|m| m.get(pfn.0 as usize)) {
                m.private.store(0, Ordering::Release);
                m.pinned.store(false, Ordering::Release);
                m.refs.store(1, Ordering::Release);
            }
            pfn
        };
        Ok(pfn)
    }

    /// True when `pfn` is free in the allocator.
    pub fn is_free(&self, pfn: Pfn) -> bool {
        self.inner.lock().is_free(self.nr_frames, pfn)
    }
}

impl MmServices for FrameAllocator<'_> {
    fn has_metadata(&self) -> bool {
        self.meta.get().is_some()
    }

    #[inline]
    fn alloc_zeroed_frame(&self) -> Result<Pfn, PvError> {
        let pfn = self.take_frame()?;
        // Outside the lock: the frame is this caller's alone now.
        self.mem.zero_frame(pfn);
        Ok(pfn)
    }

    #[inline]
    fn free_frame(&self, pfn: Pfn) -> Result<(), PvError> {
        {
            let mut inner = self.inner.lock();
            if pfn.0 >= self.nr_frames || inner.is_free(self.nr_frames, pfn) {
                return Err(PvError::BadFrame { pfn });
            }
            if let Some(m) = self.meta.get().and_then(|m| m.get(pfn.0 as usize)) {
                if m.pinned.load(Ordering::Acquire) {
                    return Err(PvError::WrongState { what: "freeing a pinned frame" });
                }
                if m.refs.load(Ordering::Acquire) > 1 {
                    return Err(PvError::WrongState { what: "freeing a frame others still reference" });
                }
                m.reset();
            }
            inner.free[(pfn.0 / 64) as usize] |= 1 << (pfn.0 % 64);
            inner.free_count += 1;
        }
        self.mem.frame_freed(pfn);
        Ok(())
    }

    fn private(&self, pfn: Pfn) -> Result<u64, PvError> {
        Ok(self.meta_of(pfn)?.private.load(Ordering::Acquire))
    }

    fn set_private(&self, pfn: Pfn, value: u64) -> Result<(), PvError> {
        self.meta_of(pfn)?.private.store(value, Ordering::Release);
        Ok(())
    }

    fn is_pinned(&self, pfn: Pfn) -> Result<bool, PvError> {
        Ok(self.meta_of(pfn)?.pinned.load(Ordering::Acquire))
    }

    fn set_pinned(&self, pfn: Pfn, pinned: bool) -> Result<(), PvError> {
        self.meta_of(pfn)?.pinned.store(pinned, Ordering::Release);
        Ok(())
    }
}
