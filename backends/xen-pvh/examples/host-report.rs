//! `xen-pvh` on its host platform (the machine model as a Xen PVH boot, with
//! a model `HVMOP_flush_tlbs`): the demo workload, the conformance suite and
//! the SMP suite on two vCPUs, printed as `pvops-integration`'s host-report
//! prints the other backends. `cargo xtask run` shows it with them; it lives
//! here, not in `pvops-integration`, so that this crate stays one crate that
//! the workspace builds without (`cargo xtask new-backend`).

use std::sync::atomic::Ordering;

use pvops_integration::native_host::native_platform_smp;
use pvops_integration::platform::{boot_backend, KERNEL_VA};
use pvops_integration::workload::print_demo;
use pvops_native as _;
use pvops_xen64 as _;

#[path = "../tests/model_host/mod.rs"]
mod model_host;
use model_host::{relabel, xen_cpuid, xen_pvh_host};

fn main() {
    let mut failed = false;
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen-pvh").expect("xen-pvh is linked");
    let host = xen_pvh_host(xen_cpuid);
    match boot_backend(desc, &host) {
        Ok(booted) => {
            failed |= !print_demo(desc.name, booted.mm, &host, 8);
            let report = pvops_integration::conformance::run_booted(desc.name, &host, &booted, None);
            failed |= !pvops_integration::conformance::print_report(&report);
        }
        Err(e) => {
            println!("{}: boot on {} failed: {e}", desc.name, host.label);
            failed = true;
        }
    }
    // Two vCPUs: remote flushes go to the model's HVMOP_flush_tlbs.
    let (host, hvm) = relabel(native_platform_smp(4096, 2), xen_cpuid, false);
    match boot_backend(desc, &host) {
        Ok(booted) => {
            let env = pvops_conformance::Env { mm: booted.mm, machine: host.oracle, kernel_va: KERNEL_VA };
            let summary = pvops_conformance::run_smp(&env, &mut |case, result| {
                let checked = pvops_integration::conformance::check_after_smp_case(&host, &booted, case.name);
                if let Err(why) = result.clone().and(checked) {
                    println!("  FAIL {} {}: {why}", desc.name, case.name);
                }
            });
            println!(
                "smp conformance {}: {}/{} passed (2 vCPUs; HVMOP_flush_tlbs calls {})\n",
                desc.name,
                summary.passed,
                summary.total,
                hvm.calls.load(Ordering::Relaxed)
            );
            failed |= summary.passed != summary.total || summary.total == 0;
        }
        Err(e) => {
            println!("{}: boot with 2 vCPUs failed: {e}", desc.name);
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}
