//! Which platform we booted on, decided once by the entry path.

use core::sync::atomic::{AtomicU8, Ordering};

/// The platform the kernel runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// Bare metal / HVM, entered through the PVH 32-bit entry point.
    Native,
    /// Xen 64-bit paravirtualised guest (dom0), entered at `_start`.
    XenPv,
}

impl Platform {
    /// Short name used in logs ("pvh" / "xen").
    pub fn entry_name(self) -> &'static str {
        match self {
            Platform::Native => "pvh",
            Platform::XenPv => "xen",
        }
    }
}

static PLATFORM: AtomicU8 = AtomicU8::new(0);

/// Records the platform. Called once, first thing, by each entry path.
pub fn set(p: Platform) {
    let v = match p {
        Platform::Native => 1,
        Platform::XenPv => 2,
    };
    PLATFORM.store(v, Ordering::Release);
}

/// The platform (defaults to `Native` before [`set`], which never happens
/// after the entry code ran).
pub fn get() -> Platform {
    match PLATFORM.load(Ordering::Acquire) {
        2 => Platform::XenPv,
        _ => Platform::Native,
    }
}

/// `true` when running as a Xen PV guest.
#[inline]
pub fn is_xen() -> bool {
    PLATFORM.load(Ordering::Relaxed) == 2
}
