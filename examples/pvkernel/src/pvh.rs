//! PVH boot: `hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h).
//!
//! Until the direct map exists, physical memory below 1 GiB is reachable at
//! `KERNEL_VMA + paddr` through the boot page tables.

use crate::entry::KERNEL_VMA;
use crate::memory::{E820Entry, MAX_E820};

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const HVM_START_MAGIC: u32 = 0x336e_c578;

/// `struct hvm_start_info` (56 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HvmStartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}

/// `struct hvm_modlist_entry` (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HvmModule {
    pub paddr: u64,
    pub size: u64,
    pub cmdline_paddr: u64,
    pub reserved: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct HvmMemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// What we keep from the PVH start info.
pub struct PvhInfo {
    pub start_info: HvmStartInfo,
    pub e820: [E820Entry; MAX_E820],
    pub e820_len: usize,
    /// Physical byte ranges of boot modules.
    pub modules: [(u64, u64); 8],
    pub nr_modules: usize,
}

/// Errors reading the PVH start info.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvhError {
    BadMagic(u32),
    AboveBootMapping(u64),
    NoMemmap,
}

const BOOT_MAP_LIMIT: u64 = 1 << 30;

fn boot_ptr<T>(paddr: u64) -> Result<*const T, PvhError> {
    if paddr.saturating_add(core::mem::size_of::<T>() as u64) > BOOT_MAP_LIMIT {
        return Err(PvhError::AboveBootMapping(paddr));
    }
    Ok((KERNEL_VMA + paddr) as *const T)
}

/// Reads and copies the PVH start info at physical `paddr`. With
/// `memmap_elsewhere` (Xen PVH, where Xen 4.17's dom0 builder passes no
/// memmap: `pvh_load_kernel`, `xen/arch/x86/hvm/dom0_build.c`) a missing
/// memmap leaves `e820_len` 0 for the caller to fill; natively it is an error.
///
/// # Safety
/// Must run with the boot page tables live, `paddr` being the `%ebx` value
/// QEMU passed to `pvh_start`.
pub unsafe fn read(paddr: u64, memmap_elsewhere: bool) -> Result<PvhInfo, PvhError> {
    // SAFETY: below 1 GiB (checked), mapped by the boot tables; firmware
    // wrote a hvm_start_info there.
    let si: HvmStartInfo = unsafe { boot_ptr::<HvmStartInfo>(paddr)?.read_unaligned() };
    if si.magic != HVM_START_MAGIC {
        return Err(PvhError::BadMagic(si.magic));
    }
    let mut info = PvhInfo {
        start_info: si,
        e820: [E820Entry::default(); MAX_E820],
        e820_len: 0,
        modules: [(0, 0); 8],
        nr_modules: 0,
    };
    let no_memmap = si.version < 1 || si.memmap_paddr == 0 || si.memmap_entries == 0;
    if no_memmap && !memmap_elsewhere {
        return Err(PvhError::NoMemmap);
    }
    let n = if no_memmap { 0 } else { (si.memmap_entries as usize).min(MAX_E820) };
    for i in 0..n {
        let p = si.memmap_paddr + (i as u64) * 24;
        // SAFETY: entry i of the firmware's memmap, below 1 GiB (checked).
        let e: HvmMemmapEntry = unsafe { boot_ptr::<HvmMemmapEntry>(p)?.read_unaligned() };
        info.e820[i] = E820Entry { addr: e.addr, size: e.size, kind: e.kind };
    }
    info.e820_len = n;
    let nm = (si.nr_modules as usize).min(info.modules.len());
    for i in 0..nm {
        let p = si.modlist_paddr + (i as u64) * 32;
        // SAFETY: module entry i, below 1 GiB (checked).
        let m: HvmModule = unsafe { boot_ptr::<HvmModule>(p)?.read_unaligned() };
        info.modules[i] = (m.paddr, m.paddr + m.size);
    }
    info.nr_modules = nm;
    Ok(info)
}
