//! kernel-glue against a backend that refuses an entry write: the native
//! backend behind a wrapper whose k-th `set_entry` (or `release_pt`) fails
//! without effect, as a hypervisor refusing it would. For every k across a
//! workload, after every step: no frame reachable from a live space is free
//! (walked by the test through the machine's memory), no TLB can reach a
//! freed frame (the machine model's TLB), and once everything has exited no
//! frame is lost. Natively nothing else ever refuses, so these are the
//! refusal paths of kernel-glue alone: an undo whose unlink is refused
//! keeps the table (it is still linked), an unmap whose clear is refused
//! keeps the page, an `exit` whose unlink is refused hands the space back.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::atomic::{AtomicI64, Ordering};

use kernel_glue::{AddressSpace, FrameAllocator, Mm, PageFlags};
use pvops::pte::flags;
use pvops::{Level, MmServices, OpStats, Pfn, Pte, PvError, PvMmuOps, VirtAddr, ENTRIES_PER_TABLE, USER_PGD_SLOTS};
use pvops_integration::native_host::native_platform;
use pvops_integration::platform::HostPlatform;
use pvops_xen64 as _;

/// Which call the wrapper refuses.
#[derive(Clone, Copy, Debug)]
enum Refuse {
    SetEntry,
    ReleasePt,
    /// A user-half L4 link that takes effect but fails: what the contract of
    /// `set_entry` allows for a mirrored slot (xen64: the kernel pgd written,
    /// its user-pgd twin and the repair both refused).
    PgdLinkStays,
}

/// The native backend, refusing calls `from..from + burst` of one kind
/// (counted from the last `arm`). A burst of two fails an operation and then
/// the first step of its undo.
struct Refusing {
    inner: &'static dyn PvMmuOps,
    kind: Refuse,
    burst: i64,
    calls: AtomicI64,
    from: AtomicI64,
}

impl Refusing {
    fn arm(&self, from: Option<i64>) {
        self.calls.store(0, Ordering::SeqCst);
        self.from.store(from.unwrap_or(i64::MAX), Ordering::SeqCst);
    }
    /// True while the burst has not started yet.
    fn armed(&self) -> bool {
        self.calls.load(Ordering::SeqCst) <= self.from.load(Ordering::SeqCst)
    }
    /// True if this call is one to refuse.
    fn refuse(&self, kind: Refuse) -> bool {
        if !matches!(
            (self.kind, kind),
            (Refuse::SetEntry, Refuse::SetEntry)
                | (Refuse::ReleasePt, Refuse::ReleasePt)
                | (Refuse::PgdLinkStays, Refuse::PgdLinkStays)
        ) {
            return false;
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let from = self.from.load(Ordering::SeqCst);
        n >= from && n - from < self.burst
    }
    fn refused() -> PvError {
        PvError::Hypercall { op: "injected refusal", index: 0, code: -22 }
    }
}

impl PvMmuOps for Refusing {
    fn name(&self) -> &'static str {
        "refusing-native"
    }
    fn reserved_l4_slots(&self) -> Range<usize> {
        self.inner.reserved_l4_slots()
    }
    fn adopt_boot_root(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.inner.adopt_boot_root(mm, pgd)
    }
    fn frame_metadata_ready(&self, mm: &dyn MmServices) -> Result<(), PvError> {
        self.inner.frame_metadata_ready(mm)
    }
    fn pgd_alloc(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.inner.pgd_alloc(mm, pgd)
    }
    fn pgd_free(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.inner.pgd_free(mm, pgd)
    }
    fn alloc_pt(&self, mm: &dyn MmServices, root: Pfn, level: Level, pfn: Pfn) -> Result<(), PvError> {
        self.inner.alloc_pt(mm, root, level, pfn)
    }
    fn release_pt(&self, mm: &dyn MmServices, root: Pfn, level: Level, pfn: Pfn) -> Result<(), PvError> {
        if self.refuse(Refuse::ReleasePt) {
            return Err(Self::refused());
        }
        self.inner.release_pt(mm, root, level, pfn)
    }
    fn set_entry(&self, mm: &dyn MmServices, level: Level, table: Pfn, index: usize, pte: Pte) -> Result<(), PvError> {
        if self.refuse(Refuse::SetEntry) {
            return Err(Self::refused());
        }
        let pgd_link = level == Level::L4 && index < USER_PGD_SLOTS && pte.is_present();
        if pgd_link && self.refuse(Refuse::PgdLinkStays) {
            self.inner.set_entry(mm, level, table, index, pte)?;
            return Err(Self::refused());
        }
        self.inner.set_entry(mm, level, table, index, pte)
    }
    fn read_entry(&self, level: Level, table: Pfn, index: usize) -> Result<Pte, PvError> {
        self.inner.read_entry(level, table, index)
    }
    fn write_cr3(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.inner.write_cr3(mm, pgd)
    }
    fn read_cr3(&self) -> Pfn {
        self.inner.read_cr3()
    }
    fn activate_mm(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.inner.activate_mm(mm, pgd)
    }
    fn exit_mm(&self, mm: &dyn MmServices, pgd: Pfn) -> Result<(), PvError> {
        self.inner.exit_mm(mm, pgd)
    }
    fn flush_tlb_all(&self) -> Result<(), PvError> {
        self.inner.flush_tlb_all()
    }
    fn flush_tlb_one(&self, va: VirtAddr) -> Result<(), PvError> {
        self.inner.flush_tlb_one(va)
    }
    fn lazy_mmu_enter(&self) {
        self.inner.lazy_mmu_enter()
    }
    fn lazy_mmu_leave(&self) -> Result<(), PvError> {
        self.inner.lazy_mmu_leave()
    }
    fn lazy_mmu_flush(&self) -> Result<(), PvError> {
        self.inner.lazy_mmu_flush()
    }
    fn protect_start(&self, mm: &dyn MmServices, table: Pfn, index: usize) -> Result<Pte, PvError> {
        self.inner.protect_start(mm, table, index)
    }
    fn protect_commit(&self, mm: &dyn MmServices, table: Pfn, index: usize, old: Pte, new: Pte) -> Result<(), PvError> {
        self.inner.protect_commit(mm, table, index, old, new)
    }
    fn clear_accessed_dirty(&self, mm: &dyn MmServices, table: Pfn, index: usize, bits: u64) -> Result<Pte, PvError> {
        self.inner.clear_accessed_dirty(mm, table, index, bits)
    }
    fn make_entry(&self, pte: Pte) -> Result<u64, PvError> {
        self.inner.make_entry(pte)
    }
    fn cpus(&self) -> &dyn pvops::Cpus {
        self.inner.cpus()
    }
    fn flush_tlb_multi(&self, cpus: pvops::CpuMask, flush: pvops::Flush) -> Result<(), PvError> {
        self.inner.flush_tlb_multi(cpus, flush)
    }
    fn entry_value(&self, raw: u64) -> Pte {
        self.inner.entry_value(raw)
    }
    fn stats(&self) -> OpStats {
        self.inner.stats()
    }
}

struct Setup {
    host: HostPlatform,
    ops: &'static Refusing,
    frames: &'static FrameAllocator<'static>,
    mm: &'static Mm<'static>,
}

/// The native platform booted as `boot_backend` does, with the wrapper in front.
fn setup(kind: Refuse, burst: i64) -> Setup {
    let host = native_platform(1024);
    let desc = pvops::backends().into_iter().find(|d| d.name == "native").expect("native");
    let inner = (desc.instantiate)(&host.env()).expect("native backend");
    let ops: &'static Refusing =
        Box::leak(Box::new(Refusing { inner, kind, burst, calls: AtomicI64::new(0), from: AtomicI64::new(i64::MAX) }));
    let frames = host.base().frames();
    let mm: &'static Mm<'static> =
        Box::leak(Box::new(Mm::adopt_boot(ops as &dyn PvMmuOps, frames, host.boot_pgd).expect("adopt")));
    mm.init_metadata().expect("metadata");
    Setup { host, ops, frames, mm }
}

/// Every live space's user half, walked through the machine's memory: no
/// table or page is free.
fn no_reachable_frame_is_free(s: &Setup, live: &[AddressSpace]) -> Result<(), String> {
    for root in live.iter().map(AddressSpace::pgd) {
        let mut tables = BTreeSet::new();
        let mut todo = vec![(Level::L4, root, USER_PGD_SLOTS)];
        while let Some((level, table, n)) = todo.pop() {
            for i in 0..n {
                let raw = s.host.mem.read_entry(table, i);
                if raw & flags::PRESENT == 0 {
                    continue;
                }
                let f = Pfn((raw & flags::ADDR_MASK) >> 12);
                if s.frames.is_free(f) {
                    return Err(format!("{level:?} entry {i} of {table:?} (below {root:?}) names free {f:?}"));
                }
                if let Some(lower) = level.lower() {
                    if tables.insert(f) {
                        todo.push((lower, f, ENTRIES_PER_TABLE));
                    }
                }
            }
        }
    }
    (s.host.invariants)(s.frames, &[])
}

/// The workload; errors are accepted (a refusal is armed), the checks are not.
fn workload(s: &Setup, live: &mut Vec<AddressSpace>) {
    let mm = s.mm;
    let check = |what: &str, live: &[AddressSpace]| {
        if let Err(e) = no_reachable_frame_is_free(s, live) {
            panic!("after {what}: {e}");
        }
    };
    live.extend(mm.create().ok());
    check("create", live);
    if live.is_empty() {
        return;
    }
    for va in [0x40_0000, 0x40_1000, 0x4000_0000 + 0x40_0000, 0x7f00_0000_0000] {
        let _ = mm.map(&live[0], va, PageFlags::DATA);
        check("map", live);
    }
    let _ = mm.activate(&live[0]);
    let _ = mm.map(&live[0], 0x7e00_0000_0000, PageFlags::CODE);
    check("map into the loaded space", live);
    let _ = mm.unmap(&live[0], 0x40_0000);
    check("unmap (loaded)", live);
    if let Ok(c) = mm.fork(&live[0]) {
        live.push(c);
    }
    check("fork", live);
    let _ = mm.activate_init();
    let _ = mm.unmap(&live[0], 0x40_1000);
    check("unmap (not loaded)", live);
    if let Err((_, sp)) = mm.exit(live.remove(0)) {
        live.insert(0, sp);
    }
    check("exit", live);
}

fn sweep(kind: Refuse, burst: i64) -> u64 {
    let s = setup(kind, burst);
    for k in 0..5_000i64 {
        let free_before = s.frames.free_count();
        s.ops.arm(Some(k));
        let mut live = Vec::new();
        workload(&s, &mut live);
        let armed = s.ops.armed();
        s.ops.arm(None);
        s.mm.activate_init().expect("init");
        while let Some(sp) = live.pop() {
            s.mm.exit(sp).map_err(|(e, _)| e).unwrap_or_else(|e| panic!("{kind:?} k={k}: exit: {e}"));
            no_reachable_frame_is_free(&s, &live).unwrap_or_else(|e| panic!("{kind:?} k={k}: after exit: {e}"));
        }
        // A refused release is a table kept, not freed (logged): the only
        // loss allowed, one frame per refusal.
        let lost = free_before - s.frames.free_count();
        let allowed = if matches!(kind, Refuse::ReleasePt) { burst as u64 } else { 0 };
        assert!(lost <= allowed, "{kind:?} k={k}: {lost} frame(s) lost");
        if armed {
            return k as u64;
        }
    }
    panic!("{kind:?}: the workload never ran through");
}

#[test]
fn a_refused_entry_write_at_any_point_frees_nothing_still_reachable() {
    for burst in [1, 2] {
        let n = sweep(Refuse::SetEntry, burst);
        assert!(n >= 20, "only {n} entry writes");
    }
}

#[test]
fn a_refused_table_release_at_any_point_frees_nothing_still_a_table() {
    for burst in [1, 2] {
        let n = sweep(Refuse::ReleasePt, burst);
        assert!(n >= 5, "only {n} releases");
    }
}

/// A map whose new L4 link took effect although `set_entry` failed (allowed
/// for a mirrored slot): `map` fails and, as it promises, changes nothing —
/// the slot is empty again (read from the machine's memory) and the new
/// table is back in the allocator.
#[test]
fn a_pgd_link_that_stays_although_refused_is_undone() {
    let s = setup(Refuse::PgdLinkStays, 1);
    let space = s.mm.create().expect("create");
    let free_before = s.frames.free_count();
    s.ops.arm(Some(0));
    let va = 0x40_0000u64 + (5 << 39);
    let r = s.mm.map(&space, va, PageFlags::DATA);
    assert!(!s.ops.armed() && r.is_err(), "the link was refused: {r:?}");
    s.ops.arm(None);
    let slot = VirtAddr::try_new(va).expect("va").index(Level::L4);
    assert_eq!(s.host.mem.read_entry(space.pgd(), slot), 0, "the L4 slot is empty again");
    assert_eq!(s.frames.free_count(), free_before, "the new table and the page are free again");
    no_reachable_frame_is_free(&s, std::slice::from_ref(&space)).expect("invariants");
    s.mm.exit(space).map_err(|(e, _)| e).expect("exit");
}

/// A map into tables that exist, whose leaf write is refused, built nothing:
/// nothing is undone and no TLB is flushed (the machine's flush counters),
/// and the page stays unmapped (the machine's walk).
#[test]
fn a_refused_leaf_write_into_existing_tables_flushes_nothing() {
    let s = setup(Refuse::SetEntry, 1);
    let space = s.mm.create().expect("create");
    let va = 0x40_0000u64;
    s.mm.map(&space, va, PageFlags::DATA).expect("map: the tables");
    s.mm.activate(&space).expect("activate");
    let free_before = s.frames.free_count();
    let tlb_before = s.host.machine.tlb_counts();
    s.ops.arm(Some(0));
    let r = s.mm.map(&space, va + 0x1000, PageFlags::DATA);
    assert!(!s.ops.armed() && r.is_err(), "the leaf write was refused: {r:?}");
    s.ops.arm(None);
    assert_eq!(s.host.machine.tlb_counts(), tlb_before, "(invlpg, full flushes, cr3 writes): nothing to flush");
    let probe = VirtAddr::try_new(va + 0x1000).expect("va");
    assert!(s.host.machine.access(probe, pvops_model::Access::USER_READ).is_err(), "not mapped");
    assert_eq!(s.frames.free_count(), free_before, "the page's frame is free again");
    no_reachable_frame_is_free(&s, std::slice::from_ref(&space)).expect("invariants");
    s.mm.activate_init().expect("activate_init");
    s.mm.exit(space).map_err(|(e, _)| e).expect("exit");
}
