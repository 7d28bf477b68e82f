//! Xen PV64 hypercalls through the hypercall page (notes §4.1).
//!
//! Stub `nr` lives at `hypercall_page + nr * 32`; arguments go in rdi, rsi,
//! rdx, r10, r8 (arg 5 is r8, not r9); the result (negative errno on error)
//! comes back in rax; argument registers, rcx and r11 are clobbered.

use core::arch::asm;
use core::fmt;

use crate::entry::hypercall_page;

/// Hypercall numbers (xen/include/public/xen.h); the MMU ones come from the
/// xen64 backend's ABI module so the two can never disagree.
pub mod nr {
    pub use pvops_xen64::abi::hypercall::{MMUEXT_OP, MMU_UPDATE, MULTICALL, UPDATE_VA_MAPPING};
    pub const SET_TRAP_TABLE: u64 = 0;
    pub const MEMORY_OP: u64 = 12;
    pub const STACK_SWITCH: u64 = 3;
    pub const CONSOLE_IO: u64 = 18;
    pub const XEN_VERSION: u64 = 17;
    pub const VM_ASSIST: u64 = 21;
    pub const IRET: u64 = 23;
    pub const VCPU_OP: u64 = 24;
    pub const SET_SEGMENT_BASE: u64 = 25;
    pub const SCHED_OP: u64 = 29;
    pub const CALLBACK_OP: u64 = 30;
    pub const EVENT_CHANNEL_OP: u64 = 32;
    pub const PHYSDEV_OP: u64 = 33;
    pub const HVM_OP: u64 = 34;
}

/// Whether an `mmuext_op` command carries a vCPU bitmap in `arg2`
/// (`TLB_FLUSH_MULTI`, `INVLPG_MULTI`: Xen reads `arg2.vcpumask`, a guest
/// pointer to u64 words, xen/include/public/xen.h).
pub const fn takes_vcpumask(cmd: u32) -> bool {
    cmd == mmuext::TLB_FLUSH_MULTI || cmd == mmuext::INVLPG_MULTI
}

/// `vcpu_op` commands (xen/include/public/vcpu.h).
pub mod vcpuop {
    /// Set a vCPU's initial context (once: a second call is -EEXIST).
    pub const INITIALISE: u64 = 0;
    /// Let an initialised vCPU run.
    pub const UP: u64 = 1;
    /// Stop a vCPU (synchronous when it names the caller).
    pub const DOWN: u64 = 2;
    /// 1 if the vCPU runs, 0 if down, -ENOENT past the domain's last vCPU.
    pub const IS_UP: u64 = 3;
}

/// `-ENOENT`: no such vCPU (`vcpu_op`).
pub const ENOENT: i64 = -2;

/// `SEGBASE_GS_KERNEL` (`set_segment_base`): the gs base in kernel mode.
pub const SEGBASE_GS_KERNEL: u64 = 2;

pub use pvops_xen64::abi::uvmf::{INVLPG as UVMF_INVLPG, NONE as UVMF_NONE};
pub use pvops_xen64::abi::{mmuext, DOMID_SELF};

/// `FLAT_RING3_CS64`: the PV64 kernel and user code selector.
pub const FLAT_CS64: u16 = 0xe033;
/// `FLAT_RING3_SS64` (= `FLAT_KERNEL_SS64`).
pub const FLAT_SS64: u16 = 0xe02b;

/// A failed hypercall: the negative errno Xen returned, plus which call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenError {
    /// Name of the hypercall / operation.
    pub op: &'static str,
    /// The (negative) return value.
    pub rc: i64,
}

impl fmt::Display for XenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match -self.rc {
            1 => "EPERM",
            2 => "ENOENT",
            3 => "ESRCH",
            12 => "ENOMEM",
            13 => "EACCES",
            14 => "EFAULT",
            16 => "EBUSY",
            17 => "EEXIST",
            22 => "EINVAL",
            38 => "ENOSYS",
            95 => "EOPNOTSUPP",
            _ => "?",
        };
        write!(f, "{} failed: {} ({})", self.op, self.rc, name)
    }
}

fn check(op: &'static str, rc: i64) -> Result<i64, XenError> {
    if rc < 0 {
        Err(XenError { op, rc })
    } else {
        Ok(rc)
    }
}

/// Raw 5-argument hypercall.
///
/// # Safety
/// Must only be called under Xen PV (the hypercall page is filled), with
/// arguments valid for hypercall `nr` (pointers to live, correctly laid out
/// memory).
#[inline]
pub unsafe fn hypercall5(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    // SAFETY: address arithmetic within the hypercall page (nr < 128).
    let stub = unsafe { (&raw const hypercall_page as *const u8).add((nr as usize) * 32) };
    let ret: i64;
    // SAFETY: caller guarantees we are a PV guest and the arguments are valid.
    unsafe {
        asm!(
            "call {stub}",
            stub = in(reg) stub,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            lateout("rax") ret,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// The MMU records and `multicall_entry`, shared with the xen64 backend.
pub use pvops_xen64::abi::{MmuUpdate, MmuextOp, MulticallEntry};

/// `trap_info` (16 bytes); a zero `address` ends the table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapInfo {
    pub vector: u8,
    /// Bits 0-1: DPL; bit 2: mask events on entry.
    pub flags: u8,
    pub cs: u16,
    pub _pad: u32,
    pub address: u64,
}

/// `callback_register` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct CallbackRegister {
    ty: u16,
    flags: u16,
    _pad: u32,
    address: u64,
}

/// `CALLBACKTYPE_event`.
pub const CALLBACKTYPE_EVENT: u16 = 0;
/// `CALLBACKTYPE_failsafe`.
pub const CALLBACKTYPE_FAILSAFE: u16 = 1;
/// `CALLBACKTYPE_syscall`.
pub const CALLBACKTYPE_SYSCALL: u16 = 2;
/// `CALLBACKF_mask_events`.
pub const CALLBACKF_MASK_EVENTS: u16 = 1;

/// Writes bytes to the Xen console (`CONSOLEIO_write`).
pub fn console_write(bytes: &[u8]) -> Result<(), XenError> {
    if bytes.is_empty() {
        return Ok(());
    }
    // SAFETY: `bytes` is a live buffer of the given length.
    let rc = unsafe { hypercall5(nr::CONSOLE_IO, 0, bytes.len() as u64, bytes.as_ptr() as u64, 0, 0) };
    check("console_io", rc).map(|_| ())
}

/// `mmu_update` (DOMID_SELF): Xen's status and how many records took
/// effect (`done`).
pub fn mmu_update_counted(reqs: &[MmuUpdate]) -> (i64, u32) {
    let mut done: u32 = 0;
    // SAFETY: `reqs` and `done` are live; Xen only reads `reqs`.
    let rc = unsafe {
        hypercall5(nr::MMU_UPDATE, reqs.as_ptr() as u64, reqs.len() as u64, (&raw mut done) as u64, DOMID_SELF, 0)
    };
    (rc, done)
}

/// Applies a batch of page-table updates (`mmu_update`, DOMID_SELF).
pub fn mmu_update(reqs: &[MmuUpdate]) -> Result<(), XenError> {
    check("mmu_update", mmu_update_counted(reqs).0).map(|_| ())
}

/// `mmuext_op` (DOMID_SELF): Xen's status and how many ops took effect.
pub fn mmuext_op_counted(ops: &[MmuextOp]) -> (i64, u32) {
    let mut done: u32 = 0;
    // SAFETY: `ops` and `done` are live; Xen only reads `ops`.
    let rc = unsafe {
        hypercall5(nr::MMUEXT_OP, ops.as_ptr() as u64, ops.len() as u64, (&raw mut done) as u64, DOMID_SELF, 0)
    };
    (rc, done)
}

/// Applies a batch of extended MMU operations (`mmuext_op`, DOMID_SELF).
pub fn mmuext_op(ops: &[MmuextOp]) -> Result<(), XenError> {
    check("mmuext_op", mmuext_op_counted(ops).0).map(|_| ())
}

/// Runs `entries` as one `multicall`; each entry's `result` is filled in.
/// Returns the multicall's own status (non-zero: nothing ran).
///
/// # Safety
/// Every pointer in the entries' arguments must be valid for its call.
pub unsafe fn multicall(entries: &mut [MulticallEntry]) -> i64 {
    // SAFETY: `entries` is live and writable; the caller vouches for the
    // pointers inside the arguments.
    unsafe { hypercall5(nr::MULTICALL, entries.as_mut_ptr() as u64, entries.len() as u64, 0, 0, 0) }
}

/// `XENMEM_machphys_mapping`: (M2P start VA, end VA, max mfn).
pub fn machphys_mapping() -> Result<(u64, u64, u64), XenError> {
    let mut m = [0u64; 3];
    // SAFETY: `m` is a live, writable `xen_machphys_mapping`.
    let rc = unsafe { hypercall5(nr::MEMORY_OP, 12, m.as_mut_ptr() as u64, 0, 0, 0) };
    check("memory_op(machphys_mapping)", rc).map(|_| (m[0], m[1], m[2]))
}

/// One extended MMU operation taking an mfn/address argument.
pub fn mmuext(cmd: u32, arg1: u64) -> Result<(), XenError> {
    mmuext_op(&[MmuextOp { cmd, arg1, arg2: 0 }])
}

/// Rewrites the L1 entry mapping `va` in the current page tables.
pub fn update_va_mapping(va: u64, pte: u64, flags: u64) -> Result<(), XenError> {
    // SAFETY: scalar arguments only.
    let rc = unsafe { hypercall5(nr::UPDATE_VA_MAPPING, va, pte, flags, 0, 0) };
    check("update_va_mapping", rc).map(|_| ())
}

/// Installs the virtual IDT (`set_trap_table`); `table` must end with a
/// zero-address entry.
pub fn set_trap_table(table: &[TrapInfo]) -> Result<(), XenError> {
    if table.last().map(|t| t.address) != Some(0) {
        return Err(XenError { op: "set_trap_table (unterminated)", rc: -22 });
    }
    // SAFETY: `table` is live and terminated.
    let rc = unsafe { hypercall5(nr::SET_TRAP_TABLE, table.as_ptr() as u64, 0, 0, 0, 0) };
    check("set_trap_table", rc).map(|_| ())
}

/// Registers an entry callback (`callback_op(CALLBACKOP_register)`).
pub fn register_callback(ty: u16, flags: u16, address: u64) -> Result<(), XenError> {
    let reg = CallbackRegister { ty, flags, _pad: 0, address };
    // SAFETY: `reg` is live for the call.
    let rc = unsafe { hypercall5(nr::CALLBACK_OP, 0, (&raw const reg) as u64, 0, 0, 0) };
    check("callback_op(register)", rc).map(|_| ())
}

/// Sets the kernel stack used on entry from user mode.
pub fn stack_switch(ss: u16, rsp: u64) -> Result<(), XenError> {
    // SAFETY: scalar arguments only.
    let rc = unsafe { hypercall5(nr::STACK_SWITCH, ss as u64, rsp, 0, 0, 0) };
    check("stack_switch", rc).map(|_| ())
}

/// `PHYSDEVOP_set_iopl`: grants the kernel port I/O (and makes cli/sti no-ops).
pub fn set_iopl(iopl: u32) -> Result<(), XenError> {
    let arg: u32 = iopl;
    // SAFETY: `arg` is live for the call.
    let rc = unsafe { hypercall5(nr::PHYSDEV_OP, 6, (&raw const arg) as u64, 0, 0, 0) };
    check("physdev_op(set_iopl)", rc).map(|_| ())
}

/// `SCHEDOP_shutdown` with the given reason (0 poweroff, 1 reboot, 3 crash).
pub fn shutdown(reason: u32) -> Result<(), XenError> {
    let arg: u32 = reason;
    // SAFETY: `arg` is live for the call.
    let rc = unsafe { hypercall5(nr::SCHED_OP, 2, (&raw const arg) as u64, 0, 0, 0) };
    check("sched_op(shutdown)", rc).map(|_| ())
}

/// `SCHEDOP_yield`.
pub fn sched_yield() {
    // SAFETY: SCHEDOP_yield takes no argument.
    unsafe {
        hypercall5(nr::SCHED_OP, 0, 0, 0, 0, 0);
    }
}

/// `xen_version(XENVER_version)`: (major, minor).
pub fn version() -> (u32, u32) {
    // SAFETY: XENVER_version (0) takes no argument pointer.
    let v = unsafe { hypercall5(nr::XEN_VERSION, 0, 0, 0, 0, 0) } as u64;
    ((v >> 16) as u32 & 0xffff, v as u32 & 0xffff)
}

/// `SCHEDOP_block`: unmasks this vCPU's events and sleeps until one is
/// pending (no lost wake-up: Xen checks for pending events after unmasking,
/// `xen/common/sched/core.c` `vcpu_block_enable_events`). The event is
/// delivered on the way back.
pub fn sched_block() {
    // SAFETY: SCHEDOP_block takes no argument.
    unsafe {
        hypercall5(nr::SCHED_OP, 1, 0, 0, 0, 0);
    }
}

/// Any cheap hypercall: on its way back Xen delivers a pending, unmasked
/// event (Linux `xen_force_evtchn_callback` uses `xen_version` too).
pub fn force_event_delivery() {
    let _ = version();
}

/// `vcpu_op(cmd, vcpu, arg)`: Xen's status (negative errno on error).
///
/// # Safety
/// `arg` must point at the structure `cmd` reads (or be 0 where it takes
/// none), live for the call.
pub unsafe fn vcpu_op(cmd: u64, vcpu: u32, arg: u64) -> i64 {
    // SAFETY: forwarded from the caller.
    unsafe { hypercall5(nr::VCPU_OP, cmd, vcpu as u64, arg, 0, 0) }
}

/// `VCPUOP_is_up`: `Ok(true)` if `vcpu` runs, `Err` with -ENOENT past the
/// domain's last vCPU (how dom0 counts its vCPUs; Linux
/// `xen_filter_cpu_maps`).
pub fn vcpu_is_up(vcpu: u32) -> Result<bool, XenError> {
    // SAFETY: VCPUOP_is_up takes no argument.
    let rc = unsafe { vcpu_op(vcpuop::IS_UP, vcpu, 0) };
    check("vcpu_op(is_up)", rc).map(|r| r != 0)
}

/// `EVTCHNOP_bind_ipi`: a new port whose events always go to `vcpu`, sent
/// by any vCPU of the domain.
pub fn evtchn_bind_ipi(vcpu: u32) -> Result<u32, XenError> {
    // struct evtchn_bind_ipi { uint32_t vcpu; evtchn_port_t port /* out */; }
    let mut arg = [vcpu, 0u32];
    // SAFETY: `arg` is a live, writable evtchn_bind_ipi.
    let rc = unsafe { hypercall5(nr::EVENT_CHANNEL_OP, 7, arg.as_mut_ptr() as u64, 0, 0, 0) };
    check("event_channel_op(bind_ipi)", rc).map(|_| arg[1])
}

/// `EVTCHNOP_send`: marks `port` pending and notifies its vCPU.
pub fn evtchn_send(port: u32) -> Result<(), XenError> {
    let arg: u32 = port;
    // SAFETY: `arg` is a live evtchn_send.
    let rc = unsafe { hypercall5(nr::EVENT_CHANNEL_OP, 4, (&raw const arg) as u64, 0, 0, 0) };
    check("event_channel_op(send)", rc).map(|_| ())
}

/// `EVTCHNOP_close`.
pub fn evtchn_close(port: u32) -> Result<(), XenError> {
    let arg: u32 = port;
    // SAFETY: `arg` is a live evtchn_close.
    let rc = unsafe { hypercall5(nr::EVENT_CHANNEL_OP, 3, (&raw const arg) as u64, 0, 0, 0) };
    check("event_channel_op(close)", rc).map(|_| ())
}

/// `set_segment_base(which, base)` for the calling vCPU.
pub fn set_segment_base(which: u64, base: u64) -> Result<(), XenError> {
    // SAFETY: scalar arguments only.
    let rc = unsafe { hypercall5(nr::SET_SEGMENT_BASE, which, base, 0, 0, 0) };
    check("set_segment_base", rc).map(|_| ())
}
