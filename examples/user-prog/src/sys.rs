//! System calls by the `syscall` instruction: Linux x86-64 numbers and
//! registers (number in rax; arguments in rdi, rsi, rdx, r10, r8, r9;
//! result in rax, a negative errno on failure; rcx and r11 clobbered),
//! plus three of pvkernel's own, numbered from 500.

use core::arch::asm;

pub const WRITE: u64 = 1;
pub const MMAP: u64 = 9;
pub const MPROTECT: u64 = 10;
pub const MUNMAP: u64 = 11;
pub const GETPID: u64 = 39;
pub const FORK: u64 = 57;
pub const EXIT: u64 = 60;
pub const WAIT4: u64 = 61;
/// `pvops_stat(which) -> value`: [`STAT_FRAMES_IN_USE`] or [`STAT_COW_COPIES`].
pub const PVOPS_STAT: u64 = 500;
/// `pvops_report(name, len, ok, figure)`: one check's verdict, for the kernel's `RESULT` line.
pub const PVOPS_REPORT: u64 = 501;
/// `pvops_fault_addr(pid) -> addr`: the address whose fault killed child `pid`.
pub const PVOPS_FAULT_ADDR: u64 = 502;
/// `pvops_fail_alloc(k)`: test hook, the k-th frame allocation from now
/// fails (0 = the next); disarmed when the calling process ends.
pub const PVOPS_FAIL_ALLOC: u64 = 503;

/// Frames the kernel's allocator has handed out (all processes, tables included).
pub const STAT_FRAMES_IN_USE: u64 = 0;
/// Pages the kernel has copied on write faults so far.
pub const STAT_COW_COPIES: u64 = 1;

pub const PROT_READ: u64 = 1;
pub const PROT_WRITE: u64 = 2;
pub const MAP_PRIVATE: u64 = 0x02;
pub const MAP_FIXED: u64 = 0x10;
pub const MAP_ANONYMOUS: u64 = 0x20;

pub const EINVAL: i64 = 22;
pub const ENOMEM: i64 = 12;
pub const EEXIST: i64 = 17;
/// `SIGSEGV`: what a process killed by a page fault dies of.
pub const SIGSEGV: u32 = 11;

/// pvkernel's reason for a fatal page fault, in bits 8..15 of a killed
/// child's wait status (Linux leaves them zero for a signal death).
pub const KILL_NOT_MAPPED: u32 = 1;
pub const KILL_WRITE_TO_READ_ONLY: u32 = 2;
pub const KILL_OUT_OF_MEMORY: u32 = 3;
pub const KILL_NO_EXECUTE: u32 = 6;

/// A raw system call.
///
/// # Safety
/// The call must not invalidate memory the program still uses (`munmap`,
/// `mprotect`) and its pointer arguments must be valid for what the call
/// does with them.
pub unsafe fn syscall(nr: u64, a: [u64; 6]) -> i64 {
    let ret: u64;
    // SAFETY: `syscall` enters the kernel, which preserves every register
    // but rax, rcx and r11 (declared clobbered) and does not touch the user
    // stack; memory is not declared untouched (no `nomem`): fork, wait and
    // mmap change what memory holds. The caller upholds the rest.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2], in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret as i64
}

/// Writes `bytes` to the console (fd 1).
pub fn write(bytes: &[u8]) -> i64 {
    // SAFETY: the kernel only reads `bytes.len()` bytes from `bytes`.
    unsafe { syscall(WRITE, [1, bytes.as_ptr() as u64, bytes.len() as u64, 0, 0, 0]) }
}

/// Ends the process.
pub fn exit(code: u64) -> ! {
    // SAFETY: exit does not return, so nothing is invalidated for later code.
    unsafe { syscall(EXIT, [code, 0, 0, 0, 0, 0]) };
    // The kernel never resumes an exited process.
    loop {
        core::hint::spin_loop();
    }
}

pub fn getpid() -> i64 {
    // SAFETY: no memory involved.
    unsafe { syscall(GETPID, [0; 6]) }
}

/// The child's pid in the parent, 0 in the child.
pub fn fork() -> i64 {
    // SAFETY: the child gets a copy of this address space; nothing is invalidated.
    unsafe { syscall(FORK, [0; 6]) }
}

/// `wait4(pid, &status, 0, NULL)`: the pid reaped (or -errno) and its status.
pub fn wait(pid: i64) -> (i64, u32) {
    let mut status: u32 = 0;
    // SAFETY: the kernel writes one u32 to `status`, which lives across the call.
    let r = unsafe { syscall(WAIT4, [pid as u64, (&raw mut status) as u64, 0, 0, 0, 0]) };
    (r, status)
}

/// Anonymous private mapping of `len` bytes (at `addr` if `fixed`).
pub fn mmap(addr: u64, len: u64, prot: u64, fixed: bool) -> i64 {
    let flags = MAP_PRIVATE | MAP_ANONYMOUS | if fixed { MAP_FIXED } else { 0 };
    // SAFETY: a new mapping changes no memory the program uses (the kernel
    // refuses MAP_FIXED over an existing mapping).
    unsafe { syscall(MMAP, [addr, len, prot, flags, u64::MAX, 0]) }
}

/// # Safety
/// No live reference may point into the range.
pub unsafe fn munmap(addr: u64, len: u64) -> i64 {
    // SAFETY: forwarded to the caller.
    unsafe { syscall(MUNMAP, [addr, len, 0, 0, 0, 0]) }
}

/// # Safety
/// Nothing may write into the range after it is made read-only unless the
/// program means to die of it.
pub unsafe fn mprotect(addr: u64, len: u64, prot: u64) -> i64 {
    // SAFETY: forwarded to the caller.
    unsafe { syscall(MPROTECT, [addr, len, prot, 0, 0, 0]) }
}

pub fn stat(which: u64) -> i64 {
    // SAFETY: no memory involved.
    unsafe { syscall(PVOPS_STAT, [which, 0, 0, 0, 0, 0]) }
}

pub fn report(name: &str, ok: bool, figure: i64) {
    // SAFETY: the kernel only reads `name.len()` bytes from `name`.
    unsafe { syscall(PVOPS_REPORT, [name.as_ptr() as u64, name.len() as u64, ok as u64, figure as u64, 0, 0]) };
}

pub fn fault_addr(pid: i64) -> i64 {
    // SAFETY: no memory involved.
    unsafe { syscall(PVOPS_FAULT_ADDR, [pid as u64, 0, 0, 0, 0, 0]) }
}

pub fn fail_alloc(k: u64) -> i64 {
    // SAFETY: no memory involved.
    unsafe { syscall(PVOPS_FAIL_ALLOC, [k, 0, 0, 0, 0, 0]) }
}
