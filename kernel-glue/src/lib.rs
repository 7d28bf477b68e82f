//! # kernel-glue — the core-kernel side of pvops
//!
//! Frame allocation with per-frame metadata ([`FrameAllocator`]) and address
//! spaces ([`Mm`], [`AddressSpace`]). It calls only the `pvops` interface, so
//! it is the same code whichever backend the registry picked.
//!
//! The address-space lifecycle (issue 14): shared frames with reference
//! counts ([`Mm::map_frame`]), ranges ([`Mm::map_range`], [`Mm::unmap_range`]
//! freeing emptied tables after the flush), `mprotect` ([`Mm::protect_range`]
//! through the backend's protection start/commit), demand-zero regions
//! ([`Mm::reserve_zero`]), copy-on-write fork ([`Mm::fork_cow`]) and the
//! page-fault entry point ([`Mm::handle_fault`]), kernel-half sync over the
//! live spaces, [`Mm::pin_all`]/[`Mm::unpin_all`].
//!
//! **Batching goes through the range operations.** Every `Mm` operation
//! issues what it queued before it releases the space's lock (another CPU
//! must never walk a table with updates still queued here: Linux likewise
//! leaves lazy-MMU mode before `pte_unmap_unlock`), so a caller's own lazy
//! section around several calls cannot merge their batches, and need not:
//! [`Mm::map_range`], [`Mm::unmap_range`] and [`Mm::protect_range`] walk each
//! table once and queue the whole range in one lazy section, so N pages into
//! a live Xen space cost ⌈N/32⌉ hypercalls, as N raw `set_pte`s in one lazy
//! section do (pinned by `map_range_into_a_pinned_space_costs_a_batch_per_32_pages`).
//! A caller's own `lazy_mmu_enter`/`leave` around them nests safely (the
//! backends count the depth).
//!
//! ```
//! use kernel_glue::{FaultFix, FrameAllocator, Mm, PageFlags};
//! use pvops::{Pfn, PvMmuOps};
//! use pvops_model::Machine;
//! use pvops_native::NativeBackend;
//!
//! // A machine of 256 frames that booted on the root in frame 1.
//! let machine = Machine::leaked(256);
//! machine.set_cr3(Pfn(1).addr());
//! let ops: &'static dyn PvMmuOps = Box::leak(Box::new(NativeBackend::new(machine, machine)));
//! let frames = FrameAllocator::new(machine, 256);
//! frames.add_free_range(Pfn(2), 254);
//! let mm = Mm::adopt_boot(ops, machine, &frames, Pfn(1))?; // early boot: no metadata yet
//! frames.init_metadata();
//!
//! let mut space = mm.create()?;
//! let page = mm.map(&space, 0x40_0000, PageFlags::DATA)?;
//! assert_eq!(mm.translate(&space, 0x40_0000)?, Some((page, PageFlags::DATA)));
//! mm.activate(&space)?; // first use: pinned on Xen; cr3 switch
//! let child = mm.fork(&space)?;
//! // Copy-on-write: the child shares the page until one of them writes it.
//! let cow = mm.fork_cow(&space)?;
//! assert_eq!(mm.handle_fault(&cow, 0x40_0000, true), Ok(FaultFix::CopiedOnWrite));
//! assert_eq!(mm.handle_fault(&space, 0x40_0000, true), Ok(FaultFix::ReusedSoleOwner));
//! mm.activate_init()?;
//! mm.exit(space).map_err(|(e, _)| e)?;
//! mm.exit(child).map_err(|(e, _)| e)?;
//! mm.exit(cow).map_err(|(e, _)| e)?;
//! assert_eq!(frames.free_frames(), 254, "every frame came back");
//! # Ok::<(), pvops::PvError>(())
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

mod address_space;
mod frames;
mod lifecycle;
mod walk;

pub use address_space::{AddressSpace, Mm, PageFlags};
pub use frames::{FrameAllocator, FrameInfo};
pub use lifecycle::{FaultFix, FaultKill};

// SMP: one `Mm`, its address spaces and the allocator are shared by every CPU.
const _: fn() = || {
    fn sync<T: Sync>() {}
    sync::<Mm<'static>>();
    sync::<AddressSpace>();
    sync::<FrameAllocator<'static>>();
};
