//! The early-boot path: before frame metadata exists (the seed: "early in
//! boot the page structures are not available").
//!
//! Assumptions, each of which the steady-state path does not make:
//!
//! 1. the only page tables are the boot root Xen's builder made, pinned and
//!    loaded (`start_info.pt_base`), and tables hooked beneath it;
//! 2. so every table is treated as pinned: entries are written by
//!    `mmu_update`, one raw hypercall each (no batching state to trust);
//! 3. no user pgd can exist (nowhere to attach it), so `write_cr3` sets
//!    only the kernel base pointer;
//! 4. a new table is made read-only at once; a released one writable.
//!
//! The switch to steady state happens once, at `PvMmuOps::frame_metadata_ready`
//! (kernel-glue's `Mm::init_metadata`, or `Mm::adopt_boot` when metadata
//! already exists): the boot tables are marked pinned in the metadata (Linux's
//! `xen_mark_init_mm_pinned`), so later writes to them still go by hypercall.
//! A call that finds metadata before that point is refused (`WrongState`).

use pvops::{Level, MmServices, Pfn, PvError, ENTRIES_PER_TABLE};

use crate::abi::{XEN_L4_END, XEN_L4_FIRST};
use crate::backend::Cx;
use crate::{mmu_update, mmuext, pin, root};

/// Early `set_entry`: a raw `mmu_update`.
pub(crate) fn set_entry(cx: &mut Cx<'_>, table: Pfn, index: usize, raw: u64) -> Result<(), PvError> {
    let mfn = cx.mfn(table)?;
    cx.raw(mmu_update::entry_update(mfn, index, raw))
}

/// Early `alloc_pt`: read-only at once.
pub(crate) fn alloc_pt(cx: &mut Cx<'_>, pfn: Pfn) -> Result<(), PvError> {
    let record = cx.remap(pfn, false)?;
    cx.raw(record)
}

/// Early `release_pt`: writable again.
pub(crate) fn release_pt(cx: &mut Cx<'_>, pfn: Pfn) -> Result<(), PvError> {
    let record = cx.remap(pfn, true)?;
    cx.raw(record)
}

/// Early `write_cr3`: the kernel base pointer only.
pub(crate) fn write_cr3(cx: &mut Cx<'_>, pgd: Pfn) -> Result<(), PvError> {
    let mfn = cx.mfn(pgd)?;
    let after = cx.push(mmuext::new_baseptr(mfn));
    root::publish_after(cx, pgd, after);
    cx.finish()
}

/// Marks the boot root and every table under it pinned in frame metadata.
pub(crate) fn mark_boot_tables_pinned(cx: &mut Cx<'_>, mm: &dyn MmServices) -> Result<(), PvError> {
    let root = cx.st.boot_root;
    mm.set_pinned(root, true)?;
    let mut tables = 0u64;
    for index in (0..ENTRIES_PER_TABLE).filter(|i| !(XEN_L4_FIRST..XEN_L4_END).contains(i)) {
        pin::walk(cx.platform, Level::L4, root, index, &mut |_, pfn| {
            mm.set_pinned(pfn, true)?;
            tables += 1;
            Ok(true)
        })?;
    }
    log::info!("xen64: steady state; boot root {root:?} and {tables} tables marked pinned");
    Ok(())
}
