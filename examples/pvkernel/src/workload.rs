//! What the kernel does once memory management is up, on either platform:
//!
//! 1. the conformance suite (the same crate as the host tests) on the real
//!    page tables, judged by [`KernelOracle`];
//! 2. the fixed hypercall-count workload (the host's `workload::demo`),
//!    printed as parseable `HCSTEP` / `HCDEMO` lines;
//! 3. the user workload ([`crate::process`]): fork, copy independence, the
//!    kernel-address probes, teardown;
//! 4. the isolation attack suite ([`crate::attacks`]): one process per
//!    attack, each must die of the expected fault and be reaped;
//! 5. leak and pin checks over 3 and 4, the `RESULT` line, then exit pass
//!    only if everything held.

use alloc::format;
use alloc::string::String;

use kernel_glue::Mm;

use crate::backends::KernelOps;
use pvops::{OpStats, PvError, PvMmuOps};
use pvops_conformance::{run_all, Env};

use crate::exit::{self, ExitCode};
use crate::oracle::KernelOracle;
use crate::process::{self, Processes, State, CHILD_EXIT, CHILD_VALUE, PARENT_VALUE, USER_DATA_VA};
use crate::vm::{self, Vm, KERNEL_PROBE_VA};
use crate::{attacks, kprintln, platform};

fn kinds(s: &OpStats) -> String {
    format!(
        "hypercalls={} multicall_entries={} mmu_updates={} mmuext_ops={} update_va_mappings={} direct_writes={}",
        s.hypercalls, s.multicall_entries, s.mmu_updates, s.mmuext_ops, s.update_va_mappings, s.direct_writes
    )
}

/// Number of pages per process in the hypercall demo (the host report's).
pub const DEMO_PAGES: u64 = 8;

/// The shared demo workload (`pvops_conformance::workload::demo`, the same code
/// the host report runs), printing each step's hypervisor traffic as
/// `HCSTEP <backend> <n> <counts> | <what>` and the total as `HCDEMO …`.
/// Returns the frames it did not give back.
pub fn hypercall_demo(mm: &Mm<'_, KernelOps>, pages: u64) -> Result<i64, PvError> {
    let ops = mm.ops();
    let start = ops.stats();
    let (steps, leaked) = pvops_conformance::workload::demo(mm, pages)?;
    for (n, step) in steps.iter().enumerate() {
        kprintln!("HCSTEP {} {} {} | {}", ops.name(), n + 1, kinds(&step.cost), step.what);
    }
    kprintln!("HCDEMO backend={} steps={} {}", ops.name(), steps.len(), kinds(&ops.stats().since(start)));
    Ok(leaked)
}

/// Runs the user workload; `Ok(true)` when isolation and copy independence held.
fn user_workload(v: &Vm) -> Result<bool, PvError> {
    let space = process::load(v)?;
    let mut procs = Processes::new(*v, space, KERNEL_PROBE_VA);
    let run = procs.run(1);
    if let Err(e) = run {
        kprintln!("user workload: {e}");
        let _ = procs.teardown();
        return Err(e);
    }
    let mm = v.mm;
    let mut ok = true;
    let mut check = |cond: bool, what: &str| {
        if !cond {
            kprintln!("user isolation: FAILED: {what}");
            ok = false;
        }
    };
    let p = &procs.procs;
    check(p.len() == 4, "expected 4 processes (parent + 3 children)");
    check(p.first().map(|p| p.state) == Some(State::Exited(0)), "parent did not exit(0)");
    check(p.get(1).map(|p| p.state) == Some(State::Exited(CHILD_EXIT)), "copy child did not exit normally");
    check(procs.checked == Some(PARENT_VALUE), "parent did not see its own data page unchanged");
    if let (Some(parent), Some(child)) = (p.first(), p.get(1)) {
        check(mm.peek(&parent.space, USER_DATA_VA) == Ok(PARENT_VALUE), "parent page changed (kernel peek)");
        check(mm.peek(&child.space, USER_DATA_VA) == Ok(CHILD_VALUE), "child page lacks its write (kernel peek)");
    }
    let probe = |i: usize, write: bool| match p.get(i).map(|p| p.state) {
        Some(State::Killed(f)) => {
            f.vector == 14 && f.addr == KERNEL_PROBE_VA && f.error_code & 4 != 0 && (f.error_code & 2 != 0) == write
        }
        _ => false,
    };
    check(probe(2, false), "read of a kernel address did not page-fault in user mode");
    check(probe(3, true), "write to a kernel address did not page-fault in user mode");
    #[cfg(feature = "direct-write-pinned")]
    direct_write_pinned(v, &procs);
    let torn = procs.teardown();
    if ok {
        kprintln!("user isolation: ok (copy check passed, both kernel-address probes faulted and were killed)");
    }
    torn.map(|()| ok)
}

/// `direct-write-pinned` (test only): a plain store into a pinned page table
/// (the parent's pgd) through the direct map. Xen maps it read-only: the
/// store faults in kernel mode and the kernel dies. Natively it is an
/// ordinary store of the value already there.
#[cfg(feature = "direct-write-pinned")]
fn direct_write_pinned(v: &Vm, procs: &Processes) {
    if let Some(p) = procs.procs.first() {
        let pgd = p.space.pgd();
        kprintln!("direct-write-pinned: storing into pinned pgd {pgd:?} through the direct map");
        let value = v.mem.read_entry(pgd, 0);
        v.mem.write_entry(pgd, 0, value);
        kprintln!("direct-write-pinned: the store did not fault");
    }
}

/// Traps into Xen counted by the transport itself (0 natively).
fn traps() -> u64 {
    if platform::is_xen() {
        crate::xen::transport::TRANSPORT.counts().traps()
    } else {
        0
    }
}

/// Everything after boot. Never returns.
pub fn run(v: Vm) -> ! {
    let plat = if platform::is_xen() { "xen" } else { "native" };
    let backend = v.ops.name();

    // 0. The calibration corpus (Xen only), before anything the checks measure.
    crate::calibrate::run_on_xen(&v);
    // 1. Conformance on the live tables.
    let oracle = KernelOracle::new(v.mem, v.frames);
    let env = Env { mm: v.mm, machine: &oracle, kernel_va: KERNEL_PROBE_VA };
    let summary = run_all(&env, &mut |case, r| {
        if let Err(why) = r {
            kprintln!("  FAIL {} {}: {}", backend, case.name, why);
        }
    });
    kprintln!("conformance {}: {}/{} passed", backend, summary.passed, summary.total);

    // 2. The fixed hypercall-count workload.
    let (demo_stats, demo_traps) = (v.ops.stats(), traps());
    let demo_leak = match hypercall_demo(v.mm, DEMO_PAGES) {
        Ok(l) => l,
        Err(e) => {
            kprintln!("hypercall demo failed: {e}");
            -1
        }
    };

    let demo_hc = v.ops.stats().since(demo_stats).hypercalls;
    let demo_traps = traps() - demo_traps;
    kprintln!("HCTRAPS backend={backend} demo: backend counted {demo_hc}, transport trapped {demo_traps}");

    // 3. The user workload.
    let traps_before = traps();
    let free_before = v.frames.free_frames();
    let pins_before = vm::pinned_frames(v.frames);
    let stats_before = v.ops.stats();
    let isolation = match user_workload(&v) {
        Ok(ok) => ok,
        Err(e) => {
            kprintln!("user workload failed: {e}");
            false
        }
    };
    let stats = v.ops.stats().since(stats_before);
    let user_traps = traps() - traps_before;

    // 4. The attack suite.
    let (attack_stats, attack_traps) = (v.ops.stats(), traps());
    let attacks = match attacks::run_suite(&v) {
        Ok(s) => s,
        Err(e) => {
            kprintln!("attack suite failed: {e}");
            attacks::Summary::default()
        }
    };
    let attack_hc = v.ops.stats().since(attack_stats).hypercalls;
    let attack_traps = traps() - attack_traps;

    #[cfg(feature = "leak-frame")]
    {
        let leaked = pvops::MmServices::alloc_zeroed_frame(v.frames);
        kprintln!("leak-frame: allocated {leaked:?} and never freeing it");
    }
    let frames_leaked = free_before as i64 - v.frames.free_frames() as i64;
    let pins_left = vm::pinned_frames(v.frames).iter().filter(|p| !pins_before.contains(p)).count();
    kprintln!("workload {}: {} (transport trapped {user_traps})", backend, kinds(&stats));
    kprintln!("attack suite {}: {attack_hc} hypercalls (transport trapped {attack_traps})", backend);
    if platform::is_xen() {
        kprintln!("xen transport totals: {}", crate::xen::transport::TRANSPORT.counts());
    }
    // The backend's own count must be what really reached Xen.
    let counts_agree =
        !platform::is_xen() || (demo_hc == demo_traps && stats.hypercalls == user_traps && attack_hc == attack_traps);

    // 4. Verdict.
    let isolation = isolation && attacks.audits_clean;
    let iso = if isolation { "ok" } else { "FAILED" };
    let conf = format!("{}/{}", summary.passed, summary.total);
    let att = format!("{}/{}", attacks.blocked, attacks.tried);
    if platform::is_xen() {
        kprintln!(
            "RESULT {plat} backend={backend} conformance={conf} user_isolation={iso} attacks={att} frames_leaked={frames_leaked} pins_left={pins_left} hypercalls={}",
            stats.hypercalls
        );
    } else {
        kprintln!(
            "RESULT {plat} backend={backend} conformance={conf} user_isolation={iso} attacks={att} frames_leaked={frames_leaked}"
        );
    }
    let expected = if platform::is_xen() { "xen64" } else { "native" };
    let pass = summary.passed == summary.total
        && summary.total > 0
        && isolation
        && attacks.all_blocked()
        && frames_leaked == 0
        && pins_left == 0
        && demo_leak == 0
        && counts_agree
        && backend == expected;
    if !pass {
        kprintln!(
            "pvkernel: FAILED on {plat} (demo leaked {demo_leak} frames; backend {backend}, expected {expected}; \
             backend hypercall counts agree with the transport: {counts_agree}; all attacks blocked: {})",
            attacks.all_blocked()
        );
        exit::exit(ExitCode::Fail);
    }
    kprintln!("pvkernel: all checks passed on {plat}");
    exit::exit(ExitCode::Pass)
}
