//! TLB flushes. A PV kernel cannot run `invlpg` or reload cr3 natively
//! (`invlpg` is a #GP, notes §6.5): both are `mmuext_op`s, queued like any
//! update in lazy-MMU mode (Linux's `xen_flush_tlb`/`xen_flush_tlb_one_user`).

use pvops::{CpuMask, Flush, PvError, VirtAddr};

use crate::backend::Cx;
use crate::mmuext;

/// `MMUEXT_TLB_FLUSH_LOCAL`.
pub(crate) fn flush_all(cx: &mut Cx<'_>) -> Result<(), PvError> {
    cx.push(mmuext::tlb_flush_local());
    cx.issue_unless_lazy()
}

/// `MMUEXT_INVLPG_LOCAL`.
pub(crate) fn flush_one(cx: &mut Cx<'_>, va: VirtAddr) -> Result<(), PvError> {
    cx.push(mmuext::invlpg_local(va));
    cx.issue_unless_lazy()
}

/// `PvMmuOps::flush_tlb_multi` on online `targets`: this vCPU alone gets the
/// `_LOCAL` op (what `flush_tlb_one`/`flush_tlb_all` issue); any other
/// target makes it the `_MULTI` op with the bitmap, which Xen completes on
/// every target before returning (`xen/arch/x86/mm.c`: `vcpumask_to_pcpumask`
/// then `flush_tlb_mask`). Like Linux's `xen_flush_tlb_multi`, one page is an
/// `INVLPG_MULTI`, anything larger a full `TLB_FLUSH_MULTI`.
pub(crate) fn flush_multi(cx: &mut Cx<'_>, targets: CpuMask, flush: Flush) -> Result<(), PvError> {
    if targets.is_empty() {
        return Ok(());
    }
    let one_page = match flush {
        Flush::Page(va) => Some(va),
        Flush::Range { start, pages: 1 } => Some(start),
        Flush::Range { .. } | Flush::All => None,
    };
    let record = match (targets == CpuMask::one(cx.cpu), one_page) {
        (true, Some(va)) => mmuext::invlpg_local(va),
        (true, None) => mmuext::tlb_flush_local(),
        (false, Some(va)) => mmuext::invlpg_multi(va, targets),
        (false, None) => mmuext::tlb_flush_multi(targets),
    };
    cx.push(record);
    cx.issue_unless_lazy()
}
