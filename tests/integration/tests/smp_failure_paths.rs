//! SMP failure paths found by review, on 2-vCPU models: a failed map's undo
//! must flush every CPU that holds the space before freeing the tables it
//! built, and one vCPU reading the backend's counters must never make
//! another vCPU's calls fail.

use std::sync::atomic::{AtomicBool, Ordering};

use kernel_glue::PageFlags;
use pvops::PvError;
use pvops_integration::platform::boot_smp;
use pvops_model::vcpu;

const VA: u64 = 0x40_0000;
/// L4 slot 1: a map there needs a new L3, L2 and L1.
const FAR: u64 = 0x0000_0080_0000_0000;

/// The space is loaded on both vCPUs; a map that needs new tables fails at
/// the L2 allocation, so the L3 it built and linked is unlinked and freed.
/// vCPU 1's paging-structure cache may hold the L4 entry that pointed at
/// it: without a flush there, the model records the frame freed while
/// reachable.
fn undo_case(name: &str) {
    let b = boot_smp(name, 2, 512, 0x5eed).unwrap();
    let space = b.mm.create().unwrap();
    b.mm.map(&space, VA, PageFlags::DATA).unwrap();
    for cpu in [1, 0] {
        vcpu::on_vcpu(cpu, || b.mm.activate(&space)).unwrap();
        assert!(vcpu::on_vcpu(cpu, || b.user_read(VA)).is_some(), "{name}: vCPU {cpu} reads its page");
    }
    // vCPU 1 walks through slot 1 once (a fault), caching what it can.
    let _ = vcpu::on_vcpu(1, || b.user_read(FAR));
    b.check().unwrap();
    // Allocation 0: the page's frame, 1: the L3, 2: the L2 fails.
    b.frames.fail_allocation_after(Some(2));
    let r = b.mm.map(&space, FAR, PageFlags::DATA);
    assert_eq!(r, Err(PvError::OutOfMemory), "{name}");
    if let Err(e) = b.check() {
        panic!("{name}: after the failed map: {e}");
    }
    for cpu in [1, 0] {
        vcpu::on_vcpu(cpu, || b.mm.activate_init()).unwrap();
    }
    b.mm.exit(space).map_err(|(e, _)| e).unwrap();
}

#[test]
fn a_failed_maps_undo_flushes_every_cpu_before_freeing_its_tables_native() {
    undo_case("native");
}

#[test]
fn a_failed_maps_undo_flushes_every_cpu_before_freeing_its_tables_xen64() {
    undo_case("xen64");
}

/// vCPU 0 reads `stats()` in a loop while vCPU 1 maps and unmaps (two real
/// threads, not the scheduler): none of vCPU 1's calls may fail.
#[test]
fn reading_the_counters_on_one_vcpu_never_fails_anothers_calls() {
    let b: &'static _ = Box::leak(Box::new(boot_smp("xen64", 2, 512, 0x5eed).unwrap()));
    let space: &'static _ = Box::leak(Box::new(b.mm.create().unwrap()));
    vcpu::on_vcpu(1, || b.mm.activate(space)).unwrap();
    let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let reader = std::thread::spawn(move || {
        let _v = vcpu::AsVcpu::enter(0);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            std::hint::black_box(b.ops.stats());
            n += 1;
        }
        n
    });
    let failures = {
        let _v = vcpu::AsVcpu::enter(1);
        let mut failures = Vec::new();
        for i in 0..2000u64 {
            let va = VA + (i % 64) * 0x1000;
            match b.mm.map(space, va, PageFlags::DATA) {
                Ok(_) => {
                    if let Err(e) = b.mm.unmap(space, va) {
                        failures.push(e);
                    }
                }
                Err(e) => failures.push(e),
            }
        }
        failures
    };
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 0, "the reader never ran");
    assert!(
        failures.is_empty(),
        "{} calls of vCPU 1 failed while vCPU 0 read stats ({reads} reads): {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    vcpu::on_vcpu(1, || b.mm.activate_init()).unwrap();
}
