//! Fault-injection sweeps: fail the k-th allocation, hypercall or
//! sub-operation for every k across a workload, and check after each run
//! that cleanup works and nothing is left behind (frames, pins, types,
//! TLB hazards) — by the allocator's free count and the models, never by
//! the code under test's own records.

use kernel_glue::{AddressSpace, Mm};
use pvops::{BackendDesc, PvError};
use pvops_model::xen::PageType;

use crate::platform::{boot_backend, platform_for, Booted, HostPlatform};

/// What fails at point k.
#[derive(Clone, Copy, Debug)]
pub enum Inject {
    /// The frame allocator's k-th allocation.
    Allocation,
    /// The modelled Xen's k-th hypercall, with this error code.
    Hypercall(i64),
    /// The modelled Xen's k-th sub-operation (a record in a batch), with this code.
    SubOp(i64),
}

/// A workload: stops at the first error, leaving the spaces still alive in the vector.
pub type Workload = fn(&Mm<'_>, &mut Vec<AddressSpace>) -> Result<(), PvError>;

/// Runs `workload` once per injection point k = 0, 1, 2, … on a fresh boot
/// of `desc`, until a run no longer reaches the injection; returns how many
/// points there were. After every run: cleanup must succeed and
/// [`check_clean`] must hold. A run that fails without the injection firing
/// is an error; so is (with `allocation_failures_must_fail`) a run that
/// succeeds although an allocation failed (nothing may absorb it).
pub fn sweep(
    desc: &BackendDesc,
    inject: Inject,
    workload: Workload,
    allocation_failures_must_fail: bool,
) -> Result<u64, String> {
    let host = platform_for(desc).ok_or("no platform")?;
    let booted = boot_backend(desc, &host).map_err(|e| e.to_string())?;
    let mm = booted.mm;
    for k in 0..10_000u64 {
        let free_before = booted.frames.free_count();
        match inject {
            Inject::Allocation => booted.frames.fail_allocation_after(Some(k)),
            Inject::Hypercall(code) => host.xen.ok_or("no hypervisor")?.inject_hypercall_failure(k, code),
            Inject::SubOp(code) => host.xen.ok_or("no hypervisor")?.inject_subop_failure(k, code),
        }
        let mut spaces = Vec::new();
        let r = workload(mm, &mut spaces);
        // Was the injection consumed? If not, the workload needs fewer than k + 1.
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
        // Otherwise the injection hit something whose failure may be absorbed
        // (e.g. a TLB flush retried): acceptable only if nothing is left
        // behind, which check_clean just verified.
        if allocation_failures_must_fail && matches!(inject, Inject::Allocation) && r.is_ok() {
            return Err(format!("k={k}: an allocation failed and the workload still succeeded"));
        }
    }
    Err("never completed".into())
}

/// Exits `spaces[index]` inside a workload; if the exit is refused the
/// space goes back into `spaces`, so [`cleanup`] still gives it back.
pub fn exit_kept_on_error(mm: &Mm<'_>, spaces: &mut Vec<AddressSpace>, index: usize) -> Result<(), PvError> {
    let s = spaces.remove(index);
    mm.exit(s).map_err(|(e, s)| {
        spaces.push(s);
        e
    })
}

/// Cleans up after a (possibly failed) workload; injections are one-shot, so
/// cleanup runs without them.
pub fn cleanup(mm: &Mm<'_>, spaces: &mut Vec<AddressSpace>) -> Result<(), String> {
    mm.activate_init().map_err(|e| format!("activate_init: {e}"))?;
    for s in spaces.drain(..) {
        mm.exit(s).map_err(|(e, _)| format!("exit: {e}"))?;
    }
    Ok(())
}

/// No frame leaked, the models' invariants hold, the machine is quiescent,
/// and (Xen) every free frame is reusable: no type left, alias writable again.
pub fn check_clean(host: &HostPlatform, booted: &Booted, free_before: u64, what: &str) -> Result<(), String> {
    let free = booted.frames.free_count();
    if free != free_before {
        return Err(format!("{what}: {} frame(s) leaked", free_before as i64 - free as i64));
    }
    (host.invariants)(booted.frames, &[]).map_err(|e| format!("{what}: {e}"))?;
    (host.quiescent)().map_err(|e| format!("{what}: {e}"))?;
    if let Some(x) = host.xen {
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
