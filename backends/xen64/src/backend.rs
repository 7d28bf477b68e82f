//! The backend value, its lock-protected state, and the `PvMmuOps` impl that
//! dispatches each hook to the module named after its Xen concept.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pvops::{CpuMask, Cpus, Flush, Level, Mfn, MmServices, OpStats, Pfn, Pte, PvError, PvMmuOps, VirtAddr, MAX_CPUS};

use crate::abi::{XEN_L4_END, XEN_L4_FIRST};
use crate::multicall::{Batch, FlushCounts, Record, RecordId, Report};
use crate::register::XenPlatform;
use crate::user_pgd::UserSlot;
use crate::{boot, mmu_update, p2m, pin, protect, root, tlb, user_pgd};

/// One vCPU's backend state (Linux keeps the same in per-CPU variables:
/// `mc_buffer`, `xen_lazy_mode`, `xen_cr3`/`xen_current_cr3`). Only its own
/// vCPU touches it, with events masked, so its lock is never contended: a
/// failed `try_lock` means an event handler re-entered the backend on this
/// vCPU in the middle of a call ([`PvError::Reentered`]).
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) batch: Batch,
    /// Open lazy-MMU sections, outermost first: each one's mark (the first
    /// record queued inside it). Non-empty: updates queue until flush or the
    /// outermost leave. Sections nest (`Mm::map` inside a caller's section).
    pub(crate) lazy: Vec<RecordId>,
    /// The root the builder loaded and pinned (`start_info.pt_base`): init_mm's pgd.
    pub(crate) boot_root: Pfn,
    /// While a lazy section is open events stay masked (the batch is open):
    /// whether they were masked before the outermost section began.
    events_were_masked: bool,
}

/// One operation's view: the platform seams and the calling vCPU's state.
pub(crate) struct Cx<'a> {
    pub(crate) platform: &'a XenPlatform,
    pub(crate) st: &'a mut State,
    /// The first record this operation may queue: its reports cover records
    /// from here on only (earlier ones belong to a lazy section's owner).
    pub(crate) mark: RecordId,
    /// The calling vCPU.
    pub(crate) cpu: usize,
    /// Every vCPU's loaded kernel root (pfn; `u64::MAX`: never set).
    roots: &'a [AtomicU64],
    /// Set once the boot tables are marked pinned (shared by all vCPUs).
    boot_marked: &'a AtomicBool,
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

    /// True in steady state (frame metadata exists). Metadata that exists
    /// before [`PvMmuOps::frame_metadata_ready`] marked the boot tables
    /// pinned is refused: the metadata would say the boot tables are plain
    /// frames, and a write to one would go out as a direct store Xen refuses.
    pub(crate) fn steady(&mut self, mm: &dyn MmServices) -> Result<bool, PvError> {
        if !mm.has_metadata() {
            return Ok(false);
        }
        if !self.boot_marked.load(Ordering::Acquire) {
            return Err(PvError::WrongState { what: "frame metadata exists but frame_metadata_ready was not called" });
        }
        Ok(true)
    }

    /// The switch out of early boot: marks the boot tables pinned in frame
    /// metadata, once (the one logged switch).
    fn mark_boot_tables(&mut self, mm: &dyn MmServices) -> Result<(), PvError> {
        if !mm.has_metadata() {
            return Err(PvError::WrongState { what: "frame_metadata_ready before frame metadata exists" });
        }
        if self.boot_marked.load(Ordering::Acquire) {
            return Ok(());
        }
        boot::mark_boot_tables_pinned(self, mm)?;
        self.boot_marked.store(true, Ordering::Release);
        Ok(())
    }

    /// Another vCPU that has `pgd` loaded as its kernel root, if any (what
    /// it last saw Xen take: Linux's `xen_current_cr3`, possibly late, never
    /// early). Xen keeps a type reference on a vCPU's root while it is
    /// loaded, so such a root must not be unpinned or freed (notes §4: the
    /// unpin succeeds, the frames stay typed, a later writable remap fails).
    pub(crate) fn loaded_elsewhere(&self, pgd: Pfn) -> Option<usize> {
        let online = self.platform.cpus.online();
        self.roots
            .iter()
            .enumerate()
            .find(|&(c, r)| c != self.cpu && online.contains(c) && r.load(Ordering::Acquire) == pgd.0)
            .map(|(c, _)| c)
    }
}

/// The Xen 64-bit PV backend.
///
/// Per-vCPU state (batch, lazy depth, loaded root) is made on a vCPU's first
/// call. An AP is expected to start on init_mm's root (the boot root), as
/// Linux starts it on `swapper_pg_dir` (`arch/x86/xen/smp_pv.c`).
pub struct XenBackend {
    platform: XenPlatform,
    /// Boxed: only the vCPUs that call get a batch's buffers.
    vcpus: Vec<spin::Mutex<Option<Box<State>>>>,
    /// Multicall entries per vCPU batch.
    batch_entries: usize,
    roots: Vec<AtomicU64>,
    /// Each vCPU's counters (`OpStats` then `FlushCounts`), published at the
    /// end of each of its calls.
    counts: Vec<[AtomicU64; COUNTS]>,
    boot_marked: AtomicBool,
}

/// Lazy-section nesting held without growing (deeper nesting still works,
/// but allocates once).
const LAZY_DEPTH: usize = 8;

/// Counters published per vCPU: 6 of `OpStats`, 4 of `FlushCounts`.
const COUNTS: usize = 10;

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
        Self::with_batch_entries(platform, crate::multicall::MAX_ENTRIES)
    }

    /// [`XenBackend::new`] with `entries` multicall entries per vCPU batch
    /// (at least 2) instead of [`MAX_ENTRIES`](crate::MAX_ENTRIES): a full
    /// batch is issued before the next entry, so this sets how many
    /// hypercalls a pin of many table pages takes, against the memory each
    /// vCPU's buffers hold. For measurements; kernels use the default.
    pub fn with_batch_entries(platform: XenPlatform, entries: usize) -> Self {
        XenBackend {
            batch_entries: entries.max(crate::multicall::MIN_ENTRIES),
            platform,
            vcpus: (0..MAX_CPUS).map(|_| spin::Mutex::new(None)).collect(),
            roots: (0..MAX_CPUS).map(|_| AtomicU64::new(platform.boot_root.0)).collect(),
            counts: (0..MAX_CPUS).map(|_| core::array::from_fn(|_| AtomicU64::new(0))).collect(),
            boot_marked: AtomicBool::new(false),
        }
    }

    /// Runs `f` on the calling vCPU's state with events masked (an event
    /// handler must never see, or add to, a half-built batch). Events stay
    /// masked after `f` while a lazy section is open: its batch is open.
    fn with_events<R>(&self, f: impl FnOnce(&mut Cx<'_>) -> Result<R, PvError>) -> Result<R, PvError> {
        let cpus = self.platform.cpus;
        let cpu = cpus.this_cpu();
        let slot = self.vcpus.get(cpu).ok_or(PvError::CpuOffline { cpu })?;
        let was_masked = cpus.mask_events();
        let Some(mut guard) = slot.try_lock() else {
            cpus.restore_events(was_masked);
            return Err(PvError::Reentered { cpu });
        };
        let boot_root = self.platform.boot_root;
        let mem = self.platform.mem;
        let entries = self.batch_entries;
        let st = guard.get_or_insert_with(|| {
            // The vCPU's buffers, allocated once and never grown.
            Box::new(State {
                batch: Batch::new(boot_root, mem, entries),
                lazy: Vec::with_capacity(LAZY_DEPTH),
                boot_root,
                events_were_masked: false,
            })
        });
        let opened = st.lazy.is_empty();
        st.batch.begin_op();
        let mark = st.batch.mark();
        let mut cx = Cx { platform: &self.platform, st, mark, cpu, roots: &self.roots, boot_marked: &self.boot_marked };
        let r = f(&mut cx);
        let st = cx.st;
        self.roots[cpu].store(st.batch.published_cr3().0, Ordering::Release);
        let (o, f) = (st.batch.stats, st.batch.flushes);
        let v = [
            o.hypercalls,
            o.multicall_entries,
            o.mmu_updates,
            o.mmuext_ops,
            o.update_va_mappings,
            o.direct_writes,
            f.explicit,
            f.entries_full,
            f.args_full,
            f.callbacks_full,
        ];
        for (slot, v) in self.counts[cpu].iter().zip(v) {
            slot.store(v, Ordering::Release);
        }
        let lazy_now = !st.lazy.is_empty();
        let restore = match (opened, lazy_now) {
            // Not in a section before or after: as it was.
            (true, false) => Some(was_masked),
            // A section began here: remember, stay masked.
            (true, true) => {
                st.events_were_masked = was_masked;
                None
            }
            // Inside a section before: still masked, whatever happens now.
            (false, true) => None,
            // The outermost section ended here: back to before it began.
            (false, false) => Some(st.events_were_masked),
        };
        drop(guard);
        if let Some(m) = restore {
            cpus.restore_events(m);
        }
        r
    }

    fn with(&self, f: impl FnOnce(&mut Cx<'_>) -> Result<(), PvError>) -> Result<(), PvError> {
        self.with_events(f)
    }

    /// Reads the calling vCPU's state (made if this is its first call).
    fn peek<R>(&self, f: impl FnOnce(&State) -> R) -> Result<R, PvError> {
        self.with_events(|cx| Ok(f(cx.st)))
    }

    /// Sums the counters every vCPU published at the end of its last call
    /// (never locking another vCPU's state: that would make its own next
    /// call look like a re-entry).
    fn published(&self) -> (OpStats, FlushCounts) {
        let (mut stats, mut flushes) = (OpStats::default(), FlushCounts::default());
        for c in &self.counts {
            let v: [u64; COUNTS] = core::array::from_fn(|i| c[i].load(Ordering::Acquire));
            stats = add_stats(
                stats,
                OpStats {
                    hypercalls: v[0],
                    multicall_entries: v[1],
                    mmu_updates: v[2],
                    mmuext_ops: v[3],
                    update_va_mappings: v[4],
                    direct_writes: v[5],
                },
            );
            flushes.add(FlushCounts { explicit: v[6], entries_full: v[7], args_full: v[8], callbacks_full: v[9] });
        }
        (stats, flushes)
    }

    /// The user pgd slot mirroring slot `index` of kernel pgd `pgd`: `Some`
    /// only below `USER_PGD_SLOTS` and only if a user pgd is attached (the
    /// seed's `xen_get_user_pgd`).
    pub fn get_user_pgd(&self, mm: &dyn MmServices, pgd: Pfn, index: usize) -> Result<Option<UserSlot>, PvError> {
        user_pgd::get_user_pgd(mm, pgd, index)
    }

    /// Why batches were flushed so far (all vCPUs).
    pub fn flush_counts(&self) -> FlushCounts {
        self.published().1
    }

    /// Multicall entries per vCPU batch (see [`XenBackend::with_batch_entries`]).
    pub fn batch_entries(&self) -> usize {
        self.batch_entries
    }

    /// init_mm's pgd (the boot root).
    pub fn boot_root(&self) -> Pfn {
        self.platform.boot_root
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
    /// once; without, at [`PvMmuOps::frame_metadata_ready`] (see `boot.rs`).
    fn adopt_boot_root(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.with(|cx| {
            if pgd != cx.st.boot_root {
                return Err(PvError::WrongState { what: "adopt_boot_root: not the root Xen loaded" });
            }
            if mm.has_metadata() {
                cx.mark_boot_tables(mm)?;
            }
            Ok(())
        })
    }

    /// The end of early boot: the boot root and every table under it are
    /// marked pinned in frame metadata now (Linux's `xen_mark_init_mm_pinned`),
    /// so a pin count taken from the metadata from here on is right, and
    /// later writes to those tables still go by hypercall.
    fn frame_metadata_ready(&self, mm: &dyn MmServices) -> Result<(), PvError> {
        self.with(|cx| cx.mark_boot_tables(mm))
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
        self.with_events(|cx| mmu_update::read_entry(cx.platform, &cx.st.batch, level, table, index))
    }

    fn write_cr3(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.with(|cx| root::write_cr3(cx, mm, pgd))
    }

    /// This vCPU's root. (Re-entered from an event handler in the middle
    /// of a call, which masking prevents, it answers from the shared copy.)
    fn read_cr3(&self) -> Pfn {
        self.peek(|st| st.batch.published_cr3()).unwrap_or_else(|_| {
            let cpu = self.platform.cpus.this_cpu();
            Pfn(self.roots.get(cpu).map_or(self.platform.boot_root.0, |r| r.load(Ordering::Acquire)))
        })
    }

    fn cpus(&self) -> &dyn Cpus {
        self.platform.cpus
    }

    /// `MMUEXT_TLB_FLUSH_MULTI` / `MMUEXT_INVLPG_MULTI` with the vCPU mask:
    /// Xen flushes every target before the hypercall returns, no IPI
    /// (Linux's `xen_flush_tlb_multi`); only this vCPU: the `_LOCAL` ops.
    fn flush_tlb_multi(&self, cpus: CpuMask, flush: Flush) -> Result<(), PvError> {
        let online = self.platform.cpus.online();
        self.with(|cx| tlb::flush_multi(cx, cpus.and(online), flush))
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

    /// Opens a (possibly nested) section; it owns the records queued from
    /// now on. Events stay masked on this vCPU until the outermost leave.
    fn lazy_mmu_enter(&self) {
        let r = self.with(|cx| {
            let mark = cx.st.batch.mark();
            cx.st.lazy.push(mark);
            Ok(())
        });
        if let Err(e) = r {
            log::error!("xen64: lazy_mmu_enter refused: {e}");
        }
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

    fn protect_start(&self, _mm: &dyn MmServices, table: Pfn, index: usize) -> Result<Pte, PvError> {
        self.with_events(|cx| protect::protect_start(cx, table, index))
    }

    fn protect_commit(&self, mm: &dyn MmServices, table: Pfn, index: usize, old: Pte, new: Pte) -> Result<(), PvError> {
        self.with(|cx| protect::protect_commit(cx, mm, table, index, old, new))
    }

    fn clear_accessed_dirty(&self, mm: &dyn MmServices, table: Pfn, index: usize, bits: u64) -> Result<Pte, PvError> {
        self.with_events(|cx| protect::clear_accessed_dirty(cx, mm, table, index, bits))
    }

    fn make_entry(&self, pte: Pte) -> Result<u64, PvError> {
        p2m::encode(self.platform.p2m, pte)
    }

    fn entry_value(&self, raw: u64) -> Pte {
        p2m::decode(self.platform.p2m, raw)
    }

    fn stats(&self) -> OpStats {
        self.published().0
    }
}

fn add_stats(a: OpStats, b: OpStats) -> OpStats {
    OpStats {
        hypercalls: a.hypercalls + b.hypercalls,
        multicall_entries: a.multicall_entries + b.multicall_entries,
        mmu_updates: a.mmu_updates + b.mmu_updates,
        mmuext_ops: a.mmuext_ops + b.mmuext_ops,
        update_va_mappings: a.update_va_mappings + b.update_va_mappings,
        direct_writes: a.direct_writes + b.direct_writes,
    }
}
