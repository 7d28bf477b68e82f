//! The concurrent cases: real code on two real CPUs (vCPUs), platform
//! neutral, run by `workload::run` when 2+ CPUs are online.
//!
//! CPU 0 drives; the other CPU runs an [`Agent`]: a job that runs closures
//! CPU 0 hands it, in thread context with events enabled (so the backend's
//! and kernel-glue's cross-calls reach it while it works). What a case
//! checks is measured by the CPUs themselves — a read through the loaded
//! translation, the root a CPU reports loaded, the frame count — never by
//! the bookkeeping of the code under test.
//!
//! a. `shootdown`: both CPUs have space A loaded and the AP has read page X
//!    (its TLB holds X). CPU 0 `Mm::unmap`s X, keeps the freed frame, maps a
//!    new page at X and writes NEW into it; the AP reads X again and must
//!    see NEW (OLD/0 = a stale translation: no remote flush). First, to show
//!    the test can fail, the same rewire with a local-only flush: the AP is
//!    expected to read the old page (QEMU TCG keeps per-CPU TLBs).
//! b. `lazy_exit`: the AP activates A; while it runs A, CPU 0's `Mm::exit`
//!    must be refused (`RootInUse` naming the AP, nothing changed). Then the
//!    AP only holds A lazily (`Mm::enter_lazy`) and goes idle; `Mm::exit`
//!    must succeed (kernel-glue cross-calls the AP to switch to init_mm,
//!    Linux's `xen_drop_mm_ref`), the AP must then report init_mm's root,
//!    and every frame must come back.
//! c. `concurrent_map`: both CPUs map into A at once, in disjoint tables and
//!    interleaved in the same L1; afterwards every page, read through the
//!    hardware on both CPUs, holds what its mapper wrote; frames balance.
//! d. `switch_storm`: both CPUs alternate between A and B many times; after
//!    each switch a read of X shows the space just activated, and at the end
//!    each CPU's loaded root is what it last activated, as the backend
//!    (`read_cr3`) and the hardware (cr3) say on that CPU; on Xen, Xen must
//!    hold the user pgd of each space a vCPU ended on as a loaded base.
//! f. `ipi_during_batches`: the AP maps and unmaps in a loop (every map and
//!    unmap is a backend batch, on Xen a multicall built over several
//!    calls inside a lazy section) while CPU 0 cross-calls it again and
//!    again; each cross-call's handler flushes the TLB through the backend.
//!    The handler must never land inside a backend call (`Reentered`) or
//!    inside the AP's open batch: on Xen its flush must have been issued by
//!    the time it returns (the vCPUs' published hypercall count grew). Holds
//!    only if the backend masks events while the batch is open.
//! e. `call_errors`: a cross-call to an offline CPU is `CpuOffline` naming
//!    it; one to a CPU that spins with events masked is `CpuTimeout` naming
//!    it after the bounded wait, and its function never runs (the request
//!    was taken back); once that CPU listens again, a cross-call works.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kernel_glue::{AddressSpace, PageFlags};
use pvops::{CpuMask, Cpus, Flush, Level, Pfn, Pte, PvError, PvMmuOps};

use crate::kprintln;
use crate::oracle::KernelOracle;
use crate::seams::SeamCounts;
use crate::smp::{self, Deadline};
use crate::vm::{self, Vm};

/// The page the cases read (L4 slot 0, nothing else uses it then).
const X: u64 = 0x60_0000;
const OLD: u64 = 0x01d0_01d0_01d0_01d0;
const MID: u64 = 0x0111_0222_0333_0444;
const NEW: u64 = 0x0ee0_0ee0_0ee0_0ee0;
/// Pages each CPU maps in `concurrent_map`, per region.
const MAP_PAGES: u64 = 24;
/// Activations per CPU in `switch_storm`.
const STORM_ROUNDS: u64 = 200;
/// Bound on one agent request.
const AGENT_TIMEOUT_MS: u64 = 5000;

/// Reads the word at `va` through the translation loaded on this CPU.
fn read(va: u64) -> u64 {
    // SAFETY: the callers read only pages they just mapped in the space
    // loaded on this CPU (on Xen the kernel pgd maps the user half too).
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

type Task<'a> = dyn Fn() -> u64 + Sync + 'a;

/// A job on an AP that runs the closures CPU 0 posts, one at a time.
struct Mailbox {
    seq: AtomicU64,
    ack: AtomicU64,
    stop: AtomicBool,
    task: UnsafeCell<*const Task<'static>>,
    result: AtomicU64,
}

// SAFETY: `task` is written by the poster only while seq == ack (the agent
// is not reading it) and read by the agent only while seq != ack.
unsafe impl Sync for Mailbox {}

static MAILBOX: Mailbox = Mailbox {
    seq: AtomicU64::new(0),
    ack: AtomicU64::new(0),
    stop: AtomicBool::new(false),
    task: UnsafeCell::new(core::ptr::null::<fn() -> u64>() as *const Task<'static>),
    result: AtomicU64::new(0),
};

fn agent_job(_: usize) {
    let m = &MAILBOX;
    loop {
        let seq = m.seq.load(Ordering::Acquire);
        if seq != m.ack.load(Ordering::Relaxed) {
            // SAFETY: the poster stored `task` before bumping `seq` and keeps
            // the closure alive until it sees `ack == seq`.
            let r = unsafe { (**m.task.get())() };
            m.result.store(r, Ordering::Relaxed);
            m.ack.store(seq, Ordering::Release);
            continue;
        }
        if m.stop.load(Ordering::Acquire) {
            return;
        }
        core::hint::spin_loop();
    }
}

/// CPU 0's handle on the agent running on `cpu`.
struct Agent {
    cpu: usize,
}

impl Agent {
    fn start(cpu: usize) -> Result<Agent, PvError> {
        MAILBOX.stop.store(false, Ordering::Release);
        smp::start_job(cpu, agent_job, 0)?;
        Ok(Agent { cpu })
    }

    /// Hands `f` to the agent without waiting.
    ///
    /// # Safety
    /// [`Agent::wait`] must return before `f` (a named local, not a
    /// temporary) or anything it borrows goes away.
    unsafe fn post(&self, f: &Task<'_>) {
        // SAFETY: (lifetime) `wait` returns only once the agent is done with
        // `f`, and the caller waits before `f` goes (this fn's contract).
        let f: *const Task<'static> = unsafe { core::mem::transmute::<&Task<'_>, &'static Task<'static>>(f) };
        // SAFETY: seq == ack here: the agent does not read `task`.
        unsafe { *MAILBOX.task.get() = f };
        MAILBOX.seq.fetch_add(1, Ordering::Release);
    }

    /// Waits for the posted closure's result (serving cross-calls).
    fn wait(&self) -> u64 {
        let seq = MAILBOX.seq.load(Ordering::Relaxed);
        let d = Deadline::after_ms(AGENT_TIMEOUT_MS);
        while MAILBOX.ack.load(Ordering::Acquire) != seq {
            if d.passed() {
                // The closure borrows our stack: we cannot return without it.
                panic!("smp: CPU {} did not finish a request within the bounded wait", self.cpu);
            }
            smp::relax();
        }
        MAILBOX.result.load(Ordering::Relaxed)
    }

    fn run(&self, f: &Task<'_>) -> u64 {
        // SAFETY: we wait right here, while `f` is borrowed.
        unsafe { self.post(f) };
        self.wait()
    }

    fn stop(self) -> Result<(), PvError> {
        MAILBOX.stop.store(true, Ordering::Release);
        smp::join(self.cpu)
    }
}

/// Encodes a `Result<(), PvError>` for the mailbox (0 = ok).
fn code(r: Result<(), PvError>) -> u64 {
    match r {
        Ok(()) => 0,
        Err(_) => u64::MAX,
    }
}

/// The L1 table and slot that map `va` in `space`.
fn leaf_slot(v: &Vm, space: &AddressSpace, va: u64) -> Result<(Pfn, usize), PvError> {
    let p = vm::path(v.ops, space.pgd(), va)?;
    let (table, level, index) = p[3];
    if level != Level::L1 {
        return Err(PvError::WrongState { what: "smp case: no L1 on the path" });
    }
    Ok((table, index))
}

/// The verdicts of the cases: (passed, run).
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub passed: u32,
    pub run: u32,
}

/// Runs every case with CPU 0 and `cpu`; prints one line per case.
pub fn run_all(v: &Vm, cpu: usize) -> Summary {
    let cpus: &dyn Cpus = &smp::CPUS;
    // Threads run with events on: cross-calls reach CPU 0 while it works too.
    let was_masked = cpus.mask_events();
    cpus.restore_events(false);
    let mut s = Summary::default();
    type Case = fn(&Vm, &Agent) -> Result<(bool, alloc::string::String), PvError>;
    let cases: [(&str, Case); 6] = [
        ("shootdown", shootdown),
        ("lazy_exit", lazy_exit),
        ("concurrent_map", concurrent_map),
        ("switch_storm", switch_storm),
        ("ipi_during_batches", ipi_during_batches),
        ("call_errors", call_errors),
    ];
    for (name, case) in cases {
        let free_before = v.frames.free_count();
        let agent = match Agent::start(cpu) {
            Ok(a) => a,
            Err(e) => {
                kprintln!("smp case {name}: FAILED: cannot start the agent on CPU {cpu}: {e}");
                s.run += 1;
                continue;
            }
        };
        let r = case(v, &agent);
        let stopped = agent.stop();
        let leaked = free_before as i64 - v.frames.free_count() as i64;
        s.run += 1;
        match (r, stopped) {
            (Ok((true, what)), Ok(())) if leaked == 0 => {
                s.passed += 1;
                kprintln!("smp case {name}: ok ({what}; frames balance)");
            }
            (Ok((ok, what)), stopped) => kprintln!(
                "smp case {name}: FAILED ({what}; {}; {leaked} frames not back; agent {stopped:?})",
                if ok { "checks held" } else { "a check failed" }
            ),
            (Err(e), _) => kprintln!("smp case {name}: FAILED: {e} ({leaked} frames not back)"),
        }
    }
    if was_masked {
        let _ = cpus.mask_events();
    }
    let (ipis, calls) = smp::ipi_counts();
    kprintln!(
        "smp cases: {}/{} passed (CPU 0 and CPU {cpu}; {ipis} IPIs sent, {calls} cross-calls run since boot)",
        s.passed,
        s.run
    );
    s
}

/// Case a (see the module docs).
fn shootdown(v: &Vm, agent: &Agent) -> Result<(bool, alloc::string::String), PvError> {
    let (mm, ops) = (v.mm, v.ops);
    let space = mm.create()?;
    let mut held = None;
    let mut spare = None;
    let r = (|| {
        mm.map(&space, X, PageFlags::DATA)?;
        mm.poke(&space, X, OLD)?;
        mm.activate(&space)?;
        let ap_first = agent.run(&|| match mm.activate(&space) {
            Ok(()) => read(X),
            Err(_) => u64::MAX,
        });
        // Local-only flush: rewire X to another page, flush this CPU only.
        let f2 = v.frames.alloc_zeroed_frame()?;
        spare = Some(f2);
        v.mem.write_entry(f2, 0, MID);
        let (l1, index) = leaf_slot(v, &space, X)?;
        let orig = ops.read_entry(Level::L1, l1, index)?;
        ops.set_entry(v.frames, Level::L1, l1, index, Pte::new(f2, orig.flags()))?;
        ops.lazy_mmu_flush()?;
        ops.flush_tlb_one(pvops::VirtAddr::try_new(X)?)?;
        let cpu0_local = read(X);
        let ap_local = agent.run(&|| read(X));
        // The backend's remote flush on its own, right away (the same short
        // window in which the local-only flush left the AP stale): the AP
        // must now see the page X maps.
        ops.flush_tlb_multi(space.cpumask(), Flush::Page(pvops::VirtAddr::try_new(X)?))?;
        let ap_multi = agent.run(&|| read(X));
        // Put X back, flushed everywhere, before the real test.
        ops.set_entry(v.frames, Level::L1, l1, index, orig)?;
        ops.lazy_mmu_flush()?;
        ops.flush_tlb_multi(space.cpumask(), Flush::Page(pvops::VirtAddr::try_new(X)?))?;
        let ap_again = agent.run(&|| read(X));

        // The real test: Mm::unmap must shoot down the AP's entry.
        let (ipis, seams, hvm) = (smp::ipi_counts(), SeamCounts::now(), crate::xenpvh::hvm_flushes());
        mm.unmap(&space, X)?;
        let ((sent, ran), seams) = (smp::ipi_counts(), SeamCounts::now().since(&seams));
        kprintln!(
            "smp shootdown: Mm::unmap of a page loaded on 2 CPUs: {} IPIs sent, {} cross-calls run, {} HVMOP_flush_tlbs; {seams}",
            sent - ipis.0,
            ran - ipis.1,
            crate::xenpvh::hvm_flushes() - hvm
        );
        held = Some(v.frames.alloc_zeroed_frame()?);
        mm.map(&space, X, PageFlags::DATA)?;
        mm.poke(&space, X, NEW)?;
        let cpu0_after = read(X);
        let ap_after = agent.run(&|| read(X));
        let local_word =
            if ap_local == OLD { "stale, as expected" } else { "fresh: this machine hides missing flushes" };
        kprintln!(
            "smp shootdown: local-only flush: CPU 0 read {cpu0_local:#x}, CPU {} read {ap_local:#x} ({local_word})",
            agent.cpu
        );
        let ok = ap_first == OLD && ap_multi == MID && ap_again == OLD && cpu0_after == NEW && ap_after == NEW;
        Ok((
            ok,
            alloc::format!(
                "CPU {} read {ap_multi:#x} after flush_tlb_multi ({}), {ap_first:#x} before unmap, {ap_after:#x} after unmap + new page: {}",
                agent.cpu,
                if ap_multi == MID { "fresh" } else { "STALE" },
                if ap_after == NEW { "fresh" } else { "STALE" }
            ),
        ))
    })();
    let back = code(mm.activate_init());
    let ap_back = agent.run(&|| code(mm.activate_init()));
    let gone = mm.exit(space).map_err(|(e, _)| e);
    for f in [held, spare].into_iter().flatten() {
        v.frames.free_frame(f)?;
    }
    let out = r?;
    gone?;
    if back != 0 || ap_back != 0 {
        return Err(PvError::WrongState { what: "smp shootdown: switching back to init_mm failed" });
    }
    Ok(out)
}

/// Case b (see the module docs).
fn lazy_exit(v: &Vm, agent: &Agent) -> Result<(bool, alloc::string::String), PvError> {
    let (mm, ops) = (v.mm, v.ops);
    let space = mm.create()?;
    let pgd = space.pgd();
    if let Err(e) = mm.map(&space, X, PageFlags::DATA).and_then(|_| mm.poke(&space, X, OLD)) {
        let _ = mm.exit(space);
        return Err(e);
    }
    let loaded = agent.run(&|| match mm.activate(&space) {
        Ok(()) if read(X) == OLD => ops.read_cr3().0,
        _ => u64::MAX,
    });
    // While the AP runs A, exit must be refused, naming it, nothing changed.
    let free = v.frames.free_count();
    let space = match mm.exit(space) {
        Err((e, space)) => {
            let still = agent.run(&|| read(X));
            let unchanged = v.frames.free_count() == free && still == OLD;
            if e != (PvError::RootInUse { pgd, cpu: agent.cpu }) || !unchanged {
                let _ = agent.run(&|| code(mm.activate_init()));
                let _ = mm.exit(space);
                return Ok((
                    false,
                    alloc::format!("exit while CPU {} runs A: {e} (unchanged: {unchanged})", agent.cpu),
                ));
            }
            space
        }
        Ok(()) => {
            // Freed under the AP's feet: get it off that root first.
            let _ = agent.run(&|| code(mm.activate_init()));
            return Ok((false, alloc::format!("exit while CPU {} runs A succeeded", agent.cpu)));
        }
    };
    // The AP only keeps A loaded now (Linux's enter_lazy_tlb) and goes idle
    // (`sti; hlt` / SCHEDOP_block): only a cross-call can make it let go.
    agent.run(&|| {
        mm.enter_lazy();
        0
    });
    MAILBOX.stop.store(true, Ordering::Release);
    smp::join(agent.cpu)?;
    let exited = mm.exit(space);
    // Ask the AP what it has loaded now, with a fresh agent.
    MAILBOX.stop.store(false, Ordering::Release);
    smp::start_job(agent.cpu, agent_job, 0)?;
    let now = agent.run(&|| ops.read_cr3().0);
    let init = mm.init_pgd().0;
    let ok = loaded == pgd.0 && exited.is_ok() && now == init;
    let what = alloc::format!(
        "exit while CPU {cpu} runs A: refused (root in use on CPU {cpu}), nothing changed; CPU {cpu} had root {loaded:#x} (A {:#x}) loaded lazily while idle; exit {}; it now has {now:#x} (init_mm {init:#x})",
        pgd.0,
        match &exited {
            Ok(()) => alloc::string::String::from("ok"),
            Err((e, _)) => alloc::format!("failed: {e}"),
        },
        cpu = agent.cpu,
    );
    if let Err((_, space)) = exited {
        // Leave nothing behind: switch the AP away and try again.
        agent.run(&|| code(mm.activate_init()));
        let _ = mm.exit(space);
    }
    Ok((ok, what))
}

/// The pages CPU `c` (0 or 1) maps in `concurrent_map`: its own region
/// (separate L3/L2/L1 tables) and its half of a shared L1, interleaved.
fn my_pages(c: u64) -> impl Iterator<Item = u64> {
    let own = (0..MAP_PAGES).map(move |i| 0x1000_0000 + c * 0x4000_0000 + i * 0x1000);
    let shared = (0..MAP_PAGES).map(move |i| 0x0800_0000 + (2 * i + c) * 0x1000);
    own.chain(shared)
}

fn marker(c: u64, va: u64) -> u64 {
    0x5a00_0000_0000_0000 | c << 48 | va
}

/// Maps and fills CPU `c`'s pages; the number that failed.
fn map_mine(v: &Vm, space: &AddressSpace, c: u64) -> u64 {
    my_pages(c)
        .filter(|&va| v.mm.map(space, va, PageFlags::DATA).and_then(|_| v.mm.poke(space, va, marker(c, va))).is_err())
        .count() as u64
}

/// Reads every page of both CPUs through the loaded translation; the number wrong.
fn check_all() -> u64 {
    (0..2).flat_map(|c| my_pages(c).map(move |va| (c, va))).filter(|&(c, va)| read(va) != marker(c, va)).count() as u64
}

/// Case c (see the module docs).
fn concurrent_map(v: &Vm, agent: &Agent) -> Result<(bool, alloc::string::String), PvError> {
    let mm = v.mm;
    let space = mm.create()?;
    let go = AtomicBool::new(false);
    // Bound to a local: it must outlive the `wait` below.
    let task = || {
        while !go.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        map_mine(v, &space, 1)
    };
    // SAFETY: `task` is a local that lives past the `wait` below.
    unsafe { agent.post(&task) };
    go.store(true, Ordering::Release);
    let failed0 = map_mine(v, &space, 0);
    let failed1 = agent.wait();
    let wrong0 = match mm.activate(&space) {
        Ok(()) => check_all(),
        Err(_) => u64::MAX,
    };
    let wrong1 = agent.run(&|| match mm.activate(&space) {
        Ok(()) => check_all(),
        Err(_) => u64::MAX,
    });
    let back = code(mm.activate_init()) | agent.run(&|| code(mm.activate_init()));
    let gone = mm.exit(space).map_err(|(e, _)| e);
    gone?;
    let total = 4 * MAP_PAGES;
    let ok = failed0 == 0 && failed1 == 0 && wrong0 == 0 && wrong1 == 0 && back == 0;
    Ok((
        ok,
        alloc::format!(
            "{total} pages mapped by 2 CPUs at once ({failed0}+{failed1} maps failed); wrong through CPU 0: {wrong0}, through CPU {}: {wrong1}",
            agent.cpu
        ),
    ))
}

/// Case f (see the module docs).
fn ipi_during_batches(v: &Vm, agent: &Agent) -> Result<(bool, alloc::string::String), PvError> {
    const CALLS: u64 = 200;
    const BASE: u64 = 0x80_0000;
    let (mm, ops) = (v.mm, v.ops);
    let space = mm.create()?;
    let stop = AtomicBool::new(false);
    let (rounds, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let (refused, queued, handled) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let xen = crate::platform::is_xen();
    // The AP's work: batches, back to back, until CPU 0 has sent its
    // cross-calls (bound to a local: it outlives `wait`).
    let task = || {
        let fail = |r: Result<(), PvError>| {
            if r.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        };
        fail(mm.activate(&space));
        let mut i = 0u64;
        while !stop.load(Ordering::Acquire) {
            let va = BASE + (i % 64) * 0x1000 + ((i % 3) << 30);
            fail(mm.map(&space, va, PageFlags::DATA).and_then(|_| mm.unmap(&space, va)));
            i += 1;
            // A scheduling point: under QEMU's round-robin TCG `pause` ends
            // this vCPU's turn, so CPU 0 sees each answer at once instead of
            // after a whole time slice.
            core::hint::spin_loop();
        }
        rounds.store(i, Ordering::Relaxed);
        fail(mm.activate_init());
        0
    };
    // Runs on the AP, in its cross-call handler.
    let handler = || {
        handled.fetch_add(1, Ordering::Relaxed);
        let before = ops.stats().hypercalls;
        match ops.flush_tlb_all() {
            Err(_) => {
                refused.fetch_add(1, Ordering::Relaxed);
            }
            Ok(()) if xen && ops.stats().hypercalls == before => {
                queued.fetch_add(1, Ordering::Relaxed);
            }
            Ok(()) => {}
        }
        Ok(())
    };
    // SAFETY: `task` is a local that lives past the `wait` below.
    unsafe { agent.post(&task) };
    let mut call_failures = 0u64;
    for _ in 0..CALLS {
        if smp::CPUS.call_on(pvops::CpuMask::one(agent.cpu), &handler).is_err() {
            call_failures += 1;
        }
    }
    stop.store(true, Ordering::Release);
    agent.wait();
    let gone = mm.exit(space).map_err(|(e, _)| e);
    gone?;
    let (refused, queued, handled) =
        (refused.load(Ordering::Relaxed), queued.load(Ordering::Relaxed), handled.load(Ordering::Relaxed));
    let (rounds, failed) = (rounds.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let ok = failed == 0 && refused == 0 && queued == 0 && handled == CALLS && call_failures == 0 && rounds >= 10;
    Ok((
        ok,
        alloc::format!(
            "{rounds} map+unmap batches on CPU {} ({failed} failed) under {CALLS} cross-calls ({handled} handled, {call_failures} failed); the handler's flush refused as a re-entry {refused}, queued into an open batch {queued}",
            agent.cpu
        ),
    ))
}

/// Alternates between `a` and `b` `STORM_ROUNDS` times (starting with `a`
/// if `first_a`); returns (reads that showed the wrong space, last root
/// activated, root loaded at the end as the backend says, as the hardware
/// (cr3; on Xen translated from the MFN) says) — u64::MAX fields on an error.
fn storm(v: &Vm, a: &AddressSpace, b: &AddressSpace, first_a: bool) -> [u64; 4] {
    let mut wrong = 0;
    let mut last = 0;
    for i in 0..STORM_ROUNDS {
        let (s, want) = if (i % 2 == 0) == first_a { (a, OLD) } else { (b, NEW) };
        if v.mm.activate(s).is_err() {
            return [u64::MAX; 4];
        }
        last = s.pgd().0;
        if read(X) != want {
            wrong += 1;
        }
    }
    let hw = KernelOracle::kernel_root().map_or(u64::MAX, |p| p.0);
    [wrong, last, v.ops.read_cr3().0, hw]
}

/// (Xen) Whether Xen holds the user pgd of `space` as a loaded base
/// pointer on some vCPU (asked of Xen: a writable alias is refused).
fn user_root_loaded(v: &Vm, space: &AddressSpace) -> Option<bool> {
    let user = pvops_xen64::attached_user_pgd(v.frames, space.pgd()).ok().flatten()?;
    crate::xen::typed::is_loaded_base(user).ok()
}

/// Case d (see the module docs).
fn switch_storm(v: &Vm, agent: &Agent) -> Result<(bool, alloc::string::String), PvError> {
    let mm = v.mm;
    let a = mm.create()?;
    let b = match mm.create() {
        Ok(b) => b,
        Err(e) => {
            let _ = mm.exit(a);
            return Err(e);
        }
    };
    let setup = mm
        .map(&a, X, PageFlags::DATA)
        .and_then(|_| mm.poke(&a, X, OLD))
        .and_then(|()| mm.map(&b, X, PageFlags::DATA))
        .and_then(|_| mm.poke(&b, X, NEW));
    let ap_out = [const { AtomicU64::new(u64::MAX) }; 4];
    let mut cpu0 = [u64::MAX; 4];
    if setup.is_ok() {
        let go = AtomicBool::new(false);
        // Bound to a local: it must outlive the `wait` below.
        let task = || {
            while !go.load(Ordering::Acquire) {
                core::hint::spin_loop();
            }
            for (slot, x) in ap_out.iter().zip(storm(v, &a, &b, false)) {
                slot.store(x, Ordering::Relaxed);
            }
            0
        };
        // SAFETY: `task` is a local that lives past the `wait` below.
        unsafe { agent.post(&task) };
        go.store(true, Ordering::Release);
        cpu0 = storm(v, &a, &b, true);
        agent.wait();
    }
    let ap = ap_out.each_ref().map(|x| x.load(Ordering::Relaxed));
    // Xen: the user pgd of each space a vCPU ended on must be loaded too
    // (the user root stays the partner of the kernel root).
    let mut users = alloc::string::String::new();
    let mut users_ok = true;
    if crate::platform::is_xen() && setup.is_ok() {
        for (name, s) in [("A", &a), ("B", &b)] {
            let want = cpu0[1] == s.pgd().0 || ap[1] == s.pgd().0;
            let got = user_root_loaded(v, s);
            users_ok &= got == Some(want);
            users += &alloc::format!("; user pgd of {name} loaded: {got:?} (want {want})");
        }
    }
    let back = code(mm.activate_init()) | agent.run(&|| code(mm.activate_init()));
    let ga = mm.exit(a).map_err(|(e, _)| e);
    let gb = mm.exit(b).map_err(|(e, _)| e);
    setup?;
    ga?;
    gb?;
    let ends_ok = |r: &[u64; 4]| r[0] == 0 && r[1] == r[2] && r[1] == r[3];
    let ok = ends_ok(&cpu0) && ends_ok(&ap) && users_ok && back == 0;
    Ok((
        ok,
        alloc::format!(
            "{STORM_ROUNDS} switches per CPU; wrong space seen: CPU 0 {}, CPU {cpu} {}; last activated / loaded (backend) / cr3: CPU 0 {:#x}/{:#x}/{:#x}, CPU {cpu} {:#x}/{:#x}/{:#x}{users}",
            cpu0[0],
            ap[0],
            cpu0[1],
            cpu0[2],
            cpu0[3],
            ap[1],
            ap[2],
            ap[3],
            cpu = agent.cpu,
        ),
    ))
}

/// Case e (see the module docs).
fn call_errors(_v: &Vm, agent: &Agent) -> Result<(bool, alloc::string::String), PvError> {
    let cpus: &dyn Cpus = &smp::CPUS;
    let offline = (0..smp::NR_CPUS).find(|&c| !smp::online().contains(c));
    let r_offline = offline.map(|c| cpus.call_on(CpuMask::one(c), &|| Ok(())));
    let offline_ok = match (offline, r_offline) {
        (Some(c), Some(Err(PvError::CpuOffline { cpu }))) => cpu == c,
        (None, None) => true, // every CPU is online: nothing to try
        _ => false,
    };
    // The agent stops listening: events masked, not serving its mailbox.
    let (deaf, hold) = (AtomicBool::new(false), AtomicBool::new(true));
    let task = || {
        let was = smp::CPUS.mask_events();
        deaf.store(true, Ordering::Release);
        while hold.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        smp::CPUS.restore_events(was);
        0
    };
    // SAFETY: `task` is a local that lives past the `wait` below.
    unsafe { agent.post(&task) };
    let d = Deadline::after_ms(AGENT_TIMEOUT_MS);
    while !deaf.load(Ordering::Acquire) && !d.passed() {
        smp::relax();
    }
    let ran = AtomicBool::new(false);
    let r_deaf = cpus.call_on(CpuMask::one(agent.cpu), &|| {
        ran.store(true, Ordering::Release);
        Ok(())
    });
    hold.store(false, Ordering::Release);
    agent.wait();
    let ran_late = ran.load(Ordering::Acquire);
    let again = AtomicBool::new(false);
    let r_again = cpus.call_on(CpuMask::one(agent.cpu), &|| {
        again.store(true, Ordering::Release);
        Ok(())
    });
    let timeout_ok = r_deaf == Err(PvError::CpuTimeout { cpu: agent.cpu }) && !ran_late;
    let again_ok = r_again.is_ok() && again.load(Ordering::Acquire);
    Ok((
        offline_ok && timeout_ok && again_ok,
        alloc::format!(
            "to offline CPU {offline:?}: {r_offline:?}; to CPU {} with events masked: {r_deaf:?} (its function ran: {ran_late}); once it listens: {r_again:?}",
            agent.cpu
        ),
    ))
}
