//! Loading an address space: the kernel and the user base pointer together
//! (the seed's `xen_write_cr3`).
//!
//! ```text
//! one batch: mmuext_op { NEW_BASEPTR kernel pgd, NEW_USER_BASEPTR user pgd (or 0) }
//!            callback: the reported cr3 becomes pgd once both took effect
//! on a refused user root: mmuext_op { NEW_BASEPTR previous kernel pgd }
//! ```
//!
//! The user base pointer must always be written: leaving the previous
//! process's user pgd loaded would run this process's user mode in another's
//! address space, and 0 ("no user tables", init_mm) makes an entry to user
//! mode crash the domain instead. The cr3 that `read_cr3` reports changes in
//! a callback, only once the batch has really been issued and the
//! `NEW_BASEPTR` took effect (Linux's `xen_current_cr3`).

use pvops::{MmServices, Pfn, PvError};

use crate::backend::Cx;
use crate::multicall::{Callback, RecordId};
use crate::{boot, mmuext, user_pgd};

/// `PvMmuOps::write_cr3`.
///
/// All-or-nothing where Xen allows it. The two records are one `mmuext_op`
/// array, kernel first: if `NEW_BASEPTR` fails, Xen stops there and nothing
/// changed. If `NEW_USER_BASEPTR` fails, Xen left the previous user root
/// loaded (`xen/arch/x86/mm.c`, `MMUEXT_NEW_USER_BASEPTR` changes
/// `guest_table_user` only after the new root validates), so putting the
/// previous kernel root back restores the previous address space exactly.
/// Only if Xen refuses that too is something new left loaded: the kernel root
/// is `pgd` (which `read_cr3` then reports) and the user root is cleared to
/// none (user mode would otherwise run the previous process's tables; with
/// none, a return to user mode crashes the domain instead of leaking memory).
/// If the clearing is refused as well, the previous user root stays under
/// `pgd`'s kernel root; each step is logged.
pub(crate) fn write_cr3(cx: &mut Cx<'_>, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
    if !cx.steady(mm)? {
        return boot::write_cr3(cx, pgd);
    }
    let previous = cx.st.batch.published_cr3();
    let kernel = cx.mfn(pgd)?;
    let user = match user_pgd::attached(mm, pgd)? {
        Some(u) => Some(cx.mfn(u)?),
        None => None,
    };
    let (kernel_switched, user_switched) =
        cx.st.batch.push_two(cx.platform.transport, mmuext::new_baseptr(kernel), mmuext::new_user_baseptr(user));
    // Same array, kernel first: the user record taking effect means both did.
    publish_after(cx, pgd, user_switched);
    let report = cx.issue();
    let Some(error) = report.error() else {
        return Ok(());
    };
    if cx.st.batch.completed(kernel_switched) && !cx.st.batch.completed(user_switched) {
        let undo = cx.mfn(previous).and_then(|m| cx.raw(mmuext::new_baseptr(m)));
        if let Err(undo_error) = undo {
            log::error!("xen64: switch to {pgd:?} half done ({error}) and cannot be undone ({undo_error})");
            cx.st.batch.set_published_cr3(pgd);
            if let Err(e) = cx.raw(mmuext::new_user_baseptr(None)) {
                log::error!("xen64: cannot clear the user base pointer either: {e}");
            }
        }
    }
    Err(error)
}

/// Registers the callback publishing `pgd` as the current cr3.
pub(crate) fn publish_after(cx: &mut Cx<'_>, pgd: Pfn, after: RecordId) {
    cx.st.batch.add_callback(cx.platform.transport, Callback::PublishCr3 { pgd, after });
}
