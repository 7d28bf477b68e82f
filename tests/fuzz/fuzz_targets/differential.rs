//! Fuzz target: bytes → address-space operations, run differentially on every
//! backend over its host model with every invariant checked after each step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

use pvops_integration::differential::{run_sequence_on, runners, Op, Runner};
use pvops_native as _;
use pvops_xen64 as _;

thread_local! {
    /// Booted once: a passing run leaves every backend as it found it.
    static BOOTED: RefCell<Vec<Runner>> = RefCell::new(runners());
}

fuzz_target!(|data: &[u8]| {
    // Long inputs only slow the run down without reaching new states.
    let ops = Op::decode(&data[..data.len().min(120)]);
    let result = BOOTED.with(|b| run_sequence_on(&mut b.borrow_mut(), &ops));
    if let Err(e) = result {
        panic!("{e}\nops: {ops:?}");
    }
});
