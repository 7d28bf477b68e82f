//! Loading an address space: the kernel and the user base pointer together
//! (the seed's `xen_write_cr3`).
//!
//! ```text
//! one batch: mmuext_op { NEW_BASEPTR kernel pgd, NEW_USER_BASEPTR user pgd (or 0) }
//!            callback: the reported cr3 becomes pgd
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
use crate::multicall::Callback;
use crate::{boot, mmuext, user_pgd};

/// `PvMmuOps::write_cr3`.
pub(crate) fn write_cr3(cx: &mut Cx<'_>, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
    if !cx.steady(mm)? {
        return boot::write_cr3(cx, pgd);
    }
    let kernel = cx.mfn(pgd)?;
    let user = match user_pgd::attached(mm, pgd)? {
        Some(u) => Some(cx.mfn(u)?),
        None => None,
    };
    let after = cx.push(mmuext::new_baseptr(kernel));
    let user_switched = cx.push(mmuext::new_user_baseptr(user));
    publish_after(cx, pgd, after);
    let report = cx.issue();
    let Some(error) = report.error() else {
        return Ok(());
    };
    if report.completed(after) && !report.completed(user_switched) {
        // The kernel root moved but the user root did not: the previous
        // process's user tables would run under the new kernel root. Fail
        // safe: no user tables at all (a return to user mode then crashes the
        // domain instead of leaking another process's memory).
        if let Err(e) = cx.raw(mmuext::new_user_baseptr(None)) {
            log::error!("xen64: cannot clear the user base pointer after {error}: {e}");
        }
    }
    Err(error)
}

/// Registers the callback publishing `pgd` as the current cr3.
pub(crate) fn publish_after(cx: &mut Cx<'_>, pgd: Pfn, after: crate::multicall::RecordId) {
    cx.st.batch.add_callback(cx.platform.transport, Callback::PublishCr3 { pgd, after });
}
