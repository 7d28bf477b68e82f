//! The isolation attack suite: user processes that try to reach what they
//! must not, one attack per process.
//!
//! A driver process (the attack program with `rdi = 0`) asks the kernel for
//! attack `n = 1, 2, …` with the `attack(n, seen)` syscall until it gets
//! `-ENOENT`. For each one the kernel loads a fresh process from the same
//! program, tells it what to do in its registers (`rdi` = kind, `rsi` =
//! target, `rdx` = value, `r8` = the exit code to use if the access goes
//! through), audits what the new address space exposes to user mode, runs
//! it, and reaps it: switches back to the driver and exits its address space.
//! The attack is *blocked* only if the process died of exactly the expected
//! exception (vector, error code, faulting address) while the loaded roots
//! were the attacker's own. The audit (no page-table frame and no
//! kernel-half page reachable from user mode) is reported separately: it
//! feeds `user_isolation=`.
//!
//! Before every `attack` call the driver reads its own secret page
//! ([`SECRET_VA`], mapped in no other process), so it is the last thing
//! user mode touched before the kernel switches to the attacker: on Xen the
//! attacker runs right after the driver's user pgd was the loaded one.
//!
//! [`ATTACKS`] is the list; `examples/pvkernel/README.md` explains it.

use alloc::vec::Vec;
use core::arch::global_asm;
use core::fmt;

use kernel_glue::{AddressSpace, PageFlags};
use pvops::pte::flags;
use pvops::{Pfn, Pte, PvError, PvMmuOps, PAGE_SIZE, USER_LIMIT};
use pvops_conformance::Machine;

use crate::oracle::KernelOracle;
use crate::process::{self, sys, Process, Processes, State, ENOSYS, KILLED, USER_CODE_VA, USER_DATA_VA, USER_STACK_VA};
use crate::user::{UserExit, UserFault, UserTask};
use crate::vm::{self, Vm, KERNEL_PROBE_VA};
use crate::{directmap, exit, kprintln, platform, traps, xen};

/// User VA of the driver's secret page: mapped only in the driver (the
/// attackers map the data page just below it, so their walk of this address
/// reaches an L1 table and finds the entry empty).
pub const SECRET_VA: u64 = USER_DATA_VA + PAGE_SIZE;
/// What the driver's secret page holds.
pub const SECRET_VALUE: u64 = 0x5ec2_e75e_c2e7_5ec2;
/// Exit code of an attacker whose access went through: `SURVIVED | n`.
pub const SURVIVED: u64 = 0xbad00;
/// `-ENOENT`: no attack with that number.
const ENOENT: u64 = (-2i64) as u64;
/// Xen's guest linear page table (L4 slot 258, `LINEAR_PT_VIRT_START`): Xen
/// puts every validated L4 into its own slot 258, supervisor-only.
pub const XEN_LINEAR_PT: u64 = 0xffff_8100_0000_0000;
/// Xen's own text: `XEN_VIRT_START` (L4 slot 261) + `XEN_IMG_OFFSET` (2 MiB),
/// where Xen 4.17 links `_start`.
pub const XEN_TEXT: u64 = 0xffff_82d0_4020_0000;

/// What an attacker process does with its target (`rdi`).
pub mod kind {
    /// The driver: runs every attack in turn.
    pub const DRIVER: u64 = 0;
    /// `mov (target), %rax`.
    pub const READ: u64 = 1;
    /// `mov value, (target)`.
    pub const WRITE: u64 = 2;
    /// `jmp *target`.
    pub const EXEC: u64 = 3;
    /// `ljmpq *` to `value:target` (`value` a code selector). (Not `lretq`:
    /// QEMU 7.2 pops a far return's frame with a supervisor access, which
    /// Xen's SMAP turns into a #PF on the user's own stack.)
    pub const FAR_JUMP: u64 = 4;
    /// `mov target, %cr3`.
    pub const LOAD_CR3: u64 = 5;
    /// `outl value, (target)` (a port number).
    pub const PORT_OUT: u64 = 6;
}

global_asm!(
    r#"
    .section .rodata.attack_prog, "a"
    .p2align 4
    .globl attack_prog_start, attack_prog_end
attack_prog_start:
    /* rdi = kind, rsi = target, rdx = value, r8 = exit code if not stopped */
    test %rdi, %rdi
    jz .Ldriver
    cmp ${read}, %rdi
    je .Lread
    cmp ${write}, %rdi
    je .Lwrite
    cmp ${exec}, %rdi
    je .Lexec
    cmp ${far_jump}, %rdi
    je .Lfar_jump
    cmp ${load_cr3}, %rdi
    je .Lload_cr3
    cmp ${port_out}, %rdi
    je .Lport_out
    mov $0xbadbad, %edi
    jmp .Lexit
.Lread:
    mov (%rsi), %rax                /* must fault */
    jmp .Lsurvived
.Lwrite:
    mov %rdx, (%rsi)                /* must fault */
    jmp .Lsurvived
.Lexec:
    jmp *%rsi                       /* must fault */
.Lfar_jump:
    push %rdx                       /* selector */
    push %rsi                       /* offset: (%rsp) is an m16:64 pointer */
    ljmpq *(%rsp)                   /* must fault */
.Lload_cr3:
    mov %rsi, %cr3                  /* must fault */
    jmp .Lsurvived
.Lport_out:
    mov %edx, %eax
    mov %esi, %edx
    outl %eax, %dx                  /* must fault */
.Lsurvived:
    mov %r8, %rdi
.Lexit:
    mov ${sys_exit}, %eax
    syscall
    ud2

.Ldriver:
    mov $1, %r12d
.Lnext:
    movabs ${secret_va}, %rbx
    mov (%rbx), %rsi                /* touch the page only this process maps */
    mov %r12, %rdi
    mov ${sys_attack}, %eax
    syscall
    test %rax, %rax
    js .Lno_more
    inc %r12
    jmp .Lnext
.Lno_more:
    mov %rax, %rdi
    cmp $-2, %rax                   /* -ENOENT: past the last attack */
    jne .Lexit
    lea .Ldone(%rip), %rdi
    mov $(.Ldone_end - .Ldone), %esi
    mov ${sys_write}, %eax
    syscall
    xor %edi, %edi
    jmp .Lexit
.Ldone:
    .ascii "attack driver: done, every attacker was reaped and I am still here\n"
.Ldone_end:
attack_prog_end:
"#,
    read = const kind::READ,
    write = const kind::WRITE,
    exec = const kind::EXEC,
    far_jump = const kind::FAR_JUMP,
    load_cr3 = const kind::LOAD_CR3,
    port_out = const kind::PORT_OUT,
    sys_exit = const sys::EXIT,
    sys_write = const sys::WRITE,
    sys_attack = const sys::ATTACK,
    secret_va = const SECRET_VA,
    options(att_syntax)
);

extern "C" {
    static attack_prog_start: u8;
    static attack_prog_end: u8;
    /// The kernel stack pointer saved while user code runs (`user.rs`).
    static user_kernel_rsp: u64;
    fn syscall_entry_native();
    fn syscall_entry_xen();
    static native_trap_stubs: u8;
    static xen_trap_stubs: u8;
}

/// The attack program's bytes.
pub fn attack_program() -> &'static [u8] {
    // SAFETY: the two labels delimit one contiguous blob in .rodata.
    unsafe {
        let start = &raw const attack_prog_start;
        let end = &raw const attack_prog_end;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// Where an attack aims (resolved when its process has been loaded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Kernel `.bss`: the saved kernel stack pointer (`user_kernel_rsp`).
    KernelData,
    /// Kernel text: `exit::exit`.
    KernelText,
    /// The kernel probe page's frame through the direct map.
    DirectMapProbe,
    /// `exit::exit`'s bytes through the direct map.
    DirectMapKernelText,
    /// The attacker's own root (natively its L4; on Xen its user pgd)
    /// through the direct map.
    OwnRoot,
    /// The entry of the attacker's own L1 that maps its code page, through
    /// the direct map.
    OwnL1Entry,
    /// The same L1 entry through Xen's linear page table (slot 258).
    XenLinearL1Entry,
    /// The syscall entry (LSTAR natively, the Xen syscall callback).
    SyscallEntry,
    /// The page-fault handler (IDT stub natively, Xen trap-table entry).
    PageFaultHandler,
    /// The hypercall page, at `mmuext_op`'s stub.
    HypercallPage,
    /// [`SECRET_VA`]: mapped only in the driver.
    OtherProcessPage,
    /// [`KERNEL_PROBE_VA`] (slot 402 of the attacker's own kernel half).
    KernelProbe,
    /// Its own code page (read-only).
    OwnCode,
    /// Its own data page (no-execute; holds a stub that would exit).
    OwnData,
    /// The machine address of its own root, as `cr3` takes it.
    OwnRootCr3,
    /// isa-debug-exit's port.
    ExitPort,
    /// Xen's text.
    XenText,
    /// Xen's read-only machine-to-physical table (slot 256), at the probe
    /// frame's entry.
    XenM2p,
}

/// The value an attack stores or pushes (`rdx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// Nothing (or zero).
    Zero,
    /// A user-writable entry for the kernel probe page, as the hardware
    /// would see it: what an attacker wants in its own L1.
    ProbePte,
    /// The kernel's code selector (0x08 natively; on Xen `FLAT_RING3_CS64`,
    /// which the PV64 kernel and user mode share).
    KernelCs,
    /// isa-debug-exit's "fail" code (so a write that went through ends the
    /// run as a failure, never a pass).
    ExitFail,
}

/// The exception an attack must die of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// `#PF` with this error code at the target.
    Pf(u64),
    /// `#GP` with this error code.
    Gp(u64),
}

/// One attack.
#[derive(Clone, Copy, Debug)]
pub struct Attack {
    /// Short name (the log's `ATTACK n name`).
    pub name: &'static str,
    /// What it does.
    pub what: &'static str,
    /// [`kind`].
    pub kind: u64,
    /// Where.
    pub target: Target,
    /// With what.
    pub value: Value,
    /// Natively.
    pub native: Expect,
    /// On Xen PV64.
    pub xen: Expect,
}

/// Page-fault error code bits.
mod pf {
    pub const P: u64 = 1;
    pub const W: u64 = 2;
    pub const U: u64 = 4;
    pub const I: u64 = 0x10;
}
const READ_SUPERVISOR: u64 = pf::U | pf::P;
const WRITE_SUPERVISOR: u64 = pf::U | pf::W | pf::P;
const EXEC_SUPERVISOR: u64 = pf::U | pf::I | pf::P;
const READ_ABSENT: u64 = pf::U;
const WRITE_ABSENT: u64 = pf::U | pf::W;
const EXEC_ABSENT: u64 = pf::U | pf::I;

/// Every attack, in the order the driver runs them (`n` = index + 1).
///
/// Natively the kernel half is in every process's L4, supervisor-only: user
/// accesses fault with P=1. On Xen the user pgd does not map the kernel at
/// all: they fault with P=0.
pub const ATTACKS: &[Attack] = &[
    Attack {
        name: "kernel-image-read",
        what: "read kernel .bss (the saved kernel stack pointer)",
        kind: kind::READ,
        target: Target::KernelData,
        value: Value::Zero,
        native: Expect::Pf(READ_SUPERVISOR),
        xen: Expect::Pf(READ_ABSENT),
    },
    Attack {
        name: "kernel-image-write",
        what: "overwrite the saved kernel stack pointer",
        kind: kind::WRITE,
        target: Target::KernelData,
        value: Value::Zero,
        native: Expect::Pf(WRITE_SUPERVISOR),
        xen: Expect::Pf(WRITE_ABSENT),
    },
    Attack {
        name: "kernel-text-exec",
        what: "jump to kernel text (exit::exit)",
        kind: kind::EXEC,
        target: Target::KernelText,
        value: Value::Zero,
        native: Expect::Pf(EXEC_SUPERVISOR),
        xen: Expect::Pf(EXEC_ABSENT),
    },
    Attack {
        name: "direct-map-read",
        what: "read the kernel probe page through the direct map",
        kind: kind::READ,
        target: Target::DirectMapProbe,
        value: Value::Zero,
        native: Expect::Pf(READ_SUPERVISOR),
        xen: Expect::Pf(READ_ABSENT),
    },
    Attack {
        name: "direct-map-write",
        what: "patch kernel text through the direct map",
        kind: kind::WRITE,
        target: Target::DirectMapKernelText,
        value: Value::Zero,
        native: Expect::Pf(WRITE_SUPERVISOR),
        xen: Expect::Pf(WRITE_ABSENT),
    },
    Attack {
        name: "own-root-write",
        what: "write its own root (L4; Xen: user pgd) through the direct map",
        kind: kind::WRITE,
        target: Target::OwnRoot,
        value: Value::ProbePte,
        native: Expect::Pf(WRITE_SUPERVISOR),
        xen: Expect::Pf(WRITE_ABSENT),
    },
    Attack {
        name: "own-l1-write",
        what: "point its own L1 entry at the kernel probe page, through the direct map",
        kind: kind::WRITE,
        target: Target::OwnL1Entry,
        value: Value::ProbePte,
        native: Expect::Pf(WRITE_SUPERVISOR),
        xen: Expect::Pf(WRITE_ABSENT),
    },
    Attack {
        name: "own-l1-linear-write",
        what: "the same L1 entry through Xen's linear page table (slot 258)",
        kind: kind::WRITE,
        target: Target::XenLinearL1Entry,
        value: Value::ProbePte,
        native: Expect::Pf(WRITE_ABSENT),
        xen: Expect::Pf(WRITE_SUPERVISOR),
    },
    Attack {
        name: "syscall-entry-jump",
        what: "jump to the syscall entry",
        kind: kind::EXEC,
        target: Target::SyscallEntry,
        value: Value::Zero,
        native: Expect::Pf(EXEC_SUPERVISOR),
        xen: Expect::Pf(EXEC_ABSENT),
    },
    Attack {
        name: "trap-handler-jump",
        what: "jump to the page-fault handler",
        kind: kind::EXEC,
        target: Target::PageFaultHandler,
        value: Value::Zero,
        native: Expect::Pf(EXEC_SUPERVISOR),
        xen: Expect::Pf(EXEC_ABSENT),
    },
    Attack {
        name: "hypercall-page-jump",
        what: "jump into the hypercall page (mmuext_op)",
        kind: kind::EXEC,
        target: Target::HypercallPage,
        value: Value::Zero,
        native: Expect::Pf(EXEC_SUPERVISOR),
        xen: Expect::Pf(EXEC_ABSENT),
    },
    Attack {
        name: "kernel-cs-far-jump",
        what: "far jump to the syscall entry with the kernel's code selector",
        kind: kind::FAR_JUMP,
        target: Target::SyscallEntry,
        value: Value::KernelCs,
        native: Expect::Gp(traps::KERNEL_CS as u64),
        xen: Expect::Pf(EXEC_ABSENT),
    },
    Attack {
        name: "other-process-read",
        what: "read a page only the driver maps, right after the driver ran",
        kind: kind::READ,
        target: Target::OtherProcessPage,
        value: Value::Zero,
        native: Expect::Pf(READ_ABSENT),
        xen: Expect::Pf(READ_ABSENT),
    },
    Attack {
        name: "kernel-half-read",
        what: "read the kernel-only probe page in its own kernel half",
        kind: kind::READ,
        target: Target::KernelProbe,
        value: Value::Zero,
        native: Expect::Pf(READ_SUPERVISOR),
        xen: Expect::Pf(READ_ABSENT),
    },
    Attack {
        name: "kernel-half-write",
        what: "write the kernel-only probe page in its own kernel half",
        kind: kind::WRITE,
        target: Target::KernelProbe,
        value: Value::Zero,
        native: Expect::Pf(WRITE_SUPERVISOR),
        xen: Expect::Pf(WRITE_ABSENT),
    },
    Attack {
        name: "own-code-write",
        what: "write its own read-only code page",
        kind: kind::WRITE,
        target: Target::OwnCode,
        value: Value::Zero,
        native: Expect::Pf(WRITE_SUPERVISOR),
        xen: Expect::Pf(WRITE_SUPERVISOR),
    },
    Attack {
        name: "own-data-exec",
        what: "execute its own no-execute data page",
        kind: kind::EXEC,
        target: Target::OwnData,
        value: Value::Zero,
        native: Expect::Pf(EXEC_SUPERVISOR),
        xen: Expect::Pf(EXEC_SUPERVISOR),
    },
    Attack {
        name: "load-cr3",
        what: "mov to cr3 (its own root)",
        kind: kind::LOAD_CR3,
        target: Target::OwnRootCr3,
        value: Value::Zero,
        native: Expect::Gp(0),
        xen: Expect::Gp(0),
    },
    Attack {
        name: "port-io",
        what: "outl the fail code to isa-debug-exit",
        kind: kind::PORT_OUT,
        target: Target::ExitPort,
        value: Value::ExitFail,
        native: Expect::Gp(0),
        xen: Expect::Gp(0),
    },
    Attack {
        name: "hypervisor-read",
        what: "read Xen's text (slot 261; nothing there natively)",
        kind: kind::READ,
        target: Target::XenText,
        value: Value::Zero,
        native: Expect::Pf(READ_ABSENT),
        xen: Expect::Pf(READ_SUPERVISOR),
    },
    Attack {
        name: "m2p-read",
        what: "read Xen's read-only M2P table (slot 256: Xen puts it only in L4s used as kernel roots)",
        kind: kind::READ,
        target: Target::XenM2p,
        value: Value::Zero,
        native: Expect::Pf(READ_ABSENT),
        xen: Expect::Pf(READ_ABSENT),
    },
];

impl Attack {
    /// The expectation on the platform we run on.
    pub fn expect(&self) -> Expect {
        if platform::is_xen() {
            self.xen
        } else {
            self.native
        }
    }
}

/// What the audit of one address space found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Page-table frames reachable from its roots (both halves).
    pub tables: u64,
    /// 4 KiB pages user mode can reach.
    pub user_pages: u64,
    /// User-reachable pages that are page tables (must be 0).
    pub table_aliases: u64,
    /// User-reachable pages in the kernel half (must be 0).
    pub kernel_half: u64,
    /// Entries whose frame is not ours (Xen: no M2P entry) (must be 0).
    pub unknown: u64,
}

impl Audit {
    /// Nothing user mode must not reach.
    pub fn clean(&self) -> bool {
        self.table_aliases == 0 && self.kernel_half == 0 && self.unknown == 0
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} table frames, {} user pages, {} user-visible table aliases, {} user-visible kernel-half pages, {} unknown frames",
            self.tables, self.user_pages, self.table_aliases, self.kernel_half, self.unknown
        )
    }
}

/// How one attack went.
#[derive(Clone, Copy, Debug)]
pub struct Record {
    /// 1-based.
    pub n: usize,
    /// The attack.
    pub attack: &'static Attack,
    /// Its target address (or port / cr3 value).
    pub target: u64,
    /// How the process ended.
    pub state: State,
    /// The audit of its address space.
    pub audit: Audit,
    /// The loaded roots were the attacker's, and the driver's secret page
    /// was visible before the switch and not after.
    pub roots_ok: bool,
    /// Died of the expected exception, with the attacker's roots loaded.
    pub blocked: bool,
}

/// Everything the attack processes did.
#[derive(Debug, Default)]
pub struct Log {
    /// One record per attack that ran.
    pub records: Vec<Record>,
    /// `attack` calls in which the driver had not read its secret.
    pub bad_secret: u64,
}

impl Log {
    /// Attacks blocked as expected.
    pub fn blocked(&self) -> usize {
        self.records.iter().filter(|r| r.blocked).count()
    }
}

/// What the `RESULT` line carries.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    /// Attacks blocked.
    pub blocked: usize,
    /// Attacks run.
    pub tried: usize,
    /// Every audit (driver and attackers) was clean.
    pub audits_clean: bool,
    /// The driver read its secret before every attack, asked for every
    /// attack and exited 0.
    pub driver_ok: bool,
}

impl Summary {
    /// Every attack in the suite ran and was blocked, and the driver
    /// survived them all.
    pub fn all_blocked(&self) -> bool {
        self.driver_ok && self.tried == ATTACKS.len() && self.blocked == self.tried
    }
}

fn fn_addr(f: *const ()) -> u64 {
    f as u64
}

/// The root user mode translates through in `space` (natively its pgd; on
/// Xen its user pgd).
fn user_root_of(v: &Vm, space: &AddressSpace) -> Result<Pfn, PvError> {
    if platform::is_xen() {
        pvops_xen64::attached_user_pgd(v.frames, space.pgd())?
            .ok_or(PvError::WrongState { what: "attacks: no user pgd" })
    } else {
        Ok(space.pgd())
    }
}

/// The machine address of guest frame `pfn` (the pfn itself natively).
fn machine_addr(pfn: Pfn) -> u64 {
    if platform::is_xen() {
        xen::pfn_to_mfn(pfn.0).unwrap_or(0) << 12
    } else {
        pfn.0 << 12
    }
}

/// Resolves `target` for a process in `space`.
fn resolve(v: &Vm, space: &AddressSpace, target: Target) -> Result<u64, PvError> {
    let xen = platform::is_xen();
    let kernel_text = fn_addr(exit::exit as *const ());
    Ok(match target {
        Target::KernelData => (&raw const user_kernel_rsp) as u64,
        Target::KernelText => kernel_text,
        Target::DirectMapProbe => directmap::pfn_to_virt(v.probe_frame.0) as u64,
        Target::DirectMapKernelText => {
            let pa = directmap::virt_to_phys(kernel_text).ok_or(PvError::WrongState { what: "kernel text pa" })?;
            directmap::phys_to_virt(pa) as u64
        }
        Target::OwnRoot => directmap::pfn_to_virt(user_root_of(v, space)?.0) as u64,
        Target::OwnL1Entry => {
            let [.., (l1, _, index)] = vm::path(v.ops, space.pgd(), USER_CODE_VA)?;
            directmap::pfn_to_virt(l1.0) as u64 + 8 * index as u64
        }
        Target::XenLinearL1Entry => XEN_LINEAR_PT + ((USER_CODE_VA & (USER_LIMIT - 1)) >> 12) * 8,
        Target::SyscallEntry => {
            if xen {
                fn_addr(syscall_entry_xen as *const ())
            } else {
                fn_addr(syscall_entry_native as *const ())
            }
        }
        Target::PageFaultHandler => {
            let stubs = if xen { &raw const xen_trap_stubs } else { &raw const native_trap_stubs };
            stubs as u64 + 14 * traps::STUB_STRIDE as u64
        }
        Target::HypercallPage => (&raw const crate::entry::hypercall_page) as u64 + 32 * xen::hypercall::nr::MMUEXT_OP,
        Target::OtherProcessPage => SECRET_VA,
        Target::KernelProbe => KERNEL_PROBE_VA,
        Target::OwnCode => USER_CODE_VA,
        Target::OwnData => USER_DATA_VA,
        Target::OwnRootCr3 => machine_addr(user_root_of(v, space)?),
        Target::ExitPort => exit::DEBUG_EXIT_PORT as u64,
        Target::XenText => XEN_TEXT,
        Target::XenM2p => xen::M2P_BASE + 8 * (machine_addr(v.probe_frame) >> 12),
    })
}

/// Resolves `value`.
fn value_of(v: &Vm, value: Value) -> Result<u64, PvError> {
    Ok(match value {
        Value::Zero => 0,
        Value::ProbePte => v
            .ops
            .make_entry(Pte::new(v.probe_frame, flags::PRESENT | flags::WRITABLE | flags::USER | flags::NO_EXECUTE))?,
        Value::KernelCs => {
            if platform::is_xen() {
                xen::hypercall::FLAT_CS64 as u64
            } else {
                traps::KERNEL_CS as u64
            }
        }
        Value::ExitFail => exit::ExitCode::Fail as u64,
    })
}

/// The guest frame an entry points to (through the M2P on Xen; `None` for
/// a frame that is not ours).
fn entry_frame(entry: u64) -> Option<u64> {
    let frame = (entry & flags::ADDR_MASK) >> 12;
    if platform::is_xen() {
        xen::mfn_to_pfn_checked(frame)
    } else {
        Some(frame)
    }
}

/// L4 slots that belong to Xen (never walked).
fn xen_slot(level: u32, index: usize) -> bool {
    level == 4 && platform::is_xen() && (256..272).contains(&index)
}

/// Collects every table frame reachable from the `level` table `table`.
fn collect_tables(v: &Vm, table: u64, level: u32, out: &mut Vec<u64>, unknown: &mut u64) {
    out.push(table);
    if level == 1 {
        return;
    }
    for index in 0..512 {
        if xen_slot(level, index) {
            continue;
        }
        let e = v.mem.read_entry(Pfn(table), index);
        if e & flags::PRESENT == 0 || ((level == 2 || level == 3) && e & flags::HUGE != 0) {
            continue;
        }
        match entry_frame(e) {
            Some(next) if next < v.frames.nr_frames() => collect_tables(v, next, level - 1, out, unknown),
            _ => *unknown += 1,
        }
    }
}

/// Walks what user mode can reach below the `level` table `table` (entries
/// present and user at every level), checking each page against the sorted
/// table frames. On Xen this walks the user pgd, where a kernel L1 entry
/// (user + `_PAGE_GUEST_KERNEL` at the hardware level) is as reachable as
/// any other: bit 52 is only Xen's marker.
fn walk_user(v: &Vm, table: u64, level: u32, base: u64, tables: &[u64], audit: &mut Audit) {
    let shift = 12 + 9 * (level - 1);
    for index in 0..512usize {
        if xen_slot(level, index) {
            continue;
        }
        let e = v.mem.read_entry(Pfn(table), index);
        if e & flags::PRESENT == 0 || e & flags::USER == 0 {
            continue;
        }
        let mut va = base | ((index as u64) << shift);
        if level == 4 && index >= 256 {
            va |= 0xffff_0000_0000_0000;
        }
        let Some(frame) = entry_frame(e) else {
            audit.unknown += 1;
            continue;
        };
        let leaf = level == 1 || ((level == 2 || level == 3) && e & flags::HUGE != 0);
        if !leaf {
            if frame < v.frames.nr_frames() {
                walk_user(v, frame, level - 1, va, tables, audit);
            } else {
                audit.unknown += 1;
            }
            continue;
        }
        let pages = 1u64 << (9 * (level - 1));
        audit.user_pages += pages;
        if va >= USER_LIMIT {
            audit.kernel_half += pages;
        }
        let first = tables.partition_point(|&t| t < frame);
        audit.table_aliases += tables[first..].iter().take_while(|&&t| t < frame + pages).count() as u64;
    }
}

/// Audits `space`: every page-table frame reachable from its roots (kernel
/// and, on Xen, user pgd, Xen's slots excepted) against every page user
/// mode can reach through its user root.
pub fn audit(v: &Vm, space: &AddressSpace) -> Result<Audit, PvError> {
    let mut audit = Audit::default();
    let user_root = user_root_of(v, space)?;
    let mut tables = Vec::new();
    collect_tables(v, space.pgd().0, 4, &mut tables, &mut audit.unknown);
    if user_root != space.pgd() {
        collect_tables(v, user_root.0, 4, &mut tables, &mut audit.unknown);
    }
    tables.sort_unstable();
    tables.dedup();
    audit.tables = tables.len() as u64;
    walk_user(v, user_root.0, 4, 0, &tables, &mut audit);
    Ok(audit)
}

/// Runs a process that is not in `procs` until it exits or is killed. It
/// may only `write` and `exit`; any other syscall returns `-ENOSYS`.
fn run_detached(v: &Vm, p: &mut Process) -> Result<(), PvError> {
    loop {
        if v.mm.active_pgd() != p.space.pgd() {
            v.mm.activate(&p.space)?;
        }
        match p.task.resume() {
            UserExit::Syscall { nr: sys::EXIT, args } => {
                p.state = State::Exited(args[0]);
                return Ok(());
            }
            UserExit::Syscall { nr: sys::WRITE, args } => {
                let r = process::write_user(v, &p.space, args[0], args[1]);
                p.task.set_syscall_return(r);
            }
            UserExit::Syscall { .. } => p.task.set_syscall_return(ENOSYS),
            UserExit::Faulted(f) => {
                p.state = State::Killed(f);
                return Ok(());
            }
        }
    }
}

/// The attacker's address space: the attack program, a data page holding
/// code that would exit with `SURVIVED | n` if it ran, and a stack.
fn load_attacker(v: &Vm, n: usize) -> Result<AddressSpace, PvError> {
    // mov $code, %edi; xor %eax, %eax (sys::EXIT); syscall; ud2
    let code = (SURVIVED | n as u64) as u32;
    let mut stub = [0xccu8; 16];
    stub[0] = 0xbf;
    stub[1..5].copy_from_slice(&code.to_le_bytes());
    stub[5..11].copy_from_slice(&[0x31, 0xc0, 0x0f, 0x05, 0x0f, 0x0b]);
    const _: () = assert!(sys::EXIT == 0);
    process::load_program(v, attack_program(), |space| {
        for (i, word) in stub.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            v.mm.poke(space, USER_DATA_VA + 8 * i as u64, u64::from_le_bytes(w))?;
        }
        Ok(())
    })
}

/// The driver's address space: the attack program and its secret page.
pub fn load_driver(v: &Vm) -> Result<AddressSpace, PvError> {
    process::load_program(v, attack_program(), |space| {
        v.mm.map(space, SECRET_VA, PageFlags::DATA)?;
        v.mm.poke(space, SECRET_VA, SECRET_VALUE)
    })
}

/// Does `state` match `expect` for an attack at `target`?
fn matches(expect: Expect, target: u64, state: State) -> bool {
    match (expect, state) {
        (Expect::Pf(err), State::Killed(f)) => f.vector == 14 && f.error_code == err && f.addr == target,
        (Expect::Gp(err), State::Killed(f)) => f.vector == 13 && f.error_code == err,
        _ => false,
    }
}

fn describe_fault(f: &UserFault) -> alloc::string::String {
    if f.vector == 14 {
        alloc::format!("#PF error {:#x} at {:#x} (rip {:#x})", f.error_code, f.addr, f.rip)
    } else {
        alloc::format!("{} error {:#x} (rip {:#x})", traps::vector_name(f.vector), f.error_code, f.rip)
    }
}

/// `attack(n, seen)` from process `driver`: runs attack `n` in a new
/// process, reaps it, records the outcome and returns its status as `wait`
/// would (`-ENOENT` past the last attack).
pub fn attack(procs: &mut Processes, driver: usize, n: u64, seen: u64) -> Result<u64, PvError> {
    let v = procs.vm;
    let Some(a) = (n as usize).checked_sub(1).and_then(|i| ATTACKS.get(i)) else {
        return Ok(ENOENT);
    };
    let n = n as usize;
    if seen != SECRET_VALUE {
        kprintln!("attack {n}: the driver read {seen:#x} from its secret page, not {SECRET_VALUE:#x}");
        procs.attacks.bad_secret += 1;
    }
    let oracle = KernelOracle::new(v);
    // The driver's roots are loaded: its secret page is visible to user mode.
    let visible_before = oracle.user_access(SECRET_VA, false).is_some();

    let space = load_attacker(&v, n)?;
    let mut child =
        Process { space, task: UserTask::new(USER_CODE_VA, USER_STACK_VA + PAGE_SIZE), state: State::Runnable };
    let r = (|| -> Result<(u64, Audit, bool), PvError> {
        #[cfg(feature = "broken-isolation")]
        process::expose_probe_page_in(&v, &child.space)?;
        let target = resolve(&v, &child.space, a.target)?;
        let regs = &mut child.task.regs;
        regs.rdi = a.kind;
        regs.rsi = target;
        regs.rdx = value_of(&v, a.value)?;
        regs.r8 = SURVIVED | n as u64;
        let audit = audit(&v, &child.space)?;
        v.mm.activate(&child.space)?;
        // The attacker's roots are loaded (on Xen: its user pgd, not the
        // driver's), and the driver's secret page is gone from user view.
        let want = user_root_of(&v, &child.space)?;
        let roots_ok = oracle.user_root_loaded(want)
            && KernelOracle::kernel_root() == Some(child.space.pgd())
            && visible_before
            && oracle.user_access(SECRET_VA, false).is_none();
        run_detached(&v, &mut child)?;
        Ok((target, audit, roots_ok))
    })();
    // Reap: back to the driver, then the attacker's space goes.
    let back = v.mm.activate(&procs.procs[driver - 1].space);
    let gone = v.mm.exit(child.space).map_err(|(e, _)| e);
    let (target, audit, roots_ok) = r?;
    back?;
    gone?;

    let expect = a.expect();
    let blocked = matches(expect, target, child.state) && roots_ok;
    let how = match child.state {
        State::Killed(f) => describe_fault(&f),
        State::Exited(c) if c == SURVIVED | n as u64 => alloc::format!("exited {c:#x}: the access went through"),
        State::Exited(c) => alloc::format!("exited {c:#x}"),
        State::Runnable => "still runnable".into(),
    };
    if blocked {
        kprintln!("ATTACK {n} {}: blocked: {how}, process killed | {} (target {target:#x})", a.name, a.what);
    } else {
        let want = match expect {
            Expect::Pf(e) => alloc::format!("#PF error {e:#x} at {target:#x}"),
            Expect::Gp(e) => alloc::format!("#GP error {e:#x}"),
        };
        kprintln!("ATTACK {n} {}: NOT BLOCKED: {how} (expected {want}; roots ok {roots_ok}) | {}", a.name, a.what);
    }
    if !audit.clean() {
        kprintln!("ATTACK {n} {}: audit FAILED: {audit}", a.name);
    }
    procs.attacks.records.push(Record { n, attack: a, target, state: child.state, audit, roots_ok, blocked });
    Ok(match child.state {
        State::Exited(code) => code,
        State::Killed(f) => KILLED | (f.vector << 16) | (f.error_code & 0xffff),
        State::Runnable => ENOSYS,
    })
}

/// Runs the whole suite: loads the driver, runs it (it asks for every
/// attack in turn), tears it down.
pub fn run_suite(v: &Vm) -> Result<Summary, PvError> {
    let space = load_driver(v)?;
    let driver_audit = audit(v, &space);
    let mut procs = Processes::new(*v, space, KERNEL_PROBE_VA);
    let run = procs.run(1);
    let log = core::mem::take(&mut procs.attacks);
    let driver_state = procs.procs.first().map(|p| p.state);
    let torn = procs.teardown();
    run?;
    torn?;
    let driver_audit = driver_audit?;
    let blocked = log.blocked();
    let tried = log.records.len();
    let audits_clean = driver_audit.clean() && log.records.iter().all(|r| r.audit.clean());
    let first = log.records.first().map(|r| r.audit).unwrap_or_default();
    kprintln!("attack audit: driver: {driver_audit}");
    kprintln!("attack audit: each attacker (first shown): {first}");
    let driver_ok = log.bad_secret == 0 && tried == ATTACKS.len() && driver_state == Some(State::Exited(0));
    if !driver_ok {
        kprintln!(
            "attacks: the driver ended {driver_state:?} after {tried} of {} attacks ({} without its secret)",
            ATTACKS.len(),
            log.bad_secret
        );
    }
    kprintln!(
        "attacks: {blocked}/{tried} blocked ({} in the suite), every attacker reaped, audits {}",
        ATTACKS.len(),
        if audits_clean { "clean" } else { "FOUND user-visible kernel or table pages" }
    );
    Ok(Summary { blocked, tried, audits_clean, driver_ok })
}
