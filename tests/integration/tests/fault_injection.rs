//! Fault injection: the frame allocator fails the k-th allocation, and the
//! modelled hypervisor fails the k-th hypercall (or the k-th sub-operation),
//! for every k across a workload that exercises every address-space
//! operation, on every backend. Each time: the failing operation returns an
//! error, cleanup succeeds, no frame leaks, no pin is left, no table is left
//! writable or written directly.

use kernel_glue::{AddressSpace, Mm, PageFlags};
use pvops::PvError;
use pvops_integration::platform::{boot_backend, platform_for, Booted, HostPlatform};
use pvops_model::xen::PageType;
use pvops_native as _;
use pvops_xen64 as _;
use pvops_xen64::abi::errno;

/// Runs the workload; stops at the first error and returns it along with the
/// spaces still alive.
fn workload(mm: &Mm<'_>, spaces: &mut Vec<AddressSpace>) -> Result<(), PvError> {
    spaces.push(mm.create()?);
    for i in 0..3u64 {
        mm.map(&spaces[0], 0x40_0000 + i * 0x1000 + i * (1 << 30), PageFlags::DATA)?;
    }
    mm.activate(&spaces[0])?;
    mm.map(&spaces[0], 0x7f00_0000_0000, PageFlags::DATA)?;
    mm.unmap(&spaces[0], 0x40_0000)?;
    let child = mm.fork(&spaces[0])?;
    spaces.push(child);
    mm.activate(&spaces[1])?;
    mm.activate(&spaces[0])?;
    mm.activate_init()?;
    let s = spaces.remove(1);
    if let Err((e, s)) = mm.exit(s) {
        spaces.push(s);
        return Err(e);
    }
    Ok(())
}

/// Cleans up after a (possibly failed) workload; injections are one-shot, so
/// cleanup runs without them.
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
        // Every free frame must be reusable: no type left, alias writable again.
        for pfn in (0..host.nr_frames).map(pvops::Pfn) {
            if booted.frames.is_free(pfn) && (x.page_type(pfn) != PageType::None || !x.alias_writable(pfn)) {
                return Err(format!(
                    "{what}: free frame {pfn:?} is {:?}, alias writable {}",
                    x.page_type(pfn),
                    x.alias_writable(pfn)
                ));
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

/// Sweeps k = 0, 1, 2, … until the workload runs through without consuming
/// the injection. Returns the number of injection points exercised.
fn sweep(desc: &pvops::BackendDesc, inject: Inject) -> Result<u64, String> {
    let host = platform_for(desc).ok_or("no platform")?;
    let booted = boot_backend(desc, &host).map_err(|e| e.to_string())?;
    let mm = booted.mm;
    let mut points = 0;
    for k in 0..10_000u64 {
        let free_before = booted.frames.free_frames();
        match inject {
            Inject::Allocation => booted.frames.fail_allocation_after(Some(k)),
            Inject::Hypercall(code) => host.xen.ok_or("no hypervisor")?.inject_hypercall_failure(k, code),
            Inject::SubOp(code) => host.xen.ok_or("no hypervisor")?.inject_subop_failure(k, code),
        }
        let mut spaces = Vec::new();
        let r = workload(mm, &mut spaces);
        // Was the injection consumed? If not, the workload needs fewer than k+1.
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
            if r.is_err() {
                return Err(format!("k={k}: failed ({r:?}) without the injection firing"));
            }
            return Ok(points);
        }
        match r {
            Err(_) => points += 1,
            Ok(()) => {
                // The injection hit something whose failure is absorbed (e.g. a
                // TLB flush retried): acceptable only if nothing is left behind,
                // which check_clean just verified.
                points += 1;
            }
        }
    }
    Err("never completed".into())
}

#[test]
fn allocation_failure_at_every_point_leaks_nothing() {
    for desc in pvops::backends() {
        let n = sweep(desc, Inject::Allocation).unwrap_or_else(|e| panic!("{}: {e}", desc.name));
        println!("{}: {n} allocation injection points", desc.name);
        assert!(n >= 10, "{}: only {n} allocations in the workload", desc.name);
    }
}

#[test]
fn hypercall_failure_at_every_point_leaves_nothing_behind() {
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64 linked");
    for code in [-errno::EINVAL, -errno::ENOMEM, -errno::EBUSY] {
        let n = sweep(desc, Inject::Hypercall(code)).unwrap_or_else(|e| panic!("xen64 code {code}: {e}"));
        println!("xen64: {n} hypercall injection points (code {code})");
        assert!(n >= 5, "only {n} hypercalls in the workload");
    }
}

#[test]
fn sub_operation_failure_at_every_point_leaves_nothing_behind() {
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64 linked");
    let n = sweep(desc, Inject::SubOp(-errno::EINVAL)).unwrap_or_else(|e| panic!("xen64: {e}"));
    println!("xen64: {n} sub-operation injection points");
    assert!(n >= 20, "only {n} sub-operations in the workload");
}
