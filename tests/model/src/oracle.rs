//! One question for both models: what does an access reach?
//!
//! [`Machine::access`] and [`XenModel::probe`] grew separately and answer in
//! different shapes; [`AccessOracle`] asks both the same way — the mode and
//! the kind of access (read, write, instruction fetch) in an [`Access`], the
//! answer a guest frame or why not — for the space the calling vCPU has
//! loaded (through its TLB) and for any root (the tables alone), so a test
//! can check a space that is not loaded.

use pvops::{Pfn, VirtAddr};

use crate::walk::{Access, Fault};
use crate::xen::{XenFault, XenModel};
use crate::Machine;

/// Why an access reaches nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The page fault the CPU would raise.
    Page(Fault),
    /// Xen PV: user mode with no user page tables loaded (Xen would crash
    /// the domain; asked as a question, nothing is recorded).
    NoUserRoot,
    /// Xen PV: the walk ended on a frame the domain does not own.
    NotGuestFrame,
}

/// What an access reaches, asked the same way of either model.
///
/// ```
/// use pvops::{Pfn, VirtAddr};
/// use pvops_model::{Access, AccessOracle, Machine, Refused};
/// let m = Machine::new(16);
/// // Root in frame 1 → L3 2 → L2 3 → L1 4 → page 5, user read-only, no-execute.
/// for (table, next) in [(1u64, 2u64), (2, 3), (3, 4)] {
///     m.write(table, 0, (next << 12) | 0b111);
/// }
/// m.write(4, 0, (5 << 12) | 0b101 | (1 << 63));
/// let va = VirtAddr::try_new(0).unwrap();
/// assert_eq!(m.reach_from(Pfn(1), va, Access::USER_READ), Ok(Pfn(5)));
/// assert!(matches!(m.reach_from(Pfn(1), va, Access::USER_WRITE), Err(Refused::Page(_))));
/// assert!(matches!(m.reach_from(Pfn(1), va, Access::USER_EXECUTE), Err(Refused::Page(_))));
/// ```
pub trait AccessOracle {
    /// Through the calling vCPU's loaded space and its TLB: a stale cached
    /// translation may answer (the worst case). Natively `access.user`
    /// selects the privilege check; on Xen PV it also selects the root
    /// (user base pointer or kernel base pointer).
    fn reach(&self, va: VirtAddr, access: Access) -> Result<Pfn, Refused>;

    /// The tables from `root` alone (no TLB), for any space, loaded or not.
    /// On Xen PV pass the root that mode would run on (a process's user
    /// pgd for user mode): the walk is ring 3 whatever the mode, and only
    /// the user pgd's not mapping the kernel keeps user mode out of it.
    fn reach_from(&self, root: Pfn, va: VirtAddr, access: Access) -> Result<Pfn, Refused>;
}

impl AccessOracle for Machine {
    fn reach(&self, va: VirtAddr, access: Access) -> Result<Pfn, Refused> {
        self.access(va, access).map(Pfn).map_err(Refused::Page)
    }

    fn reach_from(&self, root: Pfn, va: VirtAddr, access: Access) -> Result<Pfn, Refused> {
        self.translate_from(root.0, va, access).map(Pfn).map_err(Refused::Page)
    }
}

fn refused(f: XenFault) -> Refused {
    match f {
        XenFault::Page(p) => Refused::Page(p),
        XenFault::DomainCrashed => Refused::NoUserRoot,
        // A `VirtAddr` is canonical; a foreign frame is not the guest's.
        XenFault::NonCanonical | XenFault::NotGuestFrame(_) => Refused::NotGuestFrame,
    }
}

impl AccessOracle for XenModel {
    fn reach(&self, va: VirtAddr, access: Access) -> Result<Pfn, Refused> {
        self.translate_access(va, access, false).map_err(refused)
    }

    fn reach_from(&self, root: Pfn, va: VirtAddr, access: Access) -> Result<Pfn, Refused> {
        let mfn = self.mfn_of(root).ok_or(Refused::NotGuestFrame)?;
        let ring3 = Access { user: true, ..access };
        let m = self.machine().translate_from(mfn.0, va, ring3).map_err(Refused::Page)?;
        self.pfn_of(pvops::Mfn(m)).ok_or(Refused::NotGuestFrame)
    }
}
