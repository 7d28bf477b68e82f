//! The direct map: all guest RAM at `DIRECT_MAP_BASE + frame * 4096`
//! (L4 slot 273, like Linux's `__PAGE_OFFSET`).
//!
//! * Native: built from the E820 RAM ranges with 2 MiB pages, supervisor
//!   only, hooked into the boot L4. The identity map of the first GiB is
//!   removed afterwards.
//! * Xen PV: 4 KiB pages only (Xen rejects PSE), entries carry MFNs, and
//!   frames that are page tables (Xen's boot tables and every table of the
//!   direct map itself) are mapped read-only. Tables are bootstrapped from
//!   frames reachable through the initial region (or through the part of the
//!   direct map built so far), zeroed and filled while still writable,
//!   remapped read-only with `update_va_mapping`, then hooked into the live,
//!   pinned L4 with `mmu_update`.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::entry::{self, KERNEL_VMA};
use crate::memory::{self, FrameRange, RangeList};
use crate::sync::SpinLock;
use crate::xen::{self, hypercall::XenError, mmu};
use crate::{platform, x86};

/// Base of the direct map.
pub const DIRECT_MAP_BASE: u64 = 0xffff_8880_0000_0000;
/// L4 slot of the direct map.
pub const DIRECT_MAP_L4_SLOT: usize = 273;
/// Largest mappable frame (one L4 slot = 512 GiB).
pub const DIRECT_MAP_MAX_PFN: u64 = 1 << 27;

const PTE_P: u64 = 1;
const PTE_RW: u64 = 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;

/// Xen: every pfn below this is mapped.
static XEN_MAPPED_END: AtomicU64 = AtomicU64::new(0);
/// Native: mapped frame ranges (RAM rounded out to 2 MiB).
static NATIVE_MAPPED: SpinLock<RangeList> = SpinLock::new(RangeList::new());
static READY: AtomicU64 = AtomicU64::new(0);

/// Direct-map setup errors.
#[derive(Clone, Copy, Debug)]
pub enum DirectMapError {
    OutOfFrames,
    /// A bootstrap table frame is not reachable through any mapping yet.
    FrameNotReachable(u64),
    TooMuchRam(u64),
    TooManyRanges,
    NotXen,
    Xen(XenError),
}

impl From<XenError> for DirectMapError {
    fn from(e: XenError) -> Self {
        DirectMapError::Xen(e)
    }
}

impl fmt::Display for DirectMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectMapError::OutOfFrames => write!(f, "out of frames"),
            DirectMapError::FrameNotReachable(p) => write!(f, "frame {p:#x} not reachable"),
            DirectMapError::TooMuchRam(p) => write!(f, "RAM beyond 512 GiB (pfn {p:#x})"),
            DirectMapError::TooManyRanges => write!(f, "too many RAM ranges"),
            DirectMapError::NotXen => write!(f, "start_info missing"),
            DirectMapError::Xen(e) => write!(f, "{e}"),
        }
    }
}

/// VA of guest frame `pfn` in the direct map.
#[inline]
pub fn pfn_to_virt(pfn: u64) -> *mut u8 {
    (DIRECT_MAP_BASE + (pfn << 12)) as *mut u8
}

/// VA of guest-physical address `paddr` in the direct map.
#[inline]
pub fn phys_to_virt(paddr: u64) -> *mut u8 {
    (DIRECT_MAP_BASE + paddr) as *mut u8
}

/// Guest-physical address of a direct-map or kernel-image VA.
pub fn virt_to_phys(va: u64) -> Option<u64> {
    if (DIRECT_MAP_BASE..DIRECT_MAP_BASE + (DIRECT_MAP_MAX_PFN << 12)).contains(&va) {
        Some(va - DIRECT_MAP_BASE)
    } else if va >= KERNEL_VMA {
        // Native boot tables and Xen's initial region are both linear here.
        Some(va - KERNEL_VMA)
    } else {
        None
    }
}

/// Reads 64-bit word `index` (< 512) of frame `pfn` through the direct map
/// (the `PhysMem::read_entry` seam of the library).
///
/// # Safety
/// `pfn` must be mapped by the direct map ([`is_mapped`]).
#[inline]
pub unsafe fn read_u64(pfn: u64, index: usize) -> u64 {
    // SAFETY: caller guarantees the frame is mapped; index is masked.
    unsafe { (pfn_to_virt(pfn) as *const u64).add(index & 511).read_volatile() }
}

/// Writes 64-bit word `index` (< 512) of frame `pfn` through the direct map.
///
/// # Safety
/// `pfn` must be mapped writable by the direct map: on Xen PV that excludes
/// every frame in use as a page table (use `mmu_update` for those).
#[inline]
pub unsafe fn write_u64(pfn: u64, index: usize, value: u64) {
    // SAFETY: caller guarantees the frame is mapped writable; index masked.
    unsafe { (pfn_to_virt(pfn) as *mut u64).add(index & 511).write_volatile(value) }
}

/// Zeroes frame `pfn` through the direct map.
///
/// # Safety
/// As for [`write_u64`].
pub unsafe fn zero_frame(pfn: u64) {
    // SAFETY: caller guarantees the frame is mapped writable.
    unsafe { core::ptr::write_bytes(pfn_to_virt(pfn), 0, 4096) }
}

/// `true` once the direct map is complete.
pub fn is_ready() -> bool {
    READY.load(Ordering::Acquire) != 0
}

/// `true` if `pfn` is currently mapped by the direct map.
pub fn is_mapped(pfn: u64) -> bool {
    if platform::is_xen() {
        pfn < XEN_MAPPED_END.load(Ordering::Acquire)
    } else {
        NATIVE_MAPPED.lock().contains(pfn)
    }
}

/// Frames covered by the direct map.
pub fn mapped_ranges() -> RangeList {
    if platform::is_xen() {
        let mut l = RangeList::new();
        let _ = l.push(FrameRange { start: 0, end: XEN_MAPPED_END.load(Ordering::Acquire) });
        l
    } else {
        *NATIVE_MAPPED.lock()
    }
}

/// End of the mapped frame range that starts at pfn 0: every frame below
/// it is mapped (what `pvops_native::DirectMap::new` requires).
pub fn mapped_from_zero() -> u64 {
    mapped_ranges().as_slice().iter().find(|r| r.start == 0).map(|r| r.end).unwrap_or(0)
}

// ------------------------------------------------------------------ native

/// Before the direct map exists, frames below 1 GiB are reachable at
/// `KERNEL_VMA + paddr` through the boot tables.
fn native_boot_ptr(pfn: u64) -> Result<*mut u64, DirectMapError> {
    if pfn >= (1 << 18) {
        return Err(DirectMapError::FrameNotReachable(pfn));
    }
    Ok((KERNEL_VMA + (pfn << 12)) as *mut u64)
}

fn native_new_table() -> Result<(u64, *mut u64), DirectMapError> {
    let pfn = memory::alloc_frame().ok_or(DirectMapError::OutOfFrames)?;
    let p = native_boot_ptr(pfn)?;
    // SAFETY: `p` maps the whole, freshly allocated frame.
    unsafe { core::ptr::write_bytes(p, 0, 512) };
    Ok((pfn, p))
}

/// Builds the native direct map (2 MiB pages) and drops the identity map.
pub fn init_native() -> Result<(), DirectMapError> {
    let ram = memory::ram_ranges();
    let (l3_pfn, l3) = native_new_table()?;
    let mut mapped = RangeList::new();
    let mut l2s: [*mut u64; 512] = [core::ptr::null_mut(); 512];
    for r in ram.as_slice() {
        let start = r.start & !511;
        let end = r.end.div_ceil(512) * 512;
        if end > DIRECT_MAP_MAX_PFN {
            return Err(DirectMapError::TooMuchRam(end));
        }
        mapped.push_merge(FrameRange { start, end }).map_err(|_| DirectMapError::TooManyRanges)?;
        let mut pfn = start;
        while pfn < end {
            let l3i = (pfn >> 18) as usize;
            if l2s[l3i].is_null() {
                let (l2_pfn, l2) = native_new_table()?;
                l2s[l3i] = l2;
                // SAFETY: l3 is our fresh, writable table; index < 512.
                unsafe { l3.add(l3i).write_volatile((l2_pfn << 12) | PTE_P | PTE_RW) };
            }
            let l2i = ((pfn >> 9) & 511) as usize;
            // SAFETY: l2s[l3i] is our fresh, writable table; index < 512.
            unsafe { l2s[l3i].add(l2i).write_volatile((pfn << 12) | PTE_P | PTE_RW | PTE_A | PTE_D | PTE_PS) };
            pfn += 512;
        }
    }
    *NATIVE_MAPPED.lock() = mapped;
    // SAFETY: boot_pml4 is the live kernel root; slot 273 is unused, slot 0
    // (identity map) is no longer needed: everything runs in the higher half
    // and the PVH start info has been copied.
    unsafe {
        let l4 = &raw mut entry::boot_pml4 as *mut u64;
        l4.add(DIRECT_MAP_L4_SLOT).write_volatile((l3_pfn << 12) | PTE_P | PTE_RW);
        l4.write_volatile(0);
        x86::write_cr3(x86::read_cr3());
    }
    READY.store(1, Ordering::Release);
    Ok(())
}

// --------------------------------------------------------------------- xen

/// A writable VA for `pfn` while bootstrapping: its initial-region alias, or
/// its direct-map alias if that part is already built.
fn xen_writable_ptr(pfn: u64) -> Result<*mut u64, DirectMapError> {
    if let Some(va) = xen::initial_va(pfn) {
        return Ok(va as *mut u64);
    }
    if is_mapped(pfn) {
        return Ok(pfn_to_virt(pfn) as *mut u64);
    }
    Err(DirectMapError::FrameNotReachable(pfn))
}

/// Allocates and zeroes a frame for a page table; returns it with a
/// writable pointer (valid until [`mmu::set_aliases_writable`] seals it).
fn xen_new_table() -> Result<(u64, *mut u64), DirectMapError> {
    let pfn = memory::alloc_frame().ok_or(DirectMapError::OutOfFrames)?;
    let p = xen_writable_ptr(pfn)?;
    // SAFETY: `p` maps the whole freshly allocated frame writably.
    unsafe { core::ptr::write_bytes(p, 0, 512) };
    Ok((pfn, p))
}

/// Builds the Xen PV direct map (4 KiB pages) into the live kernel L4.
pub fn init_xen() -> Result<(), DirectMapError> {
    let region = xen::initial_region().ok_or(DirectMapError::NotXen)?;
    let nr_pages = xen::nr_pages();
    if nr_pages > DIRECT_MAP_MAX_PFN {
        return Err(DirectMapError::TooMuchRam(nr_pages));
    }
    let root = region.pt_start_pfn;
    let table_flags = PTE_P | PTE_RW | PTE_A | PTE_D;
    let is_table = |pfn: u64| (region.pt_start_pfn..region.pt_end_pfn).contains(&pfn) || memory::was_allocated(pfn);

    let (l3, _) = xen_new_table()?;
    mmu::set_aliases_writable(l3, false)?;
    mmu::write_entry(root, DIRECT_MAP_L4_SLOT, mmu::make_pte(l3, table_flags)?)?;

    let n_l1 = nr_pages.div_ceil(512);
    let mut l2 = 0u64;
    for k in 0..n_l1 {
        if k % 512 == 0 {
            let (t, _) = xen_new_table()?;
            mmu::set_aliases_writable(t, false)?;
            mmu::write_entry(l3, (k / 512) as usize, mmu::make_pte(t, table_flags)?)?;
            l2 = t;
        }
        let (l1, p) = xen_new_table()?;
        for i in 0..512u64 {
            let pfn = k * 512 + i;
            if pfn >= nr_pages {
                break;
            }
            let rw = if pfn == l1 || is_table(pfn) { 0 } else { PTE_RW };
            let e = mmu::make_pte(pfn, PTE_P | PTE_A | PTE_D | rw)?;
            // SAFETY: `p` is the writable alias of the new L1; i < 512.
            unsafe { p.add(i as usize).write_volatile(e) };
        }
        mmu::set_aliases_writable(l1, false)?;
        mmu::write_entry(l2, (k % 512) as usize, mmu::make_pte(l1, table_flags)?)?;
        XEN_MAPPED_END.store(((k + 1) * 512).min(nr_pages), Ordering::Release);
    }
    READY.store(1, Ordering::Release);
    Ok(())
}
