//! The three-way choice the registry makes from one image, with no flag:
//! bare PVH → `native`, Xen PVH → `xen-pvh`, Xen PV → `xen64`; and the
//! conformance suite on `xen-pvh` over the host machine model.

use std::sync::atomic::{AtomicU64, Ordering};

use pvops::{BootEnv, EntryKind, PvError};
use pvops_integration::native_host::{native_platform, native_platform_smp};
use pvops_integration::platform::{boot_backend, HostPlatform, KERNEL_VA};
use pvops_integration::xen_host::xen_platform;
use pvops_model::Machine;
use pvops_native::NativePlatform;
use pvops_xen64 as _;
use pvops_xen_pvh::{XenHvm, XenPvhPlatform, XEN_SIGNATURE};

/// `HVMOP_flush_tlbs` on the machine model: every vCPU's TLB emptied, global
/// entries too (what Xen does, `pvh-notes.md` §8); or, `broken`, nothing.
struct ModelHvm {
    machine: &'static Machine,
    broken: bool,
    calls: AtomicU64,
}

impl XenHvm for ModelHvm {
    fn flush_tlbs(&self) -> Result<(), PvError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.broken {
            (0..self.machine.nr_vcpus()).for_each(|v| self.machine.tlb_flush_everything_of(v));
        }
        Ok(())
    }
}

/// CPUID under Xen: "XenVMMXenVMM" at 0x40000000, leaves up to 0x40000005.
fn xen_cpuid(leaf: u32) -> [u32; 4] {
    match leaf {
        0x4000_0000 => [0x4000_0005, XEN_SIGNATURE[0], XEN_SIGNATURE[1], XEN_SIGNATURE[2]],
        0x4000_0002 => [1, 0x4000_0000, 0, 0],
        _ => [0; 4],
    }
}

/// CPUID under bare QEMU TCG (measured): a hypervisor leaf, not Xen's.
fn tcg_cpuid(leaf: u32) -> [u32; 4] {
    match leaf {
        0x4000_0000 => [0x4000_0001, 0x5447_4354, 0x4354_4743, 0x4743_5447],
        _ => [0; 4],
    }
}

/// A native host platform re-labelled as a PVH boot under Xen whose CPUID is `cpuid`.
fn xen_pvh_host(cpuid: fn(u32) -> [u32; 4]) -> HostPlatform {
    // The integration crate's own size (`platforms()`): big enough for the suite.
    relabel(native_platform(4096), cpuid, false).0
}

/// `host` as a Xen PVH boot, with a model `HVMOP_flush_tlbs` (a no-op one if `broken`).
fn relabel(host: HostPlatform, cpuid: fn(u32) -> [u32; 4], broken: bool) -> (HostPlatform, &'static ModelHvm) {
    let native = *host.platform.downcast_ref::<NativePlatform>().expect("a native host");
    let hvm: &'static ModelHvm =
        Box::leak(Box::new(ModelHvm { machine: host.machine, broken, calls: AtomicU64::new(0) }));
    let platform: &'static XenPvhPlatform = Box::leak(Box::new(XenPvhPlatform { native, cpuid, hvm }));
    (HostPlatform { label: "xen-pvh (model)", platform, ..host }, hvm)
}

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
