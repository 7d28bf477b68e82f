//! The neutral page-table entry.
//!
//! Core code builds entries in terms of pfns; each backend encodes them for the
//! hardware it drives (identity natively, pfn→mfn through the p2m on Xen).

use core::fmt;

use crate::addr::{Pfn, PAGE_SHIFT};

/// Entry flag bits (x86-64 layout), kept as plain constants so they are usable
/// in `const` context and comparable.
pub mod flags {
    /// Present.
    pub const PRESENT: u64 = 1 << 0;
    /// Writable.
    pub const WRITABLE: u64 = 1 << 1;
    /// User-accessible.
    pub const USER: u64 = 1 << 2;
    /// Write-through.
    pub const PWT: u64 = 1 << 3;
    /// Cache disable.
    pub const PCD: u64 = 1 << 4;
    /// Accessed.
    pub const ACCESSED: u64 = 1 << 5;
    /// Dirty.
    pub const DIRTY: u64 = 1 << 6;
    /// Large page (L2/L3); PV guests may not use it.
    pub const HUGE: u64 = 1 << 7;
    /// Global.
    pub const GLOBAL: u64 = 1 << 8;
    /// No-execute.
    pub const NO_EXECUTE: u64 = 1 << 63;
    /// Frame-address bits 12..51.
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
}

/// A pfn-based page-table entry.
///
/// ```
/// use pvops::{Pfn, Pte, pte::flags};
/// let e = Pte::new(Pfn(0x42), flags::PRESENT | flags::WRITABLE);
/// assert_eq!(e.pfn(), Pfn(0x42));
/// assert!(e.is_present());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Pte(pub u64);

impl Pte {
    /// The empty (not-present) entry.
    pub const EMPTY: Pte = Pte(0);

    /// Builds an entry pointing at `pfn` with `flags` (address bits in `flags` are ignored).
    pub const fn new(pfn: Pfn, flags: u64) -> Self {
        Pte(((pfn.0 << PAGE_SHIFT) & flags::ADDR_MASK) | (flags & !flags::ADDR_MASK))
    }

    /// The frame the entry points at.
    pub const fn pfn(self) -> Pfn {
        Pfn((self.0 & flags::ADDR_MASK) >> PAGE_SHIFT)
    }

    /// The flag bits (everything but the address).
    pub const fn flags(self) -> u64 {
        self.0 & !flags::ADDR_MASK
    }

    /// Present bit set.
    pub const fn is_present(self) -> bool {
        self.0 & flags::PRESENT != 0
    }

    /// Writable bit set.
    pub const fn is_writable(self) -> bool {
        self.0 & flags::WRITABLE != 0
    }

    /// User bit set.
    pub const fn is_user(self) -> bool {
        self.0 & flags::USER != 0
    }
}

impl fmt::Debug for Pte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pte({:#x}: pfn {:#x} flags {:#x})", self.0, self.pfn().0, self.flags())
    }
}

impl From<Pte> for x86::bits64::paging::PTEntry {
    fn from(p: Pte) -> Self {
        x86::bits64::paging::PTEntry(p.0)
    }
}
