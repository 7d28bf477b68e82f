//! A multicall that fails part-way has still run its first entries (Xen's
//! `do_multicall`, `xen/common/multicall.c`: -EFAULT copying entry k after
//! entries 0..k ran and wrote their results). The backend must use what those
//! entries did: undo exactly them, or build on them. Checked with the Xen
//! model's part-way multicall failure, against the model's own state.

use kernel_glue::{AddressSpace, Mm, PageFlags};
use pvops::PvError;
use pvops_integration::platform::{boot_backend, Booted, HostPlatform};
use pvops_integration::xen_host::xen_platform;
use pvops_model::xen::PageType;
use pvops_native as _;
use pvops_xen64::abi::errno;

fn boot() -> (HostPlatform, Booted) {
    let host = xen_platform(1024);
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").expect("xen64");
    let b = boot_backend(desc, &host).expect("boot");
    (host, b)
}

#[test]
fn the_model_runs_the_entries_before_the_failing_one_and_leaves_the_rest_untouched() {
    use pvops::pte::flags;
    use pvops_xen64::abi::Call;
    use pvops_xen64::{HypercallTransport, Outcome};
    let (host, _b) = boot();
    let model = host.xen.unwrap();
    // Three read-only remaps of free frames' aliases.
    let pfns = [pvops::Pfn(900), pvops::Pfn(901), pvops::Pfn(902)];
    let calls: Vec<Call<'_>> = pfns
        .iter()
        .map(|&p| Call::UpdateVaMapping {
            va: model.direct_map_va(p),
            val: (model.mfn_of(p).unwrap().0 << 12) | flags::PRESENT,
            flags: 0,
        })
        .collect();
    let mut outcomes = vec![Outcome::NOT_RUN; 3];
    model.inject_multicall_failure(0, 1, -errno::EFAULT);
    assert_eq!(model.multicall(&calls, &mut outcomes), -errno::EFAULT);
    assert_eq!(outcomes, vec![Outcome::ok(1), Outcome::NOT_RUN, Outcome::NOT_RUN]);
    let writable: Vec<bool> = pfns.iter().map(|&p| model.alias_writable(p)).collect();
    assert_eq!(writable, vec![false, true, true], "entry 0 ran, 1 and 2 did not");
}

#[test]
fn a_pin_stopped_part_way_undoes_exactly_the_entries_that_ran() {
    let (host, b) = boot();
    let model = host.xen.unwrap();
    let mm = b.mm;
    let s = mm.create().unwrap();
    for i in 0..3u64 {
        mm.map(&s, 0x40_0000 + i * (1 << 30), PageFlags::DATA).unwrap();
    }
    let aliases = |n: u64| (0..n).map(|p| model.alias_writable(pvops::Pfn(p))).collect::<Vec<_>>();
    let before = aliases(host.nr_frames);
    // The pin is one multicall: read-only remaps of every table page, then the pins.
    for entry in 1..8 {
        model.inject_multicall_failure(0, entry, -errno::EFAULT);
        let e = mm.activate(&s).expect_err("stopped multicall");
        assert!(matches!(e, PvError::Hypercall { .. }), "entry {entry}: {e}");
        assert!(!s.is_pinned(), "entry {entry}");
        assert_eq!(model.pinned_count(), 1, "entry {entry}: only the boot root is pinned");
        let after = aliases(host.nr_frames);
        let changed: Vec<usize> = (0..before.len()).filter(|&p| before[p] != after[p]).collect();
        assert!(changed.is_empty(), "entry {entry}: aliases of pfns {changed:?} left changed by remaps that ran");
    }
    mm.activate(&s).unwrap();
    mm.activate_init().unwrap();
    mm.exit(s).map_err(|(e, _)| e).unwrap();
    model.check_quiescent().unwrap();
}

/// The fault-injection workload: every address-space operation.
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
fn a_multicall_stopped_at_any_entry_leaves_nothing_behind() {
    let (host, b) = boot();
    let model = host.xen.unwrap();
    let mm = b.mm;
    let mut points = 0;
    for entry in 0..4usize {
        for k in 0..1000u64 {
            let free_before = b.frames.free_count();
            model.inject_multicall_failure(k, entry, -errno::EFAULT);
            let mut spaces = Vec::new();
            let r = workload(mm, &mut spaces);
            let armed = model.clear_injections();
            mm.activate_init().unwrap_or_else(|e| panic!("entry {entry} k={k}: activate_init: {e}"));
            for s in spaces.drain(..) {
                mm.exit(s).unwrap_or_else(|(e, _)| panic!("entry {entry} k={k}: exit after {r:?}: {e}"));
            }
            let what = format!("entry {entry} k={k} ({r:?})");
            assert_eq!(b.frames.free_count(), free_before, "{what}: frames leaked");
            (host.invariants)(b.frames, &[]).unwrap_or_else(|e| panic!("{what}: {e}"));
            model.check_quiescent().unwrap_or_else(|e| panic!("{what}: {e}"));
            for pfn in (0..host.nr_frames).map(pvops::Pfn) {
                if b.frames.is_free(pfn) {
                    assert!(
                        model.page_type(pfn) == PageType::None && model.alias_writable(pfn),
                        "{what}: free frame {pfn:?} is still a table or read-only"
                    );
                }
            }
            if armed {
                assert!(r.is_ok(), "{what}: failed without the injection firing");
                break;
            }
            points += 1;
        }
    }
    println!("{points} part-way multicall failures");
    assert!(points >= 8, "only {points} multicalls in the workload");
}
