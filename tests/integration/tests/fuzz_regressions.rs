//! The fuzz target's logic on stable: every saved regression input under
//! tests/fuzz/regressions, plus a fixed pseudo-random sweep of inputs.

use pvops_integration::differential::{run_sequence, Op};
use pvops_native as _;
use pvops_xen64 as _;

#[test]
fn saved_regressions_still_pass() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("regressions dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "bin") {
            let bytes = std::fs::read(&path).expect("read");
            run_sequence(&Op::decode(&bytes)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 1, "no regression inputs found");
}

#[test]
fn pseudo_random_inputs_agree() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..48 {
        let bytes: Vec<u8> = (0..90)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        run_sequence(&Op::decode(&bytes)).unwrap_or_else(|e| panic!("{e}\ninput {bytes:?}"));
    }
}
