//! What the kernel does once memory management is up, on either platform:
//!
//! 1. the conformance suite (the same crate as the host tests) on the real
//!    page tables, judged by [`KernelOracle`];
//! 2. the fixed hypercall-count workload (the host's `workload::demo`),
//!    printed as parseable `HCSTEP` / `HCDEMO` lines;
//! 3. the user workload ([`crate::process`]): fork, copy independence, the
//!    kernel-address probes, teardown;
//! 4. the isolation attack suite ([`crate::attacks`]): one process per
//!    attack, each must die of the expected fault and be reaped; then the
//!    ELF user program ([`crate::program`]): the loader's refusals, then
//!    its checks of demand-zero mmap, copy-on-write fork, mprotect, munmap
//!    and fork/exit leaks (`programs=P/T cow_copies=C elf_refused=R/T`);
//! 5. with 2+ CPUs online, the concurrent cases ([`crate::smp_cases`]);
//! 6. leak and pin checks over 3 and 4, the `RESULT` line (with `cpus=N`,
//!    `smp=P/T` for the concurrent cases and the ELF program's figures),
//!    then exit pass only if everything held.

use alloc::format;

use kernel_glue::{Mm, PageFlags};

use crate::backends::KernelOps;
use crate::seams::SeamCounts;
use pvops::{PvError, PvMmuOps};
use pvops_conformance::{run_all, Env};

use crate::exit::{self, ExitCode};
use crate::oracle::KernelOracle;
use crate::platform::PlatformServices;
use crate::process::{self, Processes, State, CHILD_EXIT, CHILD_VALUE, PARENT_VALUE, USER_DATA_VA};
use crate::vm::{self, Vm, KERNEL_PROBE_VA};
use crate::{attacks, kprintln, platform};

/// Number of pages per process in the hypercall demo (the host report's).
pub const DEMO_PAGES: u64 = 8;

/// The demo workload (the steps of `pvops_conformance::workload::demo`, in
/// the same order and with the same names), each step measured at the
/// kernel's seams ([`SeamCounts`]: the transport's traps decoded per
/// multicall entry, and stores through the backend's `PhysMem`), not by the
/// backend's own `stats()`. Prints `HCSTEP <backend> <n> <counts> | <what>`
/// per step and `HCDEMO …` for the total; xtask checks them against the
/// README table. Returns the frames it did not give back.
pub fn hypercall_demo(mm: &Mm<'_, KernelOps>, pages: u64) -> Result<i64, PvError> {
    let name = mm.ops().name();
    let free_before = mm.frames().free_count() as i64;
    let start = SeamCounts::now();
    let mut n = 0;
    let mut step = |what: &str, f: &mut dyn FnMut() -> Result<(), PvError>| {
        let before = SeamCounts::now();
        let r = f();
        n += 1;
        kprintln!("HCSTEP {name} {n} {} | {what}", SeamCounts::now().since(&before));
        r
    };
    let mut a = None;
    step("create A", &mut || mm.create().map(|s| a = Some(s)))?;
    let a = a.ok_or(PvError::WrongState { what: "demo: no space A" })?;
    step(&format!("map {pages} pages in A (unpinned)"), &mut || {
        (0..pages).try_for_each(|i| mm.map(&a, 0x40_0000 + i * 0x1000, PageFlags::DATA).map(|_| ()))
    })?;
    step("activate A (first use: pin)", &mut || mm.activate(&a))?;
    step("map 1 page in A (pinned, new tables)", &mut || mm.map(&a, 0x7f00_0000_0000, PageFlags::DATA).map(|_| ()))?;
    let mut b = None;
    step("fork A -> B", &mut || mm.fork(&a).map(|s| b = Some(s)))?;
    let b = b.ok_or(PvError::WrongState { what: "demo: no space B" })?;
    step("switch to B (first use: pin)", &mut || mm.activate(&b))?;
    step("switch to A", &mut || mm.activate(&a))?;
    step("switch to B", &mut || mm.activate(&b))?;
    step("switch to init_mm", &mut || mm.activate_init())?;
    let mut a = Some(a);
    step("exit A (unpin, free)", &mut || a.take().map_or(Ok(()), |s| mm.exit(s).map_err(|(e, _)| e)))?;
    let mut b = Some(b);
    step("exit B (unpin, free)", &mut || b.take().map_or(Ok(()), |s| mm.exit(s).map_err(|(e, _)| e)))?;
    kprintln!("HCDEMO backend={name} steps={n} {}", SeamCounts::now().since(&start));
    Ok(free_before - mm.frames().free_count() as i64)
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
    check(p.len() == 5, "expected 5 processes (parent + 4 children)");
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
    // The TLB test: a not-present fault, in user mode, on the page the child
    // had just read and then unmapped from its own loaded address space.
    let unmapped = matches!(p.get(4).map(|p| p.state), Some(State::Killed(f))
        if f.vector == 14 && f.addr == USER_DATA_VA && f.error_code & 5 == 4);
    check(unmapped, "a page unmapped from the loaded space stayed readable (stale TLB entry)");
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

/// `leak-pin` (test only, Xen): a frame is pinned as an L1 table behind the
/// backend's back and given back to the allocator still pinned; only Xen
/// knows, so only the measured `pins_left`/`typed_left` can see it.
#[cfg(feature = "leak-pin")]
fn leak_pin(v: &Vm) {
    use crate::xen::{hypercall, mmu, typed};
    if !platform::is_xen() {
        return;
    }
    let Ok(pfn) = pvops::MmServices::alloc_zeroed_frame(v.frames) else { return };
    let pinned = typed::make_read_only(pfn)
        .and_then(|()| mmu::make_pte(pfn.0, 0))
        .and_then(|pte| hypercall::mmuext(pvops_xen64::abi::mmuext::PIN_L1_TABLE, pte >> 12));
    kprintln!("leak-pin: {pfn:?} pinned as an L1 table in Xen ({pinned:?}), freed without unpinning");
    let _ = pvops::MmServices::free_frame(v.frames, pfn);
}

/// Everything after boot. Never returns.
pub fn run(v: Vm) -> ! {
    let plat = platform::get().result_name();
    let backend = v.ops.name();

    // 0. The calibration corpus (Xen only), before anything the checks measure.
    crate::calibrate::run_on_xen(&v);
    // 1. Conformance on the live tables.
    let oracle = KernelOracle::new(v);
    let env = Env { mm: v.mm, machine: &oracle, kernel_va: KERNEL_PROBE_VA };
    let summary = run_all(&env, &mut |case, r| {
        if let Err(why) = r {
            kprintln!("  FAIL {} {}: {}", backend, case.name, why);
        }
    });
    kprintln!("conformance {}: {}/{} passed ({})", backend, summary.passed, summary.total, oracle.describe());
    // 1b. The SMP conformance cases, driven through cross-calls, where 2+ CPUs are online.
    let smp_conformance = (crate::smp::online().count() >= 2).then(|| {
        let s = pvops_conformance::run_smp(&env, &mut |case, r| match r {
            Ok(()) => kprintln!("  smp conformance {}: ok", case.name),
            Err(why) => kprintln!("  FAIL smp conformance {} {}: {}", backend, case.name, why),
        });
        kprintln!("smp conformance {}: {}/{} passed", backend, s.passed, s.total);
        s
    });

    // 2. The fixed hypercall-count workload, counted at the seams.
    let (demo_stats, demo_seams) = (v.ops.stats(), SeamCounts::now());
    let demo_leak = match hypercall_demo(v.mm, DEMO_PAGES) {
        Ok(l) => l,
        Err(e) => {
            kprintln!("hypercall demo failed: {e}");
            -1
        }
    };
    let demo_hc = v.ops.stats().since(demo_stats).hypercalls;
    let demo_traps = SeamCounts::now().since(&demo_seams).hypercalls();
    kprintln!("HCTRAPS backend={backend} demo: backend counted {demo_hc}, transport trapped {demo_traps}");
    // 2b. The pin/unpin and lazy-map sweeps on the real Xen (Xen PV only).
    let sweep_ok = match crate::xensweep::run(&v) {
        Ok(ok) => ok,
        Err(e) => {
            kprintln!("XENSWEEP failed: {e}");
            false
        }
    };

    if oracle.user_root_missing() {
        // Entering user mode with no user root would crash the domain: stop here.
        kprintln!(
            "pvkernel: FAILED on {plat}: Xen did not load the user pgd of an activated space (conformance {}/{})",
            summary.passed,
            summary.total
        );
        exit::exit(ExitCode::Fail);
    }

    // 3. The user workload (with the TLB test).
    let seams_before = SeamCounts::now();
    let free_before = v.frames.free_count();
    let pins_before = vm::pinned_frames(v.frames);
    let stats_before = v.ops.stats();
    let isolation = match user_workload(&v) {
        Ok(ok) => ok,
        Err(e) => {
            kprintln!("user workload failed: {e}");
            false
        }
    };
    let tlb = match crate::tlb::kernel_tlb_test(&v) {
        Ok(fresh) => fresh,
        Err(e) => {
            kprintln!("kernel TLB test failed: {e}");
            false
        }
    };
    let stats = v.ops.stats().since(stats_before);
    let user = SeamCounts::now().since(&seams_before);

    // 3b. The concurrent cases, on CPU 0 and the next CPU online.
    let cpus = crate::smp::online();
    let smp = match cpus.without(0).iter().next() {
        Some(other) => {
            // The concurrent cases and the SMP conformance cases (step 1b) together.
            let mut s = crate::smp_cases::run_all(&v, other);
            if crate::platform::is_xen_pvh() {
                match crate::xenpvh::remote_flush_costs(other, 200) {
                    Ok((ipi, hvm)) => kprintln!(
                        "pvh remote flush cost (TSC cycles, 200 rounds): cross-call IPI {ipi}, HVMOP_flush_tlbs {hvm}"
                    ),
                    Err(e) => kprintln!("pvh remote flush cost: {e}"),
                }
            }
            if let Some(c) = smp_conformance {
                s.passed += c.passed as u32;
                s.run += c.total as u32;
            }
            Some(s)
        }
        None => {
            kprintln!("smp cases: skipped (1 CPU online)");
            None
        }
    };
    let smp_ok = smp.is_none_or(|s| s.passed == s.run && s.run > 0);
    let smp_field = smp.map_or(alloc::string::String::new(), |s| format!(" smp={}/{}", s.passed, s.run));
    let cpus_field = format!(" cpus={}{smp_field}", cpus.count());

    // 4. The attack suite.
    let (attack_stats, attack_seams) = (v.ops.stats(), SeamCounts::now());
    let attacks = match attacks::run_suite(&v) {
        Ok(s) => s,
        Err(e) => {
            kprintln!("attack suite failed: {e}");
            attacks::Summary::default()
        }
    };
    let attack_hc = v.ops.stats().since(attack_stats).hypercalls;
    let attack_traps = SeamCounts::now().since(&attack_seams).hypercalls();

    // 4, continued. The ELF user program (inside the frames_leaked window).
    let program = crate::program::run(&v);
    let prog_fields = format!(
        " programs={}/{} cow_copies={} elf_refused={}/{}",
        program.passed, program.total, program.cow_copies, program.elf_refused.0, program.elf_refused.1
    );

    #[cfg(feature = "leak-frame")]
    {
        let leaked = pvops::MmServices::alloc_zeroed_frame(v.frames);
        kprintln!("leak-frame: allocated {leaked:?} and never freeing it");
    }
    #[cfg(feature = "leak-pin")]
    leak_pin(&v);
    let frames_leaked = free_before as i64 - v.frames.free_count() as i64;
    kprintln!("workload {}: {} (measured at the seams)", backend, user);
    kprintln!("attack suite {}: {attack_hc} hypercalls (transport trapped {attack_traps})", backend);
    if platform::is_xen() {
        kprintln!("xen transport totals: {}", crate::xen::transport::TRANSPORT.counts());
    }
    // The backend's own count must be what really reached Xen.
    let counts_agree = !platform::is_xen()
        || (demo_hc == demo_traps && stats.hypercalls == user.hypercalls() && attack_hc == attack_traps);

    // 5. Verdict.
    let isolation = isolation && attacks.audits_clean;
    let iso = if isolation { "ok" } else { "FAILED" };
    let conf = format!("{}/{}", summary.passed, summary.total);
    let tlb_word = if tlb { "ok" } else { "STALE" };
    let att = format!("{}/{}", attacks.blocked, attacks.tried);
    let mut typed_ok = true;
    if platform::is_xen() {
        // Measured from Xen: frames of tables this run created that Xen still
        // holds a type reference on (pinned, or a loaded base pointer).
        let (pins_left, typed_left) = crate::xen::typed::leftovers(&v, &pins_before);
        typed_ok = pins_left == 0 && typed_left == 0;
        kprintln!(
            "RESULT {plat} backend={backend} conformance={conf} user_isolation={iso} attacks={att} tlb={tlb_word} frames_leaked={frames_leaked} pins_left={pins_left} typed_left={typed_left} hypercalls={}{cpus_field}{prog_fields}",
            user.hypercalls()
        );
    } else {
        kprintln!(
            "RESULT {plat} backend={backend} conformance={conf} user_isolation={iso} attacks={att} tlb={tlb_word} frames_leaked={frames_leaked}{cpus_field}{prog_fields}"
        );
    }
    let expected = platform::get().expected_backend();
    let pass = summary.passed == summary.total
        && summary.total > 0
        && isolation
        && attacks.all_blocked()
        && frames_leaked == 0
        && tlb
        && typed_ok
        && demo_leak == 0
        && sweep_ok
        && counts_agree
        && smp_ok
        && program.ok()
        && backend == expected;
    if !pass {
        kprintln!(
            "pvkernel: FAILED on {plat} (demo leaked {demo_leak} frames; sweeps ok: {sweep_ok}; backend {backend}, expected {expected}; \
             backend hypercall counts agree with the transport: {counts_agree}; all attacks blocked: {}; \
             no table left typed in Xen: {typed_ok}; kernel TLB test: {tlb_word}; concurrent cases: {smp_ok}; \
             ELF program: {})",
            attacks.all_blocked(),
            if program.ok() { "ok" } else { "FAILED" }
        );
        exit::exit(ExitCode::Fail);
    }
    kprintln!("pvkernel: all checks passed on {plat}");
    exit::exit(ExitCode::Pass)
}
