//! Boot entry points, Xen ELF notes, the hypercall page and the native boot
//! page tables.
//!
//! One ELF, two entries:
//! * `pvh_start` (32-bit, physical, advertised by `XEN_ELFNOTE_PHYS32_ENTRY`):
//!   QEMU's PVH loader enters here with paging off and `%ebx` = physical
//!   address of `hvm_start_info`. We load boot page tables that identity-map
//!   and higher-half-map the first GiB with 2 MiB pages, enable long mode,
//!   and jump to `pvh_rust_entry(start_info_paddr)` on the higher-half stack.
//! * `_start` (64-bit, virtual, `XEN_ELFNOTE_ENTRY` and `e_entry`): Xen's PV
//!   dom0 builder enters here with `%rsi` = VA of `start_info`; we switch to
//!   our own stack and call `xen_rust_entry(start_info)`.
//!
//! Both paths zero `.bss` before touching the stack (which lives in `.bss`).

use core::arch::global_asm;

/// Virtual address the kernel image's physical address 0 maps to.
pub const KERNEL_VMA: u64 = 0xffff_ffff_8000_0000;

/// Size of the boot (and main kernel) stack.
pub const BOOT_STACK_SIZE: usize = 64 * 1024;

extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
    /// Xen fills this page with hypercall stubs (`HYPERCALL_PAGE` note).
    pub static hypercall_page: [u8; 4096];
    /// Native boot L4 (the kernel root natively).
    pub static mut boot_pml4: [u64; 512];
}

/// Virtual address range `[start, end)` of the loaded image, including `.bss`.
pub fn kernel_image_range() -> (u64, u64) {
    ((&raw const __kernel_start) as u64, (&raw const __kernel_end) as u64)
}

// ---------------------------------------------------------------------------
// Xen ELF notes (xen/include/public/elfnote.h). Name "Xen\0", 4-byte aligned.
// ---------------------------------------------------------------------------
global_asm!(
    r#"
    .set KERNEL_VMA, 0xffffffff80000000

    .macro XEN_NOTE_BEGIN type, name
    .p2align 2
    .long 4
    .long .Ldesc_end_\name - .Ldesc_\name
    .long \type
    .asciz "Xen"
    .p2align 2
.Ldesc_\name:
    .endm

    .macro XEN_NOTE_END name
.Ldesc_end_\name:
    .p2align 2
    .endm

    .section .note.xen, "a", @note
    XEN_NOTE_BEGIN 6, guest_os
    .asciz "pvkernel"
    XEN_NOTE_END guest_os

    XEN_NOTE_BEGIN 7, guest_version
    .asciz "0.1"
    XEN_NOTE_END guest_version

    XEN_NOTE_BEGIN 5, xen_version
    .asciz "xen-3.0"
    XEN_NOTE_END xen_version

    XEN_NOTE_BEGIN 8, loader
    .asciz "generic"
    XEN_NOTE_END loader

    XEN_NOTE_BEGIN 3, virt_base
    .quad KERNEL_VMA
    XEN_NOTE_END virt_base

    XEN_NOTE_BEGIN 4, paddr_offset
    .quad 0
    XEN_NOTE_END paddr_offset

    XEN_NOTE_BEGIN 1, entry
    .quad _start
    XEN_NOTE_END entry

    XEN_NOTE_BEGIN 2, hypercall_page
    .quad hypercall_page
    XEN_NOTE_END hypercall_page

    XEN_NOTE_BEGIN 10, features
    .asciz "!writable_page_tables|pae_pgdir_above_4gb"
    XEN_NOTE_END features

    XEN_NOTE_BEGIN 9, pae_mode
    .asciz "yes"
    XEN_NOTE_END pae_mode

    /* XENFEAT_pae_pgdir_above_4gb (4) | XENFEAT_dom0 (11) */
    XEN_NOTE_BEGIN 17, supported_features
    .long (1 << 4) | (1 << 11)
    XEN_NOTE_END supported_features

    XEN_NOTE_BEGIN 18, phys32_entry
    .long pvh_start - KERNEL_VMA
    XEN_NOTE_END phys32_entry

    /* ------------------------------------------------------------------ */
    /* Hypercall page: Xen overwrites it with 32-byte stubs.              */
    /* ------------------------------------------------------------------ */
    .section .text.hypercall_page, "ax"
    .p2align 12
    .globl hypercall_page
hypercall_page:
    .fill 4096, 1, 0xcc

    /* ------------------------------------------------------------------ */
    /* Boot GDT used for the 32 -> 64-bit transition (PVH only).          */
    /* ------------------------------------------------------------------ */
    .section .rodata.boot, "a"
    .p2align 3
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit kernel code */
    .quad 0x00cf92000000ffff        /* 0x10: kernel data */
boot_gdt_end:
    .p2align 3
boot_gdtr32:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt - KERNEL_VMA

    /* ------------------------------------------------------------------ */
    /* Native boot page tables: first GiB identity-mapped (L4 slot 0) and  */
    /* at KERNEL_VMA (L4 slot 511, L3 slot 510), 2 MiB pages, supervisor.  */
    /* boot_pd is filled by pvh_start. Kept in .data (not zeroed).         */
    /* ------------------------------------------------------------------ */
    .section .data.boot_pt, "aw"
    .p2align 12
    .globl boot_pml4
boot_pml4:
    .quad (boot_pdpt_low - KERNEL_VMA) + 0x3
    .fill 510, 8, 0
    .quad (boot_pdpt_high - KERNEL_VMA) + 0x3
boot_pdpt_low:
    .quad (boot_pd - KERNEL_VMA) + 0x3
    .fill 511, 8, 0
boot_pdpt_high:
    .fill 510, 8, 0
    .quad (boot_pd - KERNEL_VMA) + 0x3
    .quad 0
boot_pd:
    .fill 512, 8, 0

    /* ------------------------------------------------------------------ */
    /* Stack (in .bss, zeroed by the entry code before use).               */
    /* ------------------------------------------------------------------ */
    .section .bss.boot_stack, "aw", @nobits
    .p2align 12
    .globl boot_stack_bottom, boot_stack_top
boot_stack_bottom:
    .skip {stack_size}
boot_stack_top:

    /* ------------------------------------------------------------------ */
    /* PVH entry: 32-bit protected mode, paging off, ebx = hvm_start_info. */
    /* ------------------------------------------------------------------ */
    .section .text.boot32, "ax"
    .code32
    .globl pvh_start
pvh_start:
    cli
    cld
    mov %ebx, %edi                          /* keep hvm_start_info paddr */

    /* Fill boot_pd: 512 x 2 MiB, P|RW|PS. */
    mov $(boot_pd - KERNEL_VMA), %edx
    xor %ecx, %ecx
.Lfill_pd:
    mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, (%edx,%ecx,8)
    movl $0, 4(%edx,%ecx,8)
    inc %ecx
    cmp $512, %ecx
    jb .Lfill_pd

    mov %cr4, %eax
    or $0x20, %eax                          /* CR4.PAE */
    mov %eax, %cr4

    mov $(boot_pml4 - KERNEL_VMA), %eax
    mov %eax, %cr3

    mov $0xC0000080, %ecx                   /* EFER */
    rdmsr
    or $0x900, %eax                         /* LME | NXE (user data pages are NX) */
    wrmsr

    mov %cr0, %eax
    or $0x80010001, %eax                    /* PG | WP | PE */
    mov %eax, %cr0

    lgdt (boot_gdtr32 - KERNEL_VMA)
    ljmp $0x08, $(pvh_long_low - KERNEL_VMA)

    .code64
pvh_long_low:
    movabs $pvh_long_high, %rax
    jmp *%rax

    /* ------------------------------------------------------------------ */
    /* 64-bit entries (higher half).                                       */
    /* ------------------------------------------------------------------ */
    .macro ZERO_BSS                         /* clobbers rax, rcx, rdi; no stack */
    lea __bss_start(%rip), %rdi
    lea __bss_end(%rip), %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    rep stosb
    .endm

    .section .text.entry, "ax"
    .code64
pvh_long_high:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov %edi, %r12d                         /* zero-extends */
    ZERO_BSS
    lea boot_stack_top(%rip), %rsp
    xor %ebp, %ebp
    mov %r12, %rdi
    call pvh_rust_entry
    ud2

    /* Xen PV64 dom0 entry: rsi = start_info VA, rsp = Xen's boot stack. */
    .globl _start
_start:
    cld
    mov %rsi, %r12
    ZERO_BSS
    lea boot_stack_top(%rip), %rsp
    xor %ebp, %ebp
    mov %r12, %rdi
    call xen_rust_entry
    ud2

"#,
    stack_size = const BOOT_STACK_SIZE,
    options(att_syntax)
);
