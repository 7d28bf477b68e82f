//! A class of mistake rather than one case: after every step of a workload
//! whose k-th allocation (every backend) or k-th Xen sub-operation (xen64)
//! fails, for every k, no frame reachable from a live address space — a
//! table or a mapped page — is free in the allocator, and no table frame is
//! free. Reachability is walked by the test itself through the models'
//! memory (machine frames translated back on Xen), not through kernel-glue.

use std::collections::BTreeSet;

use kernel_glue::{AddressSpace, Mm, PageFlags};
use pvops::pte::flags;
use pvops::{Level, Mfn, Pfn, PvError, ENTRIES_PER_TABLE, USER_PGD_SLOTS};
use pvops_integration::platform::{boot_backend, platform_for, Booted, HostPlatform};
use pvops_native as _;
use pvops_xen64 as _;
use pvops_xen64::abi::errno;

/// Frames reachable below `root` in L4 `slots`: (tables, pages).
fn reachable(host: &HostPlatform, root: Pfn, slots: &[usize]) -> Result<(BTreeSet<u64>, BTreeSet<u64>), String> {
    let frame_of = |raw: u64| -> Result<Pfn, String> {
        let n = (raw & flags::ADDR_MASK) >> 12;
        match host.xen {
            Some(x) => x.pfn_of(Mfn(n)).ok_or(format!("entry {raw:#x} names a frame not the guest's")),
            None => Ok(Pfn(n)),
        }
    };
    let (mut tables, mut pages) = (BTreeSet::from([root.0]), BTreeSet::new());
    let mut todo: Vec<(Level, Pfn, Vec<usize>)> = vec![(Level::L4, root, slots.to_vec())];
    while let Some((level, table, indices)) = todo.pop() {
        for i in indices {
            let raw = host.mem.read_entry(table, i);
            if raw & flags::PRESENT == 0 {
                continue;
            }
            let f = frame_of(raw)?;
            match level.lower() {
                Some(lower) => {
                    tables.insert(f.0);
                    todo.push((lower, f, (0..ENTRIES_PER_TABLE).collect()));
                }
                None => {
                    pages.insert(f.0);
                }
            }
        }
    }
    Ok((tables, pages))
}

/// The invariant, over every live space's user half (the workload does not
/// change the kernel half: `map_kernel` runs at boot only).
fn no_reachable_frame_is_free(host: &HostPlatform, b: &Booted, live: &[AddressSpace]) -> Result<(), String> {
    let user: Vec<usize> = (0..USER_PGD_SLOTS).collect();
    for root in live.iter().map(AddressSpace::pgd) {
        let (tables, pages) = reachable(host, root, &user)?;
        if let Some(t) = tables.iter().find(|&&t| b.frames.is_free(Pfn(t))) {
            return Err(format!("table {t:#x} reachable from {root:?} is free"));
        }
        if let Some(p) = pages.iter().find(|&&p| b.frames.is_free(Pfn(p))) {
            return Err(format!("page {p:#x} mapped below {root:?} is free"));
        }
    }
    Ok(())
}

/// One workload step: an `Mm` call whose error is accepted (an injection is
/// armed), followed by the check.
fn steps(mm: &Mm<'_>, live: &mut Vec<AddressSpace>, check: &dyn Fn(&[AddressSpace]) -> Result<(), String>) {
    let run = |what: &str, live: &mut Vec<AddressSpace>, f: &mut dyn FnMut(&mut Vec<AddressSpace>)| {
        f(live);
        if let Err(e) = check(live) {
            panic!("after {what}: {e}");
        }
    };
    let map = |live: &mut Vec<AddressSpace>, i: usize, va: u64| {
        if let Some(s) = live.get(i) {
            let _ = mm.map(s, va, PageFlags::DATA);
        }
    };
    run("create", live, &mut |l| l.extend(mm.create().ok()));
    run("map", live, &mut |l| map(l, 0, 0x40_0000));
    run("map in a new L2", live, &mut |l| map(l, 0, 0x4000_0000 + 0x40_0000));
    run("activate", live, &mut |l| {
        if let Some(s) = l.get_mut(0) {
            let _ = mm.activate(s);
        }
    });
    run("map in a new L4 slot (loaded)", live, &mut |l| map(l, 0, 0x7f00_0000_0000));
    run("unmap (loaded)", live, &mut |l| {
        if let Some(s) = l.first() {
            let _ = mm.unmap(s, 0x40_0000);
        }
    });
    run("fork", live, &mut |l| {
        if let Some(s) = l.first() {
            if let Ok(c) = mm.fork(s) {
                l.push(c);
            }
        }
    });
    run("map into the child", live, &mut |l| map(l, 1, 0x40_1000));
    run("unmap (not loaded)", live, &mut |l| {
        if let Some(s) = l.get(1) {
            let _ = mm.unmap(s, 0x4000_0000 + 0x40_0000);
        }
    });
    run("activate init", live, &mut |_| {
        let _ = mm.activate_init();
    });
    // The pinned parent first: its teardown goes through Xen.
    for what in ["exit the parent", "exit the child"] {
        run(what, live, &mut |l| {
            if !l.is_empty() {
                if let Err((_, s)) = mm.exit(l.remove(0)) {
                    l.insert(0, s);
                }
            }
        });
    }
}

enum Inject {
    Allocation,
    SubOp,
}

fn sweep(name: &str, inject: Inject) -> u64 {
    let desc = pvops::backends().into_iter().find(|d| d.name == name).expect("backend");
    let host = platform_for(desc).expect("platform");
    let b = boot_backend(desc, &host).expect("boot");
    let check = |live: &[AddressSpace]| no_reachable_frame_is_free(&host, &b, live);
    for k in 0..2_000 {
        let free_before = b.frames.free_count();
        match inject {
            Inject::Allocation => b.frames.fail_allocation_after(Some(k)),
            Inject::SubOp => host.xen.expect("xen").inject_subop_failure(k, -errno::EINVAL),
        }
        let mut live = Vec::new();
        steps(b.mm, &mut live, &check);
        let armed = match inject {
            Inject::Allocation => {
                let armed = b.frames.injection_armed();
                b.frames.fail_allocation_after(None);
                armed
            }
            Inject::SubOp => host.xen.expect("xen").clear_injections(),
        };
        b.mm.activate_init().expect("init");
        while let Some(s) = live.pop() {
            b.mm.exit(s).map_err(|(e, _): (PvError, _)| e).unwrap_or_else(|e| panic!("{name} k={k}: exit: {e}"));
            check(&live).unwrap_or_else(|e| panic!("{name} k={k}: after cleanup exit: {e}"));
        }
        (host.invariants)(b.frames, &[]).unwrap_or_else(|e| panic!("{name} k={k}: {e}"));
        // A lost frame (kept rather than freed, logged) is allowed only on
        // the paths that document it; this workload hits none of them.
        assert_eq!(b.frames.free_count(), free_before, "{name} k={k}: frames leaked");
        if armed {
            return k;
        }
    }
    panic!("{name}: the workload never ran through");
}

#[test]
fn after_every_step_of_an_allocation_failure_sweep_no_reachable_frame_is_free() {
    for name in ["native", "xen64"] {
        let n = sweep(name, Inject::Allocation);
        println!("{name}: {n} allocation injection points");
        assert!(n >= 10, "{name}: only {n} allocations");
    }
}

#[test]
fn after_every_step_of_a_xen_refusal_sweep_no_reachable_frame_is_free() {
    let n = sweep("xen64", Inject::SubOp);
    println!("xen64: {n} sub-operation injection points");
    assert!(n >= 20, "only {n} sub-operations");
}
