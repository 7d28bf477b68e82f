//! Fuzz target: bytes → address-space operations, run differentially on every
//! backend over its host model with every invariant checked after each step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvops_integration::differential::{run_sequence, Op};
use pvops_native as _;
use pvops_xen64 as _;

fuzz_target!(|data: &[u8]| {
    // Long inputs only slow the run down without reaching new states.
    let ops = Op::decode(&data[..data.len().min(120)]);
    if let Err(e) = run_sequence(&ops) {
        panic!("{e}\nops: {ops:?}");
    }
});
