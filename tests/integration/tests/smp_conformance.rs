//! The SMP conformance cases (`pvops_conformance::run_smp`) on both
//! backends over host models with two vCPUs. The other CPU acts through
//! `Cpus::call_on`, which outside a scheduled run delivers the IPI at once,
//! as that vCPU; what it sees is read through its own TLB by the model
//! (`read_on`). The models' invariants are checked after every case.

use pvops_integration::native_host::native_platform_smp;
use pvops_integration::platform::{boot_backend, HostPlatform, KERNEL_VA};
use pvops_integration::xen_host::xen_platform_smp;

fn run(name: &str, host: &HostPlatform) -> Vec<String> {
    let desc = pvops::backends().into_iter().find(|d| d.name == name).expect("linked");
    let booted = boot_backend(desc, host).expect("boots with 2 vCPUs");
    let env = pvops_conformance::Env { mm: booted.mm, machine: host.oracle, kernel_va: KERNEL_VA };
    let mut failed = Vec::new();
    let summary = pvops_conformance::run_smp(&env, &mut |case, result| {
        let checked = pvops_integration::conformance::check_after_smp_case(host, &booted, case.name);
        if let Err(e) = result.clone().and(checked) {
            failed.push(format!("{name}: {}: {e}", case.name));
        }
    });
    assert!(summary.total >= 5, "{name}: {} SMP cases", summary.total);
    if let Err(e) = (host.quiescent)() {
        failed.push(format!("{name}: end state: {e}"));
    }
    println!("{name}: {}/{} SMP cases passed", summary.passed, summary.total);
    failed
}

#[test]
fn smp_conformance_on_both_backends_with_two_vcpus() {
    let mut failed = run("native", &native_platform_smp(4096, 2));
    failed.extend(run("xen64", &xen_platform_smp(4096, pvops_integration::platform::DEFAULT_P2M_SEED, 2)));
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn with_one_vcpu_every_smp_case_fails_saying_so() {
    let host = native_platform_smp(4096, 1);
    let desc = pvops::backends().into_iter().find(|d| d.name == "native").expect("linked");
    let booted = boot_backend(desc, &host).expect("boots");
    let env = pvops_conformance::Env { mm: booted.mm, machine: host.oracle, kernel_va: KERNEL_VA };
    let summary = pvops_conformance::run_smp(&env, &mut |case, result| {
        let why = result.clone().expect_err(case.name);
        assert!(why.contains("second online CPU"), "{}: {why}", case.name);
    });
    assert_eq!(summary.passed, 0);
}
