//! # The Xen 64-bit PV backend
//!
//! Under Xen's 64-bit PV mode the guest kernel runs in ring 3 and does not own
//! its page tables outright: Xen validates every table before the MMU may use
//! it, and from then on the table is read-only to the guest. This backend
//! implements [`pvops::PvMmuOps`] under those rules (reference notes §6, §7;
//! Linux's `arch/x86/xen/mmu_pv.c` and the seed patch "xen64: allocate and
//! manage user pagetables"):
//!
//! * **two top levels per address space** — a kernel pgd and a *user pgd*
//!   that mirrors only the slots below `USER_LIMIT` ([`user_pgd`](crate::UserSlot));
//! * **pinning** — an address space's tables become live through the batch:
//!   read-only remaps of every table page, then `PIN_L4_TABLE` of both roots
//!   (one multicall while they fit the batch); unpinning reverses it;
//!   failures are undone record by record;
//! * **entries by hypercall** — pinned tables change only by `mmu_update`
//!   (machine addresses, pfn→mfn translated values); unpinned ones by direct
//!   stores;
//! * **batching** — records queue in a Linux-style per-vCPU multicall batch of
//!   fixed capacity, allocated once and never grown (no heap in the MMU
//!   path), and lazy-MMU sections (which nest) defer them; every result is checked and reported
//!   to the operation, or lazy section, that queued the record; reads see
//!   queued writes;
//! * **early boot** — before frame metadata exists every table is treated as
//!   pinned and only the kernel base pointer is set.
//!
//! All hypervisor access goes through two seams in [`XenPlatform`]:
//! [`HypercallTransport`] (with [`P2m`]) and [`pvops::PhysMem`]. On the host
//! they are the PV MMU model in `tests/model`; on Xen, the hypercall page.
//!
//! Modules follow Xen concepts: `multicall` (batching), `mmu_update`
//! (entries), `mmuext` (pins, base pointers, flushes), `pin`, `user_pgd`,
//! `p2m` (entry encoding), `root` (cr3), `tlb`, `boot` (early path),
//! `direct_map` (alias remaps), `register`.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]
#![warn(unreachable_pub)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod abi;
mod backend;
mod boot;
mod direct_map;
mod mmu_update;
mod mmuext;
mod multicall;
mod p2m;
mod pin;
mod protect;
mod register;
mod root;
mod tlb;
pub mod transport;
mod user_pgd;

pub use backend::XenBackend;
pub use multicall::{batch_bytes, FlushCounts, MAX_ARG_BYTES, MAX_CALLBACKS, MAX_ENTRIES};
pub use register::{XenPlatform, PRIORITY};
pub use transport::{HypercallTransport, Outcome, P2m};
pub use user_pgd::{attached_user_pgd, UserSlot};
