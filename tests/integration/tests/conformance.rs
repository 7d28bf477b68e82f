//! The conformance suite on every registered backend, over its host model.

use pvops_integration::conformance::{run_backend, run_backend_cases};
use pvops_native as _;
use pvops_xen64 as _;

#[test]
fn conformance_on_every_registered_backend() {
    let backends = pvops::backends();
    for expected in ["native", "xen64"] {
        assert!(backends.iter().any(|d| d.name == expected), "{expected} backend not linked");
    }
    let mut failed = Vec::new();
    for desc in backends {
        match run_backend(desc.name) {
            Ok(report) => {
                println!("{report}");
                assert!(report.cases.len() >= 25, "suite too small: {}", report.cases.len());
                if !report.all_passed() {
                    failed.push(report.to_string());
                }
            }
            Err(e) => failed.push(e),
        }
    }
    assert!(failed.is_empty(), "failures:\n{}", failed.join("\n"));
}

#[test]
fn a_single_case_can_be_run_by_name() {
    let r = run_backend_cases("native", Some("fork_copies_are_independent")).expect("runs");
    assert_eq!(r.cases.len(), 1);
    assert!(r.all_passed(), "{r}");
    assert!(run_backend_cases("native", Some("no_such_case")).is_err());
    assert!(run_backend("no-such-backend").expect_err("unknown").contains("registered: "));
}
