//! kernel-glue and the backends against the models' TLBs, on every platform:
//! a frame may go back to the allocator only once no TLB or
//! paging-structure cache can reach it, and what user mode reaches after an
//! unmap is measured through the TLB.

use kernel_glue::{AddressSpace, PageFlags};
use pvops::{PvError, VirtAddr};
use pvops_integration::platform::{assert_invariants, boot_builtin_backends, Booted, HostPlatform};
use pvops_native as _;
use pvops_xen64 as _;
use pvops_xen64::abi::errno;

const VA: u64 = 0x40_0000;
/// In an L4 slot of its own: mapping it builds three tables.
const FAR_VA: u64 = VA + (3 << 39);

/// A loaded space with VA mapped and used by user mode (so it may be cached).
fn loaded_space(host: &HostPlatform, booted: &Booted) -> AddressSpace {
    let mm = booted.mm;
    let s = mm.create().expect("create");
    let f = mm.map(&s, VA, PageFlags::DATA).expect("map");
    mm.activate(&s).expect("activate");
    assert_eq!(host.oracle.user_access(VA, true), Some(f), "user mode uses the page");
    s
}

fn finish(name: &str, host: &HostPlatform, booted: &Booted, s: AddressSpace) {
    booted.mm.activate_init().expect("init");
    booted.mm.exit(s).map_err(|(e, _)| e).expect("exit");
    assert_invariants(name, host, booted, "after exit");
    (host.quiescent)().unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// Fails if the unmap's flush is missing or comes before the entry is cleared.
#[test]
fn unmap_in_the_loaded_space_leaves_nothing_for_user_mode_or_the_allocator() {
    for (name, host, booted) in boot_builtin_backends() {
        let s = loaded_space(&host, &booted);
        booted.mm.unmap(&s, VA).expect("unmap");
        assert_eq!(host.oracle.user_access(VA, false), None, "{name}: user mode still reaches the unmapped page");
        assert_invariants(name, &host, &booted, "after unmap");
        finish(name, &host, &booted, s);
    }
}

/// Every allocation of a map into the loaded space fails in turn: whatever
/// the failed map linked and then took back is flushed before it is freed.
#[test]
fn a_map_of_the_loaded_space_failing_at_any_allocation_frees_nothing_a_tlb_can_reach() {
    for (name, host, booted) in boot_builtin_backends() {
        let s = loaded_space(&host, &booted);
        for k in 0.. {
            booted.frames.fail_allocation_after(Some(k));
            let r = booted.mm.map(&s, FAR_VA, PageFlags::DATA);
            booted.frames.fail_allocation_after(None);
            assert_invariants(name, &host, &booted, &format!("allocation {k} failed ({r:?})"));
            match r {
                Err(PvError::OutOfMemory) => continue,
                Ok(_) => break,
                Err(e) => panic!("{name}: k={k}: {e}"),
            }
        }
        finish(name, &host, &booted, s);
    }
}

/// Xen refuses each record of a map into the loaded space in turn.
#[test]
fn a_map_of_the_loaded_space_refused_by_xen_at_any_record_frees_nothing_a_tlb_can_reach() {
    let (name, host, booted) = boot_builtin_backends().into_iter().find(|p| p.0 == "xen64").expect("xen64");
    let xen = host.xen.expect("xen model");
    let s = loaded_space(&host, &booted);
    for k in 0.. {
        xen.inject_subop_failure(k, -errno::EINVAL);
        let r = booted.mm.map(&s, FAR_VA, PageFlags::DATA);
        let armed = xen.clear_injections();
        assert_invariants(name, &host, &booted, &format!("record {k} refused ({r:?})"));
        if r.is_ok() {
            assert!(armed, "k={k}: the map succeeded although a record was refused");
            break;
        }
        assert_eq!(host.oracle.user_access(FAR_VA, false), None, "k={k}: the failed map is reachable");
    }
    finish(name, &host, &booted, s);
}

/// A batch that fails although the map's own leaf took effect (an earlier
/// record in the same batch was refused): the map is taken back, and its
/// frame is freed only after a flush. Reaches `Mm::map`'s undo only while
/// `Mm::map` issues what an enclosing lazy section queued; either way
/// nothing a TLB can reach may be freed.
#[test]
fn a_map_whose_batch_fails_after_its_leaf_took_effect_flushes_before_freeing() {
    let (name, host, booted) = boot_builtin_backends().into_iter().find(|p| p.0 == "xen64").expect("xen64");
    let xen = host.xen.expect("xen model");
    let s = loaded_space(&host, &booted);
    let mm = booted.mm;
    let b = VA + 0x1000; // same L1: the batch is the leaf alone
    mm.ops().lazy_mmu_enter();
    mm.ops().flush_tlb_one(VirtAddr::try_new(VA + 0x5000).expect("va")).expect("queued");
    xen.inject_subop_failure(0, -errno::EINVAL);
    let r = mm.map(&s, b, PageFlags::DATA);
    let left = mm.ops().lazy_mmu_leave();
    xen.clear_injections();
    assert_invariants(name, &host, &booted, &format!("map {r:?}, leave {left:?}"));
    if r.is_err() {
        assert_eq!(host.oracle.user_access(b, false), None, "the failed map is reachable");
    }
    finish(name, &host, &booted, s);
}

/// The allocator reports every frame it gets back (`PhysMem::frame_freed`):
/// freeing a frame the loaded space still maps is caught at once.
#[test]
fn freeing_a_frame_the_loaded_space_still_maps_is_caught() {
    for (name, host, booted) in boot_builtin_backends() {
        let s = loaded_space(&host, &booted);
        assert_invariants(name, &host, &booted, "before");
        let (frame, _) = booted.mm.translate(&s, VA).expect("translate").expect("mapped");
        pvops::MmServices::free_frame(booted.frames, frame).expect("free");
        let e = (host.invariants)(booted.frames, &[]).expect_err("a freed frame the TLB reaches");
        assert!(e.contains("Freed"), "{name}: {e}");
    }
}
