//! A switch whose user-root half Xen refuses must not leave the previous
//! process's user tables running under the new kernel root.

use kernel_glue::PageFlags;
use pvops_integration::platform::boot_backend;
use pvops_integration::xen_host::xen_platform;
use pvops_native as _;
use pvops_xen64 as _;
use pvops_xen64::abi::errno;

#[test]
fn a_refused_user_base_pointer_leaves_no_user_tables_loaded() {
    let host = xen_platform(1024);
    let model = host.xen.expect("xen model");
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64");
    let b = boot_backend(desc, &host).expect("boot");
    let mm = b.mm;
    let mut a = mm.create().expect("a");
    let mut other = mm.create().expect("b");
    let fa = mm.map(&a, 0x40_0000, PageFlags::DATA).expect("map a");
    mm.map(&other, 0x40_1000, PageFlags::DATA).expect("map b");
    mm.activate(&mut other).expect("pin b");
    mm.activate(&mut a).expect("switch to a");
    assert_eq!(host.oracle.user_access(0x40_0000, false), Some(fa));

    // The switch to `other` is one mmuext_op: NEW_BASEPTR (record 0), NEW_USER_BASEPTR (record 1).
    model.inject_subop_failure(1, -errno::EINVAL);
    let err = mm.activate(&mut other).expect_err("refused user base pointer");
    assert!(matches!(err, pvops::PvError::Hypercall { .. }), "{err}");
    assert_eq!(
        host.oracle.user_access(0x40_0000, false),
        None,
        "a's page reachable from user mode after a half switch"
    );
    assert_eq!(mm.active_pgd(), b.ops.read_cr3(), "Mm's idea of the loaded root differs from the backend's");

    // Recovery: a clean switch works again and everything comes back.
    mm.activate(&mut other).expect("switch again");
    mm.activate_init().expect("init");
    mm.exit(a).map_err(|(e, _)| e).expect("exit a");
    mm.exit(other).map_err(|(e, _)| e).expect("exit b");
    model.check_quiescent().expect("quiescent");
}
