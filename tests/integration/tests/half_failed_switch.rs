//! A switch whose user-root half Xen refuses is undone: the previous address
//! space (kernel root and its user root) stays loaded, and `Mm` says so. Only
//! if Xen refuses the undo too is the new kernel root left loaded, with no
//! user root (never the previous process's), and `Mm` names it. Every check
//! asks the Xen model (its base pointers, its page walk), not the backend.

use kernel_glue::{AddressSpace, Mm, PageFlags};
use pvops_integration::platform::{boot_backend, Booted};
use pvops_integration::xen_host::xen_platform;
use pvops_model::XenModel;
use pvops_native as _;
use pvops_xen64 as _;
use pvops_xen64::abi::errno;

struct Two {
    booted: Booted,
    model: &'static XenModel,
    oracle: &'static dyn pvops_conformance::Machine,
    a: AddressSpace,
    other: AddressSpace,
    fa: pvops::Pfn,
}

/// Two pinned spaces, `a` loaded, each with one page.
fn two_spaces() -> Two {
    let host = xen_platform(1024);
    let model = host.xen.expect("xen model");
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64");
    let booted = boot_backend(desc, &host).expect("boot");
    let mm = booted.mm;
    let a = mm.create().expect("a");
    let other = mm.create().expect("b");
    let fa = mm.map(&a, 0x40_0000, PageFlags::DATA).expect("map a");
    mm.map(&other, 0x40_1000, PageFlags::DATA).expect("map b");
    mm.activate(&other).expect("pin b");
    mm.activate(&a).expect("switch to a");
    assert_eq!(host.oracle.user_access(0x40_0000, false), Some(fa));
    Two { booted, model, oracle: host.oracle, a, other, fa }
}

fn user_pgd_mfn(model: &XenModel, mm: &Mm<'_>, pgd: pvops::Pfn) -> pvops::Mfn {
    let user = pvops_xen64::attached_user_pgd(mm.frames(), pgd).unwrap().expect("user pgd");
    model.mfn_of(user).unwrap()
}

fn finish(t: Two) {
    let Two { booted, model, other, a, .. } = t;
    let mm = booted.mm;
    mm.activate(&other).expect("switch again");
    mm.activate_init().expect("init");
    mm.exit(a).map_err(|(e, _)| e).expect("exit a");
    mm.exit(other).map_err(|(e, _)| e).expect("exit b");
    model.check_quiescent().expect("quiescent");
}

#[test]
fn a_refused_user_base_pointer_undoes_the_switch() {
    let t = two_spaces();
    let mm = t.booted.mm;
    // The switch to `other` is one mmuext_op: NEW_BASEPTR (record 0), NEW_USER_BASEPTR (record 1).
    t.model.inject_subop_failure(1, -errno::EINVAL);
    let err = mm.activate(&t.other).expect_err("refused user base pointer");
    assert!(matches!(err, pvops::PvError::Hypercall { .. }), "{err}");
    assert_eq!(t.model.kernel_base(), t.model.mfn_of(t.a.pgd()).unwrap(), "a's kernel root is loaded again");
    assert_eq!(t.model.user_base(), user_pgd_mfn(t.model, mm, t.a.pgd()), "with a's user root");
    assert_eq!(t.oracle.user_access(0x40_0000, false), Some(t.fa), "user mode runs a as before");
    assert_eq!(t.oracle.user_access(0x40_1000, false), None, "and sees nothing of b");
    assert_eq!(mm.active_pgd(), t.a.pgd(), "Mm still names a");
    assert_eq!(t.booted.ops.read_cr3(), t.a.pgd(), "the backend too");
    finish(t);
}

#[test]
fn a_switch_that_cannot_be_undone_leaves_the_new_kernel_root_and_no_user_root() {
    let t = two_spaces();
    let mm = t.booted.mm;
    // Trap 0: the switch (its user record refused); trap 1: the undo (refused).
    t.model.inject_subop_failure(1, -errno::EINVAL);
    t.model.inject_hypercall_failure(1, -errno::ENOMEM);
    let err = mm.activate(&t.other).expect_err("refused user base pointer");
    assert!(matches!(err, pvops::PvError::Hypercall { .. }), "{err}");
    assert_eq!(t.model.kernel_base(), t.model.mfn_of(t.other.pgd()).unwrap(), "the new kernel root stayed");
    assert_eq!(t.model.user_base(), pvops::Mfn(0), "no user root: never a's under b's kernel root");
    assert_eq!(t.oracle.user_access(0x40_0000, false), None, "a's page unreachable from user mode");
    assert_eq!(mm.active_pgd(), t.other.pgd(), "Mm names the kernel root that is really loaded");
    assert_eq!(t.booted.ops.read_cr3(), t.other.pgd());
    finish(t);
}
