//! Typed addresses and frame numbers.
//!
//! A PV guest juggles three address spaces: virtual, pseudo-physical (pfn) and
//! machine (mfn). Mixing them up is the classic Xen PV bug, so each gets a
//! newtype and nothing converts implicitly.

use core::fmt;

use crate::error::PvError;

/// Size of a base page (4 KiB); PV guests use no other.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Entries in one page table of any level.
pub const ENTRIES_PER_TABLE: usize = 512;
/// Bytes covered by one top-level (L4) slot: 512 GiB.
pub const PGDIR_SIZE: u64 = 1 << 39;

macro_rules! frame_number {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The byte address of the frame's first byte.
            pub const fn addr(self) -> u64 {
                self.0 << PAGE_SHIFT
            }
            /// The frame holding byte address `addr`.
            pub const fn containing(addr: u64) -> Self {
                Self(addr >> PAGE_SHIFT)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }
    };
}

frame_number!(
    /// A pseudo-physical frame number: the guest's own view of its memory.
    /// Natively it equals the machine frame.
    Pfn
);
frame_number!(
    /// A machine frame number: what the hardware (and Xen) sees.
    Mfn
);

/// A canonical 64-bit virtual address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct VirtAddr(u64);

impl VirtAddr {
    /// Checks that bits 63..47 are all equal (canonical form).
    ///
    /// ```
    /// use pvops::VirtAddr;
    /// assert!(VirtAddr::try_new(0x7fff_ffff_f000).is_ok());
    /// assert!(VirtAddr::try_new(0x8000_0000_0000).is_err());
    /// ```
    pub const fn try_new(addr: u64) -> Result<Self, PvError> {
        let top = addr >> 47;
        if top == 0 || top == 0x1ffff {
            Ok(Self(addr))
        } else {
            Err(PvError::NonCanonical { addr })
        }
    }

    /// Builds an address the caller knows is canonical (a constant).
    ///
    /// # Panics
    /// At compile time when used in a `const` with a non-canonical value.
    pub const fn new_const(addr: u64) -> Self {
        match Self::try_new(addr) {
            Ok(v) => v,
            Err(_) => panic!("non-canonical virtual address"),
        }
    }

    /// The raw value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// True when the address is 4 KiB aligned.
    pub const fn is_page_aligned(self) -> bool {
        self.0 & (PAGE_SIZE - 1) == 0
    }

    /// The slot this address selects in a table of `level`.
    pub const fn index(self, level: Level) -> usize {
        ((self.0 >> (PAGE_SHIFT + 9 * (level as u32 - 1))) & 0x1ff) as usize
    }

    /// Builds the canonical address selected by four table indices.
    pub const fn from_indices(l4: usize, l3: usize, l2: usize, l1: usize) -> Self {
        let raw = ((l4 as u64) << 39) | ((l3 as u64) << 30) | ((l2 as u64) << 21) | ((l1 as u64) << 12);
        // Sign-extend bit 47.
        Self(((raw << 16) as i64 >> 16) as u64)
    }
}

impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtAddr({:#x})", self.0)
    }
}

/// A page-table level. `L4` is the pgd (top), `L1` holds ptes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[repr(u8)]
pub enum Level {
    /// Page table (pte).
    L1 = 1,
    /// Page directory (pmd).
    L2 = 2,
    /// Page-directory pointer table (pud).
    L3 = 3,
    /// Top level (pgd / PML4).
    L4 = 4,
}

impl Level {
    /// The level below this one, `None` for L1.
    pub const fn lower(self) -> Option<Level> {
        match self {
            Level::L4 => Some(Level::L3),
            Level::L3 => Some(Level::L2),
            Level::L2 => Some(Level::L1),
            Level::L1 => None,
        }
    }

    /// All levels, top first.
    pub const TOP_DOWN: [Level; 4] = [Level::L4, Level::L3, Level::L2, Level::L1];
}
