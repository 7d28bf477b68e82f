//! The demo workload, shared by `cargo xtask run`'s host report and the booted
//! kernel so both count hypercalls for exactly the same steps: create, map,
//! pin, fork, switch and exit a few address spaces.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use core::sync::atomic::{AtomicU64, Ordering};

use kernel_glue::{Mm, PageFlags};
use pvops::{OpStats, Pfn, PhysMem, PvError, PvMmuOps, ENTRIES_PER_TABLE};

/// One step of the workload and what it cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// What was done.
    pub what: String,
    /// Hypervisor traffic of this step.
    pub cost: OpStats,
}

fn step<T, O: PvMmuOps + ?Sized>(
    ops: &O,
    steps: &mut Vec<Step>,
    what: String,
    f: impl FnOnce() -> Result<T, PvError>,
) -> Result<T, PvError> {
    let before = ops.stats();
    let r = f()?;
    steps.push(Step { what, cost: ops.stats().since(before) });
    Ok(r)
}

/// Runs the demo: a process with `pages` pages, pinned, one more page, a fork,
/// switches, exits. Returns the steps and the number of frames not returned
/// (0 unless something leaked).
pub fn demo<O: PvMmuOps + ?Sized>(mm: &Mm<'_, O>, pages: u64) -> Result<(Vec<Step>, i64), PvError> {
    let ops = mm.ops();
    let free_before = mm.frames().free_count() as i64;
    let mut steps = Vec::new();
    let a = step(ops, &mut steps, "create A".into(), || mm.create())?;
    step(ops, &mut steps, format!("map {pages} pages in A (unpinned)"), || {
        for i in 0..pages {
            mm.map(&a, 0x40_0000 + i * 0x1000, PageFlags::DATA)?;
        }
        Ok(())
    })?;
    step(ops, &mut steps, "activate A (first use: pin)".into(), || mm.activate(&a))?;
    step(ops, &mut steps, "map 1 page in A (pinned, new tables)".into(), || {
        mm.map(&a, 0x7f00_0000_0000, PageFlags::DATA)
    })?;
    let b = step(ops, &mut steps, "fork A -> B".into(), || mm.fork(&a))?;
    step(ops, &mut steps, "switch to B (first use: pin)".into(), || mm.activate(&b))?;
    step(ops, &mut steps, "switch to A".into(), || mm.activate(&a))?;
    step(ops, &mut steps, "switch to B".into(), || mm.activate(&b))?;
    step(ops, &mut steps, "switch to init_mm".into(), || mm.activate_init())?;
    step(ops, &mut steps, "exit A (unpin, free)".into(), || mm.exit(a).map_err(|(e, _)| e))?;
    step(ops, &mut steps, "exit B (unpin, free)".into(), || mm.exit(b).map_err(|(e, _)| e))?;
    let leaked = free_before - mm.frames().free_count() as i64;
    Ok((steps, leaked))
}

/// A `PhysMem` that counts the stores passing through it: put between a
/// backend and its memory, it measures the backend's direct stores at the seam
/// (the kernel's `HCSTEP` lines and the host report), not by the backend's own
/// statistics. A whole-frame zeroing or copy counts as one store per word
/// (what the word-by-word defaults would count), and is forwarded whole.
/// `M` is the inner memory's type: a concrete one (a kernel's `DirectMap`,
/// through [`CountingMem::of`]) lets a backend typed over this seam inline
/// every word access through it.
pub struct CountingMem<M: PhysMem + ?Sized + 'static = dyn PhysMem> {
    inner: &'static M,
    stores: AtomicU64,
}

impl<M: PhysMem + ?Sized + 'static> core::fmt::Debug for CountingMem<M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "CountingMem({} stores)", self.stores())
    }
}

impl CountingMem {
    /// Counts the stores to `inner`.
    pub const fn new(inner: &'static dyn PhysMem) -> Self {
        CountingMem::of(inner)
    }
}

impl<M: PhysMem + ?Sized + 'static> CountingMem<M> {
    /// Counts the stores to `inner`, keeping its type.
    ///
    /// ```
    /// use core::sync::atomic::{AtomicU64, Ordering};
    /// use pvops::{Pfn, PhysMem};
    /// use pvops_conformance::workload::CountingMem;
    ///
    /// /// One word of memory, by its own type.
    /// struct Word(AtomicU64);
    /// impl PhysMem for Word {
    ///     fn read_entry(&self, _: Pfn, _: usize) -> u64 { self.0.load(Ordering::Relaxed) }
    ///     fn write_entry(&self, _: Pfn, _: usize, v: u64) { self.0.store(v, Ordering::Relaxed) }
    ///     fn compare_exchange_entry(&self, _: Pfn, _: usize, c: u64, n: u64) -> Result<u64, u64> {
    ///         self.0.compare_exchange(c, n, Ordering::SeqCst, Ordering::SeqCst)
    ///     }
    /// }
    /// static MEM: Word = Word(AtomicU64::new(0));
    /// let counting: CountingMem<Word> = CountingMem::of(&MEM);
    /// counting.write_entry(Pfn(0), 1, 5);
    /// assert_eq!((counting.stores(), MEM.read_entry(Pfn(0), 1)), (1, 5));
    /// ```
    pub const fn of(inner: &'static M) -> Self {
        CountingMem { inner, stores: AtomicU64::new(0) }
    }

    /// Stores so far.
    pub fn stores(&self) -> u64 {
        self.stores.load(Ordering::Relaxed)
    }
}

impl<M: PhysMem + ?Sized + 'static> PhysMem for CountingMem<M> {
    fn read_entry(&self, pfn: Pfn, index: usize) -> u64 {
        self.inner.read_entry(pfn, index)
    }

    fn write_entry(&self, pfn: Pfn, index: usize, value: u64) {
        self.stores.fetch_add(1, Ordering::Relaxed);
        self.inner.write_entry(pfn, index, value);
    }

    fn compare_exchange_entry(&self, pfn: Pfn, index: usize, current: u64, new: u64) -> Result<u64, u64> {
        self.stores.fetch_add(1, Ordering::Relaxed);
        self.inner.compare_exchange_entry(pfn, index, current, new)
    }

    fn zero_frame(&self, pfn: Pfn) {
        self.stores.fetch_add(ENTRIES_PER_TABLE as u64, Ordering::Relaxed);
        self.inner.zero_frame(pfn);
    }

    fn copy_frame(&self, from: Pfn, to: Pfn) {
        self.stores.fetch_add(ENTRIES_PER_TABLE as u64, Ordering::Relaxed);
        self.inner.copy_frame(from, to);
    }

    fn frame_freed(&self, pfn: Pfn) {
        self.inner.frame_freed(pfn);
    }
}
