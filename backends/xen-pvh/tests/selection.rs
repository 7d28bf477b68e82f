//! The three-way choice the registry makes from one image, with no flag:
//! bare PVH → `native`, Xen PVH → `xen-pvh`, Xen PV → `xen64`; and the
//! conformance suite on `xen-pvh` over the host machine model.

use std::sync::atomic::Ordering;

use pvops::{BootEnv, EntryKind};
use pvops_integration::native_host::{native_platform, native_platform_smp};
use pvops_integration::platform::{boot_backend, KERNEL_VA};
use pvops_integration::xen_host::xen_platform;
use pvops_xen64 as _;

mod model_host;
use model_host::{relabel, tcg_cpuid, xen_cpuid, xen_pvh_host};

/// The SMP conformance cases on xen-pvh with two vCPUs: (failures, hypercalls
/// the backend counted, `flush_tlbs` calls the model saw).
fn smp_run(broken: bool) -> (Vec<String>, u64, u64) {
    let (host, hvm) = relabel(native_platform_smp(4096, 2), xen_cpuid, broken);
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen-pvh").unwrap();
    let booted = boot_backend(desc, &host).expect("boots with 2 vCPUs");
    let env = pvops_conformance::Env { mm: booted.mm, machine: host.oracle, kernel_va: KERNEL_VA };
    let mut failed = Vec::new();
    let summary = pvops_conformance::run_smp(&env, &mut |case, result| {
        let checked = pvops_integration::conformance::check_after_smp_case(&host, &booted, case.name);
        if let Err(e) = result.clone().and(checked) {
            failed.push(format!("{}: {e}", case.name));
        }
    });
    assert!(summary.total >= 5);
    (failed, booted.ops.stats().hypercalls, hvm.calls.load(Ordering::Relaxed))
}

#[test]
fn xen_pvh_passes_the_smp_cases_with_hvmop_flush_tlbs_for_remote_flushes() {
    let (failed, counted, seen) = smp_run(false);
    assert!(failed.is_empty(), "{failed:#?}");
    // Remote flushes went to Xen (the model saw them), one hypercall each,
    // and the backend's count is what the model saw.
    assert!(seen > 0, "no remote flush reached HVMOP_flush_tlbs");
    assert_eq!(counted, seen);
}

#[test]
fn without_hvmop_flush_tlbs_the_smp_cases_see_stale_translations() {
    let (failed, _, seen) = smp_run(true);
    assert!(seen > 0);
    assert!(!failed.is_empty(), "a remote flush that does nothing went unnoticed");
}

fn chosen(env: &BootEnv<'_>) -> Result<&'static str, String> {
    let list = pvops::backends();
    pvops::select(env, &list, None).map(|d| d.name).map_err(|e| e.to_string())
}

#[test]
fn one_image_three_platforms_three_backends() {
    let names: Vec<_> = pvops::backends().iter().map(|d| d.name).collect();
    for n in ["native", "xen64", "xen-pvh"] {
        assert!(names.contains(&n), "{n} not registered: {names:?}");
    }
    assert_eq!(chosen(&native_platform(64).env()).unwrap(), "native");
    assert_eq!(chosen(&xen_platform(64).env()).unwrap(), "xen64");
    assert_eq!(chosen(&xen_pvh_host(xen_cpuid).env()).unwrap(), "xen-pvh");
}

#[test]
fn native_does_not_take_a_xen_pvh_boot() {
    let host = xen_pvh_host(xen_cpuid);
    let native = pvops::backends().into_iter().find(|d| d.name == "native").unwrap();
    assert!((native.probe)(&host.env()).is_err());
    // Forcing native on it is refused too, by native's own probe.
    assert!(pvops::select(&host.env(), &pvops::backends(), Some("native")).is_err());
}

#[test]
fn xen_pvh_needs_the_pvh_entry_and_the_xen_signature() {
    let xen_pvh = pvops::backends().into_iter().find(|d| d.name == "xen-pvh").unwrap();
    // A bare PVH boot (even one with TCG's hypervisor leaf) is not Xen.
    let tcg = xen_pvh_host(tcg_cpuid);
    let err = (xen_pvh.probe)(&tcg.env()).unwrap_err();
    assert!(err.contains("XenVMMXenVMM"), "{err}");
    assert!(chosen(&tcg.env()).is_err(), "nothing may run a Xen-PVH platform without Xen");
    // The PV entry is xen64's, whatever CPUID says.
    let pv = BootEnv { entry: EntryKind::XenPv, ..xen_pvh_host(xen_cpuid).env() };
    assert!((xen_pvh.probe)(&pv).is_err());
    // Native handles alone are native's.
    assert!((xen_pvh.probe)(&native_platform(64).env()).is_err());
}

#[test]
fn xen_pvh_passes_the_conformance_suite_on_the_model() {
    let host = xen_pvh_host(xen_cpuid);
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen-pvh").unwrap();
    let booted = boot_backend(desc, &host).expect("boots");
    assert_eq!(booted.ops.name(), "xen-pvh");
    let env = pvops_conformance::Env { mm: booted.mm, machine: host.oracle, kernel_va: pvops_integration::KERNEL_VA };
    let mut failed = Vec::new();
    for case in pvops_conformance::CASES.iter() {
        if let Err(e) = env.run_case(case) {
            failed.push(format!("{}: {e}", case.name));
        }
        if let Err(e) = (host.invariants)(booted.frames, &[]) {
            failed.push(format!("{}: model invariant: {e}", case.name));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(pvops_conformance::CASES.len() > 10);
    (host.quiescent)().expect("quiescent");
}
