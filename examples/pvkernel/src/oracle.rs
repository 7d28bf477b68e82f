//! `KernelOracle`: the conformance suite's `Machine`, answered by a software
//! walk of the page tables that are really loaded.
//!
//! * Natively: from `cr3`, through the direct map, with the x86 rules:
//!   present at every level, writable at every level for a write (CR0.WP is
//!   set), user at every level for a user access, 1 GiB / 2 MiB leaves.
//! * Xen PV: kernel mode walks from the kernel root (`mov %cr3`, emulated by
//!   Xen, gives its machine address); user mode walks from the user pgd
//!   attached to that kernel pgd (its private word in frame metadata, read
//!   with `pvops_xen64::attached_user_pgd`; none for init_mm, where user
//!   mode reaches nothing). Entries hold mfns, turned
//!   back into pfns through the M2P. Xen marks kernel L1 entries user +
//!   `_PAGE_GUEST_KERNEL` (bit 52): such a page is not a user page.

use kernel_glue::FrameAllocator;
use pvops::pte::flags;
use pvops::{Pfn, PhysMem, VirtAddr};

use crate::{platform, x86, xen};

/// Xen's `_PAGE_GUEST_KERNEL`.
const PAGE_GUEST_KERNEL: u64 = 1 << 52;

/// The live-table oracle.
pub struct KernelOracle {
    mem: &'static dyn PhysMem,
    frames: &'static FrameAllocator<'static>,
}

impl core::fmt::Debug for KernelOracle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("KernelOracle")
    }
}

impl KernelOracle {
    /// An oracle reading tables through `mem` and user pgds from `frames`.
    pub fn new(mem: &'static dyn PhysMem, frames: &'static FrameAllocator<'static>) -> Self {
        KernelOracle { mem, frames }
    }

    /// The guest frame an entry points to.
    fn target(entry: u64) -> Option<u64> {
        let frame = (entry & flags::ADDR_MASK) >> 12;
        if platform::is_xen() {
            xen::mfn_to_pfn_checked(frame)
        } else {
            Some(frame)
        }
    }

    /// The kernel root that is loaded now.
    pub fn kernel_root() -> Option<Pfn> {
        let cr3 = x86::read_cr3() & flags::ADDR_MASK;
        if platform::is_xen() {
            xen::mfn_to_pfn_checked(cr3 >> 12).map(Pfn)
        } else {
            Some(Pfn(cr3 >> 12))
        }
    }

    /// The root user mode translates through now (natively the kernel
    /// root; on Xen the user pgd attached to it, `None` for init_mm).
    pub fn user_root(&self) -> Option<Pfn> {
        let kernel = Self::kernel_root()?;
        if !platform::is_xen() {
            return Some(kernel);
        }
        pvops_xen64::attached_user_pgd(self.frames, kernel).ok().flatten()
    }

    /// Walks the tree at `root` for an access to `va`.
    pub fn walk(&self, root: Pfn, va: u64, write: bool, user: bool) -> Option<Pfn> {
        let va = VirtAddr::try_new(va).ok()?.as_u64();
        let mut table = root.0;
        for level in (1..=4u32).rev() {
            let shift = 12 + 9 * (level - 1);
            let index = ((va >> shift) & 511) as usize;
            let e = self.mem.read_entry(Pfn(table), index);
            if e & flags::PRESENT == 0 {
                return None;
            }
            if write && e & flags::WRITABLE == 0 {
                return None;
            }
            if user && (e & flags::USER == 0 || (level == 1 && e & PAGE_GUEST_KERNEL != 0)) {
                return None;
            }
            let frame = Self::target(e)?;
            let leaf = level == 1 || ((level == 2 || level == 3) && e & flags::HUGE != 0);
            if leaf {
                let offset = (va >> 12) & ((1u64 << (9 * (level - 1))) - 1);
                return Some(Pfn(frame + offset));
            }
            table = frame;
        }
        None
    }
}

impl pvops_conformance::Machine for KernelOracle {
    fn user_access(&self, va: u64, write: bool) -> Option<Pfn> {
        self.walk(self.user_root()?, va, write, true)
    }

    fn kernel_access(&self, va: u64, write: bool) -> Option<Pfn> {
        self.walk(Self::kernel_root()?, va, write, false)
    }
}
