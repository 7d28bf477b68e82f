//! Xen's public ABI numbers and structures used by the PV MMU
//! (from `xen/include/public/xen.h`; facts only, written fresh).

/// Hypercall numbers.
pub mod hypercall {
    /// `HYPERVISOR_mmu_update`.
    pub const MMU_UPDATE: u64 = 1;
    /// `HYPERVISOR_multicall`.
    pub const MULTICALL: u64 = 13;
    /// `HYPERVISOR_update_va_mapping`.
    pub const UPDATE_VA_MAPPING: u64 = 14;
    /// `HYPERVISOR_mmuext_op`.
    pub const MMUEXT_OP: u64 = 26;
}

/// `mmuext_op` commands.
pub mod mmuext {
    /// Pin an L1 table.
    pub const PIN_L1_TABLE: u32 = 0;
    /// Pin an L2 table.
    pub const PIN_L2_TABLE: u32 = 1;
    /// Pin an L3 table.
    pub const PIN_L3_TABLE: u32 = 2;
    /// Pin an L4 table.
    pub const PIN_L4_TABLE: u32 = 3;
    /// Drop a pin.
    pub const UNPIN_TABLE: u32 = 4;
    /// Load the kernel root.
    pub const NEW_BASEPTR: u32 = 5;
    /// Flush the local TLB.
    pub const TLB_FLUSH_LOCAL: u32 = 6;
    /// Flush one address locally.
    pub const INVLPG_LOCAL: u32 = 7;
    /// Flush the TLBs of the vCPUs in a bitmap (`arg2`: see `mmuext.rs`).
    pub const TLB_FLUSH_MULTI: u32 = 8;
    /// Flush one address from the TLBs of the vCPUs in a bitmap.
    pub const INVLPG_MULTI: u32 = 9;
    /// Load the user root (x86-64 only; mfn 0 = none).
    pub const NEW_USER_BASEPTR: u32 = 15;

    /// A short, static name for a command (errors and logs).
    pub const fn name(cmd: u32) -> &'static str {
        match cmd {
            PIN_L1_TABLE => "mmuext_op(PIN_L1_TABLE)",
            PIN_L2_TABLE => "mmuext_op(PIN_L2_TABLE)",
            PIN_L3_TABLE => "mmuext_op(PIN_L3_TABLE)",
            PIN_L4_TABLE => "mmuext_op(PIN_L4_TABLE)",
            UNPIN_TABLE => "mmuext_op(UNPIN_TABLE)",
            NEW_BASEPTR => "mmuext_op(NEW_BASEPTR)",
            TLB_FLUSH_LOCAL => "mmuext_op(TLB_FLUSH_LOCAL)",
            INVLPG_LOCAL => "mmuext_op(INVLPG_LOCAL)",
            NEW_USER_BASEPTR => "mmuext_op(NEW_USER_BASEPTR)",
            TLB_FLUSH_MULTI => "mmuext_op(TLB_FLUSH_MULTI)",
            INVLPG_MULTI => "mmuext_op(INVLPG_MULTI)",
            _ => "mmuext_op(?)",
        }
    }
}

/// `update_va_mapping` flags.
pub mod uvmf {
    /// No flush.
    pub const NONE: u64 = 0;
    /// Flush the TLB.
    pub const TLB_FLUSH: u64 = 1;
    /// Flush one address.
    pub const INVLPG: u64 = 2;
}

/// `mmu_update` command in bits 1:0 of `ptr`: checked page-table write.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// `mmu_update` command: a checked write that keeps the accessed/dirty bits
/// the entry has when Xen exchanges it (ORed into the new value, in a
/// `cmpxchg` loop: `update_intpte`, xen/arch/x86/pv/mm.h).
pub const MMU_PT_UPDATE_PRESERVE_AD: u64 = 2;

/// `DOMID_SELF`.
pub const DOMID_SELF: u64 = 0x7ff0;

/// Xen's errno values, returned negated.
pub mod errno {
    /// Operation not permitted.
    pub const EPERM: i64 = 1;
    /// Out of memory.
    pub const ENOMEM: i64 = 12;
    /// Bad address.
    pub const EFAULT: i64 = 14;
    /// Busy (e.g. writable mapping of a table).
    pub const EBUSY: i64 = 16;
    /// Invalid argument.
    pub const EINVAL: i64 = 22;
    /// No such hypercall.
    pub const ENOSYS: i64 = 38;
    /// Operation not supported.
    pub const EOPNOTSUPP: i64 = 95;
}

/// Xen's `_PAGE_GUEST_KERNEL` (bit 52): Xen sets it, with U, on L1 entries the
/// guest wrote without U (kernel-only pages; the PV64 kernel runs in ring 3).
pub const PAGE_GUEST_KERNEL: u64 = 1 << 52;

/// Bytes of argument space one `mmu_update` record takes in a multicall batch.
pub const MMU_UPDATE_BYTES: usize = core::mem::size_of::<MmuUpdate>();
/// Bytes of argument space one `mmuext_op` record takes in a multicall batch.
pub const MMUEXT_OP_BYTES: usize = core::mem::size_of::<MmuextOp>();

/// First L4 slot owned by Xen.
pub const XEN_L4_FIRST: usize = 256;
/// One past the last L4 slot owned by Xen.
pub const XEN_L4_END: usize = 272;

/// One `mmu_update` request (16 bytes): `ptr` is the machine address of the entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MmuUpdate {
    /// Machine address of the entry | command.
    pub ptr: u64,
    /// New entry value (machine form).
    pub val: u64,
}

/// One `mmuext_op` request (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MmuextOp {
    /// Command (`mmuext::*`).
    pub cmd: u32,
    /// mfn or linear address.
    pub arg1: u64,
    /// Count, mask pointer or source mfn.
    pub arg2: u64,
}

/// A hypercall in typed form: what the transport issues, alone or in a multicall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call<'a> {
    /// `mmu_update(reqs, count, NULL, DOMID_SELF)`.
    MmuUpdate(&'a [MmuUpdate]),
    /// `mmuext_op(ops, count, NULL, DOMID_SELF)`.
    MmuextOp(&'a [MmuextOp]),
    /// `update_va_mapping(va, val, flags)`.
    UpdateVaMapping {
        /// The virtual address whose L1 entry changes.
        va: u64,
        /// New entry value (machine form).
        val: u64,
        /// `uvmf::*`.
        flags: u64,
    },
}

impl Call<'_> {
    /// The hypercall number.
    pub fn number(&self) -> u64 {
        match self {
            Call::MmuUpdate(_) => hypercall::MMU_UPDATE,
            Call::MmuextOp(_) => hypercall::MMUEXT_OP,
            Call::UpdateVaMapping { .. } => hypercall::UPDATE_VA_MAPPING,
        }
    }

    /// A short name for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Call::MmuUpdate(_) => "mmu_update",
            Call::MmuextOp(_) => "mmuext_op",
            Call::UpdateVaMapping { .. } => "update_va_mapping",
        }
    }
}

/// One entry of a `multicall` (64 bytes), as Xen reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MulticallEntry {
    /// Hypercall number.
    pub op: u64,
    /// Filled in by Xen.
    pub result: u64,
    /// Arguments.
    pub args: [u64; 6],
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers from Xen's public headers (xen/include/public/xen.h), written
    /// down here rather than read back from the constants under test.
    #[test]
    fn calls_carry_xens_hypercall_numbers_and_names() {
        let mmu = [MmuUpdate { ptr: 0, val: 0 }];
        let ext = [MmuextOp { cmd: mmuext::TLB_FLUSH_LOCAL, arg1: 0, arg2: 0 }];
        let calls = [
            (Call::MmuUpdate(&mmu), 1, "mmu_update"),
            (Call::MmuextOp(&ext), 26, "mmuext_op"),
            (Call::UpdateVaMapping { va: 0, val: 0, flags: 0 }, 14, "update_va_mapping"),
        ];
        for (call, number, name) in calls {
            assert_eq!((call.number(), call.name()), (number, name));
        }
        assert_eq!(hypercall::MULTICALL, 13);
    }

    /// Every command the backend issues is named in errors (xen.h's MMUEXT_* values).
    #[test]
    fn every_mmuext_command_has_its_own_name() {
        let named = [
            (0, "PIN_L1_TABLE"),
            (1, "PIN_L2_TABLE"),
            (2, "PIN_L3_TABLE"),
            (3, "PIN_L4_TABLE"),
            (4, "UNPIN_TABLE"),
            (5, "NEW_BASEPTR"),
            (6, "TLB_FLUSH_LOCAL"),
            (7, "INVLPG_LOCAL"),
            (15, "NEW_USER_BASEPTR"),
        ];
        for (cmd, what) in named {
            assert_eq!(mmuext::name(cmd), std::format!("mmuext_op({what})"));
        }
        assert_eq!(mmuext::name(99), "mmuext_op(?)");
    }
}
