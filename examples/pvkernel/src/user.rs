//! Running user code: enter ring 3, get control back on `syscall` or a
//! user-mode exception, and return to the caller like a function.
//!
//! ```text
//! mm.activate(&space)?;                 // the backend loads the roots
//! let mut task = UserTask::new(entry_va, stack_top_va);
//! loop {
//!     match task.resume() {
//!         UserExit::Syscall { nr, args } => task.set_syscall_return(..),
//!         UserExit::Faulted(f) => break,   // kill it (or fix and resume)
//!     }
//! }
//! ```
//!
//! [`UserTask::resume`] saves the kernel's callee-saved registers and stack
//! pointer, loads the user registers and enters user mode (`iretq` natively;
//! the `iret` hypercall under Xen PV). The syscall entry (LSTAR natively;
//! Xen's syscall callback) and `trap_common` (for traps whose saved CS has
//! RPL 3) store the user registers into the task, restore the kernel stack
//! and return from `resume`. User code must use `syscall` (never `int $N`:
//! QEMU 7.2 mis-delivers it under Xen PV).
//!
//! Roots: the caller loads the task's address space with kernel-glue's
//! `Mm::activate` (the backend's `write_cr3`: natively cr3, which maps the
//! kernel half too; on Xen `NEW_BASEPTR` + `NEW_USER_BASEPTR`) before
//! resuming it.
//!
//! Syscall ABI: number in rax, arguments in rdi, rsi, rdx, r10, r8, r9,
//! result in rax; rcx and r11 are clobbered.

use core::arch::global_asm;
use core::mem::offset_of;

use crate::platform;
use crate::traps::{self, USER_CS, USER_DS};
use crate::x86;
use crate::xen::hypercall;

/// User register state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UserRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    /// Exception vector of the last trap.
    pub vector: u64,
    /// Error code of the last trap (0 if none).
    pub error_code: u64,
}

/// A user-mode exception.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserFault {
    pub vector: u64,
    pub error_code: u64,
    /// Faulting address (CR2) for #PF, else 0.
    pub addr: u64,
    pub rip: u64,
}

/// Why control came back from user mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserExit {
    /// `syscall`: number and the six arguments.
    Syscall { nr: u64, args: [u64; 6] },
    /// A user-mode exception.
    Faulted(UserFault),
}

const KIND_SYSCALL: u64 = 0;
const KIND_TRAP: u64 = 1;
/// rflags bits user code may keep (CF PF AF ZF SF TF DF OF, AC, ID...);
/// IOPL, NT, VM, RF and IF are controlled by the kernel.
const RFLAGS_USER_MASK: u64 = 0x0000_0000_0025_0dd5;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_FIXED: u64 = 1 << 1;

extern "C" {
    fn user_enter_native(regs: *mut UserRegs) -> u64;
    fn user_enter_xen(regs: *mut UserRegs) -> u64;
    fn syscall_entry_native();
    fn syscall_entry_xen();
}

global_asm!(
    r#"
    .section .bss.user_state, "aw", @nobits
    .p2align 3
    .globl user_kernel_rsp, user_current_regs, user_scratch_rsp
user_kernel_rsp:    .skip 8
user_current_regs:  .skip 8
user_scratch_rsp:   .skip 8

    .section .text.user, "ax"

    /* Save all GPRs but rax into *%rax. */
    .macro SAVE_USER_GPRS
    mov %rbx, {rbx}(%rax)
    mov %rcx, {rcx}(%rax)
    mov %rdx, {rdx}(%rax)
    mov %rsi, {rsi}(%rax)
    mov %rdi, {rdi}(%rax)
    mov %rbp, {rbp}(%rax)
    mov %r8,  {r8}(%rax)
    mov %r9,  {r9}(%rax)
    mov %r10, {r10}(%rax)
    mov %r11, {r11}(%rax)
    mov %r12, {r12}(%rax)
    mov %r13, {r13}(%rax)
    mov %r14, {r14}(%rax)
    mov %r15, {r15}(%rax)
    .endm

    /* Load all GPRs from *%rdi, rdi last. */
    .macro LOAD_USER_GPRS
    mov {rax}(%rdi), %rax
    mov {rbx}(%rdi), %rbx
    mov {rcx}(%rdi), %rcx
    mov {rdx}(%rdi), %rdx
    mov {rsi}(%rdi), %rsi
    mov {rbp}(%rdi), %rbp
    mov {r8}(%rdi),  %r8
    mov {r9}(%rdi),  %r9
    mov {r10}(%rdi), %r10
    mov {r11}(%rdi), %r11
    mov {r12}(%rdi), %r12
    mov {r13}(%rdi), %r13
    mov {r14}(%rdi), %r14
    mov {r15}(%rdi), %r15
    mov {rdi}(%rdi), %rdi
    .endm

    .macro SAVE_KERNEL
    push %rbp
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, user_kernel_rsp(%rip)
    mov %rdi, user_current_regs(%rip)
    .endm

    /* u64 user_enter_native(UserRegs *regs): iretq to ring 3. */
    .globl user_enter_native
user_enter_native:
    SAVE_KERNEL
    pushq ${user_ds}
    pushq {rsp}(%rdi)
    pushq {rflags}(%rdi)
    pushq ${user_cs}
    pushq {rip}(%rdi)
    LOAD_USER_GPRS
    iretq

    /* u64 user_enter_xen(UserRegs *regs): iret hypercall to guest user mode. */
    .globl user_enter_xen
user_enter_xen:
    SAVE_KERNEL
    pushq ${xen_ss}
    pushq {rsp}(%rdi)
    pushq {rflags}(%rdi)
    pushq ${xen_cs}
    pushq {rip}(%rdi)
    pushq $0                        /* flags: plain iret */
    LOAD_USER_GPRS
    jmp hypercall_page + 23 * 32

    /* Back to the kernel: %eax = kind. Returns from user_enter_*. */
user_return_to_kernel:
    mov user_kernel_rsp(%rip), %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    pop %rbp
    ret

    /* Native LSTAR target: rcx = user rip, r11 = user rflags, rsp = user. */
    .globl syscall_entry_native
syscall_entry_native:
    mov %rsp, user_scratch_rsp(%rip)
    mov user_kernel_rsp(%rip), %rsp
    push %rax
    mov user_current_regs(%rip), %rax
    SAVE_USER_GPRS
    pop %rbx
    mov %rbx, {rax}(%rax)
    mov %rcx, {rip}(%rax)
    mov %r11, {rflags}(%rax)
    mov user_scratch_rsp(%rip), %rbx
    mov %rbx, {rsp}(%rax)
    mov ${kind_syscall}, %eax
    jmp user_return_to_kernel

    /* Xen syscall callback, on the stack_switch stack:
       rcx, r11, rip, cs, rflags, rsp, ss */
    .globl syscall_entry_xen
syscall_entry_xen:
    pop %rcx
    pop %r11
    push %rax
    mov user_current_regs(%rip), %rax
    SAVE_USER_GPRS
    pop %rbx
    mov %rbx, {rax}(%rax)
    mov 0(%rsp), %rbx
    mov %rbx, {rip}(%rax)
    mov 16(%rsp), %rbx
    mov %rbx, {rflags}(%rax)
    mov 24(%rsp), %rbx
    mov %rbx, {rsp}(%rax)
    mov ${kind_syscall}, %eax
    jmp user_return_to_kernel

    /* From trap_common, user mode (both platforms):
       stack = vector, error, rip, cs, rflags, rsp, ss */
    .globl user_trap_entry
user_trap_entry:
    push %rax
    mov user_current_regs(%rip), %rax
    SAVE_USER_GPRS
    pop %rbx
    mov %rbx, {rax}(%rax)
    mov 0(%rsp), %rbx
    mov %rbx, {vector}(%rax)
    mov 8(%rsp), %rbx
    mov %rbx, {error}(%rax)
    mov 16(%rsp), %rbx
    mov %rbx, {rip}(%rax)
    mov 32(%rsp), %rbx
    mov %rbx, {rflags}(%rax)
    mov 40(%rsp), %rbx
    mov %rbx, {rsp}(%rax)
    mov ${kind_trap}, %eax
    jmp user_return_to_kernel
"#,
    rax = const offset_of!(UserRegs, rax),
    rbx = const offset_of!(UserRegs, rbx),
    rcx = const offset_of!(UserRegs, rcx),
    rdx = const offset_of!(UserRegs, rdx),
    rsi = const offset_of!(UserRegs, rsi),
    rdi = const offset_of!(UserRegs, rdi),
    rbp = const offset_of!(UserRegs, rbp),
    r8 = const offset_of!(UserRegs, r8),
    r9 = const offset_of!(UserRegs, r9),
    r10 = const offset_of!(UserRegs, r10),
    r11 = const offset_of!(UserRegs, r11),
    r12 = const offset_of!(UserRegs, r12),
    r13 = const offset_of!(UserRegs, r13),
    r14 = const offset_of!(UserRegs, r14),
    r15 = const offset_of!(UserRegs, r15),
    rip = const offset_of!(UserRegs, rip),
    rsp = const offset_of!(UserRegs, rsp),
    rflags = const offset_of!(UserRegs, rflags),
    vector = const offset_of!(UserRegs, vector),
    error = const offset_of!(UserRegs, error_code),
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    xen_ss = const hypercall::FLAT_SS64,
    xen_cs = const hypercall::FLAT_CS64,
    kind_syscall = const KIND_SYSCALL,
    kind_trap = const KIND_TRAP,
    options(att_syntax)
);

const MSR_EFER: u32 = 0xc000_0080;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_SFMASK: u32 = 0xc000_0084;

/// Enables `syscall` from user mode (native: EFER.SCE, STAR, LSTAR, SFMASK;
/// Xen: the syscall callback with events masked).
pub fn init() -> Result<(), hypercall::XenError> {
    if platform::is_xen() {
        hypercall::register_callback(
            hypercall::CALLBACKTYPE_SYSCALL,
            hypercall::CALLBACKF_MASK_EVENTS,
            syscall_entry_xen as *const () as u64,
        )
    } else {
        // SAFETY: architectural MSRs, native ring 0; the GDT layout matches
        // STAR (kernel CS 0x08/SS 0x10; user base 0x10 -> SS 0x1b, CS 0x23).
        unsafe {
            x86::wrmsr(MSR_EFER, x86::rdmsr(MSR_EFER) | 1);
            x86::wrmsr(MSR_STAR, (0x10u64 << 48) | (0x08u64 << 32));
            x86::wrmsr(MSR_LSTAR, syscall_entry_native as *const () as u64);
            x86::wrmsr(MSR_SFMASK, 0x47700); // IF DF TF NT AC
        }
        Ok(())
    }
}

/// Xen's syscall callback entry (each vCPU registers it, an AP through its
/// initial context).
pub fn xen_syscall_entry_addr() -> u64 {
    syscall_entry_xen as *const () as u64
}

/// A user task's CPU state. The address space it runs in is installed by
/// the caller (`Mm::activate`, i.e. the backend's `write_cr3`) before
/// [`UserTask::resume`]: this module never touches page-table roots.
#[derive(Debug)]
pub struct UserTask {
    pub regs: UserRegs,
}

impl UserTask {
    /// A task that starts at `entry` with stack pointer `stack_top`.
    pub fn new(entry: u64, stack_top: u64) -> Self {
        let regs = UserRegs { rip: entry, rsp: stack_top, rflags: RFLAGS_IF | RFLAGS_FIXED, ..UserRegs::default() };
        Self { regs }
    }

    /// Sets the value `syscall` returns in rax when the task resumes.
    pub fn set_syscall_return(&mut self, v: u64) {
        self.regs.rax = v;
    }

    /// Runs the task in the address space that is loaded now, until its next
    /// syscall or exception.
    pub fn resume(&mut self) -> UserExit {
        self.regs.rflags = (self.regs.rflags & RFLAGS_USER_MASK) | RFLAGS_IF | RFLAGS_FIXED;
        let regs = &raw mut self.regs;
        // SAFETY: `regs` stays valid until the entry code hands control back
        // (it is only written by the syscall/trap entry paths, which then
        // return here); the caller loaded an address space mapping the user
        // code and stack (natively it also maps the kernel half; on Xen the
        // kernel keeps its own root).
        let kind = unsafe {
            if platform::is_xen() {
                user_enter_xen(regs)
            } else {
                user_enter_native(regs)
            }
        };
        if kind == KIND_SYSCALL {
            let r = &self.regs;
            UserExit::Syscall { nr: r.rax, args: [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9] }
        } else {
            let addr = if self.regs.vector == 14 { traps::fault_address() } else { 0 };
            UserExit::Faulted(UserFault {
                vector: self.regs.vector,
                error_code: self.regs.error_code,
                addr,
                rip: self.regs.rip,
            })
        }
    }
}
