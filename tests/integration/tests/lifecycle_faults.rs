//! Fault injection over the lifecycle operations (issue 14): the frame
//! allocator fails the k-th allocation, the modelled Xen the k-th
//! hypercall or sub-operation, for every k across a workload of
//! `map_range`, `protect_range`, `fork_cow`, COW and demand-zero faults,
//! `unmap_range` with table frees. Each time: the failing operation returns
//! an error (a fault kills with a reason), cleanup succeeds, no frame leaks,
//! no pin is left, no free frame is still a table or read-only to the guest.

use kernel_glue::{AddressSpace, FaultKill, Mm, PageFlags};
use pvops::PvError;
use pvops_integration::platform::{boot_backend, platform_for, Booted, HostPlatform};
use pvops_model::xen::PageType;
use pvops_native as _;
use pvops_xen64 as _;
use pvops_xen64::abi::errno;

const VA: u64 = 0x40_0000;
const PAGE: u64 = 0x1000;

fn fault(r: Result<kernel_glue::FaultFix, FaultKill>) -> Result<(), PvError> {
    match r {
        Ok(_) => Ok(()),
        Err(FaultKill::OutOfMemory) => Err(PvError::OutOfMemory),
        Err(FaultKill::Backend(e)) => Err(e),
        Err(_) => Err(PvError::WrongState { what: "fault killed for an unexpected reason" }),
    }
}

fn workload(mm: &Mm<'_>, spaces: &mut Vec<AddressSpace>) -> Result<(), PvError> {
    spaces.push(mm.create()?);
    mm.map_range(&spaces[0], VA, 40, PageFlags::DATA)?;
    mm.activate(&spaces[0])?;
    mm.map_range(&spaces[0], 0x60_0000 - 2 * PAGE, 4, PageFlags::DATA)?;
    mm.protect_range(&spaces[0], VA, 40, PageFlags::RODATA)?;
    mm.protect_range(&spaces[0], VA, 40, PageFlags::DATA)?;
    let child = mm.fork_cow(&spaces[0])?;
    spaces.push(child);
    mm.activate(&spaces[1])?;
    fault(mm.handle_fault(&spaces[1], VA, true))?;
    mm.activate(&spaces[0])?;
    fault(mm.handle_fault(&spaces[0], VA + PAGE, true))?;
    fault(mm.handle_fault(&spaces[0], VA, true))?;
    mm.reserve_zero(&spaces[0], 0x1000_0000, 16, PageFlags::DATA)?;
    fault(mm.handle_fault(&spaces[0], 0x1000_0000, true))?;
    mm.unmap_range(&spaces[0], VA, 40)?;
    mm.activate_init()?;
    let s = spaces.remove(1);
    if let Err((e, s)) = mm.exit(s) {
        spaces.push(s);
        return Err(e);
    }
    Ok(())
}

fn cleanup(mm: &Mm<'_>, spaces: &mut Vec<AddressSpace>) -> Result<(), String> {
    mm.activate_init().map_err(|e| format!("activate_init: {e}"))?;
    for s in spaces.drain(..) {
        mm.exit(s).map_err(|(e, _)| format!("exit: {e}"))?;
    }
    Ok(())
}

fn check_clean(host: &HostPlatform, booted: &Booted, free_before: u64, what: &str) -> Result<(), String> {
    let free = booted.frames.free_frames();
    if free != free_before {
        return Err(format!("{what}: {} frame(s) leaked", free_before as i64 - free as i64));
    }
    (host.invariants)(booted.frames, &[]).map_err(|e| format!("{what}: {e}"))?;
    (host.quiescent)().map_err(|e| format!("{what}: {e}"))?;
    if let Some(x) = host.xen {
        for pfn in (0..host.nr_frames).map(pvops::Pfn) {
            if booted.frames.is_free(pfn) && (x.page_type(pfn) != PageType::None || !x.alias_writable(pfn)) {
                return Err(format!("{what}: free frame {pfn:?} is {:?}", x.page_type(pfn)));
            }
        }
    }
    Ok(())
}

enum Inject {
    Allocation,
    Hypercall(i64),
    SubOp(i64),
}

fn sweep(desc: &pvops::BackendDesc, inject: Inject) -> Result<u64, String> {
    let host = platform_for(desc).ok_or("no platform")?;
    let booted = boot_backend(desc, &host).map_err(|e| e.to_string())?;
    let mm = booted.mm;
    // Every k before the workload runs through is one injection point.
    for k in 0..10_000u64 {
        let free_before = booted.frames.free_frames();
        match inject {
            Inject::Allocation => booted.frames.fail_allocation_after(Some(k)),
            Inject::Hypercall(code) => host.xen.ok_or("no hypervisor")?.inject_hypercall_failure(k, code),
            Inject::SubOp(code) => host.xen.ok_or("no hypervisor")?.inject_subop_failure(k, code),
        }
        let mut spaces = Vec::new();
        let r = workload(mm, &mut spaces);
        let still_armed = match inject {
            Inject::Allocation => {
                let armed = booted.frames.injection_armed();
                booted.frames.fail_allocation_after(None);
                armed
            }
            _ => host.xen.is_some_and(|x| x.clear_injections()),
        };
        cleanup(mm, &mut spaces).map_err(|e| format!("k={k}: cleanup after {r:?}: {e}"))?;
        check_clean(&host, &booted, free_before, &format!("{} k={k} ({r:?})", desc.name))?;
        if still_armed {
            return match r {
                Ok(()) => Ok(k),
                Err(e) => Err(format!("k={k}: failed ({e}) without the injection firing")),
            };
        }
        if matches!(inject, Inject::Allocation) && r.is_ok() {
            return Err(format!("k={k}: an allocation failed and the workload still succeeded"));
        }
    }
    Err("never completed".into())
}

#[test]
fn allocation_failure_at_every_point_of_the_lifecycle_leaks_nothing() {
    for desc in pvops::backends().into_iter().filter(|d| ["native", "xen64"].contains(&d.name)) {
        let n = sweep(desc, Inject::Allocation).unwrap_or_else(|e| panic!("{}: {e}", desc.name));
        println!("{}: {n} allocation injection points", desc.name);
        assert!(n >= 50, "{}: only {n} allocations in the workload", desc.name);
    }
}

#[test]
fn hypercall_failure_at_every_point_of_the_lifecycle_leaves_nothing_behind() {
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64 linked");
    for code in [-errno::EINVAL, -errno::ENOMEM] {
        let n = sweep(desc, Inject::Hypercall(code)).unwrap_or_else(|e| panic!("xen64 code {code}: {e}"));
        println!("xen64: {n} hypercall injection points (code {code})");
        assert!(n >= 10, "only {n} hypercalls in the workload");
    }
}

#[test]
fn sub_operation_failure_at_every_point_of_the_lifecycle_leaves_nothing_behind() {
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64 linked");
    let n = sweep(desc, Inject::SubOp(-errno::EINVAL)).unwrap_or_else(|e| panic!("xen64: {e}"));
    println!("xen64: {n} sub-operation injection points");
    assert!(n >= 100, "only {n} sub-operations in the workload");
}
