//! Leaving the machine: QEMU isa-debug-exit (port 0xf4).
//!
//! QEMU exits with status `(code << 1) | 1`: 0x10 -> 33 (pass), 0x11 -> 35
//! (fail). A Xen PVH dom0 reaches the port directly. Under Xen PV, dom0
//! first needs `PHYSDEVOP_set_iopl`; on either Xen platform, if the port
//! write does not end QEMU we fall back to `SHUTDOWN_reboot` (QEMU exits 0,
//! which the harness treats as a failure).

use crate::platform;
use crate::x86;
use crate::xen::hypercall;

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

/// Ends the run with `code`. Never returns.
pub fn exit(code: ExitCode) -> ! {
    if platform::get() == platform::Platform::XenPvh {
        // A PVH dom0 reaches 0xf4 directly (`PHYSDEVOP_set_iopl` is -ENOSYS
        // there). If QEMU did not end, reboot: status 0, a failure. Not
        // poweroff: Xen then halts and QEMU never exits (pvh-notes §7).
        // SAFETY: PVH dom0 ring 0; 0xf4 is isa-debug-exit, passed through.
        unsafe { x86::outl(DEBUG_EXIT_PORT, code as u32) };
        let _ = hypercall::shutdown(1);
        loop {
            hypercall::sched_yield();
        }
    } else if platform::is_xen() {
        let _ = hypercall::set_iopl(1);
        // SAFETY: iopl 1 grants dom0 port I/O; 0xf4 is isa-debug-exit.
        unsafe { x86::outl(DEBUG_EXIT_PORT, code as u32) };
        let _ = hypercall::shutdown(1);
        loop {
            hypercall::sched_yield();
        }
    } else {
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
