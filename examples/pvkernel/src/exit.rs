//! Leaving the machine: QEMU isa-debug-exit (port 0xf4).
//!
//! QEMU exits with status `(code << 1) | 1`: 0x10 -> 33 (pass), 0x11 -> 35
//! (fail). A Xen PVH dom0 reaches the port directly. Under Xen PV, dom0
//! first needs `PHYSDEVOP_set_iopl`; on either Xen platform, if the port
//! write does not end QEMU we fall back to `SHUTDOWN_reboot` (QEMU exits 0,
//! which the harness treats as a failure).

use crate::platform::{self, PlatformServices};

/// isa-debug-exit port.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Codes written to isa-debug-exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// QEMU status 33.
    Pass = 0x10,
    /// QEMU status 35.
    Fail = 0x11,
}

/// Ends the run with `code`, the platform's way
/// ([`PlatformServices::exit`]). Never returns.
pub fn exit(code: ExitCode) -> ! {
    platform::get().exit(code)
}
