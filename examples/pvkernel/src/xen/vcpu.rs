//! `struct vcpu_guest_context` (x86-64, xen/include/public/arch-x86/xen.h):
//! the initial state `VCPUOP_initialise` gives a new vCPU. Offsets measured
//! with gcc on the 4.17.7 headers (smp-notes §2.2) and asserted below.

use core::mem::{offset_of, size_of};

use super::hypercall::TrapInfo;

/// `VGCF_in_kernel`: start in guest kernel mode.
pub const VGCF_IN_KERNEL: u64 = 1 << 2;
/// `VGCF_failsafe_disables_events` (= `CALLBACKF_mask_events` on the
/// failsafe callback).
pub const VGCF_FAILSAFE_DISABLES_EVENTS: u64 = 1 << 3;
/// `VGCF_syscall_disables_events` (= `CALLBACKF_mask_events` on the syscall
/// callback).
pub const VGCF_SYSCALL_DISABLES_EVENTS: u64 = 1 << 4;

/// `struct cpu_user_regs` (200 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub error_code: u32,
    pub entry_vector: u32,
    pub rip: u64,
    pub cs: u16,
    pub _pad0: u16,
    pub saved_upcall_mask: u8,
    pub _pad1: [u8; 3],
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u16,
    pub _pad2: [u16; 3],
    pub es: u16,
    pub _pad3: [u16; 3],
    pub ds: u16,
    pub _pad4: [u16; 3],
    pub fs: u16,
    pub _pad5: [u16; 3],
    pub gs: u16,
    pub _pad6: [u16; 3],
}

/// `struct vcpu_guest_context` (5168 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VcpuGuestContext {
    pub fpu_ctxt: [u8; 512],
    pub flags: u64,
    pub user_regs: CpuUserRegs,
    /// Indexed by vector (unlike `set_trap_table`'s list).
    pub trap_ctxt: [TrapInfo; 256],
    pub ldt_base: u64,
    pub ldt_ents: u64,
    pub gdt_frames: [u64; 16],
    pub gdt_ents: u64,
    pub kernel_ss: u64,
    /// Stack for entries from user mode (`stack_switch`).
    pub kernel_sp: u64,
    /// `[3]`: kernel root (`mfn << 12`); `[1]`: user root (x86-64).
    pub ctrlreg: [u64; 8],
    pub debugreg: [u64; 8],
    pub event_callback_eip: u64,
    pub failsafe_callback_eip: u64,
    pub syscall_callback_eip: u64,
    pub vm_assist: u64,
    pub fs_base: u64,
    pub gs_base_kernel: u64,
    pub gs_base_user: u64,
}

const _: () = assert!(size_of::<CpuUserRegs>() == 200);
const _: () = assert!(offset_of!(CpuUserRegs, rip) == 128);
const _: () = assert!(offset_of!(CpuUserRegs, saved_upcall_mask) == 140);
const _: () = assert!(offset_of!(CpuUserRegs, ss) == 160);
const _: () = assert!(offset_of!(CpuUserRegs, gs) == 192);
const _: () = assert!(size_of::<VcpuGuestContext>() == 5168);
const _: () = assert!(offset_of!(VcpuGuestContext, flags) == 512);
const _: () = assert!(offset_of!(VcpuGuestContext, user_regs) == 520);
const _: () = assert!(offset_of!(VcpuGuestContext, trap_ctxt) == 720);
const _: () = assert!(offset_of!(VcpuGuestContext, gdt_ents) == 4960);
const _: () = assert!(offset_of!(VcpuGuestContext, kernel_sp) == 4976);
const _: () = assert!(offset_of!(VcpuGuestContext, ctrlreg) == 4984);
const _: () = assert!(offset_of!(VcpuGuestContext, event_callback_eip) == 5112);
const _: () = assert!(offset_of!(VcpuGuestContext, gs_base_kernel) == 5152);

impl VcpuGuestContext {
    /// All zero: no FPU state, no GDT/LDT, no callbacks.
    pub fn zeroed() -> Self {
        VcpuGuestContext {
            fpu_ctxt: [0; 512],
            flags: 0,
            user_regs: CpuUserRegs::default(),
            trap_ctxt: [TrapInfo::default(); 256],
            ldt_base: 0,
            ldt_ents: 0,
            gdt_frames: [0; 16],
            gdt_ents: 0,
            kernel_ss: 0,
            kernel_sp: 0,
            ctrlreg: [0; 8],
            debugreg: [0; 8],
            event_callback_eip: 0,
            failsafe_callback_eip: 0,
            syscall_callback_eip: 0,
            vm_assist: 0,
            fs_base: 0,
            gs_base_kernel: 0,
            gs_base_user: 0,
        }
    }
}
