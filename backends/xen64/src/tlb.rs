//! TLB flushes. A PV kernel cannot run `invlpg` or reload cr3 natively
//! (`invlpg` is a #GP, notes §6.5): both are `mmuext_op`s, queued like any
//! update in lazy-MMU mode (Linux's `xen_flush_tlb`/`xen_flush_tlb_one_user`).

use pvops::{PvError, VirtAddr};

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
