//! Kernel heap: a first-fit free-list allocator with coalescing over a
//! physically contiguous run of frames, accessed through the direct map.
//! Installed as the `#[global_allocator]`, so `alloc` (Vec, Box, ...) works
//! once [`init`] has run (allocations before that fail).

use core::alloc::{GlobalAlloc, Layout};
use core::ptr;

use crate::directmap;
use crate::memory;
use crate::sync::SpinLock;

/// Default heap size in frames (4 MiB).
pub const DEFAULT_HEAP_PAGES: u64 = 1024;

const MIN_BLOCK: usize = 16;

#[repr(C)]
struct FreeBlock {
    size: usize,
    next: *mut FreeBlock,
}

struct Heap {
    head: *mut FreeBlock,
    start: usize,
    end: usize,
    used: usize,
}

// SAFETY: the raw pointers refer to heap memory owned by the allocator and
// are only touched under the lock.
unsafe impl Send for Heap {}

static HEAP: SpinLock<Heap> = SpinLock::new(Heap { head: ptr::null_mut(), start: 0, end: 0, used: 0 });

/// Heap setup errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapError {
    AlreadyInitialised,
    DirectMapNotReady,
    /// Could not get `pages` contiguous frames from the boot allocator.
    NoContiguousFrames,
}

/// Takes `pages` contiguous frames from the boot allocator and makes them
/// the heap. Returns the heap's first pfn.
pub fn init(pages: u64) -> Result<u64, HeapError> {
    if !directmap::is_ready() {
        return Err(HeapError::DirectMapNotReady);
    }
    let mut h = HEAP.lock();
    if h.end != 0 {
        return Err(HeapError::AlreadyInitialised);
    }
    let first = memory::alloc_contiguous(pages).ok_or(HeapError::NoContiguousFrames)?;
    let start = directmap::pfn_to_virt(first) as usize;
    let size = (pages as usize) * 4096;
    let block = start as *mut FreeBlock;
    // SAFETY: the frames are ours, contiguous and mapped writably by the
    // direct map; the block header fits in the first page.
    unsafe { block.write(FreeBlock { size, next: ptr::null_mut() }) };
    h.head = block;
    h.start = start;
    h.end = start + size;
    Ok(first)
}

/// (bytes in use, heap size in bytes).
pub fn usage() -> (usize, usize) {
    let h = HEAP.lock();
    (h.used, h.end - h.start)
}

fn block_size(layout: &Layout) -> usize {
    layout.size().max(MIN_BLOCK).next_multiple_of(MIN_BLOCK)
}

impl Heap {
    /// # Safety
    /// The free list must be well formed.
    unsafe fn alloc(&mut self, layout: Layout) -> *mut u8 {
        let size = block_size(&layout);
        let align = layout.align().max(MIN_BLOCK);
        let mut prev: *mut FreeBlock = ptr::null_mut();
        let mut cur = self.head;
        while !cur.is_null() {
            // SAFETY: `cur` is a block of the well-formed free list.
            let (bsize, next) = unsafe { ((*cur).size, (*cur).next) };
            let bstart = cur as usize;
            let bend = bstart + bsize;
            let astart = bstart.next_multiple_of(align);
            if astart.checked_add(size).is_some_and(|e| e <= bend) {
                let aend = astart + size;
                // Unlink `cur`, then give back the front and back remainders
                // (both multiples of MIN_BLOCK, so either empty or valid).
                // SAFETY: `prev`/`cur` belong to the list; remainders lie in
                // the block being split.
                unsafe {
                    if prev.is_null() {
                        self.head = next;
                    } else {
                        (*prev).next = next;
                    }
                    if aend < bend {
                        self.insert(aend, bend - aend);
                    }
                    if bstart < astart {
                        self.insert(bstart, astart - bstart);
                    }
                }
                self.used += size;
                return astart as *mut u8;
            }
            prev = cur;
            cur = next;
        }
        ptr::null_mut()
    }

    /// Inserts `[addr, addr + size)` into the address-sorted free list,
    /// merging with its neighbours.
    ///
    /// # Safety
    /// The range must be unused heap memory, MIN_BLOCK aligned and sized.
    unsafe fn insert(&mut self, addr: usize, size: usize) {
        let mut prev: *mut FreeBlock = ptr::null_mut();
        let mut cur = self.head;
        // SAFETY: walking the well-formed list; `addr..addr+size` is free
        // heap memory owned by us, large enough for a header.
        unsafe {
            while !cur.is_null() && (cur as usize) < addr {
                prev = cur;
                cur = (*cur).next;
            }
            let block = addr as *mut FreeBlock;
            block.write(FreeBlock { size, next: cur });
            if !cur.is_null() && addr + size == cur as usize {
                (*block).size += (*cur).size;
                (*block).next = (*cur).next;
            }
            if prev.is_null() {
                self.head = block;
            } else if prev as usize + (*prev).size == addr {
                (*prev).size += (*block).size;
                (*prev).next = (*block).next;
            } else {
                (*prev).next = block;
            }
        }
    }
}

struct KernelAllocator;

/// The heap lock is taken with events masked, so an interrupt handler
/// that allocates cannot spin on a lock its own CPU holds.
fn masked() -> pvops::EventsMasked<'static> {
    pvops::EventsMasked::new(&crate::smp::CPUS)
}

// SAFETY: blocks handed out are disjoint, inside the heap, sized and
// aligned per the layout; dealloc returns exactly the block allocated
// (same rounding of the layout).
unsafe impl GlobalAlloc for KernelAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _m = masked();
        let mut h = HEAP.lock();
        // SAFETY: the free list is only modified under the lock.
        unsafe { h.alloc(layout) }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        let size = block_size(&layout);
        let _m = masked();
        let mut h = HEAP.lock();
        h.used -= size;
        // SAFETY: `p` came from `alloc` with this layout, so the block is
        // ours, MIN_BLOCK aligned and `size` long.
        unsafe { h.insert(p as usize, size) };
    }
}

#[global_allocator]
static ALLOCATOR: KernelAllocator = KernelAllocator;
