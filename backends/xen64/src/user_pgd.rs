//! The user pgd (the seed: "xen64: allocate and manage user pagetables").
//!
//! A PV64 kernel runs in ring 3, like its user space, so Xen cannot use
//! segment limits to hide the kernel: every address space has a second top
//! level, the *user pgd*, which maps only user space (slots below
//! `USER_PGD_SLOTS`, i.e. below `USER_LIMIT`). Everything under it is shared
//! with the kernel pgd; only the top page differs.
//!
//! It is allocated and freed with the kernel pgd (`pgd_alloc`/`pgd_free`) and
//! attached through the kernel pgd frame's private word (Linux's
//! `page->private`): the word holds the user pgd's pfn, 0 meaning none — so
//! pfn 0 is never used as a user pgd. init_mm's pgd (the boot root) never
//! gets one: it never runs user mode. Before frame metadata exists there is
//! none either.

use pvops::{MmServices, Pfn, PvError, USER_PGD_SLOTS};

use crate::backend::Cx;

/// A slot of a user pgd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserSlot {
    /// The user pgd's frame.
    pub pgd: Pfn,
    /// The slot (same index as in the kernel pgd).
    pub index: usize,
}

/// The user pgd attached to kernel pgd `pgd`, if any (read from `pgd`'s
/// private word; `None` before frame metadata exists). For checkers.
pub fn attached_user_pgd(mm: &dyn MmServices, pgd: Pfn) -> Result<Option<Pfn>, PvError> {
    attached(mm, pgd)
}

/// The user pgd attached to kernel pgd `pgd`, if any.
pub(crate) fn attached(mm: &dyn MmServices, pgd: Pfn) -> Result<Option<Pfn>, PvError> {
    if !mm.has_metadata() {
        return Ok(None);
    }
    match mm.private(pgd)? {
        0 => Ok(None),
        pfn => Ok(Some(Pfn(pfn))),
    }
}

/// The seed's `xen_get_user_pgd`: only slots below `USER_LIMIT` have a twin.
pub(crate) fn get_user_pgd(mm: &dyn MmServices, pgd: Pfn, index: usize) -> Result<Option<UserSlot>, PvError> {
    if index >= USER_PGD_SLOTS {
        return Ok(None);
    }
    Ok(attached(mm, pgd)?.map(|user| UserSlot { pgd: user, index }))
}

/// `PvMmuOps::pgd_alloc`.
pub(crate) fn pgd_alloc(cx: &mut Cx<'_>, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
    if pgd == cx.st.boot_root {
        // init_mm never has a user pgd.
        return Ok(());
    }
    if !cx.steady(mm)? {
        // No page structures yet: nowhere to attach a user pgd, and an address
        // space without one would crash the domain on its first return to user.
        return Err(PvError::WrongState { what: "pgd_alloc before frame metadata exists" });
    }
    if mm.is_pinned(pgd)? {
        return Err(PvError::WrongState { what: "pgd_alloc of a pinned pgd" });
    }
    if mm.private(pgd)? != 0 {
        return Err(PvError::WrongState { what: "pgd_alloc: a user pgd is already attached" });
    }
    let user = alloc_nameable_frame(mm)?;
    let attach = (|| {
        if mm.is_pinned(user)? {
            return Err(PvError::WrongState { what: "pgd_alloc: the new user pgd is marked pinned" });
        }
        // Normally the user half is still empty; mirror it anyway so the two
        // pgds agree below USER_LIMIT from the first moment.
        for index in 0..USER_PGD_SLOTS {
            let raw = cx.platform.mem.read_entry(pgd, index);
            if raw != 0 {
                cx.store(user, index, raw);
            }
        }
        mm.set_private(pgd, user.0)
    })();
    if let Err(e) = attach {
        // Nothing changed for the caller: give the frame back.
        let _ = mm.free_frame(user);
        return Err(e);
    }
    log::trace!("xen64: pgd {pgd:?} has user pgd {user:?}");
    Ok(())
}

/// A zeroed frame other than pfn 0 (which the private word cannot name).
fn alloc_nameable_frame(mm: &dyn MmServices) -> Result<Pfn, PvError> {
    let first = mm.alloc_zeroed_frame()?;
    if first.0 != 0 {
        return Ok(first);
    }
    let second = mm.alloc_zeroed_frame();
    mm.free_frame(first)?;
    second
}

/// `PvMmuOps::pgd_free`.
pub(crate) fn pgd_free(cx: &mut Cx<'_>, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
    if !cx.steady(mm)? {
        return Ok(());
    }
    if pgd == cx.st.batch.published_cr3() {
        return Err(PvError::WrongState { what: "pgd_free of the loaded pgd" });
    }
    if let Some(cpu) = cx.loaded_elsewhere(pgd) {
        return Err(PvError::RootInUse { pgd, cpu });
    }
    if mm.is_pinned(pgd)? {
        return Err(PvError::WrongState { what: "pgd_free of a pinned pgd" });
    }
    let Some(user) = attached(mm, pgd)? else {
        return Ok(());
    };
    if mm.is_pinned(user)? {
        return Err(PvError::WrongState { what: "pgd_free: user pgd still pinned" });
    }
    mm.free_frame(user)?;
    mm.set_private(pgd, 0)
}
