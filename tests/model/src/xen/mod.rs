//! # A strict model of Xen's 64-bit PV MMU
//!
//! One PV64 domain on the host: machine frames (a [`crate::Machine`] indexed
//! by mfn), a scrambled p2m/m2p, Xen's page types, type counts and pins, the
//! kernel and user base pointers, and the hypercalls that change them. It
//! enforces the rules of the reference notes §6 and records — never repairs —
//! what a guest does wrong:
//!
//! * the guest's direct map is real L1 slots ([`direct_map`]): slot `p` maps
//!   some frame (not necessarily `p`'s), read-only or writable, or nothing;
//!   each writable slot is a writable mapping of the frame it names;
//! * a frame becomes a table only with no writable mapping (-EINVAL);
//!   a writable mapping of a table is refused (-EBUSY);
//! * validation takes next-lower types through every present entry,
//!   PSE/G above L1 are refused, L4 slots 256..=271 are Xen's;
//! * Xen rewrites present entries (U, A, G, bit 52), so read-backs differ;
//! * a direct store goes through the pfn's slot: through a read-only or
//!   empty one it is a [`Violation`];
//! * the machine's TLB ([`crate::tlb`]) holds what the kernel base pointer
//!   and (once user mode may have run) the user base pointer reach; Xen
//!   flushes it exactly where `mm.c` does: `NEW_BASEPTR` and
//!   `TLB_FLUSH_LOCAL` everything, `INVLPG_LOCAL` one address, the `UVMF_*`
//!   flags of `update_va_mapping`, a page-type change unless this CPU
//!   flushed since (`tlbflush_filter`); `mmu_update` and
//!   `NEW_USER_BASEPTR` flush nothing, and entering user mode drops all but
//!   global entries (Xen sets G on user L1es; with XPTI or PCID
//!   `pv_make_cr4` leaves cr4.PGE off and G means nothing — the model takes
//!   the worse case, PGE on); a direct-map slot change leaves its old
//!   translation cached like any L1e change, until those flushes drop it;
//! * user mode with no user base pointer crashes the domain;
//! * SMP: base pointers, their type references, TLBs and event masks are
//!   per vCPU; hypercalls and multicalls run on the calling vCPU; `*_LOCAL`
//!   and `UVMF_LOCAL` flush only it, `MMUEXT_TLB_FLUSH_MULTI` /
//!   `MMUEXT_INVLPG_MULTI` the vCPUs in the bitmap, `UVMF_ALL` and a type
//!   change's flush every vCPU (smp-notes §4). An unpin succeeds while
//!   another vCPU holds the root: its frames stay typed, and freeing them
//!   is a hazard, because that vCPU's TLB still reaches them.
//!
//! Files: [`p2m`] (the scrambled map), [`types`] (types, counts, validation),
//! [`direct_map`] (the direct map's slots and their writable counts),
//! `hypercalls.rs` (`HypercallTransport`), `guest_mem.rs` (`PhysMem`, `P2m`),
//! [`model`] (state, base pointers, access checks, counters), `checks.rs`
//! (invariants for long random runs),
//! [`guest_mm`] (a small `MmServices` for tests), [`guest`] (model + frames +
//! backend, with the core-kernel steps tests need).
//!
//! When the real Xen disagrees with this model, the model is wrong.

mod checks;
pub mod direct_map;
pub mod guest;
mod guest_mem;
pub mod guest_mm;
pub mod hypercalls;
pub mod model;
pub mod p2m;
pub mod types;

pub use direct_map::Slot;
pub use guest::XenGuest;
pub use guest_mm::GuestMm;
pub use model::{Violation, XenCounters, XenFault, XenModel, DEFAULT_DIRECT_MAP_BASE};
pub use p2m::P2mTable;
pub use types::{FrameInfo, PageType};
