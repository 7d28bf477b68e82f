//! Exceptions.
//!
//! * Native: our own GDT (kernel code 0x08, data 0x10, user data 0x1b, user
//!   code 0x23, TSS 0x28), a TSS whose RSP0 is the trap stack (IST1 for
//!   #DF), and an IDT with stubs for vectors 0..31.
//! * Xen PV: `set_trap_table` with the same stubs prefixed by `pop %rcx;
//!   pop %r11` (Xen's bounce frame carries them), `stack_switch` to the trap
//!   stack for entries from user mode, and event/failsafe callbacks.
//!
//! Every stub pushes (error code or 0, vector) and jumps to `trap_common`,
//! which sends user-mode traps to `user_trap_entry` (see `user.rs`) and
//! kernel-mode traps to [`kernel_trap`], which panics with a register dump.

use core::arch::{asm, global_asm};
use core::fmt;

use crate::platform;
use crate::x86;
use crate::xen::{self, hypercall};

/// Kernel code selector (native).
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector (native).
pub const KERNEL_DS: u16 = 0x10;
/// User data selector (native, RPL 3).
pub const USER_DS: u16 = 0x1b;
/// User 64-bit code selector (native, RPL 3).
pub const USER_CS: u16 = 0x23;
const TSS_SEL: u16 = 0x28;

/// Size of each per-vector stub (they are 16-byte aligned).
pub const STUB_STRIDE: usize = 16;
const TRAP_STACK_SIZE: usize = 16 * 1024;
const DF_STACK_SIZE: usize = 8 * 1024;

extern "C" {
    static native_trap_stubs: u8;
    static xen_trap_stubs: u8;
    static trap_stack_top: u8;
    static df_stack_top: u8;
    fn xen_event_callback();
    fn xen_failsafe_callback();
}

global_asm!(
    r#"
    .macro NSTUB vec, err
    .p2align 4
    .if \err == 0
    push $0
    .endif
    push $\vec
    jmp trap_common
    .endm

    .macro XSTUB vec, err
    .p2align 4
    pop %rcx
    pop %r11
    .if \err == 0
    push $0
    .endif
    push $\vec
    jmp trap_common
    .endm

    .section .text.traps, "ax"
    .p2align 4
    .globl native_trap_stubs
native_trap_stubs:
    NSTUB 0,0
    NSTUB 1,0
    NSTUB 2,0
    NSTUB 3,0
    NSTUB 4,0
    NSTUB 5,0
    NSTUB 6,0
    NSTUB 7,0
    NSTUB 8,1
    NSTUB 9,0
    NSTUB 10,1
    NSTUB 11,1
    NSTUB 12,1
    NSTUB 13,1
    NSTUB 14,1
    NSTUB 15,0
    NSTUB 16,0
    NSTUB 17,1
    NSTUB 18,0
    NSTUB 19,0
    NSTUB 20,0
    NSTUB 21,1
    NSTUB 22,0
    NSTUB 23,0
    NSTUB 24,0
    NSTUB 25,0
    NSTUB 26,0
    NSTUB 27,0
    NSTUB 28,0
    NSTUB 29,1
    NSTUB 30,1
    NSTUB 31,0

    .p2align 4
    .globl xen_trap_stubs
xen_trap_stubs:
    XSTUB 0,0
    XSTUB 1,0
    XSTUB 2,0
    XSTUB 3,0
    XSTUB 4,0
    XSTUB 5,0
    XSTUB 6,0
    XSTUB 7,0
    XSTUB 8,1
    XSTUB 9,0
    XSTUB 10,1
    XSTUB 11,1
    XSTUB 12,1
    XSTUB 13,1
    XSTUB 14,1
    XSTUB 15,0
    XSTUB 16,0
    XSTUB 17,1
    XSTUB 18,0
    XSTUB 19,0
    XSTUB 20,0
    XSTUB 21,1
    XSTUB 22,0
    XSTUB 23,0
    XSTUB 24,0
    XSTUB 25,0
    XSTUB 26,0
    XSTUB 27,0
    XSTUB 28,0
    XSTUB 29,1
    XSTUB 30,1
    XSTUB 31,0

    /* stack: vector, error, rip, cs, rflags, rsp, ss */
trap_common:
    testb $3, 24(%rsp)
    jnz user_trap_entry
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    and $-16, %rsp
    call kernel_trap
    ud2

    /* Xen event upcall, events masked, on the interrupted kernel stack (or
       the stack_switch stack from user mode): rcx, r11, rip, cs, rflags,
       rsp, ss. Saves what a C call clobbers, scans this vCPU's pending
       ports (xen_evtchn_upcall), and returns with the iret hypercall, which
       unmasks again if the interrupted context had events on. */
    .globl xen_event_callback
xen_event_callback:
    pop %rcx
    pop %r11
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    push %rbx
    mov %rsp, %rbx
    and $-16, %rsp
    call xen_evtchn_upcall
    mov %rbx, %rsp
    pop %rbx
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    pushq $0                            /* iret flags */
    jmp hypercall_page + 23 * 32

    .globl xen_failsafe_callback
xen_failsafe_callback:
    and $-16, %rsp
    call xen_failsafe
    ud2

    .section .bss.trap_stacks, "aw", @nobits
    .p2align 12
    .skip {trap_stack}
    .globl trap_stack_top
trap_stack_top:
    .skip {df_stack}
    .globl df_stack_top
df_stack_top:
"#,
    trap_stack = const TRAP_STACK_SIZE,
    df_stack = const DF_STACK_SIZE,
    options(att_syntax)
);

/// Registers saved by `trap_common` for a kernel-mode trap (lowest address
/// first).
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Name of an exception vector.
pub fn vector_name(v: u64) -> &'static str {
    match v {
        0 => "#DE",
        1 => "#DB",
        2 => "NMI",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        _ => "?",
    }
}

/// Faulting address of the last page fault (CR2; vcpu_info.arch.cr2 on Xen).
pub fn fault_address() -> u64 {
    if platform::is_xen() {
        xen::current_cr2()
    } else {
        x86::read_cr2()
    }
}

impl fmt::Display for TrapFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} (vector {}) error {:#x} at rip {:#018x} cs {:#x} rflags {:#x} rsp {:#018x} ss {:#x}",
            vector_name(self.vector),
            self.vector,
            self.error_code,
            self.rip,
            self.cs,
            self.rflags,
            self.rsp,
            self.ss
        )?;
        writeln!(f, "rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}", self.rax, self.rbx, self.rcx, self.rdx)?;
        writeln!(f, "rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}", self.rsi, self.rdi, self.rbp, self.r8)?;
        writeln!(f, "r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}", self.r9, self.r10, self.r11, self.r12)?;
        write!(f, "r13 {:#018x} r14 {:#018x} r15 {:#018x}", self.r13, self.r14, self.r15)
    }
}

/// Kernel-mode exception: fatal.
#[no_mangle]
extern "C" fn kernel_trap(frame: &TrapFrame) -> ! {
    let cr2 = if frame.vector == 14 { fault_address() } else { 0 };
    panic!("kernel exception: {}\ncr2 {:#x}", frame, cr2);
}

#[no_mangle]
extern "C" fn xen_failsafe() -> ! {
    panic!("Xen failsafe callback (bad segment on return to guest)");
}

fn stub_addr(base: *const u8, vector: usize) -> u64 {
    base as u64 + (vector * STUB_STRIDE) as u64
}

// ------------------------------------------------------------------ native

#[repr(C, packed)]
struct Tss {
    _res0: u32,
    rsp: [u64; 3],
    _res1: u64,
    ist: [u64; 7],
    _res2: u64,
    _res3: u16,
    iomap_base: u16,
}

static mut TSS: Tss = Tss {
    _res0: 0,
    rsp: [0; 3],
    _res1: 0,
    ist: [0; 7],
    _res2: 0,
    _res3: 0,
    iomap_base: core::mem::size_of::<Tss>() as u16,
};

static mut GDT: [u64; 7] = [
    0,
    0x00af_9a00_0000_ffff, // 0x08 kernel code64
    0x00cf_9200_0000_ffff, // 0x10 kernel data
    0x00cf_f200_0000_ffff, // 0x18 user data (DPL 3)
    0x00af_fa00_0000_ffff, // 0x20 user code64 (DPL 3)
    0,                     // 0x28 TSS (low)
    0,                     // 0x30 TSS (high)
];

#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Installs GDT, TSS and IDT (native only, the boot CPU).
pub fn init_native() {
    // SAFETY: single-threaded early boot on the BSP; the statics are only
    // touched here and by the CPU after loading.
    unsafe {
        let tss = &raw mut TSS;
        (*tss).rsp[0] = (&raw const trap_stack_top) as u64;
        (*tss).ist[0] = (&raw const df_stack_top) as u64;
        load_gdt_and_tss(&raw mut GDT as *mut u64, tss);

        let stubs = &raw const native_trap_stubs;
        let idt = &raw mut IDT as *mut u64;
        for v in 0..32usize {
            let ist: u64 = if v == 8 { 1 } else { 0 };
            write_gate(idt, v, stub_addr(stubs, v), ist);
        }
        load_idt();
    }
}

/// Fills IDT entry `v` with a present, DPL-0 interrupt gate (IF cleared on
/// entry) to `off`, on IST `ist` (0: the current or RSP0 stack).
///
/// # Safety
/// `idt` is the 256-entry IDT; `off` is a handler that ends in `iretq`.
unsafe fn write_gate(idt: *mut u64, v: usize, off: u64, ist: u64) {
    let low = (off & 0xffff)
        | ((KERNEL_CS as u64) << 16)
        | (ist << 32)
        | (0x8eu64 << 40) // present, DPL 0, interrupt gate
        | (((off >> 16) & 0xffff) << 48);
    // SAFETY: v < 256 (callers), so both words lie in the IDT.
    unsafe {
        idt.add(2 * v).write_volatile(low);
        idt.add(2 * v + 1).write_volatile(off >> 32);
    }
}

/// Loads the shared IDT on this CPU.
///
/// # Safety
/// Native ring 0; the IDT's gates point at valid handlers.
unsafe fn load_idt() {
    let idtr = DescriptorPointer { limit: (256 * 16 - 1) as u16, base: &raw const IDT as u64 };
    // SAFETY: the IDT is a static that lives forever (caller: ring 0).
    unsafe { asm!("lidt ({})", in(reg) &raw const idtr, options(att_syntax, nostack)) };
}

/// Puts the TSS descriptor for `tss` into `gdt` (7 entries, the layout of
/// [`GDT`]), loads both, reloads the segment registers and the task register.
///
/// # Safety
/// Native ring 0; `gdt` and `tss` live forever and belong to this CPU only
/// (`ltr` marks the descriptor busy).
unsafe fn load_gdt_and_tss(gdt: *mut u64, tss: *mut Tss) {
    let base = tss as u64;
    let limit = (core::mem::size_of::<Tss>() - 1) as u64;
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89u64 << 40) // present, 64-bit TSS (available)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    let gdtr = DescriptorPointer { limit: (7 * 8 - 1) as u16, base: gdt as u64 };
    // SAFETY: the caller gives a 7-entry GDT and a TSS that outlive the CPU's
    // use of them; the code/data selectors are those of the template.
    unsafe {
        gdt.add(5).write(low);
        gdt.add(6).write(base >> 32);
        asm!(
            "lgdt ({gdtr})",
            "pushq ${cs}",
            "lea 2f(%rip), %rax",
            "pushq %rax",
            "lretq",
            "2:",
            "mov ${ds}, %eax",
            "mov %eax, %ds",
            "mov %eax, %es",
            "mov %eax, %ss",
            "ltr %cx",
            gdtr = in(reg) &raw const gdtr,
            cs = const KERNEL_CS,
            ds = const KERNEL_DS,
            in("cx") TSS_SEL,
            out("rax") _,
            options(att_syntax)
        );
    }
}

/// Installs an interrupt gate for `vector` (>= 32) to `handler` in the IDT
/// every CPU shares (native only). The handler must end in `iretq`.
pub fn set_native_interrupt_gate(vector: u8, handler: u64) {
    if vector < 32 {
        return;
    }
    // SAFETY: vector < 256; the IDT is a static and a gate is written as two
    // volatile stores before any CPU is told to raise the vector.
    unsafe { write_gate(&raw mut IDT as *mut u64, vector as usize, handler, 0) };
}

/// The base of the GDT this CPU has loaded (each native CPU has its own).
pub fn gdt_base() -> u64 {
    let mut gdtr = DescriptorPointer { limit: 0, base: 0 };
    // SAFETY: `sgdt` only stores the 10-byte GDTR into `gdtr`.
    unsafe { asm!("sgdt [{}]", in(reg) &raw mut gdtr, options(nostack, preserves_flags)) };
    gdtr.base
}

/// Per-CPU GDT and TSS of an application processor.
#[repr(C, align(16))]
struct ApTables {
    gdt: [u64; 7],
    tss: Tss,
}

/// Gives this AP (native) its own GDT and TSS, with `stack_top` as the
/// stack for entries from user mode and `df_top` for #DF, and loads
/// the IDT the boot CPU built. Called once by each AP on its own stack.
pub fn init_native_ap(stack_top: u64, df_top: u64) {
    // SAFETY: reading the template; only `init_native` writes it, before
    // any AP starts.
    let template = unsafe { (&raw const GDT).read() };
    let tables = alloc::boxed::Box::leak(alloc::boxed::Box::new(ApTables {
        gdt: template,
        tss: Tss {
            _res0: 0,
            rsp: [stack_top, 0, 0],
            _res1: 0,
            ist: [df_top, 0, 0, 0, 0, 0, 0],
            _res2: 0,
            _res3: 0,
            iomap_base: core::mem::size_of::<Tss>() as u16,
        },
    }));
    // SAFETY: ring 0 on the AP; the tables are leaked (live forever) and
    // used by this CPU only; the IDT is complete (the BSP built it first).
    unsafe {
        load_gdt_and_tss(tables.gdt.as_mut_ptr(), &raw mut tables.tss);
        load_idt();
    }
}

/// Masks both legacy PICs (the firmware leaves IRQ0 -> vector 8 unmasked).
pub fn mask_pic() {
    // SAFETY: standard 8259 mask registers, native ring 0.
    unsafe {
        x86::outb(0x21, 0xff);
        x86::outb(0xa1, 0xff);
    }
}

// --------------------------------------------------------------------- xen

/// The virtual-IDT entry for exception `vector` (Xen PV), if it has one:
/// vectors 0..20 but NMI (its own callback) and 15 (reserved); #BP and #OF
/// may be raised from user mode. The same entries go to `set_trap_table` on
/// vCPU 0 and into each AP's `vcpu_guest_context.trap_ctxt[vector]`.
pub fn xen_trap_info(vector: u8) -> Option<hypercall::TrapInfo> {
    if vector >= 20 || vector == 2 || vector == 15 {
        return None;
    }
    let dpl = if vector == 3 || vector == 4 { 3 } else { 0 };
    Some(hypercall::TrapInfo {
        vector,
        flags: dpl | 4, // mask events on entry
        cs: hypercall::FLAT_CS64,
        _pad: 0,
        address: stub_addr(&raw const xen_trap_stubs, vector as usize),
    })
}

/// Entry point Xen calls with pending events (every vCPU).
pub fn xen_event_callback_addr() -> u64 {
    xen_event_callback as *const () as u64
}

/// Entry point Xen calls when it cannot load the guest's segments.
pub fn xen_failsafe_callback_addr() -> u64 {
    xen_failsafe_callback as *const () as u64
}

/// Registers the virtual IDT, the user->kernel stack and the event and
/// failsafe callbacks of the boot vCPU (Xen PV only; the other vCPUs get
/// theirs in their initial context, see `smp::xen`).
pub fn init_xen() -> Result<(), hypercall::XenError> {
    let mut table = [hypercall::TrapInfo::default(); 33];
    let mut n = 0;
    for v in 0..32u8 {
        if let Some(t) = xen_trap_info(v) {
            table[n] = t;
            n += 1;
        }
    }
    hypercall::set_trap_table(&table[..n + 1])?;
    let top = (&raw const trap_stack_top) as u64;
    hypercall::stack_switch(hypercall::FLAT_SS64, top)?;
    hypercall::register_callback(hypercall::CALLBACKTYPE_EVENT, 0, xen_event_callback_addr())?;
    hypercall::register_callback(
        hypercall::CALLBACKTYPE_FAILSAFE,
        hypercall::CALLBACKF_MASK_EVENTS,
        xen_failsafe_callback_addr(),
    )?;
    Ok(())
}
