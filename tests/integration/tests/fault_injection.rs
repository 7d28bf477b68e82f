//! Fault injection: the frame allocator fails the k-th allocation, and the
//! modelled hypervisor fails the k-th hypercall (or the k-th sub-operation),
//! for every k across a workload that exercises every address-space
//! operation, on every backend. Each time: the failing operation returns an
//! error, cleanup succeeds, no frame leaks, no pin is left, no table is left
//! writable or written directly.

use kernel_glue::{AddressSpace, Mm, PageFlags};
use pvops::PvError;
use pvops_integration::inject::{sweep, Inject};
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
    pvops_integration::inject::exit_kept_on_error(mm, spaces, 1)
}

#[test]
fn allocation_failure_at_every_point_leaks_nothing() {
    for desc in pvops::backends() {
        let n = sweep(desc, Inject::Allocation, workload, false).unwrap_or_else(|e| panic!("{}: {e}", desc.name));
        println!("{}: {n} allocation injection points", desc.name);
        assert!(n >= 10, "{}: only {n} allocations in the workload", desc.name);
    }
}

#[test]
fn hypercall_failure_at_every_point_leaves_nothing_behind() {
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64 linked");
    for code in [-errno::EINVAL, -errno::ENOMEM, -errno::EBUSY] {
        let n =
            sweep(desc, Inject::Hypercall(code), workload, false).unwrap_or_else(|e| panic!("xen64 code {code}: {e}"));
        println!("xen64: {n} hypercall injection points (code {code})");
        assert!(n >= 5, "only {n} hypercalls in the workload");
    }
}

#[test]
fn sub_operation_failure_at_every_point_leaves_nothing_behind() {
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64 linked");
    let n = sweep(desc, Inject::SubOp(-errno::EINVAL), workload, false).unwrap_or_else(|e| panic!("xen64: {e}"));
    println!("xen64: {n} sub-operation injection points");
    assert!(n >= 20, "only {n} sub-operations in the workload");
}
