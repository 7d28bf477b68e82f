//! Host models for testing pvops backends without hardware.
//!
//! * [`machine::Machine`]: frames, cr3 and a strict 4-level walker.
//! * [`xen`]: Xen's PV MMU on top of a machine (p2m, page types, pins, hypercalls).
#![warn(missing_docs)]

pub mod machine;
pub mod walk;
pub mod xen;

pub use machine::Machine;
pub use walk::{Access, Fault};
pub use xen::{GuestMm, XenGuest, XenModel};
