//! Raw-hypercall helpers shared by the Xen model's test files (each test
//! file is its own crate; not every one uses every helper).
#![allow(dead_code)]

use pvops::{Mfn, Pfn};
use pvops_model::XenModel;
use pvops_xen64::abi::{Call, MmuUpdate};
use pvops_xen64::{HypercallTransport, Outcome};

/// The machine frame of guest frame `pfn`.
pub fn mfn(m: &XenModel, pfn: u64) -> Mfn {
    m.mfn_of(Pfn(pfn)).expect("in range")
}

/// A machine-form entry pointing at guest frame `pfn` with flags `f`.
pub fn entry(m: &XenModel, pfn: u64, f: u64) -> u64 {
    mfn(m, pfn).addr() | f
}

/// One `mmu_update` of slot `index` of the table in guest frame `table`.
pub fn mmu(m: &XenModel, table: u64, index: usize, val: u64) -> Outcome {
    let ptr = mfn(m, table).addr() + index as u64 * 8;
    m.call(&Call::MmuUpdate(&[MmuUpdate { ptr, val }]))
}
