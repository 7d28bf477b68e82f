//! CPUs: which one runs a call, which ones are up, masking interrupts, and
//! cross-calls — the platform seam SMP needs ([`Cpus`]), and the CPU sets
//! ([`CpuMask`]) and flush requests ([`Flush`]) the interface passes around.
//!
//! Backends keep their per-CPU state (Xen's multicall batch, the lazy-MMU
//! depth, the loaded roots) indexed by [`Cpus::this_cpu`], as Linux keeps
//! them in per-CPU variables (`arch/x86/xen/multicalls.c`, `mmu_pv.c`).

use crate::addr::VirtAddr;
use crate::error::PvError;

/// Most CPUs a [`CpuMask`] can name (one `u64` word: Xen's vCPU bitmap
/// for `MMUEXT_TLB_FLUSH_MULTI` is an array of such words).
pub const MAX_CPUS: usize = 64;

/// A set of CPUs (bit `n` = CPU `n`), e.g. Linux's `mm_cpumask`.
///
/// ```
/// use pvops::CpuMask;
/// let m = CpuMask::EMPTY.with(0).with(3);
/// assert!(m.contains(3) && !m.contains(1));
/// assert_eq!(m.without(0).iter().collect::<Vec<_>>(), vec![3]);
/// assert_eq!(CpuMask::first(2), CpuMask::EMPTY.with(0).with(1));
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CpuMask(pub u64);

impl CpuMask {
    /// No CPU.
    pub const EMPTY: CpuMask = CpuMask(0);

    /// CPUs `0..n` (all of them for `n >= MAX_CPUS`).
    pub const fn first(n: usize) -> CpuMask {
        if n >= MAX_CPUS {
            CpuMask(u64::MAX)
        } else {
            CpuMask((1u64 << n) - 1)
        }
    }

    /// Only CPU `cpu` (empty if `cpu >= MAX_CPUS`).
    pub const fn one(cpu: usize) -> CpuMask {
        CpuMask::EMPTY.with(cpu)
    }

    /// This set plus `cpu` (unchanged if `cpu >= MAX_CPUS`).
    pub const fn with(self, cpu: usize) -> CpuMask {
        if cpu >= MAX_CPUS {
            self
        } else {
            CpuMask(self.0 | 1 << cpu)
        }
    }

    /// This set minus `cpu`.
    pub const fn without(self, cpu: usize) -> CpuMask {
        if cpu >= MAX_CPUS {
            self
        } else {
            CpuMask(self.0 & !(1 << cpu))
        }
    }

    /// True if `cpu` is in the set.
    pub const fn contains(self, cpu: usize) -> bool {
        cpu < MAX_CPUS && self.0 & (1 << cpu) != 0
    }

    /// True if no CPU is in the set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The CPUs in both sets.
    pub const fn and(self, other: CpuMask) -> CpuMask {
        CpuMask(self.0 & other.0)
    }

    /// The CPUs in either set.
    pub const fn or(self, other: CpuMask) -> CpuMask {
        CpuMask(self.0 | other.0)
    }

    /// How many CPUs are in the set.
    pub const fn count(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The CPUs in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_CPUS).filter(move |&c| self.contains(c))
    }
}

impl core::fmt::Debug for CpuMask {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// What a TLB flush covers (in the address space loaded on each target).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// One page: its leaf and every paging-structure cache above it.
    Page(VirtAddr),
    /// `pages` pages from `start` (a backend MAY flush more, e.g. everything).
    Range {
        /// First page.
        start: VirtAddr,
        /// Number of pages.
        pages: u64,
    },
    /// Every non-global entry.
    All,
}

/// The CPUs of the machine, as the platform sees them: the seam every
/// SMP-aware backend and kernel-glue use (one implementation per platform;
/// host models implement it for their vCPUs).
///
/// Contracts:
/// * [`Cpus::this_cpu`] MUST be stable while the caller runs (no migration
///   inside a pvops call) and `< MAX_CPUS`.
/// * [`Cpus::call_on`] MUST run `f` on every CPU of `cpus` other than the
///   caller, and MUST NOT return `Ok` before each has finished it. A CPU of
///   `cpus` that is offline is an error naming it ([`PvError::CpuOffline`]);
///   one that does not answer within a bounded wait is
///   [`PvError::CpuTimeout`] (its request is taken back). While it waits,
///   the caller MUST still serve cross-calls aimed at it, also with its own
///   events masked (two CPUs calling each other must not deadlock); such a
///   handler then runs inside whatever the caller is doing, so a caller
///   MUST NOT cross-call from inside a lazy-MMU section (kernel-glue never
///   does: `Mm::exit`, its only cross-call, opens no section first).
pub trait Cpus: Sync {
    /// The CPU running this call.
    fn this_cpu(&self) -> usize;

    /// CPUs that are up (the boot CPU at least). A CPU, once up, MUST stay
    /// up while address spaces exist: kernel-glue's shootdowns skip CPUs that
    /// are not online, and a CPU that activated a space does not take the
    /// space's lock again when it switches back to it (Linux's `switch_mm`
    /// tests its `mm_cpumask` bit first). A platform that takes CPUs offline
    /// must first clear the CPU from every space's cpumask (Linux's
    /// `clear_tasks_mm_cpumask`); pvops has no CPU hotplug.
    fn online(&self) -> CpuMask;

    /// Masks interrupts (natively `cli`) or event delivery (Xen PV: this
    /// vCPU's `evtchn_upcall_mask`) on this CPU; returns whether they were
    /// masked already, for [`Cpus::restore_events`].
    fn mask_events(&self) -> bool;

    /// Unmasks again unless `was_masked` (then leaves them masked). On Xen a
    /// pending event is delivered at once.
    fn restore_events(&self, was_masked: bool);

    /// Runs `f` on every CPU in `cpus` except the caller, each in its
    /// interrupt (event) handler, and waits for all of them. The first error
    /// `f` returned (or why a CPU could not run it) is the result.
    fn call_on(&self, cpus: CpuMask, f: &(dyn Fn() -> Result<(), PvError> + Sync)) -> Result<(), PvError>;

    /// One turn of a wait loop (`pause`; a host model lets another vCPU run).
    fn relax(&self) {
        core::hint::spin_loop();
    }
}

/// A uniprocessor: CPU 0 only, nothing to mask, no one to call. What a
/// platform that does not bring up other CPUs passes as its [`Cpus`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleCpu;

impl Cpus for SingleCpu {
    fn this_cpu(&self) -> usize {
        0
    }
    fn online(&self) -> CpuMask {
        CpuMask::one(0)
    }
    fn mask_events(&self) -> bool {
        false
    }
    fn restore_events(&self, _was_masked: bool) {}
    fn call_on(&self, cpus: CpuMask, _f: &(dyn Fn() -> Result<(), PvError> + Sync)) -> Result<(), PvError> {
        match cpus.without(0).iter().next() {
            Some(cpu) => Err(PvError::CpuOffline { cpu }),
            None => Ok(()),
        }
    }
}

/// Masks events on this CPU for as long as it lives (restores on drop).
#[derive(Debug)]
#[must_use = "events are unmasked again when the guard is dropped"]
pub struct EventsMasked<'a> {
    cpus: &'a dyn Cpus,
    was_masked: bool,
}

impl<'a> EventsMasked<'a> {
    /// Masks events on the calling CPU.
    pub fn new(cpus: &'a dyn Cpus) -> Self {
        let was_masked = cpus.mask_events();
        EventsMasked { cpus, was_masked }
    }
}

impl Drop for EventsMasked<'_> {
    fn drop(&mut self) {
        self.cpus.restore_events(self.was_masked);
    }
}

impl core::fmt::Debug for dyn Cpus + '_ {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Cpus(online {:?})", self.online())
    }
}
