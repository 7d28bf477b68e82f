//! user-prog: the ELF program pvkernel loads and runs on every platform.
//!
//! A `no_std` static executable linked at 0x400000 (`link.ld`), entered at
//! `_start` with the stack pointer at the top of its stack. It runs each of
//! [`checks::CHECKS`], prints what it saw, reports each verdict to the
//! kernel (`pvops_report`, for the `programs=P/T` of its `RESULT` line) and
//! exits with the number of checks that failed.
//!
//! Built for `x86_64-unknown-none` by `cargo xtask`; a host build (the
//! workspace's `cargo build`/`clippy`) compiles the same modules with a stub
//! `main`, since the program only means something under pvkernel.

#![cfg_attr(target_os = "none", no_std, no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code))]
#![deny(clippy::undocumented_unsafe_blocks)]

mod checks;
mod out;
mod sys;

/// Runs every check; returns how many failed.
fn run() -> u64 {
    say!("user-prog: pid {}, {} checks", sys::getpid(), checks::CHECKS.len());
    let mut failed = 0;
    for &(name, check) in checks::CHECKS {
        let (ok, figure) = check();
        say!("user-prog: check {name}: {} ({figure})", if ok { "ok" } else { "FAILED" });
        sys::report(name, ok, figure);
        failed += u64::from(!ok);
    }
    say!("user-prog: {} of {} checks passed", checks::CHECKS.len() as u64 - failed, checks::CHECKS.len());
    failed
}

#[cfg(target_os = "none")]
mod start {
    // The kernel enters with rsp at the (16-byte aligned) stack top; the
    // call leaves it as the ABI wants on entry to a function.
    core::arch::global_asm!(
        ".section .text.start, \"ax\"",
        ".globl _start",
        "_start:",
        "    xor %ebp, %ebp",
        "    call {main}",
        "    ud2",
        main = sym rust_start,
        options(att_syntax)
    );

    extern "C" fn rust_start() -> ! {
        crate::sys::exit(crate::run())
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        crate::say!("user-prog: panic: {}", info.message());
        crate::sys::exit(0xff)
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("user-prog runs under pvkernel (cargo xtask run); this host build is a stub");
}
