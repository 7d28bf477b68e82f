//! Helpers shared by the model's test files (each test file is its own
//! crate; not every one uses every helper): raw entries for the machine,
//! raw hypercalls for the Xen model.
#![allow(dead_code)]

use pvops::{Mfn, Pfn, VirtAddr};
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

/// A raw entry pointing at `frame` with flags `f` (the machine model: pfn = frame).
pub fn e(frame: u64, f: u64) -> u64 {
    (frame << 12) | f
}

/// `a` as a virtual address (test constants are canonical).
pub fn va(a: u64) -> VirtAddr {
    VirtAddr::try_new(a).unwrap()
}
