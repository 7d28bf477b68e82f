//! Memory: what the Xen backend costs beyond native, measured.
//!
//! * Frames per address space come from the scaling runs (frames `create`
//!   and `map` took on each backend for the same workload).
//! * Heap bytes come from a counting global allocator ([`CountingAlloc`],
//!   installed for this crate's binaries): the backend's own heap (its batch
//!   buffers) is what `XenBackend::new` allocates and what dropping the
//!   backend frees — measured again after it drove many address spaces.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use kernel_glue::{Mm, PageFlags};

use pvops_integration::platform::KERNEL_VA;
use pvops_integration::xen_host::xen_platform;
use pvops_native::NativeBackend;
use pvops_xen64::{XenBackend, XenPlatform};

/// The system allocator, counting.
#[derive(Debug)]
pub struct CountingAlloc;

static ALLOCATED: AtomicU64 = AtomicU64::new(0);
static FREED: AtomicU64 = AtomicU64::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: 1. every call is forwarded unchanged to `System`; the counters are
// only statistics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: 2. same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        FREED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: 3. same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size as u64, Ordering::Relaxed);
        FREED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: 4. same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Heap bytes live now (allocated minus freed), as counted.
pub fn live_bytes() -> i64 {
    ALLOCATED.load(Ordering::Relaxed) as i64 - FREED.load(Ordering::Relaxed) as i64
}

/// Heap allocations so far, as counted.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// True when this binary runs [`CountingAlloc`] (otherwise heap figures are 0).
pub fn counting() -> bool {
    let n0 = allocations();
    drop(std::hint::black_box(vec![0u8; 8]));
    allocations() > n0
}

/// Address-space lives run before [`Memory::xen_heap_after_use`] is read.
pub const LIVES: usize = 10;

/// Memory facts of both backends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// `size_of::<NativeBackend>()`.
    pub native_size: usize,
    /// `size_of::<XenBackend>()` (the value itself: platform handles, lock, batch headers).
    pub xen_size: usize,
    /// Heap the xen64 backend holds from construction on: its batch buffers.
    pub xen_heap: i64,
    /// Heap the native backend holds besides its value.
    pub native_heap: i64,
    /// Heap the xen64 backend gives back when dropped after [`LIVES`]
    /// address spaces were created, mapped, pinned, switched to, unpinned and
    /// freed through it (equal to `xen_heap` = nothing kept per address space).
    pub xen_heap_after_use: i64,
    /// False when this binary does not run the counting allocator.
    pub counted: bool,
}

/// Measures everything in [`Memory`] in this process.
pub fn measure() -> Result<Memory, String> {
    let mut m = Memory {
        native_size: core::mem::size_of::<NativeBackend>(),
        xen_size: core::mem::size_of::<XenBackend>(),
        counted: counting(),
        ..Memory::default()
    };
    let nat = pvops_integration::native_host::native_platform(64);
    let np = nat.platform.downcast_ref::<pvops_native::NativePlatform>().ok_or("not a native platform")?;
    let h0 = live_bytes();
    let backend = NativeBackend::new(np.mem, np.cpu);
    m.native_heap = live_bytes() - h0;
    let _ = std::hint::black_box(backend);

    // A xen64 backend of our own (not leaked, unlike the registry's), used
    // through kernel-glue exactly as `boot_backend` does, then dropped.
    let host = xen_platform(4096);
    let p = host.platform.downcast_ref::<XenPlatform>().ok_or("not a Xen platform")?;
    let h0 = live_bytes();
    let backend = XenBackend::new(*p);
    m.xen_heap = live_bytes() - h0;
    {
        let frames = host.base().frames();
        let mm = Mm::adopt_boot(&backend, frames, host.boot_pgd).map_err(|e| e.to_string())?;
        let kpage = frames.alloc_zeroed_frame().map_err(|e| e.to_string())?;
        mm.map_kernel(KERNEL_VA, kpage, true).map_err(|e| e.to_string())?;
        mm.init_metadata().map_err(|e| e.to_string())?;
        for _ in 0..LIVES {
            let s = mm.create().map_err(|e| e.to_string())?;
            for i in 0..64 {
                mm.map(&s, 0x40_0000 + i * 4096, PageFlags::DATA).map_err(|e| e.to_string())?;
            }
            mm.activate(&s).map_err(|e| e.to_string())?;
            mm.activate_init().map_err(|e| e.to_string())?;
            mm.exit(s).map_err(|(e, _)| e.to_string())?;
        }
    }
    let h1 = live_bytes();
    drop(backend);
    m.xen_heap_after_use = h1 - live_bytes();
    Ok(m)
}
