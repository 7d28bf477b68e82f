//! A 4-level x86-64 page-table walker that enforces present, writable, user and NX
//! at every level, as the MMU does.

use pvops::pte::flags;
use pvops::{Level, VirtAddr};

/// Why an access faulted, in page-fault terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// An entry on the walk was not present (at this level).
    NotPresent(Level),
    /// A present entry forbade the access (at this level).
    Protection(Level),
}

/// The kind of access being checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// From ring 3.
    pub user: bool,
    /// A store.
    pub write: bool,
    /// An instruction fetch.
    pub execute: bool,
}

impl Access {
    /// A user-mode read.
    pub const USER_READ: Access = Access { user: true, write: false, execute: false };
    /// A user-mode write.
    pub const USER_WRITE: Access = Access { user: true, write: true, execute: false };
    /// A kernel-mode read.
    pub const KERNEL_READ: Access = Access { user: false, write: false, execute: false };
    /// A user-mode instruction fetch.
    pub const USER_EXECUTE: Access = Access { user: true, write: false, execute: true };
}

/// Walks from `root` (a frame number in the memory `read` indexes) and returns the
/// final frame, or the fault. `read(frame, index)` reads one entry.
pub fn walk(root: u64, va: VirtAddr, access: Access, read: impl Fn(u64, usize) -> Option<u64>) -> Result<u64, Fault> {
    let mut frame = root;
    for level in Level::TOP_DOWN {
        let Some(e) = read(frame, va.index(level)) else {
            return Err(Fault::NotPresent(level));
        };
        if e & flags::PRESENT == 0 {
            return Err(Fault::NotPresent(level));
        }
        if access.user && e & flags::USER == 0 {
            return Err(Fault::Protection(level));
        }
        if access.write && e & flags::WRITABLE == 0 {
            return Err(Fault::Protection(level));
        }
        if access.execute && e & flags::NO_EXECUTE != 0 {
            return Err(Fault::Protection(level));
        }
        if level != Level::L1 && e & flags::HUGE != 0 {
            // The model (like a PV guest) supports 4 KiB pages only.
            return Err(Fault::Protection(level));
        }
        frame = (e & flags::ADDR_MASK) >> 12;
    }
    Ok(frame)
}
