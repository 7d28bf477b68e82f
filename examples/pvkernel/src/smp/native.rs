//! Native (PVH entry) SMP: the CPUs from ACPI's MADT, the local APIC
//! (xAPIC MMIO, mapped uncached), INIT-SIPI-SIPI through a real-mode
//! trampoline at 0x8000, fixed-vector IPIs (smp-notes §5).
//!
//! Boot CPU, in order: [`init`] (MADT, LAPIC mapping, IDT gates, this CPU's
//! id), then [`bring_up`] starts each AP in turn:
//!
//! ```text
//! trampoline (0x8000, real mode) -> 32-bit -> PAE, cr3 = TRAMP_L4 (< 4 GiB:
//!   identity first GiB + the kernel half), EFER.LME|NXE, paging -> 64-bit
//!   -> ap_entry(cpu) on its own stack: cr3 = boot L4 (init_mm), TSC_AUX,
//!   GDT/TSS/IDT, LAPIC on -> super::ap_main (online, idle loop)
//! ```
//!
//! `this_cpu` is `rdtscp`'s TSC_AUX (set per CPU; user code cannot change
//! it, unlike a GS base without `swapgs` on every entry). Where RDTSCP is
//! unusable (a Xen PVH dom0) it is the base of this CPU's own GDT (`sgdt`,
//! which no hypervisor here intercepts): the LAPIC id read it replaces is an
//! MMIO access Xen emulates, a VM exit per call (~35 µs under TCG) that also
//! drops the CPU's whole TLB and so hid a missing flush (measured: the
//! `no-tlb-flush` kernel passed its TLB test on PVH). The LAPIC id lookup is
//! left for the few calls before the GDTs are recorded.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::native_acpi::{self, Madt};
use super::{Deadline, NR_CPUS};
use crate::entry::{self, KERNEL_VMA};
use crate::memory::{E820Entry, E820_RAM};
use crate::{traps, x86};

/// Vector of cross-call IPIs (the handler EOIs, then `super::handle_ipi`).
pub const IPI_VECTOR: u8 = 0xf0;
/// Spurious-interrupt vector (SVR low byte); its handler just returns.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// Physical page of the AP trampoline: below 1 MiB, 4 KiB aligned, vector 0x08.
pub const TRAMPOLINE: u64 = 0x8000;

/// Where the LAPIC's 2 MiB frame is mapped: L3 slot 511 of the kernel
/// half's top L3 (shared by every address space through L4 slot 511).
const LAPIC_WINDOW: u64 = 0xffff_ffff_c000_0000;
const MSR_APIC_BASE: u32 = 0x1b;
const MSR_TSC_AUX: u32 = 0xc000_0103;

// xAPIC registers (offsets from the base; smp-notes §5.2).
const LAPIC_ID: u64 = 0x20;
const LAPIC_TPR: u64 = 0x80;
const LAPIC_EOI: u64 = 0xb0;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_ICR_LOW: u64 = 0x300;
const LAPIC_ICR_HIGH: u64 = 0x310;
const ICR_PENDING: u32 = 1 << 12;
const ICR_INIT: u32 = 0x4500; // INIT, level assert, edge, physical
const ICR_STARTUP: u32 = 0x4600; // STARTUP | vector
const ICR_FIXED: u32 = 0x4000; // fixed, assert, edge, physical

/// Main and trap stacks of each AP.
const AP_STACK: usize = 64 * 1024;
const AP_TRAP_STACK: usize = 16 * 1024;
const AP_DF_STACK: usize = 8 * 1024;

/// Page-aligned page-table page in `.bss`.
#[repr(C, align(4096))]
struct Table([u64; 512]);

/// The AP trampoline's root: L4 slot 0 → `TRAMP_PDPT` (identity map of the
/// first GiB, through the boot PD), slots 256..512 copied from the boot L4.
static mut TRAMP_L4: Table = Table([0; 512]);
static mut TRAMP_PDPT: Table = Table([0; 512]);
/// The PD behind [`LAPIC_WINDOW`]: one uncached 2 MiB page.
static mut LAPIC_PD: Table = Table([0; 512]);

static LAPIC_VA: AtomicU64 = AtomicU64::new(0);
static USE_RDTSCP: AtomicBool = AtomicBool::new(false);
/// APIC id of each CPU index (index 0 = the boot CPU).
static APIC_IDS: [AtomicU32; NR_CPUS] = [const { AtomicU32::new(u32::MAX) }; NR_CPUS];
static NR_FOUND: AtomicUsize = AtomicUsize::new(1);
/// Base of each CPU's GDT (index 0 = the boot CPU), for [`this_cpu`]
/// without RDTSCP; 0 = not recorded yet.
static GDT_BASES: [AtomicU64; NR_CPUS] = [const { AtomicU64::new(0) }; NR_CPUS];
static USE_GDT_ID: AtomicBool = AtomicBool::new(false);
/// (trap stack top, #DF stack top) of each AP, read by the AP itself.
static AP_STACKS: [(AtomicU64, AtomicU64); NR_CPUS] = [const { (AtomicU64::new(0), AtomicU64::new(0)) }; NR_CPUS];

extern "C" {
    static smp_tramp_start: u8;
    static smp_tramp_end: u8;
    static smp_tramp_cr3: u8;
    static smp_tramp_stack: u8;
    static smp_tramp_entry: u8;
    static smp_tramp_arg: u8;
    fn smp_ipi_stub();
    fn smp_spurious_stub();
}

global_asm!(
    r#"
    .set TB, {tramp}
    .section .text.smp_tramp, "ax"
    .p2align 4
    .globl smp_tramp_start, smp_tramp_end, smp_tramp_cr3, smp_tramp_stack, smp_tramp_entry, smp_tramp_arg
    /* Copied to TB; the AP starts here in real mode, CS = TB >> 4, IP 0.
       Every address below is absolute (TB + offset). */
    .code16
smp_tramp_start:
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    lgdtl TB + (.Ltramp_gdtr - smp_tramp_start)
    mov %cr0, %eax
    or $1, %eax                             /* PE */
    mov %eax, %cr0
    ljmpl $0x18, $(TB + (.Ltramp32 - smp_tramp_start))

    .code32
.Ltramp32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr4, %eax
    or $0x20, %eax                          /* PAE */
    mov %eax, %cr4
    mov TB + (smp_tramp_cr3 - smp_tramp_start), %eax
    mov %eax, %cr3                          /* 32-bit: the root is below 4 GiB */
    mov $0xC0000080, %ecx                   /* EFER */
    rdmsr
    or $0x900, %eax                         /* LME | NXE */
    wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax                    /* PG | WP | PE */
    mov %eax, %cr0
    ljmp $0x08, $(TB + (.Ltramp64 - smp_tramp_start))

    .code64
.Ltramp64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov TB + (smp_tramp_stack - smp_tramp_start), %rsp
    mov TB + (smp_tramp_arg - smp_tramp_start), %rdi
    mov TB + (smp_tramp_entry - smp_tramp_start), %rax
    xor %ebp, %ebp
    call *%rax
    ud2

    .p2align 3
.Ltramp_gdt:
    .quad 0
    .quad 0x00af9a000000ffff                /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff                /* 0x10: data */
    .quad 0x00cf9a000000ffff                /* 0x18: 32-bit code */
.Ltramp_gdtr:
    .word 4 * 8 - 1
    .long TB + (.Ltramp_gdt - smp_tramp_start)
    .p2align 3
smp_tramp_cr3:   .quad 0
smp_tramp_stack: .quad 0
smp_tramp_entry: .quad 0
smp_tramp_arg:   .quad 0
smp_tramp_end:

    /* Cross-call IPI: save the caller-saved registers (no SSE in this
       kernel), call smp_native_ipi on a 16-byte aligned stack, iretq. Works
       from user mode too (the CPU switched to RSP0). */
    .section .text.smp_ipi, "ax"
    .p2align 4
    .globl smp_ipi_stub
smp_ipi_stub:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    push %rbp
    mov %rsp, %rbp
    and $-16, %rsp
    call smp_native_ipi
    mov %rbp, %rsp
    pop %rbp
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    iretq

    /* Spurious interrupt: no EOI (Intel SDM 10.9). */
    .globl smp_spurious_stub
smp_spurious_stub:
    iretq
"#,
    tramp = const TRAMPOLINE,
    options(att_syntax)
);

/// Why native SMP could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeSmpError {
    /// The MADT could not be read.
    Acpi(native_acpi::AcpiError),
    /// The trampoline page is not usable RAM in the E820 map.
    TrampolineNotRam(u64),
    /// The trampoline page is in the free list: the allocator could hand it out.
    TrampolineNotReserved(u64),
    /// The LAPIC base is not where a 2 MiB uncached page can map it.
    LapicBase(u64),
    /// The boot CPU's APIC id is not in the MADT.
    BspNotInMadt(u32),
    /// The boot page tables do not have the expected shape.
    BootTables,
}

fn lapic_read(reg: u64) -> u32 {
    let base = LAPIC_VA.load(Ordering::Acquire);
    // SAFETY: `base` maps the LAPIC page uncached (set by `init` before it
    // is published); reads of these registers have no side effects.
    unsafe { ((base + reg) as *const u32).read_volatile() }
}

fn lapic_write(reg: u64, value: u32) {
    let base = LAPIC_VA.load(Ordering::Acquire);
    // SAFETY: as for `lapic_read`; the callers write defined values.
    unsafe { ((base + reg) as *mut u32).write_volatile(value) }
}

fn has_rdtscp() -> bool {
    // CPUID.80000001h:EDX[27].
    let max = core::arch::x86_64::__cpuid(0x8000_0000).eax;
    max >= 0x8000_0001 && core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 27) != 0
}

/// Reads a 512-entry table at physical `paddr` (< 1 GiB) through the boot
/// mapping of the first GiB.
fn boot_table(paddr: u64) -> Result<*mut u64, NativeSmpError> {
    if paddr == 0 || paddr >= 1 << 30 {
        return Err(NativeSmpError::BootTables);
    }
    Ok((KERNEL_VMA + paddr) as *mut u64)
}

fn entry_addr(e: u64) -> u64 {
    e & 0x000f_ffff_ffff_f000
}

fn boot_l4() -> *mut u64 {
    &raw mut entry::boot_pml4 as *mut u64
}

/// Boot-CPU setup: finds the CPUs in the MADT (RSDP `rsdp` from the PVH
/// start info), checks the trampoline page is RAM in `e820`, maps the LAPIC
/// uncached, enables it, installs the IPI and spurious gates, and makes
/// `this_cpu` work (this CPU is 0). Runs before `vm::boot`, on the boot L4.
pub fn init(rsdp: u64, e820: &[E820Entry]) -> Result<Madt, NativeSmpError> {
    let madt = native_acpi::read_madt(rsdp).map_err(NativeSmpError::Acpi)?;
    let page = TRAMPOLINE..TRAMPOLINE + 4096;
    if !e820.iter().any(|e| e.kind == E820_RAM && e.addr <= page.start && e.addr + e.size >= page.end) {
        return Err(NativeSmpError::TrampolineNotRam(TRAMPOLINE));
    }
    // memory.rs keeps the first MiB out of the free list; the boot and frame
    // allocators only hand out what was in it, so nobody else has this page
    // (it was never free: neither still free nor handed out since boot).
    let pfn = TRAMPOLINE >> 12;
    if crate::memory::free_frames().contains(pfn) || crate::memory::was_allocated(pfn) {
        return Err(NativeSmpError::TrampolineNotReserved(TRAMPOLINE));
    }
    // SAFETY: the APIC base MSR exists on every x86-64 CPU (ring 0).
    let base = unsafe { x86::rdmsr(MSR_APIC_BASE) } & 0x000f_ffff_ffff_f000;
    if base & 0x1f_ffff != 0 || base >= 1 << 32 {
        return Err(NativeSmpError::LapicBase(base));
    }
    // SAFETY: boot-time, one CPU: the boot L4's slot 511 is the kernel's top
    // L3 (entry.rs) whose slot 511 is unused; LAPIC_PD is a static page that
    // becomes the PD there, mapping the LAPIC frame uncached (PCD|PWT), NX.
    unsafe {
        let top_l3 = boot_table(entry_addr(boot_l4().add(511).read_volatile()))?;
        if top_l3.add(511).read_volatile() != 0 {
            return Err(NativeSmpError::BootTables);
        }
        let pd = &raw mut LAPIC_PD as *mut u64;
        pd.write_volatile(base | 0x9b | 1 << 63); // P RW PWT PCD PS, NX
        top_l3.add(511).write_volatile((pd as u64 - KERNEL_VMA) | 0x3);
        x86::invlpg(LAPIC_WINDOW);
    }
    LAPIC_VA.store(LAPIC_WINDOW, Ordering::Release);
    let bsp_id = lapic_read(LAPIC_ID) >> 24;
    let Some(bsp_index) = madt.apic_ids[..madt.count].iter().position(|&id| id == bsp_id) else {
        return Err(NativeSmpError::BspNotInMadt(bsp_id));
    };
    // CPU 0 is the boot CPU; the others follow in MADT order.
    APIC_IDS[0].store(bsp_id, Ordering::Relaxed);
    let mut n = 1;
    for (i, &id) in madt.apic_ids[..madt.count].iter().enumerate() {
        if i != bsp_index {
            APIC_IDS[n].store(id, Ordering::Relaxed);
            n += 1;
        }
    }
    NR_FOUND.store(n, Ordering::Release);
    enable_this_lapic();
    traps::set_native_interrupt_gate(IPI_VECTOR, smp_ipi_stub as *const () as u64);
    traps::set_native_interrupt_gate(SPURIOUS_VECTOR, smp_spurious_stub as *const () as u64);
    // Measured: in a Xen 4.17 PVH dom0 under QEMU TCG, `rdtscp` raises #GP
    // although CPUID advertises it; the local APIC id read works there.
    let xen_pvh = crate::platform::is_xen_pvh();
    if has_rdtscp() && !xen_pvh {
        // SAFETY: RDTSCP (hence TSC_AUX) is present (checked).
        unsafe { x86::wrmsr(MSR_TSC_AUX, 0) };
        USE_RDTSCP.store(true, Ordering::Release);
    } else {
        GDT_BASES[0].store(traps::gdt_base(), Ordering::Release);
        USE_GDT_ID.store(true, Ordering::Release);
    }
    Ok(madt)
}

/// Software-enables this CPU's LAPIC (SVR bit 8, spurious vector) and lets
/// every priority through (TPR 0).
fn enable_this_lapic() {
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_SVR, 0x100 | SPURIOUS_VECTOR as u32);
}

/// Busy-waits until this CPU's ICR has delivered (bounded).
fn wait_icr_idle() -> bool {
    let d = Deadline::after_ms(100);
    while lapic_read(LAPIC_ICR_LOW) & ICR_PENDING != 0 {
        if d.passed() {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// Sends ICR command `low` to APIC id `dest` (events masked around the
/// two writes, so an interrupt handler's IPI cannot interleave).
fn send_icr(dest: u32, low: u32) -> bool {
    let was = mask_events();
    let ok = wait_icr_idle() && {
        lapic_write(LAPIC_ICR_HIGH, dest << 24);
        lapic_write(LAPIC_ICR_LOW, low);
        wait_icr_idle()
    };
    restore_events(was);
    ok
}

/// Waits about `us` microseconds (TSC, see [`Deadline`]).
fn delay_us(us: u64) {
    let d = Deadline::after_us(us);
    while !d.passed() {
        core::hint::spin_loop();
    }
}

/// Starts CPUs 1..`want` (at most those the MADT lists); returns how many
/// are online. A CPU that does not come up is logged and skipped.
pub fn bring_up(want: usize) -> usize {
    let found = NR_FOUND.load(Ordering::Acquire);
    if LAPIC_VA.load(Ordering::Acquire) == 0 {
        return 1;
    }
    if let Err(e) = prepare_trampoline() {
        log::warn!("smp: no trampoline ({e:?}); staying on one CPU");
        return 1;
    }
    for (cpu, id) in APIC_IDS.iter().enumerate().take(found.min(want)).skip(1) {
        let id = id.load(Ordering::Relaxed);
        match start_ap(cpu, id) {
            Ok(()) => {}
            Err(why) => log::warn!("smp: CPU {cpu} (APIC id {id}) did not come up: {why}; carrying on without it"),
        }
    }
    super::online().count()
}

/// Copies the trampoline to [`TRAMPOLINE`] and builds its root.
fn prepare_trampoline() -> Result<(), NativeSmpError> {
    let start = &raw const smp_tramp_start as u64;
    let len = &raw const smp_tramp_end as u64 - start;
    // SAFETY: the trampoline page is RAM below 1 MiB (checked in `init`)
    // that the frame allocator never hands out (memory.rs keeps the first
    // MiB), reachable writable at KERNEL_VMA + paddr; the root tables are
    // statics, built while no AP runs.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, (KERNEL_VMA + TRAMPOLINE) as *mut u8, len as usize);
        let top_l3 = boot_table(entry_addr(boot_l4().add(511).read_volatile()))?;
        // The boot PD maps the first GiB (2 MiB pages) for the kernel image
        // (top L3 slot 510, entry.rs): reused as the identity map.
        let boot_pd = entry_addr(top_l3.add(510).read_volatile());
        if boot_pd == 0 {
            return Err(NativeSmpError::BootTables);
        }
        let pdpt = &raw mut TRAMP_PDPT as *mut u64;
        pdpt.write_volatile(boot_pd | 0x3);
        let l4 = &raw mut TRAMP_L4 as *mut u64;
        l4.write_volatile((pdpt as u64 - KERNEL_VMA) | 0x3);
        for slot in 256..512 {
            l4.add(slot).write_volatile(boot_l4().add(slot).read_volatile());
        }
    }
    Ok(())
}

fn tramp_slot(sym: *const u8) -> *mut u64 {
    (KERNEL_VMA + TRAMPOLINE + (sym as u64 - &raw const smp_tramp_start as u64)) as *mut u64
}

/// Gives `cpu` its stacks, patches the trampoline, sends INIT-SIPI-SIPI and
/// waits (bounded) for the CPU to mark itself online.
fn start_ap(cpu: usize, apic_id: u32) -> Result<(), &'static str> {
    let stack = alloc::vec![0u8; AP_STACK].leak();
    let trap = alloc::vec![0u8; AP_TRAP_STACK].leak();
    let df = alloc::vec![0u8; AP_DF_STACK].leak();
    let top = |s: &mut [u8]| (s.as_mut_ptr() as u64 + s.len() as u64) & !15;
    AP_STACKS[cpu].0.store(top(trap), Ordering::Relaxed);
    AP_STACKS[cpu].1.store(top(df), Ordering::Relaxed);
    let root = &raw const TRAMP_L4 as u64 - KERNEL_VMA;
    // SAFETY: the slots lie in the trampoline copy (see `prepare_trampoline`);
    // no AP is running the trampoline now (they start one at a time).
    unsafe {
        tramp_slot(&raw const smp_tramp_cr3).write_volatile(root);
        tramp_slot(&raw const smp_tramp_stack).write_volatile(top(stack));
        tramp_slot(&raw const smp_tramp_entry).write_volatile(ap_entry as *const () as u64);
        tramp_slot(&raw const smp_tramp_arg).write_volatile(cpu as u64);
    }
    core::sync::atomic::fence(Ordering::SeqCst);
    // Linux `wakeup_secondary_cpu_via_init` (arch/x86/kernel/smpboot.c):
    // INIT, a pause, then STARTUP twice unless the CPU is already up.
    if !send_icr(apic_id, ICR_INIT) {
        return Err("INIT not delivered");
    }
    delay_us(10_000);
    let sipi = ICR_STARTUP | (TRAMPOLINE >> 12) as u32;
    for _ in 0..2 {
        // `no-ap-startup` (test only): the STARTUP IPIs are never sent.
        if !crate::sabotage::NO_AP_STARTUP && !send_icr(apic_id, sipi) {
            return Err("STARTUP not delivered");
        }
        let d = Deadline::after_ms(200);
        while !d.passed() {
            if super::online().contains(cpu) {
                return Ok(());
            }
            core::hint::spin_loop();
        }
    }
    let d = Deadline::after_ms(1000);
    while !d.passed() {
        if super::online().contains(cpu) {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err("no sign of life within the bounded wait")
}

/// First Rust code of an AP (from the trampoline, on its own stack, still
/// on the trampoline root).
extern "C" fn ap_entry(cpu: u64) -> ! {
    let cpu = cpu as usize;
    // SAFETY: the boot L4 is init_mm's root: it maps the kernel half the
    // trampoline root copied (code, this stack in the heap, direct map).
    unsafe { x86::write_cr3(boot_l4() as u64 - KERNEL_VMA) };
    if USE_RDTSCP.load(Ordering::Acquire) {
        // SAFETY: RDTSCP/TSC_AUX present (checked by the boot CPU, same model).
        unsafe { x86::wrmsr(MSR_TSC_AUX, cpu as u64) };
    }
    let (trap, df) = (&AP_STACKS[cpu].0, &AP_STACKS[cpu].1);
    traps::init_native_ap(trap.load(Ordering::Relaxed), df.load(Ordering::Relaxed));
    GDT_BASES[cpu].store(traps::gdt_base(), Ordering::Release);
    enable_this_lapic();
    super::ap_main(cpu)
}

/// The CPU index running this code.
pub fn this_cpu() -> usize {
    if USE_RDTSCP.load(Ordering::Relaxed) {
        let aux: u32;
        // SAFETY: RDTSCP is present (checked); it only reads the TSC and TSC_AUX.
        unsafe { asm!("rdtscp", out("ecx") aux, out("eax") _, out("edx") _, options(nomem, nostack, preserves_flags)) };
        return aux as usize;
    }
    if USE_GDT_ID.load(Ordering::Relaxed) {
        let base = traps::gdt_base();
        if let Some(cpu) = GDT_BASES.iter().position(|b| b.load(Ordering::Relaxed) == base) {
            return cpu;
        }
    }
    if LAPIC_VA.load(Ordering::Acquire) == 0 {
        return 0;
    }
    let id = lapic_read(LAPIC_ID) >> 24;
    APIC_IDS.iter().position(|a| a.load(Ordering::Relaxed) == id).unwrap_or(0)
}

/// Interrupts `cpu` with [`IPI_VECTOR`] (its handler calls `super::handle_ipi`).
pub fn send_ipi(cpu: usize) {
    let Some(id) = APIC_IDS.get(cpu).map(|a| a.load(Ordering::Relaxed)) else { return };
    if id != u32::MAX && LAPIC_VA.load(Ordering::Acquire) != 0 {
        send_icr(id, ICR_FIXED | IPI_VECTOR as u32);
    }
}

#[no_mangle]
extern "C" fn smp_native_ipi() {
    // EOI first: an IPI that arrives while we work stays pending (IRR) and
    // runs the handler again after iretq, so no request is missed.
    lapic_write(LAPIC_EOI, 0);
    super::handle_ipi();
}

fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: reading rflags has no side effects.
    unsafe { asm!("pushfq", "pop {}", out(reg) flags, options(nomem, preserves_flags)) };
    flags & (1 << 9) != 0
}

/// Masks interrupts on this CPU (`cli`); returns whether they were masked.
pub fn mask_events() -> bool {
    let was_masked = !interrupts_enabled();
    // SAFETY: native ring 0.
    unsafe { x86::cli() };
    was_masked
}

/// Unmasks interrupts again unless `was_masked`.
pub fn restore_events(was_masked: bool) {
    if !was_masked {
        // SAFETY: native ring 0; the IDT handles every vector we raise.
        unsafe { asm!("sti", options(nomem, nostack)) };
    }
}

/// Waits for the next interrupt: `sti; hlt` (the `sti` shadow makes the
/// pair atomic, so an IPI sent after the caller's last check still wakes
/// us), then the previous interrupt state again.
pub fn idle_wait() {
    let was_masked = !interrupts_enabled();
    // SAFETY: native ring 0; an interrupt ends the halt.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
    if was_masked {
        // SAFETY: native ring 0.
        unsafe { x86::cli() };
    }
}
