//! # pvops — paravirt MMU operations for x86-64 kernels
//!
//! Core kernel code (address spaces, context switch) calls one interface,
//! [`PvMmuOps`]. At boot, [`init`] asks every registered backend (a
//! [`linkme`] slice, [`BACKENDS`]) whether it can drive this machine and
//! publishes the best one; [`ops()`] returns it from then on.
//!
//! The interface is modelled on Linux's `pv_mmu_ops` as needed by Xen's
//! 64-bit PV mode: the guest kernel runs in ring 3, every process has a kernel
//! pgd and a user pgd, and live page tables are pinned (read-only to the
//! guest, changed by batched hypercalls). Natively every hook is a plain store
//! or a no-op.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

extern crate alloc;

pub mod addr;
pub mod cpu;
pub mod dispatch;
pub mod error;
pub mod ops;
pub mod pte;
#[cfg(not(loom))]
mod publish;
#[cfg(loom)]
pub mod publish;
pub mod registry;
pub mod services;

pub use addr::{Level, Mfn, Pfn, VirtAddr, ENTRIES_PER_TABLE, PAGE_SHIFT, PAGE_SIZE, PGDIR_SIZE};
pub use cpu::{CpuMask, Cpus, EventsMasked, Flush, SingleCpu, MAX_CPUS};
pub use error::PvError;
pub use ops::{OpStats, PvMmuOps, USER_LIMIT, USER_PGD_SLOTS};
pub use pte::Pte;
pub use registry::{
    backends, init, init_forced, ops, publish, select, BackendDesc, BootEnv, EntryKind, InitError, BACKENDS,
};
pub use services::{MmServices, PhysMem};

#[doc(hidden)]
pub use alloc::boxed::Box as __Box;
#[doc(hidden)]
pub use linkme as __linkme;
