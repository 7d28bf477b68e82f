//! Simple page-table code for user address spaces (phase 1), usable on both
//! platforms. The library's MMU backends supersede it later.
//!
//! Model: a [`UserSpaceBuilder`] allocates table frames, writes entries
//! directly while the frames are still ordinary writable memory, and
//! [`UserSpaceBuilder::finish`] turns the tree into a root:
//! * native: the user L4 also gets the kernel half (slots 256..511, without
//!   the U bit) copied from the kernel root, so one CR3 maps both;
//! * Xen PV: every table frame is remapped read-only in the kernel's own
//!   mappings and the L4 is pinned; it maps only user pages and becomes the
//!   user root (`MMUEXT_NEW_USER_BASEPTR`) while the kernel keeps its own.

use core::fmt;

use crate::directmap;
use crate::entry::{self, KERNEL_VMA};
use crate::memory;
use crate::platform;
use crate::xen::{self, hypercall::XenError, mmu};

pub const PTE_P: u64 = 1 << 0;
pub const PTE_RW: u64 = 1 << 1;
pub const PTE_US: u64 = 1 << 2;
pub const PTE_A: u64 = 1 << 5;
pub const PTE_D: u64 = 1 << 6;
pub const PTE_PS: u64 = 1 << 7;
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Highest user VA + 1 (lower canonical half).
pub const USER_END: u64 = 0x0000_8000_0000_0000;

/// An L4 page-table root, identified by its guest frame number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootHandle {
    pfn: u64,
}

impl RootHandle {
    /// Wraps an L4 frame number.
    pub const fn from_pfn(pfn: u64) -> Self {
        Self { pfn }
    }
    /// The L4's guest frame number (pseudo-physical on Xen).
    pub const fn pfn(self) -> u64 {
        self.pfn
    }
}

/// The kernel's own root: the native boot L4, or Xen's bootstrap L4
/// (`start_info.pt_base`, pinned by the domain builder).
pub fn kernel_root() -> RootHandle {
    if platform::is_xen() {
        let pfn = xen::initial_region().map(|r| r.pt_start_pfn).unwrap_or(0);
        RootHandle::from_pfn(pfn)
    } else {
        let va = (&raw const entry::boot_pml4) as u64;
        RootHandle::from_pfn((va - KERNEL_VMA) >> 12)
    }
}

/// Page-table errors.
#[derive(Clone, Copy, Debug)]
pub enum PagingError {
    OutOfFrames,
    NotUserAddress(u64),
    AlreadyMapped(u64),
    DirectMapNotReady,
    Xen(XenError),
}

impl From<XenError> for PagingError {
    fn from(e: XenError) -> Self {
        PagingError::Xen(e)
    }
}

impl fmt::Display for PagingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PagingError::OutOfFrames => write!(f, "out of frames"),
            PagingError::NotUserAddress(va) => write!(f, "{va:#x} is not a user address"),
            PagingError::AlreadyMapped(va) => write!(f, "{va:#x} already mapped"),
            PagingError::DirectMapNotReady => write!(f, "direct map not ready"),
            PagingError::Xen(e) => write!(f, "{e}"),
        }
    }
}

/// Encodes an entry pointing at guest frame `pfn` (MFN on Xen).
pub fn make_entry(pfn: u64, flags: u64) -> Result<u64, PagingError> {
    if platform::is_xen() {
        Ok(mmu::make_pte(pfn, flags)?)
    } else {
        Ok((pfn << 12) | flags)
    }
}

/// Guest frame an entry points to (M2P-translated on Xen).
pub fn entry_pfn(e: u64) -> u64 {
    if platform::is_xen() {
        mmu::pte_pfn(e)
    } else {
        (e & PTE_ADDR_MASK) >> 12
    }
}

fn table_ptr(pfn: u64) -> *mut u64 {
    directmap::pfn_to_virt(pfn) as *mut u64
}

fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 511) as usize
}

/// Translates `va` through the tree at `root`: (guest-physical address,
/// leaf flags). Reads tables through the direct map.
pub fn translate(root: RootHandle, va: u64) -> Option<(u64, u64)> {
    if !directmap::is_ready() {
        return None;
    }
    let mut table = root.pfn();
    for level in (1..=4u32).rev() {
        if !directmap::is_mapped(table) {
            return None;
        }
        // SAFETY: `table` is a page-table frame, mapped (at least read-only)
        // by the direct map (checked); index < 512.
        let e = unsafe { table_ptr(table).add(index(va, level)).read_volatile() };
        if e & PTE_P == 0 {
            return None;
        }
        if level == 1 || (level <= 3 && e & PTE_PS != 0) {
            let page_mask = (1u64 << (12 + 9 * (level - 1))) - 1;
            let base = entry_pfn(e) << 12 & !page_mask;
            return Some((base | (va & page_mask), e & !PTE_ADDR_MASK));
        }
        table = entry_pfn(e);
    }
    None
}

/// Copies user memory `[va, va + out.len())` of the space `root` into `out`
/// through the direct map, checking present + user at every page. Returns
/// the number of bytes copied (short on the first unmapped page).
pub fn copy_from_user(root: RootHandle, va: u64, out: &mut [u8]) -> usize {
    let mut done = 0;
    while done < out.len() {
        let cur = va.wrapping_add(done as u64);
        if cur >= USER_END {
            break;
        }
        let Some((pa, flags)) = translate(root, cur) else { break };
        if flags & PTE_US == 0 {
            break;
        }
        let in_page = (4096 - (cur & 4095)) as usize;
        let n = in_page.min(out.len() - done);
        // SAFETY: `pa..pa+n` lies in one present user page, mapped by the
        // direct map; `out[done..done+n]` is in bounds.
        unsafe { core::ptr::copy_nonoverlapping(directmap::phys_to_virt(pa), out[done..].as_mut_ptr(), n) };
        done += n;
    }
    done
}

/// Maximum page-table frames per [`UserSpaceBuilder`].
pub const MAX_USER_TABLES: usize = 64;

/// Builds a user address space (see module docs).
pub struct UserSpaceBuilder {
    l4: u64,
    tables: [u64; MAX_USER_TABLES],
    ntables: usize,
}

impl UserSpaceBuilder {
    /// Allocates an empty user L4.
    pub fn new() -> Result<Self, PagingError> {
        if !directmap::is_ready() {
            return Err(PagingError::DirectMapNotReady);
        }
        let mut b = Self { l4: 0, tables: [0; MAX_USER_TABLES], ntables: 0 };
        b.l4 = b.new_table()?;
        Ok(b)
    }

    fn new_table(&mut self) -> Result<u64, PagingError> {
        if self.ntables == MAX_USER_TABLES {
            return Err(PagingError::OutOfFrames);
        }
        let pfn = memory::alloc_frame().ok_or(PagingError::OutOfFrames)?;
        // SAFETY: fresh frame, writable through the direct map.
        unsafe { core::ptr::write_bytes(table_ptr(pfn), 0, 512) };
        self.tables[self.ntables] = pfn;
        self.ntables += 1;
        Ok(pfn)
    }

    /// Maps user page `va` to guest frame `pfn` (user, present, optionally
    /// writable), creating intermediate tables as needed.
    pub fn map_page(&mut self, va: u64, pfn: u64, writable: bool) -> Result<(), PagingError> {
        if va >= USER_END || va & 0xfff != 0 {
            return Err(PagingError::NotUserAddress(va));
        }
        let upper = PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D;
        let mut table = self.l4;
        for level in (2..=4u32).rev() {
            let slot = table_ptr(table).wrapping_add(index(va, level));
            // SAFETY: `table` is one of our fresh (still writable) tables.
            let e = unsafe { slot.read_volatile() };
            table = if e & PTE_P != 0 {
                entry_pfn(e)
            } else {
                let t = self.new_table()?;
                // SAFETY: as above.
                unsafe { slot.write_volatile(make_entry(t, upper)?) };
                t
            };
        }
        let slot = table_ptr(table).wrapping_add(index(va, 1));
        // SAFETY: `table` is one of our fresh (still writable) L1 tables.
        unsafe {
            if slot.read_volatile() & PTE_P != 0 {
                return Err(PagingError::AlreadyMapped(va));
            }
            let rw = if writable { PTE_RW | PTE_D } else { 0 };
            slot.write_volatile(make_entry(pfn, PTE_P | PTE_US | PTE_A | rw)?);
        }
        Ok(())
    }

    /// Seals the tree and returns its root (see module docs).
    pub fn finish(self) -> Result<RootHandle, PagingError> {
        if platform::is_xen() {
            for &t in &self.tables[..self.ntables] {
                mmu::set_aliases_writable(t, false)?;
            }
            mmu::pin_l4(self.l4)?;
        } else {
            let k = table_ptr(kernel_root().pfn());
            let u = table_ptr(self.l4);
            for i in 256..512 {
                // SAFETY: both L4s are mapped by the direct map; i < 512.
                unsafe { u.add(i).write_volatile(k.add(i).read_volatile()) };
            }
        }
        Ok(RootHandle::from_pfn(self.l4))
    }
}
