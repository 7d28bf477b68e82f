//! The API's sharp edges, removed (issue 15 item 2): a space is refused by
//! an `Mm` that did not make it; the end of early boot is one documented
//! point after which the frame metadata agrees with Xen about which frames
//! are pinned tables; a refused first pin leaves what was loaded. Every
//! check asks the models (Xen's page types, the machine's walk), not the
//! code under test.

use kernel_glue::{AddressSpace, FaultKill, Mm, PageFlags};
use pvops::{Pfn, PvError, VirtAddr};
use pvops_integration::platform::{KERNEL_IMAGE_VA, KERNEL_PROBE_VA, KERNEL_VA};
use pvops_model::host::{self, Host, Platform};
use pvops_model::{Access, AccessOracle, XenModel};
use pvops_native as _;
use pvops_xen64 as _;

const VA: u64 = 0x40_0000;
const VA2: u64 = 0x80_0000;

fn hosts() -> Vec<Host> {
    vec![host::native(1024).expect("native host"), host::xen64(1024).expect("xen64 host")]
}

/// What must not change when a call is refused: the allocator, the
/// hypervisor's counters, each space's mapping as the model walks it,
/// each `Mm`'s live list, the loaded root.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    free: u64,
    allocations: u64,
    hypercalls: u64,
    pinned: usize,
    reach: Vec<Option<Pfn>>,
    live: (usize, usize),
    loaded: Pfn,
}

fn snapshot(h: &Host, mms: [&Mm<'static>; 2], spaces: [&AddressSpace; 2]) -> Snapshot {
    let va = VirtAddr::try_new(VA).unwrap();
    let reach = spaces.iter().map(|s| h.oracle().reach_from(s.pgd(), va, Access::USER_READ).ok()).collect();
    Snapshot {
        free: h.frames.free_count(),
        allocations: h.frames.allocations(),
        hypercalls: h.xen.map_or(0, |x| x.counters().hypercalls),
        pinned: h.xen.map_or(0, XenModel::pinned_count),
        reach,
        live: (mms[0].live_spaces(), mms[1].live_spaces()),
        loaded: h.ops.read_cr3(),
    }
}

/// Every public `Mm` method that takes a space, given one another `Mm`
/// made: each is refused with `ForeignSpace` naming it.
fn refuse_all(mm: &Mm<'static>, foreign: AddressSpace, frame: Pfn) -> AddressSpace {
    let pgd = foreign.pgd();
    let e = PvError::ForeignSpace { pgd };
    let s = &foreign;
    assert_eq!(mm.map(s, VA2, PageFlags::DATA), Err(e), "map");
    assert_eq!(mm.map_frame(s, VA2, frame, PageFlags::DATA), Err(e), "map_frame");
    assert_eq!(mm.map_range(s, VA2, 2, PageFlags::DATA), Err(e), "map_range");
    assert_eq!(mm.reserve_zero(s, VA2, 2, PageFlags::DATA), Err(e), "reserve_zero");
    assert_eq!(mm.unmap(s, VA), Err(e), "unmap");
    assert_eq!(mm.unmap_range(s, VA, 1), Err(e), "unmap_range");
    assert_eq!(mm.translate(s, VA), Err(e), "translate");
    assert_eq!(mm.poke(s, VA, 7), Err(e), "poke");
    assert_eq!(mm.peek(s, VA), Err(e), "peek");
    assert_eq!(mm.protect(s, VA, PageFlags::RODATA), Err(e), "protect");
    assert_eq!(mm.protect_range(s, VA, 1, PageFlags::RODATA), Err(e), "protect_range");
    assert_eq!(mm.handle_fault(s, VA, true), Err(FaultKill::Backend(e)), "handle_fault");
    assert_eq!(mm.activate(s), Err(e), "activate");
    assert_eq!(mm.fork(s).err(), Some(e), "fork");
    assert_eq!(mm.fork_cow(s).err(), Some(e), "fork_cow");
    match mm.exit(foreign) {
        Err((err, back)) => {
            assert_eq!(err, e, "exit");
            assert_eq!(back.pgd(), pgd, "exit gives the space back");
            back
        }
        Ok(()) => panic!("exit of a foreign space succeeded"),
    }
}

/// Two `Mm`s on one host (one allocator, one backend): each refuses the
/// other's space in every method, and nothing changes or leaks; each then
/// tears its own down.
#[test]
fn a_space_made_by_another_mm_is_refused_and_nothing_changes() {
    for h in hosts() {
        let name = h.name;
        let one: &'static Mm<'static> = Box::leak(Box::new(Mm::adopt_boot(h.ops, h.frames, h.boot_pgd).unwrap()));
        let two: &'static Mm<'static> = Box::leak(Box::new(Mm::adopt_boot(h.ops, h.frames, h.boot_pgd).unwrap()));
        let free0 = h.frames.free_count();
        let a = one.create().unwrap();
        let b = two.create().unwrap();
        let fa = one.map(&a, VA, PageFlags::DATA).unwrap();
        let fb = two.map(&b, VA, PageFlags::DATA).unwrap();
        one.activate(&a).unwrap();
        let before = snapshot(&h, [one, two], [&a, &b]);
        assert_eq!(before.reach, vec![Some(fa), Some(fb)], "{name}: the model sees each space's page");
        let b = refuse_all(one, b, fa);
        let a = refuse_all(two, a, fb);
        assert_eq!(snapshot(&h, [one, two], [&a, &b]), before, "{name}: a refused call changed something");
        // Each `Mm` still runs its own.
        assert_eq!(two.translate(&b, VA).unwrap(), Some((fb, PageFlags::DATA)), "{name}");
        one.activate_init().unwrap();
        one.exit(a).map_err(|(e, _)| e).unwrap();
        two.exit(b).map_err(|(e, _)| e).unwrap();
        assert_eq!(h.frames.free_count(), free0, "{name}: every frame came back");
        if let Some(xen) = h.xen {
            xen.check_quiescent().unwrap();
        }
    }
}

/// Asks Xen (the model's page types) which frames are validated page
/// tables, and checks the frame metadata marks exactly those pinned: a pin
/// baseline taken now is right.
fn metadata_agrees_with_xen(h: &Host, xen: &XenModel, what: &str, min_tables: u64) {
    let mut tables = 0;
    for pfn in (0..h.platform.nr_frames).map(Pfn) {
        let xen_table = xen.frame_info(pfn).is_table();
        let ours = h.frames.info(pfn).expect("metadata exists").pinned;
        assert_eq!(ours, xen_table, "{what}: {pfn:?}: metadata pinned {ours}, Xen typed as a table {xen_table}");
        tables += u64::from(xen_table);
    }
    assert!(xen.is_pinned(h.boot_pgd), "{what}: Xen pinned the boot root");
    assert!(tables >= min_tables, "{what}: the boot L4 and the tables under it ({tables})");
}

/// The kernel's path: early boot (kernel mappings by raw hypercalls, no
/// metadata), then `Mm::init_metadata`. Right after it, with no other call
/// in between, the metadata's pinned frames are Xen's tables.
#[test]
fn right_after_init_metadata_the_pinned_frames_are_the_tables_xen_typed() {
    let p = Platform::xen64(1024, 1, 9);
    let xen = p.xen.expect("a Xen model");
    let desc = p.select().expect("xen64 accepts a Xen PV platform");
    let h = p.boot_early(desc).expect("boot");
    let mm = Mm::adopt_boot(h.ops, h.frames, h.boot_pgd).unwrap();
    for (va, writable) in [(KERNEL_VA, true), (KERNEL_PROBE_VA, true), (KERNEL_IMAGE_VA, false)] {
        let page = h.frames.alloc_zeroed_frame().unwrap();
        mm.map_kernel(va, page, writable).unwrap();
    }
    let typed_before = xen.typed_count();
    mm.init_metadata().unwrap();
    assert_eq!(xen.typed_count(), typed_before, "the point itself issues nothing to Xen");
    metadata_agrees_with_xen(&h, xen, "after Mm::init_metadata", 4);
    // Idempotent: a second call keeps it so.
    mm.init_metadata().unwrap();
    metadata_agrees_with_xen(&h, xen, "after a second Mm::init_metadata", 4);
}

/// The constructor's path: `host::xen64` (metadata already there), then
/// `Mm::adopt_boot`; the same holds before and after the adopt.
#[test]
fn a_host_from_the_constructor_has_the_boot_tables_pinned_in_its_metadata() {
    let h = host::xen64(1024).unwrap();
    let xen = h.xen.expect("a Xen model");
    metadata_agrees_with_xen(&h, xen, "host::xen64", 1);
    let mm = Mm::adopt_boot(h.ops, h.frames, h.boot_pgd).unwrap();
    metadata_agrees_with_xen(&h, xen, "after Mm::adopt_boot", 1);
    let s = mm.create().unwrap();
    mm.exit(s).map_err(|(e, _)| e).unwrap();
}

/// Metadata created behind the backend's back (the allocator's own
/// `init_metadata`, not `Mm::init_metadata`) would say the boot tables are
/// plain frames: xen64 refuses to run on it, with nothing sent to Xen.
#[test]
fn metadata_created_without_telling_the_backend_is_refused() {
    let p = Platform::xen64(1024, 1, 3);
    let xen = p.xen.expect("a Xen model");
    let desc = p.select().unwrap();
    let h = p.boot_early(desc).unwrap();
    let mm = Mm::adopt_boot(h.ops, h.frames, h.boot_pgd).unwrap();
    h.frames.init_metadata();
    let (free, hypercalls) = (h.frames.free_count(), xen.counters().hypercalls);
    assert!(matches!(mm.create(), Err(PvError::WrongState { .. })));
    assert_eq!((h.frames.free_count(), xen.counters().hypercalls), (free, hypercalls), "nothing changed");
    mm.init_metadata().unwrap();
    let s = mm.create().unwrap();
    mm.exit(s).map_err(|(e, _)| e).unwrap();
}

/// `Mm::activate`'s doc: a refused first pin changes nothing — this CPU
/// keeps what it had loaded (asked of Xen's base pointers and the model's
/// walk), the space stays unpinned, and a later activate pins it.
#[test]
fn a_refused_first_pin_leaves_the_previous_space_loaded() {
    let h = host::xen64(1024).unwrap();
    let xen = h.xen.expect("a Xen model");
    let mm = Mm::adopt_boot(h.ops, h.frames, h.boot_pgd).unwrap();
    let a = mm.create().unwrap();
    let b = mm.create().unwrap();
    let fa = mm.map(&a, VA, PageFlags::DATA).unwrap();
    mm.map(&b, VA2, PageFlags::DATA).unwrap();
    mm.activate(&a).unwrap();
    let (kernel, user, pinned) = (xen.kernel_base(), xen.user_base(), xen.pinned_count());
    xen.inject_hypercall_failure(0, -pvops_xen64::abi::errno::ENOMEM);
    assert!(matches!(mm.activate(&b), Err(PvError::Hypercall { .. })));
    assert_eq!((xen.kernel_base(), xen.user_base()), (kernel, user), "a is still loaded, both roots");
    assert_eq!(xen.pinned_count(), pinned, "b was not pinned");
    assert!(!b.is_pinned());
    let va = VirtAddr::try_new(VA).unwrap();
    assert_eq!(xen.reach(va, Access::USER_READ), Ok(fa), "user mode still runs a");
    assert_eq!(mm.active_pgd(), a.pgd());
    mm.activate(&b).unwrap();
    assert!(b.is_pinned());
    mm.activate_init().unwrap();
    mm.exit(a).map_err(|(e, _)| e).unwrap();
    mm.exit(b).map_err(|(e, _)| e).unwrap();
    xen.check_quiescent().unwrap();
}

/// `Mm` reads and writes the allocator's memory (`FrameAllocator::mem`,
/// the one place it takes memory from): a poke lands in the frame the
/// model says the page is.
#[test]
fn mm_uses_the_allocators_memory() {
    for h in hosts() {
        let mm = Mm::adopt_boot(h.ops, h.frames, h.boot_pgd).unwrap();
        let s = mm.create().unwrap();
        let f = mm.map(&s, VA, PageFlags::DATA).unwrap();
        mm.poke(&s, VA + 8, 0x5eed).unwrap();
        let stored = match h.xen {
            Some(xen) => xen.read_guest(f, 1),
            None => h.machine.read(f.0, 1).unwrap(),
        };
        assert_eq!(stored, 0x5eed, "{}", h.name);
        assert!(std::ptr::addr_eq(h.frames.mem(), h.platform.mem), "{}", h.name);
        mm.exit(s).map_err(|(e, _)| e).unwrap();
    }
}
