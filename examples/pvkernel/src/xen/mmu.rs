//! Xen PV page-table primitives: PTE construction with MFNs, read-only
//! aliases for page-table frames, table walks, pins and base pointers.

use super::hypercall::{self, mmuext, MmuUpdate, XenError, UVMF_INVLPG};
use super::{initial_va, mfn_to_pfn, pfn_to_mfn};
use crate::directmap;

pub const PTE_P: u64 = 1 << 0;
pub const PTE_RW: u64 = 1 << 1;
pub const PTE_US: u64 = 1 << 2;
pub const PTE_A: u64 = 1 << 5;
pub const PTE_D: u64 = 1 << 6;
/// Address bits 12..51 of an entry.
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

fn no_mfn(op: &'static str) -> XenError {
    XenError { op, rc: -22 }
}

/// Builds an entry pointing at guest frame `pfn` (translated to its MFN).
pub fn make_pte(pfn: u64, flags: u64) -> Result<u64, XenError> {
    let mfn = pfn_to_mfn(pfn).ok_or(no_mfn("make_pte: pfn out of range"))?;
    Ok((mfn << 12) | flags)
}

/// Guest frame an entry points to (through the M2P; `u64::MAX` if the MFN
/// is beyond the M2P).
pub fn pte_pfn(entry: u64) -> u64 {
    mfn_to_pfn((entry & PTE_ADDR_MASK) >> 12)
}

/// Machine address of entry `index` of the table in guest frame `table_pfn`
/// (the `ptr` of an `mmu_update`).
pub fn entry_maddr(table_pfn: u64, index: usize) -> Result<u64, XenError> {
    let mfn = pfn_to_mfn(table_pfn).ok_or(no_mfn("entry_maddr: pfn out of range"))?;
    Ok((mfn << 12) + (index as u64) * 8)
}

/// Writes one entry of a (validated, read-only) page table via `mmu_update`.
pub fn write_entry(table_pfn: u64, index: usize, val: u64) -> Result<(), XenError> {
    hypercall::mmu_update(&[MmuUpdate { ptr: entry_maddr(table_pfn, index)?, val }])
}

/// Remaps every kernel alias of `pfn` (initial region, direct map) with the
/// given writability. A frame must have no writable alias before it is used
/// as a page table (notes §6.1).
pub fn set_aliases_writable(pfn: u64, writable: bool) -> Result<(), XenError> {
    let flags = PTE_P | PTE_A | PTE_D | if writable { PTE_RW } else { 0 };
    let pte = make_pte(pfn, flags)?;
    if let Some(va) = initial_va(pfn) {
        hypercall::update_va_mapping(va, pte, UVMF_INVLPG)?;
    }
    if directmap::is_mapped(pfn) {
        hypercall::update_va_mapping(directmap::pfn_to_virt(pfn) as u64, pte, UVMF_INVLPG)?;
    }
    Ok(())
}

/// Pins an L4 (validates the whole tree and keeps it validated).
pub fn pin_l4(pfn: u64) -> Result<(), XenError> {
    let mfn = pfn_to_mfn(pfn).ok_or(no_mfn("pin_l4: pfn out of range"))?;
    hypercall::mmuext(mmuext::PIN_L4_TABLE, mfn)
}

/// Unpins a table.
pub fn unpin(pfn: u64) -> Result<(), XenError> {
    let mfn = pfn_to_mfn(pfn).ok_or(no_mfn("unpin: pfn out of range"))?;
    hypercall::mmuext(mmuext::UNPIN_TABLE, mfn)
}

/// Installs the user-mode root (`MMUEXT_NEW_USER_BASEPTR`); `None` = no
/// user page tables (returning to user mode then crashes the domain).
pub fn set_user_baseptr(pfn: Option<u64>) -> Result<(), XenError> {
    let mfn = match pfn {
        Some(p) => pfn_to_mfn(p).ok_or(no_mfn("set_user_baseptr: pfn out of range"))?,
        None => 0,
    };
    hypercall::mmuext(mmuext::NEW_USER_BASEPTR, mfn)
}

/// Reads entry `index` of the table in guest frame `table_pfn`, through the
/// direct map if it covers the frame, else through the initial region.
pub fn read_entry(table_pfn: u64, index: usize) -> Option<u64> {
    let va =
        if directmap::is_mapped(table_pfn) { directmap::pfn_to_virt(table_pfn) as u64 } else { initial_va(table_pfn)? };
    // SAFETY: `va` maps the whole frame (read-only at least); index < 512.
    Some(unsafe { ((va as *const u64).add(index & 511)).read_volatile() })
}

/// Machine address of the L1 entry mapping `va` in the tables rooted at
/// `root_pfn` (the L1 must exist).
pub fn l1_entry_maddr(root_pfn: u64, va: u64) -> Option<u64> {
    let mut table = root_pfn;
    for level in (2..=4).rev() {
        let idx = ((va >> (12 + 9 * (level - 1))) & 511) as usize;
        let e = read_entry(table, idx)?;
        if e & PTE_P == 0 {
            return None;
        }
        table = pte_pfn(e);
    }
    entry_maddr(table, ((va >> 12) & 511) as usize).ok()
}

/// Walks the kernel tables rooted at `root_pfn`: the leaf L1 entry for `va`
/// if every level is present.
pub fn lookup(root_pfn: u64, va: u64) -> Option<u64> {
    let mut table = root_pfn;
    for level in (1..=4).rev() {
        let idx = ((va >> (12 + 9 * (level - 1))) & 511) as usize;
        let e = read_entry(table, idx)?;
        if e & PTE_P == 0 {
            return None;
        }
        if level == 1 {
            return Some(e);
        }
        table = pte_pfn(e);
    }
    None
}
