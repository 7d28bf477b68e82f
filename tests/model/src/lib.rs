//! Host models for testing pvops backends without hardware.
//!
//! * [`machine::Machine`]: frames, cr3, a strict 4-level walker and a TLB ([`tlb`]).
//! * [`xen`]: Xen's PV MMU on top of a machine (p2m, page types, pins, hypercalls).
//! * [`host`]: a booted host machine with a backend, ready for kernel-glue's
//!   `Mm` (`host::native(1024)?`, `host::xen64(1024)?`).
//! * SMP: [`vcpu`] (which vCPU a host thread is), [`cpus::ModelCpus`] (the
//!   vCPUs' `pvops::Cpus`: event masks, cross-calls) and [`sched`] (vCPU
//!   threads under a deterministic scheduler that explores interleavings).
#![warn(missing_docs)]

pub mod cpus;
pub mod host;
pub mod machine;
pub mod oracle;
pub mod sched;
pub mod tlb;
pub mod vcpu;
pub mod walk;
pub mod xen;

pub use cpus::{CpuCounters, ModelCpus};
pub use machine::Machine;
pub use oracle::{AccessOracle, Refused};
pub use sched::{explore, Explored, Explorer, Failure, Point, Run, Schedule, SmpState};
pub use tlb::{Cached, TlbHazard, TlbViolation};
pub use vcpu::{on_vcpu, AsVcpu};
pub use walk::{Access, Fault};
pub use xen::{GuestMm, XenGuest, XenModel};
