//! The conformance suite on every registered backend, over its host model.

use pvops_integration::platform::{boot_backend, platform_for};
use pvops_native as _;
use pvops_xen64 as _;

#[test]
fn conformance_on_every_registered_backend() {
    let mut failures = Vec::new();
    let backends = pvops::backends();
    assert!(backends.iter().any(|d| d.name == "native"), "native backend not linked");
    for desc in backends {
        let Some(host) = platform_for(desc) else {
            failures.push(format!("{}: no host platform accepts it", desc.name));
            continue;
        };
        let booted = match boot_backend(desc, &host) {
            Ok(b) => b,
            Err(e) => {
                failures.push(format!("{}: boot failed: {e}", desc.name));
                continue;
            }
        };
        let env =
            pvops_conformance::Env { mm: booted.mm, machine: host.oracle, kernel_va: pvops_integration::KERNEL_VA };
        let summary = pvops_conformance::run_all(&env, &mut |case, r| {
            if let Err(why) = r {
                failures.push(format!("{} {}: {why}", desc.name, case.name));
            }
        });
        println!("conformance {}: {}/{} passed", desc.name, summary.passed, summary.total);
        assert!(summary.total >= 25, "suite too small: {}", summary.total);
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}
