//! The backend value, its lock-protected state, and the `PvMmuOps` impl that
//! dispatches each hook to the module named after its Xen concept.

use alloc::vec::Vec;
use core::ops::Range;

use pvops::{Level, Mfn, MmServices, OpStats, Pfn, Pte, PvError, PvMmuOps, VirtAddr};

use crate::abi::{XEN_L4_END, XEN_L4_FIRST};
use crate::multicall::{Batch, FlushCounts, Record, RecordId, Report};
use crate::register::XenPlatform;
use crate::user_pgd::UserSlot;
use crate::{boot, mmu_update, p2m, pin, root, tlb, user_pgd};

/// Mutable backend state, behind one lock.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) batch: Batch,
    /// Open lazy-MMU sections, outermost first: each one's mark (the first
    /// record queued inside it). Non-empty: updates queue until flush or the
    /// outermost leave. Sections nest (`Mm::map` inside a caller's section).
    pub(crate) lazy: Vec<RecordId>,
    /// The root the builder loaded and pinned (`start_info.pt_base`): init_mm's pgd.
    pub(crate) boot_root: Pfn,
    /// True once the boot tables were marked pinned in frame metadata.
    pub(crate) boot_tables_marked: bool,
}

/// One operation's view: the platform seams and the locked state.
pub(crate) struct Cx<'a> {
    pub(crate) platform: &'a XenPlatform,
    pub(crate) st: &'a mut State,
    /// The first record this operation may queue: its reports cover records
    /// from here on only (earlier ones belong to a lazy section's owner).
    pub(crate) mark: RecordId,
}

impl Cx<'_> {
    /// The machine frame of `pfn`.
    pub(crate) fn mfn(&self, pfn: Pfn) -> Result<Mfn, PvError> {
        p2m::mfn_of(self.platform.p2m, pfn)
    }

    /// Queues a record.
    pub(crate) fn push(&mut self, record: Record) -> RecordId {
        self.st.batch.push(self.platform.transport, record)
    }

    /// Queues a record past the batch's fixed capacity (see `Batch::push_unbounded`).
    pub(crate) fn push_unbounded(&mut self, record: Record) -> RecordId {
        self.st.batch.push_unbounded(record)
    }

    /// Issues the batch and returns what happened to this operation's records.
    pub(crate) fn issue(&mut self) -> Report {
        self.st.batch.issue_from(self.platform.transport, self.mark)
    }

    /// Issues the batch; the first failure of this operation's records is the error.
    pub(crate) fn finish(&mut self) -> Result<(), PvError> {
        self.issue().into_result()
    }

    /// True inside a lazy-MMU section.
    pub(crate) fn lazy(&self) -> bool {
        !self.st.lazy.is_empty()
    }

    /// Issues the batch unless in lazy-MMU mode (Linux's `xen_mc_issue(PARAVIRT_LAZY_MMU)`).
    pub(crate) fn issue_unless_lazy(&mut self) -> Result<(), PvError> {
        if self.lazy() {
            return Ok(());
        }
        self.finish()
    }

    /// One raw hypercall, now.
    pub(crate) fn raw(&mut self, record: Record) -> Result<(), PvError> {
        self.st.batch.raw(self.platform.transport, record)
    }

    /// A direct store into a table that is not live (unpinned).
    pub(crate) fn store(&mut self, table: Pfn, index: usize, raw: u64) {
        self.platform.mem.write_entry(table, index, raw);
        self.st.batch.stats.direct_writes += 1;
    }

    /// The `update_va_mapping` that makes `pfn`'s alias read-only or writable.
    pub(crate) fn remap(&self, pfn: Pfn, writable: bool) -> Result<Record, PvError> {
        Ok(crate::direct_map::remap(self.platform.direct_map_base, pfn, self.mfn(pfn)?, writable))
    }

    /// True in steady state (frame metadata exists). The first time, the boot
    /// tables are marked pinned: the one logged switch out of early boot.
    pub(crate) fn steady(&mut self, mm: &dyn MmServices) -> Result<bool, PvError> {
        if !mm.has_metadata() {
            return Ok(false);
        }
        if !self.st.boot_tables_marked {
            boot::mark_boot_tables_pinned(self, mm)?;
            self.st.boot_tables_marked = true;
        }
        Ok(true)
    }
}

/// The Xen 64-bit PV backend.
pub struct XenBackend {
    platform: XenPlatform,
    state: spin::Mutex<State>,
}

impl core::fmt::Debug for XenBackend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("XenBackend")
    }
}

pub(crate) fn check_slot(level: Level, index: usize) -> Result<(), PvError> {
    if index >= pvops::ENTRIES_PER_TABLE {
        return Err(PvError::BadIndex { index });
    }
    if level == Level::L4 && (XEN_L4_FIRST..XEN_L4_END).contains(&index) {
        return Err(PvError::ReservedSlot { index });
    }
    Ok(())
}

impl XenBackend {
    /// A backend over `platform`, whose boot root (already pinned and loaded
    /// by Xen's domain builder) becomes the current cr3 and init_mm's pgd.
    pub fn new(platform: XenPlatform) -> Self {
        let boot_root = platform.boot_root;
        XenBackend {
            platform,
            state: spin::Mutex::new(State {
                batch: Batch::new(boot_root, platform.mem),
                lazy: Vec::new(),
                boot_root,
                boot_tables_marked: false,
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Cx<'_>) -> R) -> R {
        let mut st = self.state.lock();
        let mark = st.batch.mark();
        let mut cx = Cx { platform: &self.platform, st: &mut st, mark };
        f(&mut cx)
    }

    /// The user pgd slot mirroring slot `index` of kernel pgd `pgd`: `Some`
    /// only below `USER_PGD_SLOTS` and only if a user pgd is attached (the
    /// seed's `xen_get_user_pgd`).
    pub fn get_user_pgd(&self, mm: &dyn MmServices, pgd: Pfn, index: usize) -> Result<Option<UserSlot>, PvError> {
        user_pgd::get_user_pgd(mm, pgd, index)
    }

    /// Why batches were flushed so far.
    pub fn flush_counts(&self) -> FlushCounts {
        self.state.lock().batch.flushes
    }

    /// init_mm's pgd (the boot root).
    pub fn boot_root(&self) -> Pfn {
        self.state.lock().boot_root
    }
}

impl PvMmuOps for XenBackend {
    fn name(&self) -> &'static str {
        "xen64"
    }

    fn reserved_l4_slots(&self) -> Range<usize> {
        XEN_L4_FIRST..XEN_L4_END
    }

    /// The root Xen's builder loaded and pinned is init_mm's pgd. Only that
    /// root is accepted. With frame metadata, its tables are marked pinned at
    /// once; without, on the first steady-state call (see `boot.rs`).
    fn adopt_boot_root(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.with(|cx| {
            if pgd != cx.st.boot_root {
                return Err(PvError::WrongState { what: "adopt_boot_root: not the root Xen loaded" });
            }
            cx.steady(mm).map(|_| ())
        })
    }

    fn pgd_alloc(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.with(|cx| user_pgd::pgd_alloc(cx, mm, pgd))
    }

    fn pgd_free(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.with(|cx| user_pgd::pgd_free(cx, mm, pgd))
    }

    fn alloc_pt(&self, mm: &dyn MmServices, root: Pfn, level: Level, pfn: Pfn) -> Result<(), PvError> {
        self.with(|cx| pin::alloc_pt(cx, mm, root, level, pfn))
    }

    fn release_pt(&self, mm: &dyn MmServices, root: Pfn, level: Level, pfn: Pfn) -> Result<(), PvError> {
        self.with(|cx| pin::release_pt(cx, mm, root, level, pfn))
    }

    fn set_entry(&self, mm: &dyn MmServices, level: Level, table: Pfn, index: usize, pte: Pte) -> Result<(), PvError> {
        self.with(|cx| mmu_update::set_entry(cx, mm, level, table, index, pte))
    }

    fn read_entry(&self, level: Level, table: Pfn, index: usize) -> Result<Pte, PvError> {
        let st = self.state.lock();
        mmu_update::read_entry(&self.platform, &st.batch, level, table, index)
    }

    fn write_cr3(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.with(|cx| root::write_cr3(cx, mm, pgd))
    }

    fn read_cr3(&self) -> Pfn {
        self.state.lock().batch.published_cr3()
    }

    fn activate_mm(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.with(|cx| pin::pin_mm(cx, mm, pgd))
    }

    fn exit_mm(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.with(|cx| pin::unpin_mm(cx, mm, pgd))
    }

    fn flush_tlb_all(&self) -> Result<(), PvError> {
        self.with(tlb::flush_all)
    }

    fn flush_tlb_one(&self, va: VirtAddr) -> Result<(), PvError> {
        self.with(|cx| tlb::flush_one(cx, va))
    }

    /// Opens a (possibly nested) section; it owns the records queued from now on.
    fn lazy_mmu_enter(&self) {
        let mut st = self.state.lock();
        let mark = st.batch.mark();
        st.lazy.push(mark);
    }

    /// An inner leave issues nothing and reports what is already known about
    /// its section's records; the outermost issues everything and reports
    /// every failure not claimed yet.
    fn lazy_mmu_leave(&self) -> Result<(), PvError> {
        self.with(|cx| {
            let Some(mark) = cx.st.lazy.pop() else {
                // Not in a section: like a flush outside one.
                return cx.st.batch.issue_from(cx.platform.transport, RecordId::FIRST).into_result();
            };
            if cx.st.lazy.is_empty() {
                cx.st.batch.issue_from(cx.platform.transport, RecordId::FIRST).into_result()
            } else {
                cx.st.batch.take_from(mark).into_result()
            }
        })
    }

    /// Issues everything queued; reports the failures of the innermost open
    /// section's records (all unclaimed ones outside a section).
    fn lazy_mmu_flush(&self) -> Result<(), PvError> {
        self.with(|cx| {
            let mark = cx.st.lazy.last().copied().unwrap_or(RecordId::FIRST);
            cx.st.batch.issue_from(cx.platform.transport, mark).into_result()
        })
    }

    fn make_entry(&self, pte: Pte) -> Result<u64, PvError> {
        p2m::encode(self.platform.p2m, pte)
    }

    fn entry_value(&self, raw: u64) -> Pte {
        p2m::decode(self.platform.p2m, raw)
    }

    fn stats(&self) -> OpStats {
        self.state.lock().batch.stats
    }
}
