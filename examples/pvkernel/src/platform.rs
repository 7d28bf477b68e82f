//! Which platform we booted on, decided once by the entry path, and what
//! differs between platforms besides the MMU (the backend's business): the
//! names the reports use, the console, and leaving the machine.
//!
//! One trait, [`PlatformServices`], one implementation per platform in this
//! module, and `enum_dispatch` for the [`Platform`] enum: every call is a
//! `match` the compiler can inline, no vtable (a console byte is a hot
//! path). `enum_dispatch` serves here because the trait and the enum live in
//! one crate; `PvMmuOps` and its backends do not (see `pvops::static_dispatch!`).

use core::sync::atomic::{AtomicU8, Ordering};

use enum_dispatch::enum_dispatch;

use crate::exit::{ExitCode, DEBUG_EXIT_PORT};
use crate::x86;
use crate::xen::hypercall;

/// What each platform does its own way.
#[enum_dispatch]
pub trait PlatformServices {
    /// Short name used in logs ("pvh" / "xen" / "xen-pvh").
    fn entry_name(&self) -> &'static str;
    /// Name used in `RESULT` lines, as the harness calls the platform.
    fn result_name(&self) -> &'static str;
    /// The backend the registry must pick here.
    fn expected_backend(&self) -> &'static str;
    /// Writes bytes to the platform console, unlocked.
    fn console_write(&self, bytes: &[u8]);
    /// Ends the run with `code` (QEMU isa-debug-exit). Never returns.
    fn exit(&self, code: ExitCode) -> !;
}

/// Bare metal / HVM, entered through the PVH 32-bit entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Native;
/// Xen 64-bit paravirtualised guest (dom0), entered at `_start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenPv;
/// Xen PVH guest (dom0): the PVH entry on a CPU whose hypervisor leaves say
/// Xen. Hardware paging as natively; console and exit through Xen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenPvh;

/// The platform the kernel runs on.
#[enum_dispatch(PlatformServices)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// See [`Native`].
    Native,
    /// See [`XenPv`].
    XenPv,
    /// See [`XenPvh`].
    XenPvh,
}

impl PlatformServices for Native {
    fn entry_name(&self) -> &'static str {
        "pvh"
    }
    fn result_name(&self) -> &'static str {
        "native"
    }
    fn expected_backend(&self) -> &'static str {
        "native"
    }
    fn console_write(&self, bytes: &[u8]) {
        crate::console::serial_write(bytes);
    }
    fn exit(&self, code: ExitCode) -> ! {
        // SAFETY: native ring 0; 0xf4 is isa-debug-exit.
        unsafe { x86::outl(DEBUG_EXIT_PORT, code as u32) };
        loop {
            // SAFETY: native ring 0, interrupts are off: parks the CPU.
            unsafe {
                x86::cli();
                x86::hlt();
            }
        }
    }
}

impl PlatformServices for XenPv {
    fn entry_name(&self) -> &'static str {
        "xen"
    }
    fn result_name(&self) -> &'static str {
        "xen"
    }
    fn expected_backend(&self) -> &'static str {
        "xen64"
    }
    fn console_write(&self, bytes: &[u8]) {
        // Nothing sensible to do if the console hypercall fails.
        let _ = hypercall::console_write(bytes);
    }
    fn exit(&self, code: ExitCode) -> ! {
        // Dom0 needs `PHYSDEVOP_set_iopl` for port I/O.
        let _ = hypercall::set_iopl(1);
        // SAFETY: iopl 1 grants dom0 port I/O; 0xf4 is isa-debug-exit.
        unsafe { x86::outl(DEBUG_EXIT_PORT, code as u32) };
        reboot()
    }
}

impl PlatformServices for XenPvh {
    fn entry_name(&self) -> &'static str {
        "xen-pvh"
    }
    fn result_name(&self) -> &'static str {
        "pvh"
    }
    fn expected_backend(&self) -> &'static str {
        "xen-pvh"
    }
    fn console_write(&self, bytes: &[u8]) {
        // A PVH dom0's COM1 writes are dropped (`ns16550_endboot`).
        let _ = hypercall::console_write(bytes);
    }
    fn exit(&self, code: ExitCode) -> ! {
        // A PVH dom0 reaches 0xf4 directly (`PHYSDEVOP_set_iopl` is -ENOSYS
        // there).
        // SAFETY: PVH dom0 ring 0; 0xf4 is isa-debug-exit, passed through.
        unsafe { x86::outl(DEBUG_EXIT_PORT, code as u32) };
        reboot()
    }
}

/// Under Xen, if the port write did not end QEMU: reboot (QEMU exits 0, a
/// failure for the harness). Not poweroff: Xen then halts and QEMU never
/// exits (pvh-notes §7).
fn reboot() -> ! {
    let _ = hypercall::shutdown(1);
    loop {
        hypercall::sched_yield();
    }
}

static PLATFORM: AtomicU8 = AtomicU8::new(0);

/// Records the platform. Called once, first thing, by each entry path.
pub fn set(p: Platform) {
    let v = match p {
        Platform::Native(_) => 1,
        Platform::XenPv(_) => 2,
        Platform::XenPvh(_) => 3,
    };
    PLATFORM.store(v, Ordering::Release);
}

/// The platform (defaults to `Native` before [`set`], which never happens
/// after the entry code ran).
pub fn get() -> Platform {
    match PLATFORM.load(Ordering::Acquire) {
        2 => XenPv.into(),
        3 => XenPvh.into(),
        _ => Native.into(),
    }
}

/// `true` when running as a Xen PV guest (PV MMU, PV traps). A Xen PVH
/// guest is not: its paging, traps and I/O work as natively.
#[inline]
pub fn is_xen() -> bool {
    PLATFORM.load(Ordering::Relaxed) == 2
}

/// `true` on Xen PVH.
#[inline]
pub fn is_xen_pvh() -> bool {
    PLATFORM.load(Ordering::Relaxed) == 3
}

/// `true` when Xen is underneath (PV or PVH): the console and the exit path
/// go through hypercalls.
#[inline]
pub fn has_xen() -> bool {
    matches!(PLATFORM.load(Ordering::Relaxed), 2 | 3)
}
