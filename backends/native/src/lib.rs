//! # The native backend
//!
//! One cr3, page tables written directly, TLB flushed with `invlpg` or a cr3
//! reload. Every pvops hook that exists for hypervisors is a no-op here.
//! Hardware sits behind two seams — [`pvops::PhysMem`] and [`NativeCpu`] — so
//! the same code runs on bare metal ([`BareMetalCpu`], [`DirectMap`]) and on
//! the host machine model.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

extern crate alloc;

mod backend;
mod cpu;
mod direct_map;
mod register;

pub use backend::NativeBackend;
pub use cpu::{BareMetalCpu, NativeCpu};
pub use direct_map::DirectMap;
pub use register::NativePlatform;

#[cfg(test)]
mod tests;
