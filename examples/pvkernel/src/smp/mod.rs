//! SMP: bringing up the other CPUs, knowing which CPU runs, cross-calls
//! (IPIs with an acknowledgement), event masking, and jobs run on an AP.
//!
//! Platform-neutral parts live here; each platform supplies the same small
//! set of functions (`native.rs`: INIT-SIPI-SIPI from the MADT, local-APIC
//! IPIs; `xen.rs`: `VCPUOP_initialise`/`VCPUOP_up`, event-channel IPIs):
//!
//! * `bring_up(want) -> usize`: start CPUs 1..want; returns how many are
//!   online (the boot CPU included); a CPU that fails is logged and skipped;
//!   each started CPU ends its platform setup in [`ap_main`];
//! * `this_cpu() -> usize`;
//! * `send_ipi(cpu)`: interrupt `cpu`, whose handler calls [`handle_ipi`];
//! * `mask_events() -> bool` / `restore_events(bool)`;
//! * `idle_wait()`: wait for the next interrupt/event (`sti; hlt` /
//!   `SCHEDOP_block`), returning after it was handled.
//!
//! On top of those, here: cross-calls ([`KernelCpus::call_on`]: one mailbox
//! slot per (target, sender) pair, so senders never contend; the sender
//! serves its own slots while it waits, so two CPUs calling each other do
//! not deadlock) and jobs ([`start_job`]/[`join`]: a function run on an AP
//! in thread context, events enabled, so it can itself be cross-called).
//!
//! Facts: ../shared/reference/smp-notes.md.

pub mod native;
pub mod native_acpi;
pub mod xen;

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use pvops::{CpuMask, Cpus, PvError};

use crate::platform;

/// Most CPUs this kernel runs (mailboxes are `NR_CPUS`²).
pub const NR_CPUS: usize = 16;

/// Bound on a cross-call's wait for acknowledgements (generous: a CPU
/// may be busy with events masked for a while, as Linux's CSD-lock
/// watchdog allows seconds).
pub const CALL_TIMEOUT_MS: u64 = 2000;
/// Bound on [`join`]'s wait for a job.
pub const JOIN_TIMEOUT_MS: u64 = 10_000;

static ONLINE: AtomicU64 = AtomicU64::new(1);

/// CPUs that are up (bit n = CPU n).
pub fn online() -> CpuMask {
    CpuMask(ONLINE.load(Ordering::Acquire))
}

/// Marks `cpu` online (called by the platform code once the CPU runs Rust).
pub fn set_online(cpu: usize) {
    ONLINE.fetch_or(CpuMask::one(cpu).0, Ordering::AcqRel);
}

/// Brings up CPUs 1..`want`; returns the number online.
pub fn bring_up(want: usize) -> usize {
    if platform::is_xen() {
        xen::bring_up(want)
    } else {
        native::bring_up(want)
    }
}

/// The CPU running this code.
pub fn this_cpu() -> usize {
    if platform::is_xen() {
        xen::this_cpu()
    } else {
        native::this_cpu()
    }
}

fn send_ipi(cpu: usize) {
    IPIS_SENT.fetch_add(1, Ordering::Relaxed);
    if platform::is_xen() {
        xen::send_ipi(cpu)
    } else {
        native::send_ipi(cpu)
    }
}

fn mask_events() -> bool {
    if platform::is_xen() {
        xen::mask_events()
    } else {
        native::mask_events()
    }
}

fn restore_events(was_masked: bool) {
    if platform::is_xen() {
        xen::restore_events(was_masked)
    } else {
        native::restore_events(was_masked)
    }
}

fn idle_wait() {
    if platform::is_xen() {
        xen::idle_wait()
    } else {
        native::idle_wait()
    }
}

/// A deadline on the time-stamp counter. The TSC rate is not calibrated:
/// one "ms" is 10^6 ticks, so on these ≥ 1 GHz machines (QEMU TCG counts
/// host ticks, 2.6 GHz here) a bound is at most what it says, never less
/// than ~40% of it.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(u64);

impl Deadline {
    /// `ms` (nominal) from now.
    pub fn after_ms(ms: u64) -> Deadline {
        Deadline::after_us(ms.saturating_mul(1000))
    }

    /// `us` (nominal) from now.
    pub fn after_us(us: u64) -> Deadline {
        Deadline(rdtsc().saturating_add(us.saturating_mul(1000)))
    }

    /// True once the deadline is behind us.
    pub fn passed(&self) -> bool {
        rdtsc() >= self.0
    }
}

/// The TSC (for the cost figures the kernel prints).
pub fn tsc() -> u64 {
    rdtsc()
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc is unprivileged (CR4.TSD clear) natively and under Xen PV.
    unsafe { core::arch::x86_64::_rdtsc() }
}

// ------------------------------------------------------------ cross-calls

type CallFn<'a> = dyn Fn() -> Result<(), PvError> + Sync + 'a;

const IDLE: u8 = 0;
const POSTED: u8 = 1;
const RUNNING: u8 = 2;
const DONE: u8 = 3;

/// One sender's request to one target.
struct CallSlot {
    state: AtomicU8,
    /// Written by the sender while IDLE, read by the target after it saw POSTED.
    f: UnsafeCell<*const CallFn<'static>>,
    /// Written by the target while RUNNING, read by the sender after DONE.
    result: UnsafeCell<Result<(), PvError>>,
}

// SAFETY: `f` and `result` are handed over by the acquire/release `state`
// protocol above; only one side touches each at a time.
unsafe impl Sync for CallSlot {}

impl CallSlot {
    const fn new() -> Self {
        CallSlot {
            state: AtomicU8::new(IDLE),
            f: UnsafeCell::new(core::ptr::null::<fn() -> Result<(), PvError>>() as *const CallFn<'static>),
            result: UnsafeCell::new(Ok(())),
        }
    }
}

/// `CALLS[target][sender]`.
static CALLS: [[CallSlot; NR_CPUS]; NR_CPUS] = [const { [const { CallSlot::new() }; NR_CPUS] }; NR_CPUS];
/// Set while a CPU is inside `call_on` (its slots as a sender are in use).
static CALLING: [AtomicBool; NR_CPUS] = [const { AtomicBool::new(false) }; NR_CPUS];

static IPIS_SENT: AtomicUsize = AtomicUsize::new(0);
static CALLS_RUN: AtomicUsize = AtomicUsize::new(0);

/// (IPIs sent, cross-call functions run) since boot: for per-operation counts.
pub fn ipi_counts() -> (usize, usize) {
    (IPIS_SENT.load(Ordering::Relaxed), CALLS_RUN.load(Ordering::Relaxed))
}

/// Runs the cross-calls aimed at this CPU. Called by each platform's IPI
/// handler, and by waiting CPUs (so a CPU that waits with events masked
/// still answers). Log-free: it may interrupt a holder of the console lock.
pub fn handle_ipi() {
    let me = this_cpu();
    let Some(mine) = CALLS.get(me) else { return };
    for slot in mine {
        if slot.state.compare_exchange(POSTED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            // SAFETY: POSTED→RUNNING won: the sender wrote `f` before its
            // release store of POSTED and keeps the closure alive until it
            // sees DONE (or retracts, which needs POSTED).
            let r = unsafe { (**slot.f.get())() };
            // SAFETY: we own `result` while RUNNING.
            unsafe { *slot.result.get() = r };
            CALLS_RUN.fetch_add(1, Ordering::Relaxed);
            slot.state.store(DONE, Ordering::Release);
        }
    }
}

/// One turn of a wait loop: serve our mailbox, then `pause`.
pub fn relax() {
    handle_ipi();
    core::hint::spin_loop();
}

/// The kernel's [`pvops::Cpus`]: what the backends and kernel-glue see.
#[derive(Debug, Default)]
pub struct KernelCpus;

/// The one instance handed to the platforms.
pub static CPUS: KernelCpus = KernelCpus;

impl KernelCpus {
    fn call_on_inner(&self, me: usize, targets: CpuMask, f: &CallFn<'_>) -> Result<(), PvError> {
        // SAFETY: (lifetime) the pointer is published to the targets only
        // until this function returns, and it returns only after each
        // target finished with it (DONE) or never started (retracted).
        let f: *const CallFn<'static> = unsafe { core::mem::transmute::<&CallFn<'_>, &'static CallFn<'static>>(f) };
        for t in targets.iter() {
            let slot = &CALLS[t][me];
            // SAFETY: our slot is IDLE (we are its only sender and always
            // leave it IDLE), so no target reads `f` now.
            unsafe { *slot.f.get() = f };
            slot.state.store(POSTED, Ordering::Release);
            send_ipi(t);
        }
        let deadline = Deadline::after_ms(CALL_TIMEOUT_MS);
        let mut pending = targets;
        let mut first_err = None;
        while !pending.is_empty() {
            for t in pending.iter() {
                let slot = &CALLS[t][me];
                match slot.state.load(Ordering::Acquire) {
                    DONE => {
                        // SAFETY: DONE: the target is finished with `result`.
                        let r = unsafe { *slot.result.get() };
                        slot.state.store(IDLE, Ordering::Relaxed);
                        pending = pending.without(t);
                        first_err = first_err.or(r.err());
                    }
                    // Never started: take it back (a running one must be
                    // waited for, it borrows `f`).
                    POSTED
                        if deadline.passed()
                            && slot
                                .state
                                .compare_exchange(POSTED, IDLE, Ordering::AcqRel, Ordering::Acquire)
                                .is_ok() =>
                    {
                        pending = pending.without(t);
                        first_err = first_err.or(Some(PvError::CpuTimeout { cpu: t }));
                    }
                    _ => {}
                }
            }
            relax();
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Cpus for KernelCpus {
    fn this_cpu(&self) -> usize {
        this_cpu()
    }
    fn online(&self) -> CpuMask {
        online()
    }
    fn mask_events(&self) -> bool {
        mask_events()
    }
    fn restore_events(&self, was_masked: bool) {
        restore_events(was_masked)
    }
    fn call_on(&self, cpus: CpuMask, f: &(dyn Fn() -> Result<(), PvError> + Sync)) -> Result<(), PvError> {
        if crate::sabotage::NO_REMOTE_FLUSH {
            return Ok(());
        }
        let me = this_cpu();
        let targets = cpus.without(me);
        // Nothing is posted unless every target can be reached.
        if let Some(cpu) = targets.iter().find(|&c| c >= NR_CPUS || !online().contains(c)) {
            return Err(PvError::CpuOffline { cpu });
        }
        if targets.is_empty() {
            return Ok(());
        }
        if CALLING[me].swap(true, Ordering::Acquire) {
            // A handler on this CPU cross-calls while our own call waits:
            // our sender slots are taken.
            return Err(PvError::Reentered { cpu: me });
        }
        let r = self.call_on_inner(me, targets, f);
        CALLING[me].store(false, Ordering::Release);
        r
    }
    fn relax(&self) {
        relax()
    }
}

// ------------------------------------------------------------------- jobs

const FREE: u8 = 0;
/// A job is being written into the slot.
const FILLING: u8 = 4;

/// A function an AP runs in thread context.
struct JobSlot {
    state: AtomicU8,
    f: AtomicUsize,
    arg: AtomicUsize,
}

static JOBS: [JobSlot; NR_CPUS] =
    [const { JobSlot { state: AtomicU8::new(FREE), f: AtomicUsize::new(0), arg: AtomicUsize::new(0) } }; NR_CPUS];

/// Starts `f(arg)` on AP `cpu` (in its idle loop, events enabled). `Err`
/// if `cpu` is this CPU, offline, or still has a job.
pub fn start_job(cpu: usize, f: fn(usize), arg: usize) -> Result<(), PvError> {
    if cpu == this_cpu() || cpu >= NR_CPUS || !online().contains(cpu) {
        return Err(PvError::CpuOffline { cpu });
    }
    let slot = &JOBS[cpu];
    if slot.state.compare_exchange(FREE, FILLING, Ordering::Acquire, Ordering::Relaxed).is_err() {
        return Err(PvError::WrongState { what: "smp: that CPU already has a job" });
    }
    slot.f.store(f as usize, Ordering::Relaxed);
    slot.arg.store(arg, Ordering::Relaxed);
    slot.state.store(POSTED, Ordering::Release);
    send_ipi(cpu);
    Ok(())
}

/// True once the job last started on `cpu` has returned (or none runs).
pub fn job_done(cpu: usize) -> bool {
    JOBS.get(cpu).is_none_or(|s| matches!(s.state.load(Ordering::Acquire), DONE | FREE))
}

/// Waits (bounded, serving cross-calls) for `cpu`'s job, then frees its slot.
pub fn join(cpu: usize) -> Result<(), PvError> {
    let slot = JOBS.get(cpu).ok_or(PvError::CpuOffline { cpu })?;
    let d = Deadline::after_ms(JOIN_TIMEOUT_MS);
    loop {
        match slot.state.load(Ordering::Acquire) {
            FREE => return Ok(()),
            DONE => {
                slot.state.store(FREE, Ordering::Release);
                return Ok(());
            }
            _ if d.passed() => return Err(PvError::CpuTimeout { cpu }),
            _ => relax(),
        }
    }
}

/// Where every AP ends up once its platform setup is done: online, then
/// forever runs jobs and otherwise waits in `idle_wait`. Cross-calls reach
/// it through its IPI handler, while idle and while a job runs.
pub fn ap_main(cpu: usize) -> ! {
    let _ = mask_events();
    set_online(cpu);
    loop {
        let slot = &JOBS[cpu];
        if slot.state.compare_exchange(POSTED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            let (f, arg) = (slot.f.load(Ordering::Relaxed), slot.arg.load(Ordering::Relaxed));
            // SAFETY: `start_job` stored a `fn(usize)` in `f` before POSTED.
            let f: fn(usize) = unsafe { core::mem::transmute::<usize, fn(usize)>(f) };
            restore_events(false);
            f(arg);
            let _ = mask_events();
            slot.state.store(DONE, Ordering::Release);
            continue;
        }
        // Events stay masked between the check and the wait: a job posted
        // after the check raises an IPI that ends the wait.
        idle_wait();
        let _ = mask_events();
        handle_ipi();
    }
}
