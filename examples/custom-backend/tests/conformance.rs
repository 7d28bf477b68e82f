//! The whole conformance suite against `trace`, with one call.

use pvops_native as _;
use pvops_trace as _;
use pvops_xen64 as _;

#[test]
fn trace_backend_passes_the_conformance_suite() {
    let report = pvops_integration::conformance::run_backend("trace").expect("trace is registered and boots");
    println!("{report}");
    assert!(report.all_passed(), "{report}");
}
