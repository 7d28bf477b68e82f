//! # The pvops conformance suite
//!
//! Every case is a function over an [`Env`]: the memory manager (backend +
//! frame allocator) and a [`Machine`] that answers "what can user mode reach
//! right now?". The same cases run on the host models and inside the booted
//! kernel on real page tables.
//!
//! A backend author runs everything with [`run_all`] or one case with
//! [`run_one`]; each result carries a reason.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

use pvops::PvMmuOps;

mod cases;
mod env;
mod smp;
pub mod workload;

pub use cases::{cases, l1_of, CASES};
pub use env::{Case, CaseResult, Env, Machine, Summary};
pub use smp::{smp_cases, STALE_ON_PURPOSE};

/// Runs every case in order; `report` sees each result as it comes.
pub fn run_all<O: PvMmuOps + ?Sized>(env: &Env<'_, O>, report: &mut dyn FnMut(&Case<O>, &CaseResult)) -> Summary {
    run_list(env, &cases::<O>(), report)
}

/// Runs `list` in order, counting what passed.
fn run_list<O: PvMmuOps + ?Sized>(
    env: &Env<'_, O>,
    list: &[Case<O>],
    report: &mut dyn FnMut(&Case<O>, &CaseResult),
) -> Summary {
    let mut summary = Summary::default();
    for case in list {
        let result = env.run_case(case);
        summary.total += 1;
        if result.is_ok() {
            summary.passed += 1;
        }
        report(case, &result);
    }
    summary
}

/// Runs the case called `name`; `None` if there is no such case.
pub fn run_one<O: PvMmuOps + ?Sized>(env: &Env<'_, O>, name: &str) -> Option<CaseResult> {
    cases::<O>().iter().find(|c| c.name == name).map(|c| env.run_case(c))
}

/// Runs every SMP case ([`smp_cases`]); they need a second online CPU
/// (`Mm::cpus`), and each fails saying so without one.
pub fn run_smp<O: PvMmuOps + ?Sized>(env: &Env<'_, O>, report: &mut dyn FnMut(&Case<O>, &CaseResult)) -> Summary {
    run_list(env, &smp_cases::<O>(), report)
}
