//! # kernel-glue — the core-kernel side of pvops
//!
//! Frame allocation with per-frame metadata ([`FrameAllocator`]) and address
//! spaces ([`Mm`], [`AddressSpace`]). It calls only the `pvops` interface, so
//! it is the same code whichever backend the registry picked.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

mod address_space;
mod frames;
mod walk;

pub use address_space::{AddressSpace, Mm, PageFlags};
pub use frames::{FrameAllocator, FrameInfo};
