//! `mmuext_op` records (notes §4.4): pins, base pointers and TLB flushes.
//! Each takes 24 bytes of batch argument space and merges with its
//! neighbours into one `mmuext_op` array.

use pvops::{CpuMask, Level, Mfn, VirtAddr};

use crate::abi::{mmuext, MmuextOp};
use crate::multicall::Record;

fn op(cmd: u32, arg1: u64) -> Record {
    Record::Ext(MmuextOp { cmd, arg1, arg2: 0 })
}

/// `MMUEXT_PIN_Ln_TABLE`: validate `mfn` as a table of `level` and hold it.
pub(crate) fn pin(level: Level, mfn: Mfn) -> Record {
    let cmd = match level {
        Level::L1 => mmuext::PIN_L1_TABLE,
        Level::L2 => mmuext::PIN_L2_TABLE,
        Level::L3 => mmuext::PIN_L3_TABLE,
        Level::L4 => mmuext::PIN_L4_TABLE,
    };
    op(cmd, mfn.0)
}

/// `MMUEXT_UNPIN_TABLE`.
pub(crate) fn unpin(mfn: Mfn) -> Record {
    op(mmuext::UNPIN_TABLE, mfn.0)
}

/// `MMUEXT_NEW_BASEPTR`: the kernel root.
pub(crate) fn new_baseptr(mfn: Mfn) -> Record {
    op(mmuext::NEW_BASEPTR, mfn.0)
}

/// `MMUEXT_NEW_USER_BASEPTR`: the user root, or none (mfn 0).
pub(crate) fn new_user_baseptr(mfn: Option<Mfn>) -> Record {
    op(mmuext::NEW_USER_BASEPTR, mfn.map_or(0, |m| m.0))
}

/// `MMUEXT_TLB_FLUSH_LOCAL`.
pub(crate) fn tlb_flush_local() -> Record {
    op(mmuext::TLB_FLUSH_LOCAL, 0)
}

/// `MMUEXT_TLB_FLUSH_MULTI` for the vCPUs in `mask`. The typed record holds
/// the bitmap itself in `arg2`; the transport places it in memory and passes
/// its address (Xen reads `vcpumask.p`, `xen/include/public/xen.h`).
pub(crate) fn tlb_flush_multi(mask: CpuMask) -> Record {
    Record::Ext(MmuextOp { cmd: mmuext::TLB_FLUSH_MULTI, arg1: 0, arg2: mask.0 })
}

/// `MMUEXT_INVLPG_MULTI` of `va` for the vCPUs in `mask` (bitmap as above).
pub(crate) fn invlpg_multi(va: VirtAddr, mask: CpuMask) -> Record {
    Record::Ext(MmuextOp { cmd: mmuext::INVLPG_MULTI, arg1: va.as_u64(), arg2: mask.0 })
}

/// `MMUEXT_INVLPG_LOCAL`.
pub(crate) fn invlpg_local(va: VirtAddr) -> Record {
    op(mmuext::INVLPG_LOCAL, va.as_u64())
}
