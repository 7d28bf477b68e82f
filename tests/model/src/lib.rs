//! Host models for testing pvops backends without hardware.
//!
//! * [`machine::Machine`]: frames, cr3, a strict 4-level walker and a TLB ([`tlb`]).
//! * [`xen`]: Xen's PV MMU on top of a machine (p2m, page types, pins, hypercalls).
#![warn(missing_docs)]

pub mod machine;
pub mod tlb;
pub mod walk;
pub mod xen;

pub use machine::Machine;
pub use tlb::{Cached, TlbHazard, TlbViolation};
pub use walk::{Access, Fault};
pub use xen::{GuestMm, XenGuest, XenModel};
