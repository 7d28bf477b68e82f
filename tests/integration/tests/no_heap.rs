//! No heap in the MMU path (issue 15 item 4): the xen64 backend's per-vCPU
//! batch buffers are allocated once, at the vCPU's first call, and never
//! grow; a full batch is issued before the next entry, inside pins and lazy
//! sections too (Linux's `xen_mc_flush` when `mc_buffer` is full,
//! `arch/x86/xen/multicalls.c`).
//!
//! The oracle is this binary's own global allocator: it counts every
//! allocation the test thread makes while the backend runs, and stops
//! counting while the Xen model runs a hypercall (the model is the
//! hypervisor, not the guest; its own bookkeeping is not the backend's).
//! Hypercall counts come from the model's counters, never the backend's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kernel_glue::{AddressSpace, FrameAllocator, Mm, PageFlags};
use pvops::{Level, MmServices, Pfn, Pte, PvMmuOps};
use pvops_integration::platform::{KERNEL_IMAGE_VA, KERNEL_PROBE_VA, KERNEL_VA};
use pvops_integration::xen_host::xen_platform;
use pvops_model::XenModel;
use pvops_native as _;
use pvops_xen64::abi::Call;
use pvops_xen64::{HypercallTransport, Outcome, XenBackend};

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting this thread's allocations while `COUNTING`.
struct Counting;

// SAFETY: every call is passed unchanged to `System`, which upholds
// `GlobalAlloc`'s contract; the thread-locals are const-initialised `Cell`s
// without destructors, so touching them never allocates or re-enters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout (see the impl).
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: `ptr`/`layout` came from `System` (see the impl).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note() {
    // `try_with`: during thread teardown the slots may be gone.
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
        }
    });
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations the test thread made in `f`, outside hypercalls.
fn allocations<R>(f: impl FnOnce() -> R) -> (R, u64) {
    ALLOCATIONS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCATIONS.with(Cell::get))
}

/// Runs `f` with counting off (the hypervisor's side of a hypercall).
fn uncounted<R>(f: impl FnOnce() -> R) -> R {
    let was = COUNTING.with(|c| c.replace(false));
    let r = f();
    COUNTING.with(|c| c.set(was));
    r
}

/// The model's transport, with allocation counting paused inside it.
struct Hypervisor(&'static dyn HypercallTransport);

impl HypercallTransport for Hypervisor {
    fn call(&self, call: &Call<'_>) -> Outcome {
        uncounted(|| self.0.call(call))
    }
    fn multicall(&self, calls: &[Call<'_>], outcomes: &mut [Outcome]) -> i64 {
        uncounted(|| self.0.multicall(calls, outcomes))
    }
}

/// A Xen PV domain on the model with a xen64 backend of `entries` batch
/// entries, booted as the kernel boots (the recipe of `boot_backend`).
struct Host {
    model: &'static XenModel,
    ops: &'static XenBackend,
    frames: &'static FrameAllocator<'static>,
    mm: &'static Mm<'static, XenBackend>,
}

fn host(entries: usize, nr_pages: u64) -> Host {
    let h = xen_platform(nr_pages);
    let model = h.xen.expect("a Xen host has a model");
    let mut platform = model.platform();
    platform.transport = Box::leak(Box::new(Hypervisor(platform.transport)));
    let ops: &'static XenBackend = Box::leak(Box::new(XenBackend::with_batch_entries(platform, entries)));
    let frames = h.base().frames();
    let mm: &'static Mm<'static, XenBackend> = Box::leak(Box::new(Mm::adopt_boot(ops, frames, h.boot_pgd).unwrap()));
    for (va, writable) in [(KERNEL_VA, true), (KERNEL_PROBE_VA, true), (KERNEL_IMAGE_VA, false)] {
        let page = frames.alloc_zeroed_frame().unwrap();
        mm.map_kernel(va, page, writable).unwrap();
    }
    mm.init_metadata().unwrap();
    Host { model, ops, frames, mm }
}

/// The first user address, and the stride that gives each page its own L1.
const VA: u64 = 0x40_0000;
const L1_SPAN: u64 = 0x20_0000;

/// An unpinned space with one page in each of `k` consecutive 2 MiB regions:
/// `k` L1 pages, one L2 per 512, one L3.
fn space_with_l1s(h: &Host, k: u64) -> AddressSpace {
    let s = h.mm.create().unwrap();
    for i in 0..k {
        h.mm.map(&s, VA + i * L1_SPAN, PageFlags::DATA).unwrap();
    }
    s
}

#[test]
fn after_warm_up_flushes_pins_switches_and_set_pgd_allocate_nothing() {
    let h = host(pvops_xen64::MAX_ENTRIES, 4096);
    let (ops, frames) = (h.ops, h.frames);

    // Warm-up: this vCPU's state and buffers are made on its first call.
    let warm = space_with_l1s(&h, 3);
    ops.activate_mm(frames, warm.pgd()).unwrap();
    ops.write_cr3(frames, warm.pgd()).unwrap();
    ops.lazy_mmu_enter();
    ops.flush_tlb_all().unwrap();
    ops.lazy_mmu_leave().unwrap();
    ops.write_cr3(frames, h.ops.boot_root()).unwrap();
    ops.exit_mm(frames, warm.pgd()).unwrap();

    // Pins and unpins of K = 1, 10, 100 table pages (100 needs several
    // batches: the full ones are issued mid-pin).
    for k in [1, 10, 100] {
        let s = space_with_l1s(&h, k);
        let (r, pin) = allocations(|| ops.activate_mm(frames, s.pgd()));
        r.unwrap();
        assert_eq!(pin, 0, "pin of {k} L1 pages");
        let (r, unpin) = allocations(|| ops.exit_mm(frames, s.pgd()));
        r.unwrap();
        assert_eq!(unpin, 0, "unpin of {k} L1 pages");
    }

    let a = space_with_l1s(&h, 2);
    ops.activate_mm(frames, a.pgd()).unwrap();

    // A switch: both base pointers, the cr3 callback.
    h.model.reset_counters();
    let (r, switch) = allocations(|| ops.write_cr3(frames, a.pgd()));
    r.unwrap();
    assert_eq!((switch, h.model.counters().hypercalls), (0, 1), "switch");

    // set_pgd on a pinned pgd: the kernel slot and its user twin, one pair.
    let slot = (VA >> 39) as usize;
    let entry = ops.read_entry(Level::L4, a.pgd(), slot).unwrap();
    h.model.reset_counters();
    let (r, set_pgd) = allocations(|| ops.set_entry(frames, Level::L4, a.pgd(), slot, entry));
    r.unwrap();
    assert_eq!((set_pgd, h.model.counters().hypercalls), (0, 1), "set_pgd");

    // Flushes: 100 pte updates in a lazy section are 4 batches (32 records
    // of 16 bytes fill the 512 argument bytes), 3 of them issued because
    // the batch was full.
    let l1 = pvops_conformance::l1_of(ops, a.pgd(), VA).unwrap();
    let page = MmServices::alloc_zeroed_frame(frames).unwrap();
    let leaf = Pte::new(page, pvops::pte::flags::PRESENT | pvops::pte::flags::USER);
    h.model.reset_counters();
    let (r, flushes) = allocations(|| {
        ops.lazy_mmu_enter();
        for i in 100..200 {
            ops.set_entry(frames, Level::L1, l1, i, leaf)?;
        }
        ops.lazy_mmu_leave()
    });
    r.unwrap();
    assert_eq!((flushes, h.model.counters().hypercalls), (0, 4), "100 lazy updates");
}

#[test]
fn the_counter_sees_an_allocation() {
    // The oracle can fail: an allocation in the counted closure is seen,
    // one in a hypercall (the hypervisor's side) is not.
    let (v, n) = allocations(|| vec![1u8; 10]);
    assert_eq!((v.len(), n), (10, 1));
    let (_, n) = allocations(|| uncounted(|| vec![1u8; 10]));
    assert_eq!(n, 0);
}

/// Multicall entries of a pin of `k` L1 pages (one L2, one L3 below 1 GiB
/// per 512): a read-only remap per table page and per root, then one
/// `mmuext_op` entry with both pins.
fn pin_entries(k: u64) -> u64 {
    k + k.div_ceil(512) + 1 + 2 + 1
}

/// Hypercalls for a pin at K table pages against batch capacities, on the
/// Xen model (its counters): each pin is ⌈entries / capacity⌉ hypercalls,
/// never one unbounded multicall; switch and pinned `set_pgd` stay at 1.
/// Returns the table rows.
fn sweep(capacities: &[usize], ks: &[u64]) -> Vec<String> {
    let mut rows = Vec::new();
    for &entries in capacities {
        let h = host(entries, 3072);
        let (ops, frames) = (h.ops, h.frames);
        let mut row = Vec::new();
        let mut unpin_last = 0;
        let mut kept = None;
        for (i, &k) in ks.iter().enumerate() {
            let s = space_with_l1s(&h, k);
            h.model.reset_counters();
            ops.activate_mm(frames, s.pgd()).unwrap();
            let pin = h.model.counters().hypercalls;
            assert_eq!(pin, pin_entries(k).div_ceil(entries as u64), "pin of K = {k} at {entries} entries");
            row.push(pin.to_string());
            if i == ks.len() - 1 {
                h.model.reset_counters();
                ops.exit_mm(frames, s.pgd()).unwrap();
                unpin_last = h.model.counters().hypercalls;
                assert_eq!(unpin_last, pin, "unpin of K = {k} at {entries} entries");
            } else {
                kept = Some(s);
            }
        }
        let a = kept.expect("at least two sizes");
        h.model.reset_counters();
        ops.write_cr3(frames, a.pgd()).unwrap();
        let switch = h.model.counters().hypercalls;
        let slot = (VA >> 39) as usize;
        let entry = ops.read_entry(Level::L4, a.pgd(), slot).unwrap();
        h.model.reset_counters();
        ops.set_entry(frames, Level::L4, a.pgd(), slot, entry).unwrap();
        let set_pgd = h.model.counters().hypercalls;
        assert_eq!((switch, set_pgd), (1, 1), "at {entries} entries");
        rows.push(format!(
            "| {entries} | {} | {} | {unpin_last} | {switch} | {set_pgd} |",
            pvops_xen64::batch_bytes(entries),
            row.join(" | ")
        ));
    }
    rows
}

#[test]
fn pins_split_at_the_batch_capacity_and_small_pins_switch_and_set_pgd_stay_at_one() {
    sweep(&[32, 1024], &[1, 10, 100]);
}

/// The measurement behind the default capacity (`docs/PERFORMANCE.md`):
/// `cargo test -p pvops-integration --test no_heap -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement (about 10 s): run with --ignored --nocapture"]
fn pin_hypercalls_against_batch_capacity() {
    let ks = [1, 10, 100, 1000];
    println!("| batch entries | per-vCPU buffers (bytes) | pin K=1 | K=10 | K=100 | K=1000 | unpin K=1000 | switch | set_pgd |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in sweep(&[32, 64, 128, 256, 512, 1024], &ks) {
        println!("{row}");
    }
}

/// A pin larger than one batch fails at sub-operation `after` (remaps first,
/// then the two pins): it stops queuing at the first batch that reports the
/// failure and undoes exactly the remaps that ran, whichever batch they went
/// out in. Observed by the model: its aliases and pins, and its trap count.
#[test]
fn a_pin_failing_in_any_of_its_batches_undoes_exactly_what_ran() {
    use pvops_xen64::abi::errno;
    let (model, b) = pvops_integration::xen_host::boot_xen64(4096);
    let mm = b.mm;
    let s = mm.create().unwrap();
    // 40 L1 + 1 L2 + 1 L3 + 2 pgds = 44 remaps, then 2 pins: 45 entries, two batches of 32.
    for i in 0..40 {
        mm.map(&s, VA + i * L1_SPAN, PageFlags::DATA).unwrap();
    }
    let nr = 4096;
    let aliases = || (0..nr).map(|p| model.alias_writable(Pfn(p))).collect::<Vec<_>>();
    let before = aliases();
    for (after, traps) in [(0, 2), (5, 2), (31, 2), (32, 4), (43, 4), (44, 4), (45, 4)] {
        model.reset_counters();
        model.inject_subop_failure(after, -errno::EBUSY);
        let e = mm.activate(&s).expect_err("injected failure");
        assert!(matches!(e, pvops::PvError::Hypercall { code: -16, .. }), "after {after}: {e}");
        assert!(!s.is_pinned(), "after {after}");
        assert_eq!(model.pinned_count(), 1, "after {after}: only the boot root is pinned");
        let after_undo = aliases();
        let changed: Vec<u64> = (0..nr).filter(|&p| before[p as usize] != after_undo[p as usize]).collect();
        assert!(changed.is_empty(), "after {after}: aliases of {changed:?} left read-only");
        // The failing batch, then the undo; a failure in the first batch
        // means the second is never issued.
        assert_eq!(model.counters().hypercalls, traps, "after {after}");
    }
    mm.activate(&s).unwrap();
    mm.activate_init().unwrap();
    mm.exit(s).map_err(|(e, _)| e).unwrap();
    model.check_quiescent().unwrap();
}

/// A pin marks each page as it queues its remap (that is how a table
/// linked twice is remapped once, with no list of pages), so it needs every
/// table below an unpinned pgd unmarked, and an unpin every table below a
/// pinned pgd marked: anything else is refused before a record is queued.
#[test]
fn a_tree_whose_table_metadata_disagrees_with_its_root_is_refused_before_any_hypercall() {
    let h = host(pvops_xen64::MAX_ENTRIES, 1024);
    let (ops, frames) = (h.ops, h.frames);
    let s = space_with_l1s(&h, 2);
    let l1 = pvops_conformance::l1_of(ops, s.pgd(), VA).unwrap();
    frames.set_pinned(l1, true).unwrap();
    h.model.reset_counters();
    let e = ops.activate_mm(frames, s.pgd()).unwrap_err();
    assert!(matches!(e, pvops::PvError::WrongState { .. }), "{e}");
    assert_eq!(h.model.counters().hypercalls, 0);
    assert!(!frames.is_pinned(s.pgd()).unwrap());

    frames.set_pinned(l1, false).unwrap();
    ops.activate_mm(frames, s.pgd()).unwrap();
    frames.set_pinned(l1, false).unwrap();
    h.model.reset_counters();
    let e = ops.exit_mm(frames, s.pgd()).unwrap_err();
    assert!(matches!(e, pvops::PvError::WrongState { .. }), "{e}");
    assert_eq!(h.model.counters().hypercalls, 0);
    assert_eq!(h.model.pinned_count(), 3, "boot root, pgd and user pgd still pinned");
}
