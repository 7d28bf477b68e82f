//! Memory management on the libraries: the platform handles go to the pvops
//! registry, which picks the backend; kernel-glue's frame allocator and
//! `init_mm` are built on top, through the early-boot path first.
//!
//! The sequence is the one `tests/integration`'s `boot_backend` follows on
//! the host models:
//!
//! ```text
//! KernelOps::init_static(&BootEnv{entry, handover, platform}) -> ops ("native" / "xen64" / "xen-pvh"),
//!   the registry's selection, published for pvops::ops() and held by value
//! FrameAllocator::new(mem, nr_frames) + the boot allocator's free frames
//! Mm::adopt_boot(ops, frames, boot_root)             (memory: the allocator's; no frame metadata yet)
//! mm.map_kernel(KERNEL_PROBE_VA, frame, writable)    (early path)
//! mm.init_metadata()                                 (metadata + backend told: steady state from here)
//! ```

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::any::Any;
use core::fmt;

use kernel_glue::{FrameAllocator, Mm};
#[cfg(feature = "broken-isolation")]
use pvops::{pte::flags, Pte};
use pvops::{BootEnv, EntryKind, Level, Pfn, PhysMem, PvError, PvMmuOps, VirtAddr};

use crate::backends::KernelOps;
use crate::memory;

/// A supervisor-only, writable kernel page mapped into `init_mm` during early
/// boot (L4 slot 402, Linux's vmalloc area). The conformance suite's
/// "kernel address", and the address the user probes read and write.
pub const KERNEL_PROBE_VA: u64 = 0xffff_c900_0000_0000;

/// The memory-management pieces of the running kernel (all `'static`).
#[derive(Clone, Copy)]
pub struct Vm {
    /// The backend the registry picked, dispatched statically.
    pub ops: &'static KernelOps,
    /// Page-table memory (the direct map).
    pub mem: &'static dyn PhysMem,
    /// The frame allocator with per-frame metadata.
    pub frames: &'static FrameAllocator<'static>,
    /// `init_mm` and address spaces.
    pub mm: &'static Mm<'static, KernelOps>,
    /// The frame behind [`KERNEL_PROBE_VA`].
    pub probe_frame: Pfn,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vm({:?}, {:?})", self.mm, self.frames)
    }
}

/// Why the memory manager could not be brought up.
#[derive(Debug)]
pub enum VmError {
    /// No backend accepted the platform (with every backend's reason).
    Registry(pvops::InitError),
    /// A pvops / kernel-glue operation failed.
    Pv(&'static str, PvError),
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::Registry(e) => write!(f, "pvops::init: {e}"),
            VmError::Pv(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

fn step<T>(what: &'static str, r: Result<T, PvError>) -> Result<T, VmError> {
    r.map_err(|e| VmError::Pv(what, e))
}

/// Brings up pvops and kernel-glue (see the module docs). `mem` must map
/// every frame below `nr_frames`; `boot_root` is the root that is loaded now.
pub fn boot(
    entry: EntryKind,
    handover: &str,
    platform: &'static (dyn Any + Send + Sync),
    mem: &'static dyn PhysMem,
    nr_frames: u64,
    boot_root: Pfn,
) -> Result<Vm, VmError> {
    let env = BootEnv { entry, handover, platform };
    let ops: &'static KernelOps = KernelOps::init_static(&env).map_err(VmError::Registry)?;
    let ops = crate::sabotage::kernel_ops(ops);
    log::info!(
        "pvops: entry {:?} ({}) -> backend {} (static dispatch: {})",
        entry,
        handover,
        ops.name(),
        ops.is_builtin()
    );

    let frames: &'static FrameAllocator<'static> = Box::leak(Box::new(FrameAllocator::new(mem, nr_frames)));
    let free = memory::take_free_frames();
    for r in free.as_slice() {
        let end = r.end.min(nr_frames);
        if r.start < end {
            frames.add_free_range(Pfn(r.start), end - r.start);
        }
    }
    log::info!(
        "frames: {} of {} free after boot (boot allocator handed over {} in {} ranges)",
        frames.free_count(),
        nr_frames,
        free.total(),
        free.as_slice().len()
    );

    let mm: &'static Mm<'static, KernelOps> =
        Box::leak(Box::new(step("Mm::adopt_boot", Mm::adopt_boot(ops, frames, boot_root))?));
    // Early boot: still no frame metadata.
    let probe_frame = step("probe frame", frames.alloc_zeroed_frame())?;
    step("map_kernel", mm.map_kernel(KERNEL_PROBE_VA, probe_frame, true))?;
    // Something recognisable in it: a successful read shows up in the logs.
    mem.write_entry(probe_frame, 0, 0x6b65_726e_656c_2121);
    #[cfg(feature = "broken-isolation")]
    step("broken-isolation", expose_probe_page_natively(ops, frames, boot_root))?;
    // The end of early boot, at one point: metadata created and the backend
    // told (xen64 marks the boot tables pinned here).
    step("Mm::init_metadata", mm.init_metadata())?;
    log::info!(
        "init_mm: root {:?} adopted by {}, frame metadata ready, kernel page {:#x} -> {:?}",
        boot_root,
        ops.name(),
        KERNEL_PROBE_VA,
        probe_frame
    );
    Ok(Vm { ops, mem, frames, mm, probe_frame })
}

/// The tables (with their level) on the path to `va` in the tree at `root`,
/// and the leaf slot: `[(table, level, index)]` from L4 to L1.
pub fn path(ops: &dyn PvMmuOps, root: Pfn, va: u64) -> Result<[(Pfn, Level, usize); 4], PvError> {
    let va = VirtAddr::try_new(va)?;
    let mut out = [(root, Level::L4, 0); 4];
    let mut table = root;
    for (i, level) in Level::TOP_DOWN.into_iter().enumerate() {
        out[i] = (table, level, va.index(level));
        if level == Level::L1 {
            break;
        }
        let e = ops.read_entry(level, table, va.index(level))?;
        if !e.is_present() {
            return Err(PvError::NotMapped { addr: va });
        }
        table = e.pfn();
    }
    Ok(out)
}

/// `broken-isolation` (test only): natively, every entry on the path to the
/// kernel probe page gets the user bit, so user mode reaches it through the
/// kernel half every address space shares. (On Xen the user pgd has no
/// kernel half; see `workload::expose_probe_page_in`.)
#[cfg(feature = "broken-isolation")]
fn expose_probe_page_natively(ops: &dyn PvMmuOps, mm: &dyn pvops::MmServices, root: Pfn) -> Result<(), PvError> {
    // xen-pvh is the native backend under Xen: one pgd, shared kernel half.
    if !matches!(ops.name(), "native" | "xen-pvh") {
        return Ok(());
    }
    for (table, level, index) in path(ops, root, KERNEL_PROBE_VA)? {
        let e = ops.read_entry(level, table, index)?;
        ops.set_entry(mm, level, table, index, Pte(e.0 | flags::USER))?;
    }
    ops.flush_tlb_all()?;
    log::warn!("broken-isolation: kernel page {KERNEL_PROBE_VA:#x} is user-accessible");
    Ok(())
}

/// Frames marked pinned in frame metadata (on Xen: init_mm's boot tables,
/// plus every table of an address space that is activated and not exited).
pub fn pinned_frames(frames: &FrameAllocator<'_>) -> Vec<Pfn> {
    (0..frames.nr_frames()).map(Pfn).filter(|&p| frames.info(p).is_some_and(|i| i.pinned)).collect()
}
