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
//! ## Setting up `Mm`
//!
//! A kernel builds the three things [`Mm::adopt_boot`] takes from its boot
//! handover: the backend the registry picked, a [`FrameAllocator`] over its
//! memory, the root it booted on. On the host, `pvops_model::host` builds
//! them on a model, consistent, so setting up `Mm` is three statements; the
//! model (never kernel-glue or the backend) then says what an access reaches
//! (`Host::oracle`, a `pvops_model::AccessOracle`).
//!
//! Natively (a machine model with a TLB):
//!
//! ```
//! use kernel_glue::{FaultFix, Mm, PageFlags};
//! use pvops_model::Access;
//! # use pvops_native as _; use pvops_xen64 as _;
//! let h = pvops_model::host::native(256)?;
//! let mm = Mm::adopt_boot(h.ops, h.frames, h.boot_pgd)?;
//! let mut space = mm.create()?;
//!
//! let page = mm.map(&space, 0x40_0000, PageFlags::DATA)?;
//! let va = pvops::VirtAddr::try_new(0x40_0000)?;
//! assert_eq!(h.oracle().reach_from(space.pgd(), va, Access::USER_WRITE), Ok(page));
//! assert!(h.oracle().reach_from(space.pgd(), va, Access::USER_EXECUTE).is_err(), "DATA is no-execute");
//! mm.activate(&space)?; // first use: pinned on Xen; cr3 switch
//! assert_eq!(h.oracle().reach(va, Access::USER_READ), Ok(page));
//! let child = mm.fork(&space)?;
//! // Copy-on-write: the child shares the page until one of them writes it.
//! let cow = mm.fork_cow(&space)?;
//! assert_eq!(mm.handle_fault(&cow, 0x40_0000, true), Ok(FaultFix::CopiedOnWrite));
//! assert_eq!(mm.handle_fault(&space, 0x40_0000, true), Ok(FaultFix::ReusedSoleOwner));
//! mm.activate_init()?;
//! let free = h.frames.free_count();
//! mm.exit(space).map_err(|(e, _)| e)?;
//! mm.exit(child).map_err(|(e, _)| e)?;
//! mm.exit(cow).map_err(|(e, _)| e)?;
//! assert!(h.frames.free_count() > free, "their frames came back");
//! # Ok::<(), pvops::PvError>(())
//! ```
//!
//! On the Xen PV model (the same three statements; Xen's rules are checked
//! on every hypercall, and the model says what user mode reaches once the
//! space is loaded):
//!
//! ```
//! use kernel_glue::{Mm, PageFlags};
//! use pvops_model::Access;
//! # use pvops_native as _; use pvops_xen64 as _;
//! let h = pvops_model::host::xen64(1024)?;
//! let mm = Mm::adopt_boot(h.ops, h.frames, h.boot_pgd)?;
//! let space = mm.create()?;
//!
//! let page = mm.map(&space, 0x40_0000, PageFlags::DATA)?;
//! mm.activate(&space)?; // pinned: changes are hypercalls from now on
//! let va = pvops::VirtAddr::try_new(0x40_0000)?;
//! assert_eq!(h.oracle().reach(va, Access::USER_WRITE), Ok(page));
//! let xen = h.xen.expect("the Xen model");
//! assert!(xen.counters().hypercalls > 0);
//! mm.activate_init()?;
//! mm.exit(space).map_err(|(e, _)| e)?;
//! # Ok::<(), pvops::PvError>(())
//! ```
//!
//! A kernel does the same from its own handover, in early boot (before the
//! frame metadata exists) and then ends it with [`Mm::init_metadata`]:
//!
//! ```
//! use kernel_glue::{FrameAllocator, Mm};
//! use pvops::Pfn;
//! # use pvops_native as _; use pvops_xen64 as _;
//! # let p = pvops_model::host::Platform::native(256, 1);
//! # let (mem, nr_frames, boot_root) = (p.mem, p.nr_frames, p.boot_pgd);
//! # let ops = (p.select()?.instantiate)(&p.env())?;
//! let frames = FrameAllocator::new(mem, nr_frames);
//! frames.add_free_range(Pfn(2), nr_frames - 2); // what the boot allocator left free
//! let mm = Mm::adopt_boot(ops, &frames, boot_root)?; // early boot: no metadata yet
//! // ... map the kernel's own pages (`Mm::map_kernel`) ...
//! mm.init_metadata()?; // the end of early boot: `create` works from here
//! let space = mm.create()?;
//! mm.exit(space).map_err(|(e, _)| e)?;
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
