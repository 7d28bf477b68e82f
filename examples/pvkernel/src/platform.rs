//! Which platform we booted on, decided once by the entry path.

use core::sync::atomic::{AtomicU8, Ordering};

/// The platform the kernel runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// Bare metal / HVM, entered through the PVH 32-bit entry point.
    Native,
    /// Xen 64-bit paravirtualised guest (dom0), entered at `_start`.
    XenPv,
    /// Xen PVH guest (dom0): the PVH entry on a CPU whose hypervisor leaves
    /// say Xen. Hardware paging as natively; console and exit through Xen.
    XenPvh,
}

impl Platform {
    /// Short name used in logs ("pvh" / "xen" / "xen-pvh").
    pub fn entry_name(self) -> &'static str {
        match self {
            Platform::Native => "pvh",
            Platform::XenPv => "xen",
            Platform::XenPvh => "xen-pvh",
        }
    }

    /// Name used in `RESULT` lines, as the harness calls the platform.
    pub fn result_name(self) -> &'static str {
        match self {
            Platform::Native => "native",
            Platform::XenPv => "xen",
            Platform::XenPvh => "pvh",
        }
    }
}

static PLATFORM: AtomicU8 = AtomicU8::new(0);

/// Records the platform. Called once, first thing, by each entry path.
pub fn set(p: Platform) {
    let v = match p {
        Platform::Native => 1,
        Platform::XenPv => 2,
        Platform::XenPvh => 3,
    };
    PLATFORM.store(v, Ordering::Release);
}

/// The platform (defaults to `Native` before [`set`], which never happens
/// after the entry code ran).
pub fn get() -> Platform {
    match PLATFORM.load(Ordering::Acquire) {
        2 => Platform::XenPv,
        3 => Platform::XenPvh,
        _ => Platform::Native,
    }
}

/// `true` when running as a Xen PV guest (PV MMU, PV traps). A Xen PVH
/// guest is not: its paging, traps and I/O work as natively.
#[inline]
pub fn is_xen() -> bool {
    PLATFORM.load(Ordering::Relaxed) == 2
}

/// `true` when Xen is underneath (PV or PVH): the console and the exit path
/// go through hypercalls.
#[inline]
pub fn has_xen() -> bool {
    matches!(PLATFORM.load(Ordering::Relaxed), 2 | 3)
}
