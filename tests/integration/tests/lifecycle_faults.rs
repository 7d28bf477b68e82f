//! Fault injection over the lifecycle operations (issue 14): the frame
//! allocator fails the k-th allocation, the modelled Xen the k-th
//! hypercall or sub-operation, for every k across a workload of
//! `map_range`, `protect_range`, `fork_cow`, COW and demand-zero faults,
//! `unmap_range` with table frees. Each time: the failing operation returns
//! an error (a fault kills with a reason), cleanup succeeds, no frame leaks,
//! no pin is left, no free frame is still a table or read-only to the guest.

use kernel_glue::{AddressSpace, FaultKill, Mm, PageFlags};
use pvops::PvError;
use pvops_integration::inject::{sweep, Inject};
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
    pvops_integration::inject::exit_kept_on_error(mm, spaces, 1)
}

#[test]
fn allocation_failure_at_every_point_of_the_lifecycle_leaks_nothing() {
    for desc in pvops::backends().into_iter().filter(|d| ["native", "xen64"].contains(&d.name)) {
        let n = sweep(desc, Inject::Allocation, workload, true).unwrap_or_else(|e| panic!("{}: {e}", desc.name));
        println!("{}: {n} allocation injection points", desc.name);
        assert!(n >= 50, "{}: only {n} allocations in the workload", desc.name);
    }
}

#[test]
fn hypercall_failure_at_every_point_of_the_lifecycle_leaves_nothing_behind() {
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64 linked");
    for code in [-errno::EINVAL, -errno::ENOMEM] {
        let n =
            sweep(desc, Inject::Hypercall(code), workload, true).unwrap_or_else(|e| panic!("xen64 code {code}: {e}"));
        println!("xen64: {n} hypercall injection points (code {code})");
        assert!(n >= 10, "only {n} hypercalls in the workload");
    }
}

#[test]
fn sub_operation_failure_at_every_point_of_the_lifecycle_leaves_nothing_behind() {
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64 linked");
    let n = sweep(desc, Inject::SubOp(-errno::EINVAL), workload, true).unwrap_or_else(|e| panic!("xen64: {e}"));
    println!("xen64: {n} sub-operation injection points");
    assert!(n >= 100, "only {n} sub-operations in the workload");
}
