//! Physical memory: RAM ranges, the free-frame list and a boot frame
//! allocator.
//!
//! Frames are *guest* frames: physical on native, pseudo-physical (pfn) on
//! Xen PV (translate with `xen::pfn_to_mfn` before putting them in PTEs).
//!
//! * Native: RAM comes from the PVH E820 map; free = RAM above 1 MiB minus
//!   the kernel image and boot modules.
//! * Xen PV: RAM is `[0, nr_pages)`; free = the initial region's padding
//!   (after the boot stack, mapped at `VIRT_BASE`), pfns 1..0x100 (also in the
//!   initial region, below the image) and everything above the initial
//!   region. The padding comes first so page tables for the direct map can be
//!   bootstrapped through the initial mapping.

use core::fmt;

use crate::sync::SpinLock;

/// Page size.
pub const PAGE_SIZE: u64 = 4096;

/// A half-open range of frame numbers `[start, end)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameRange {
    pub start: u64,
    pub end: u64,
}

impl FrameRange {
    /// Number of frames.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
    /// `true` if empty.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
    /// `true` if `pfn` lies inside.
    pub fn contains(&self, pfn: u64) -> bool {
        pfn >= self.start && pfn < self.end
    }
}

impl fmt::Display for FrameRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn {:#x}..{:#x} ({} pages, {} KiB)", self.start, self.end, self.len(), self.len() * 4)
    }
}

/// Capacity of a [`RangeList`].
pub const MAX_RANGES: usize = 64;

/// Error: a [`RangeList`] is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeListFull;

/// An ordered, fixed-capacity list of disjoint frame ranges.
#[derive(Clone, Copy)]
pub struct RangeList {
    ranges: [FrameRange; MAX_RANGES],
    len: usize,
}

impl Default for RangeList {
    fn default() -> Self {
        Self::new()
    }
}

impl RangeList {
    /// An empty list.
    pub const fn new() -> Self {
        Self { ranges: [FrameRange { start: 0, end: 0 }; MAX_RANGES], len: 0 }
    }

    /// Appends a range (empty ranges are ignored).
    pub fn push(&mut self, r: FrameRange) -> Result<(), RangeListFull> {
        if r.is_empty() {
            return Ok(());
        }
        if self.len == MAX_RANGES {
            return Err(RangeListFull);
        }
        self.ranges[self.len] = r;
        self.len += 1;
        Ok(())
    }

    /// Appends a range, merging it into the last one if they overlap or touch.
    pub fn push_merge(&mut self, r: FrameRange) -> Result<(), RangeListFull> {
        if let Some(last) = self.ranges[..self.len].last_mut() {
            if r.start <= last.end && r.end >= last.start {
                last.start = last.start.min(r.start);
                last.end = last.end.max(r.end);
                return Ok(());
            }
        }
        self.push(r)
    }

    /// Removes `[start, end)` from every range, splitting where needed.
    pub fn remove(&mut self, start: u64, end: u64) -> Result<(), RangeListFull> {
        let mut i = 0;
        while i < self.len {
            let r = self.ranges[i];
            if end <= r.start || start >= r.end {
                i += 1;
                continue;
            }
            let left = FrameRange { start: r.start, end: start.max(r.start) };
            let right = FrameRange { start: end.min(r.end), end: r.end };
            match (left.is_empty(), right.is_empty()) {
                (true, true) => {
                    self.ranges.copy_within(i + 1..self.len, i);
                    self.len -= 1;
                    continue;
                }
                (false, true) => self.ranges[i] = left,
                (true, false) => self.ranges[i] = right,
                (false, false) => {
                    if self.len == MAX_RANGES {
                        return Err(RangeListFull);
                    }
                    self.ranges.copy_within(i + 1..self.len, i + 2);
                    self.ranges[i] = left;
                    self.ranges[i + 1] = right;
                    self.len += 1;
                    i += 1;
                }
            }
            i += 1;
        }
        Ok(())
    }

    /// The ranges, in order.
    pub fn as_slice(&self) -> &[FrameRange] {
        &self.ranges[..self.len]
    }

    /// `true` if any range contains `pfn`.
    pub fn contains(&self, pfn: u64) -> bool {
        self.as_slice().iter().any(|r| r.contains(pfn))
    }

    /// Total number of frames.
    pub fn total(&self) -> u64 {
        self.as_slice().iter().map(|r| r.len()).sum()
    }

    /// Highest end pfn.
    pub fn max_end(&self) -> u64 {
        self.as_slice().iter().map(|r| r.end).max().unwrap_or(0)
    }

    /// Takes the first frame of the first non-empty range.
    fn take_first(&mut self) -> Option<u64> {
        let r = self.ranges[..self.len].iter_mut().find(|r| !r.is_empty())?;
        let pfn = r.start;
        r.start += 1;
        Some(pfn)
    }
}

/// One E820 entry as reported by the PVH start info.
#[derive(Clone, Copy, Debug, Default)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// E820 type for usable RAM.
pub const E820_RAM: u32 = 1;

/// Maximum E820 entries kept.
pub const MAX_E820: usize = 128;

impl E820Entry {
    /// Human-readable type.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            1 => "RAM",
            2 => "reserved",
            3 => "ACPI",
            4 => "NVS",
            5 => "unusable",
            6 => "disabled",
            7 => "PMEM",
            _ => "?",
        }
    }
}

struct State {
    e820: [E820Entry; MAX_E820],
    e820_len: usize,
    ram: RangeList,
    initial_free: RangeList,
    free: RangeList,
}

static STATE: SpinLock<State> = SpinLock::new(State {
    e820: [E820Entry { addr: 0, size: 0, kind: 0 }; MAX_E820],
    e820_len: 0,
    ram: RangeList::new(),
    initial_free: RangeList::new(),
    free: RangeList::new(),
});

/// Memory setup errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryError {
    /// Too many ranges for a fixed-size list.
    TooManyRanges,
    /// The firmware reported no usable RAM.
    NoRam,
}

impl From<RangeListFull> for MemoryError {
    fn from(_: RangeListFull) -> Self {
        MemoryError::TooManyRanges
    }
}

/// Native setup from the E820 map. `reserved` lists additional physical
/// byte ranges to keep out of the free list (kernel image, modules, ...).
pub fn init_native(e820: &[E820Entry], reserved: &[(u64, u64)]) -> Result<(), MemoryError> {
    let mut st = STATE.lock();
    let n = e820.len().min(MAX_E820);
    st.e820[..n].copy_from_slice(&e820[..n]);
    st.e820_len = n;
    let mut ram = RangeList::new();
    for e in &e820[..n] {
        if e.kind == E820_RAM {
            let start = e.addr.div_ceil(PAGE_SIZE);
            let end = (e.addr + e.size) / PAGE_SIZE;
            ram.push(FrameRange { start, end })?;
        }
    }
    if ram.total() == 0 {
        return Err(MemoryError::NoRam);
    }
    let mut free = ram;
    // Keep the first MiB (BIOS data, PVH start info, option ROMs) untouched.
    free.remove(0, 0x100)?;
    for &(s, e) in reserved {
        free.remove(s / PAGE_SIZE, e.div_ceil(PAGE_SIZE))?;
    }
    st.ram = ram;
    st.initial_free = free;
    st.free = free;
    Ok(())
}

/// Xen PV setup: `nr_pages` guest frames; `used` lists pfn ranges inside the
/// initial region that are in use (image, p2m, start_info, boot tables,
/// stack); `region_end` is the end of the initial mapping.
pub fn init_xen(nr_pages: u64, boot_end: u64, region_end: u64, image_start: u64) -> Result<(), MemoryError> {
    let mut st = STATE.lock();
    let mut ram = RangeList::new();
    ram.push(FrameRange { start: 0, end: nr_pages })?;
    let mut free = RangeList::new();
    // Order matters: frames mapped by the initial region come first.
    free.push(FrameRange { start: boot_end, end: region_end.min(nr_pages) })?;
    free.push(FrameRange { start: 1, end: image_start.min(nr_pages) })?;
    free.push(FrameRange { start: region_end, end: nr_pages })?;
    st.ram = ram;
    st.initial_free = free;
    st.free = free;
    Ok(())
}

/// Allocates one frame from the boot allocator (never freed).
pub fn alloc_frame() -> Option<u64> {
    STATE.lock().free.take_first()
}

/// Allocates `pages` physically contiguous frames (from the front of the
/// first range that has enough); returns the first.
pub fn alloc_contiguous(pages: u64) -> Option<u64> {
    let mut st = STATE.lock();
    let len = st.free.len;
    let r = st.free.ranges[..len].iter_mut().find(|r| r.len() >= pages)?;
    let first = r.start;
    r.start += pages;
    Some(first)
}

/// `true` if `pfn` was free at boot and has been handed out since.
pub fn was_allocated(pfn: u64) -> bool {
    let st = STATE.lock();
    st.initial_free.contains(pfn) && !st.free.contains(pfn)
}

/// Snapshot of the frames still free (in allocation order).
pub fn free_frames() -> RangeList {
    STATE.lock().free
}

/// Hands every remaining free frame to the caller; the boot allocator is
/// empty afterwards (use this to give memory to a real frame allocator).
pub fn take_free_frames() -> RangeList {
    let mut st = STATE.lock();
    let out = st.free;
    st.free = RangeList::new();
    out
}

/// All guest RAM frames.
pub fn ram_ranges() -> RangeList {
    STATE.lock().ram
}

/// Copy of the native E820 map (empty under Xen).
pub fn e820(out: &mut [E820Entry; MAX_E820]) -> usize {
    let st = STATE.lock();
    out[..st.e820_len].copy_from_slice(&st.e820[..st.e820_len]);
    st.e820_len
}
