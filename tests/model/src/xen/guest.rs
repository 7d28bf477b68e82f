//! A booted guest for tests: a [`XenModel`], a [`GuestMm`] and the xen64
//! backend over them, plus the few core-kernel steps tests need (make a pgd,
//! map a page, list an address space's table pages). The steps call only
//! `PvMmuOps`, the way kernel-glue does.

use pvops::pte::flags;
use pvops::{Level, MmServices, Pfn, Pte, PvError, PvMmuOps, VirtAddr, USER_LIMIT, USER_PGD_SLOTS};
use pvops_xen64::XenBackend;

use super::guest_mm::GuestMm;
use super::model::XenModel;

/// Intermediate-entry flags for a user-half table (what core code writes).
pub const USER_TABLE: u64 = flags::PRESENT | flags::WRITABLE | flags::USER;
/// Intermediate-entry flags for a kernel-half table.
pub const KERNEL_TABLE: u64 = flags::PRESENT | flags::WRITABLE;
/// A user data page.
pub const USER_PAGE: u64 = flags::PRESENT | flags::WRITABLE | flags::USER;
/// A kernel data page.
pub const KERNEL_PAGE: u64 = flags::PRESENT | flags::WRITABLE;

/// One PV guest on the host: model, frames and backend, all `'static`.
#[derive(Debug, Clone, Copy)]
pub struct XenGuest {
    /// The hypervisor.
    pub model: &'static XenModel,
    /// Frames and metadata.
    pub mm: &'static GuestMm,
    /// The backend under test (not through the global registry).
    pub backend: &'static XenBackend,
}

impl XenGuest {
    /// A fresh model of `nr_pages` (p2m scrambled by `seed`), steady state.
    pub fn boot(nr_pages: u64, seed: u64) -> Self {
        let model = XenModel::leaked(nr_pages, seed);
        let mm = GuestMm::leaked(model);
        let backend = Box::leak(Box::new(XenBackend::new(model.platform())));
        // Metadata exists from the start: the backend marks the boot tables now.
        if let Err(e) = backend.frame_metadata_ready(mm) {
            panic!("xen64 refused the end of early boot on a fresh model: {e}");
        }
        XenGuest { model, mm, backend }
    }

    /// The backend as core code sees it.
    pub fn ops(&self) -> &'static dyn PvMmuOps {
        self.backend
    }

    /// init_mm's pgd.
    pub fn init_pgd(&self) -> Pfn {
        self.model.pt_base()
    }

    /// A new, empty kernel pgd with its user pgd attached (`pgd_alloc`).
    pub fn new_pgd(&self) -> Result<Pfn, PvError> {
        let pgd = self.mm.alloc_zeroed_frame()?;
        if let Err(e) = self.ops().pgd_alloc(self.mm, pgd) {
            let _ = self.mm.free_frame(pgd);
            return Err(e);
        }
        Ok(pgd)
    }

    /// Maps `va` → `frame` with `leaf_flags` in the tree rooted at `pgd`,
    /// allocating missing tables (`alloc_pt` before linking, like the glue).
    pub fn map(&self, pgd: Pfn, va: u64, frame: Pfn, leaf_flags: u64) -> Result<(), PvError> {
        let va = VirtAddr::try_new(va)?;
        let ops = self.ops();
        let table_flags = if va.as_u64() < USER_LIMIT { USER_TABLE } else { KERNEL_TABLE };
        let mut table = pgd;
        for level in [Level::L4, Level::L3, Level::L2] {
            let index = va.index(level);
            let entry = ops.read_entry(level, table, index)?;
            table = if entry.is_present() {
                entry.pfn()
            } else {
                let lower = level.lower().ok_or(PvError::WrongState { what: "no level below" })?;
                let new = self.mm.alloc_zeroed_frame()?;
                ops.alloc_pt(self.mm, pgd, lower, new)?;
                ops.set_entry(self.mm, level, table, index, Pte::new(new, table_flags))?;
                new
            };
        }
        ops.set_entry(self.mm, Level::L1, table, va.index(Level::L1), Pte::new(frame, leaf_flags))
    }

    /// Clears the leaf entry for `va` (tables stay).
    pub fn unmap(&self, pgd: Pfn, va: u64) -> Result<(), PvError> {
        let va = VirtAddr::try_new(va)?;
        let l1 = self.table_for(pgd, va, Level::L1)?.ok_or(PvError::NotMapped { addr: va })?;
        self.ops().set_entry(self.mm, Level::L1, l1, va.index(Level::L1), Pte::EMPTY)
    }

    /// The `level` table on the walk to `va`, if the walk gets that far.
    pub fn table_for(&self, pgd: Pfn, va: VirtAddr, level: Level) -> Result<Option<Pfn>, PvError> {
        let mut table = pgd;
        for l in Level::TOP_DOWN {
            if l == level {
                return Ok(Some(table));
            }
            let e = self.ops().read_entry(l, table, va.index(l))?;
            if !e.is_present() {
                return Ok(None);
            }
            table = e.pfn();
        }
        Ok(None)
    }

    /// Every table page below the pgd in its user half, parents first.
    pub fn user_table_pages(&self, pgd: Pfn) -> Result<Vec<(Level, Pfn)>, PvError> {
        let mut out = Vec::new();
        let mut stack: Vec<(Level, Pfn)> = Vec::new();
        for index in (0..USER_PGD_SLOTS).rev() {
            let e = self.ops().read_entry(Level::L4, pgd, index)?;
            if e.is_present() {
                stack.push((Level::L3, e.pfn()));
            }
        }
        while let Some((level, pfn)) = stack.pop() {
            out.push((level, pfn));
            if let Some(lower) = level.lower() {
                for index in (0..pvops::ENTRIES_PER_TABLE).rev() {
                    let e = self.ops().read_entry(level, pfn, index)?;
                    if e.is_present() {
                        stack.push((lower, e.pfn()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Tears down an address space the way core code does: unpin (if
    /// pinned), unlink and release every user-half table, `pgd_free`, free.
    pub fn destroy(&self, pgd: Pfn) -> Result<(), PvError> {
        let ops = self.ops();
        if self.mm.is_pinned(pgd)? {
            ops.exit_mm(self.mm, pgd)?;
        }
        let tables = self.user_table_pages(pgd)?;
        for index in 0..USER_PGD_SLOTS {
            if ops.read_entry(Level::L4, pgd, index)?.is_present() {
                ops.set_entry(self.mm, Level::L4, pgd, index, Pte::EMPTY)?;
            }
        }
        for (level, pfn) in tables {
            ops.release_pt(self.mm, pgd, level, pfn)?;
            self.mm.free_frame(pfn)?;
        }
        ops.pgd_free(self.mm, pgd)?;
        self.mm.free_frame(pgd)
    }
}
