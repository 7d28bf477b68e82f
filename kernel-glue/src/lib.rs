//! # kernel-glue — the core-kernel side of pvops
//!
//! Frame allocation with per-frame metadata ([`FrameAllocator`]) and address
//! spaces ([`Mm`], [`AddressSpace`]). It calls only the `pvops` interface, so
//! it is the same code whichever backend the registry picked.
//!
//! ```
//! use kernel_glue::{FrameAllocator, Mm, PageFlags};
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
//! mm.activate_init()?;
//! mm.exit(space).map_err(|(e, _)| e)?;
//! mm.exit(child).map_err(|(e, _)| e)?;
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
