//! A deterministic scheduler for vCPU threads.
//!
//! Each vCPU is a host thread, and exactly one of them runs at a time: they
//! pass a baton. Every seam call of the models (a page-table load or store, a
//! hypercall, a cr3 write, `invlpg`, a flush, masking or unmasking events,
//! `Cpus::relax`, each turn of a cross-call wait) is a [`Point`] where the
//! schedule picks which runnable vCPU goes on. The pick comes from a seed
//! ([`Schedule::Seed`]) or from a list ([`Schedule::Choices`]), so a run is a
//! pure function of the schedule: same seed, same interleaving (the
//! [`Run::trace_hash`] says so). Cross-calls pending for a vCPU are delivered
//! at its points while its events are unmasked ([`crate::cpus`]), so a
//! handler interrupts whatever that vCPU was doing, as a real IPI does.
//!
//! A vCPU whose body returned goes idle: it still answers cross-calls (an
//! idle CPU takes IPIs) and runs only when one is posted to it. The run ends
//! when every vCPU is idle. The first body that fails or panics ends the run
//! for all (the others unwind at their next point); so do too many steps (a
//! livelock) and a vCPU that keeps the baton for seconds without reaching a
//! point (a spin wait that never calls `Cpus::relax`).
//!
//! [`Explorer`] runs a body over many seeds and reports the first failing one.

use std::cell::RefCell;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cpus::ModelCpus;

/// Where a vCPU may be preempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// A page-table (or memory) load through a seam.
    Load,
    /// A page-table store through a seam.
    Store,
    /// A frame zeroed through a seam.
    Zero,
    /// A hypercall (or multicall).
    Hypercall,
    /// A cr3 read or write.
    Cr3,
    /// `invlpg`.
    Invlpg,
    /// A full TLB flush.
    Flush,
    /// `Cpus::mask_events`.
    MaskEvents,
    /// `Cpus::restore_events`.
    RestoreEvents,
    /// `Cpus::relax` (one turn of a wait loop).
    Relax,
    /// One turn of a `Cpus::call_on` wait.
    CallWait,
    /// A test body's own [`yield_now`].
    Explicit,
    /// An idle vCPU waiting for work.
    Idle,
}

/// How the vCPU to run next is chosen at each point with more than one
/// runnable vCPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Pseudo-random picks from this seed.
    Seed(u64),
    /// Pick `choices[i] % runnable` at the `i`-th choice (an index among
    /// the runnable vCPUs, lowest first); after the list, the lowest
    /// runnable vCPU (enumerating these lists explores interleavings
    /// systematically: [`Explorer::run_all`]).
    Choices(Vec<usize>),
}

/// Failure payload used to unwind the other vCPUs once a run has failed.
struct Aborted;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Runnable,
    Idle,
    Done,
}

struct St {
    running: usize,
    status: Vec<Status>,
    schedule: Schedule,
    rng: u64,
    next_choice: usize,
    decisions: Vec<(usize, usize)>,
    steps: u64,
    max_steps: u64,
    hash: u64,
    failure: Option<String>,
    finished: bool,
    last_progress: Instant,
}

impl St {
    fn next_rng(&mut self) -> u64 {
        // splitmix64: small, fast, and the same on every host.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn mix(&mut self, v: u64) {
        // FNV-1a over the 8 bytes of `v`.
        for b in v.to_le_bytes() {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The runnable vCPU that goes on after `me`, or `None` if none is.
    fn pick(&mut self) -> Option<usize> {
        let runnable: Vec<usize> = (0..self.status.len()).filter(|&v| self.status[v] == Status::Runnable).collect();
        let k = runnable.len();
        if k <= 1 {
            return runnable.first().copied();
        }
        let i = match &self.schedule {
            Schedule::Seed(_) => (self.next_rng() % k as u64) as usize,
            Schedule::Choices(c) => c.get(self.next_choice).map_or(0, |&x| x % k),
        };
        self.next_choice += 1;
        self.decisions.push((i, k));
        Some(runnable[i])
    }

    fn fail(&mut self, why: String) {
        if self.failure.is_none() {
            self.failure = Some(why);
        }
    }
}

struct Shared {
    st: Mutex<St>,
    cv: Condvar,
}

/// How long the running vCPU may go without reaching a point.
const WATCHDOG: Duration = Duration::from_secs(5);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, St> {
        // Poisoned only if a thread panicked while holding it: the data is plain.
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `me` holds the baton, the run failed or it is over.
    fn wait_turn<'a>(&'a self, mut st: MutexGuard<'a, St>, me: usize) -> MutexGuard<'a, St> {
        while st.running != me && st.failure.is_none() && !st.finished {
            let (g, _) = self.cv.wait_timeout(st, Duration::from_millis(50)).unwrap_or_else(|e| e.into_inner());
            st = g;
            if st.running != me && st.failure.is_none() && !st.finished && st.last_progress.elapsed() > WATCHDOG {
                let who = st.running;
                st.fail(format!(
                    "vCPU {who} ran {WATCHDOG:?} without reaching a yield point \
                     (a spin wait that never calls Cpus::relax?)"
                ));
                self.cv.notify_all();
            }
        }
        st
    }
}

thread_local! {
    static CTX: RefCell<Option<(Arc<Shared>, usize)>> = const { RefCell::new(None) };
}

fn ctx() -> Option<(Arc<Shared>, usize)> {
    CTX.with(|c| c.borrow().clone())
}

/// True when the calling thread is a vCPU of a scheduled run.
pub fn scheduled() -> bool {
    CTX.with(|c| c.borrow().is_some())
}

fn abort() -> ! {
    resume_unwind(Box::new(Aborted))
}

/// A preemption point: the schedule may run another vCPU before this one
/// goes on. A no-op outside a scheduled run (and while unwinding).
pub fn yield_now(point: Point) {
    if std::thread::panicking() {
        return;
    }
    let Some((shared, me)) = ctx() else { return };
    let mut st = shared.lock();
    if st.failure.is_some() {
        drop(st);
        abort();
    }
    st.steps += 1;
    st.last_progress = Instant::now();
    st.mix(((me as u64) << 8) | point as u64);
    if st.steps > st.max_steps {
        let max = st.max_steps;
        st.fail(format!("no end after {max} steps (a livelock, or a wait that never ends)"));
        shared.cv.notify_all();
        drop(st);
        abort();
    }
    let next = st.pick().unwrap_or(me);
    st.mix(next as u64);
    if next != me {
        st.running = next;
        shared.cv.notify_all();
        st = shared.wait_turn(st, me);
        if st.failure.is_some() {
            drop(st);
            abort();
        }
    }
}

/// Makes an idle `cpu` runnable again (a cross-call was posted to it).
pub(crate) fn kick(cpu: usize) {
    let Some((shared, _)) = ctx() else { return };
    let mut st = shared.lock();
    if st.status.get(cpu) == Some(&Status::Idle) {
        st.status[cpu] = Status::Runnable;
    }
}

/// The calling vCPU has nothing to do: it waits for a kick. False when the
/// run is over (every vCPU idle).
fn idle() -> bool {
    let Some((shared, me)) = ctx() else { return false };
    let mut st = shared.lock();
    if st.failure.is_some() {
        drop(st);
        abort();
    }
    st.status[me] = Status::Idle;
    st.mix(((me as u64) << 8) | Point::Idle as u64);
    match st.pick() {
        None => {
            st.finished = true;
            shared.cv.notify_all();
            false
        }
        Some(next) => {
            st.running = next;
            st.last_progress = Instant::now();
            shared.cv.notify_all();
            st = shared.wait_turn(st, me);
            if st.failure.is_some() {
                drop(st);
                abort();
            }
            !st.finished
        }
    }
}

/// State shared by the vCPUs of one run: it must say which [`ModelCpus`]
/// delivers their cross-calls.
pub trait SmpState: Sync {
    /// The vCPUs' cross-call and event state.
    fn cpus(&self) -> &ModelCpus;
}

impl SmpState for ModelCpus {
    fn cpus(&self) -> &ModelCpus {
        self
    }
}

/// A vCPU body: its id and the shared state; `Err` fails the run.
pub type Body<'a, S> = dyn Fn(usize, &S) -> Result<(), String> + Sync + 'a;

/// What one run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// Points passed.
    pub steps: u64,
    /// A hash of every (vCPU, point, next vCPU): equal for equal interleavings.
    pub trace_hash: u64,
    /// Each choice made: (index picked, runnable vCPUs).
    pub decisions: Vec<(usize, usize)>,
    /// Why the run failed (the first failure), if it did.
    pub failure: Option<String>,
}

/// Runs `body` on `vcpus` vCPU threads under `schedule`, each thread as its
/// vCPU ([`crate::vcpu::current`]), one at a time.
pub fn run_once<S: SmpState>(vcpus: usize, schedule: Schedule, max_steps: u64, state: &S, body: &Body<'_, S>) -> Run {
    let seed = match &schedule {
        Schedule::Seed(s) => *s,
        Schedule::Choices(_) => 0,
    };
    let shared = Arc::new(Shared {
        st: Mutex::new(St {
            running: 0,
            status: vec![Status::Runnable; vcpus],
            schedule,
            rng: seed,
            next_choice: 0,
            decisions: Vec::new(),
            steps: 0,
            max_steps,
            hash: 0xcbf2_9ce4_8422_2325,
            failure: None,
            finished: vcpus == 0,
            last_progress: Instant::now(),
        }),
        cv: Condvar::new(),
    });
    {
        let mut st = shared.lock();
        st.running = st.pick().unwrap_or(0);
        let first = st.running as u64;
        st.mix(first);
    }
    std::thread::scope(|s| {
        for id in 0..vcpus {
            let shared = shared.clone();
            s.spawn(move || vcpu_thread(shared, id, state, body));
        }
    });
    let st = shared.lock();
    Run { steps: st.steps, trace_hash: st.hash, decisions: st.decisions.clone(), failure: st.failure.clone() }
}

fn vcpu_thread<S: SmpState>(shared: Arc<Shared>, id: usize, state: &S, body: &Body<'_, S>) {
    crate::vcpu::set_current(id);
    CTX.with(|c| *c.borrow_mut() = Some((shared.clone(), id)));
    let st = shared.wait_turn(shared.lock(), id);
    let go = st.failure.is_none() && !st.finished;
    drop(st);
    if go {
        let r = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
            body(id, state)?;
            loop {
                state.cpus().deliver();
                if !idle() {
                    return Ok(());
                }
            }
        }));
        let why = match r {
            Ok(Ok(())) => None,
            Ok(Err(msg)) => Some(format!("vCPU {id}: {msg}")),
            Err(p) if p.is::<Aborted>() => None,
            Err(p) => Some(format!("vCPU {id} panicked: {}", panic_message(&*p))),
        };
        let mut st = shared.lock();
        if let Some(why) = why {
            st.fail(why);
        }
        drop(st);
    }
    let mut st = shared.lock();
    st.status[id] = Status::Done;
    if st.running == id && !st.finished {
        match st.pick() {
            Some(next) => st.running = next,
            None => st.finished = true,
        }
    }
    shared.cv.notify_all();
    drop(st);
    CTX.with(|c| *c.borrow_mut() = None);
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        String::from("(non-string panic)")
    }
}

/// The seeds a test sweeps: `0..default`, or `0..N` with
/// `PVOPS_SMP_SEEDS=N` in the environment (a bigger sweep, off CI).
pub fn seed_range(default: u64) -> Range<u64> {
    let n = std::env::var("PVOPS_SMP_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    0..n
}

/// The first failing run of an exploration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Its seed (replay it with [`Schedule::Seed`]); in an exhaustive
    /// exploration, the run's number.
    pub seed: u64,
    /// In an exhaustive exploration, the choices that replay it
    /// ([`Schedule::Choices`]); empty for a seeded run.
    pub choices: Vec<usize>,
    /// Why it failed.
    pub message: String,
    /// Points passed before the failure.
    pub steps: u64,
    /// Its trace hash.
    pub trace_hash: u64,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seed {} (after {} steps, trace {:#x}): {}", self.seed, self.steps, self.trace_hash, self.message)?;
        if !self.choices.is_empty() {
            write!(f, " [choices {:?}]", self.choices)?;
        }
        Ok(())
    }
}

/// What an exploration that found nothing covered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Explored {
    /// Runs made.
    pub runs: u64,
    /// Points passed in all runs.
    pub steps: u64,
    /// Distinct interleavings seen (by trace hash).
    pub distinct: usize,
    /// An exhaustive exploration ran every interleaving (within its bound).
    pub complete: bool,
}

/// Runs a body over many schedules, with fresh state for each.
#[derive(Clone, Debug)]
pub struct Explorer {
    vcpus: usize,
    seeds: Range<u64>,
    max_steps: u64,
}

impl Explorer {
    /// `vcpus` vCPUs, seeds `0..200` (or `PVOPS_SMP_SEEDS`), at most
    /// 200 000 points a run.
    pub fn new(vcpus: usize) -> Self {
        Explorer { vcpus, seeds: seed_range(200), max_steps: 200_000 }
    }

    /// Sweeps these seeds.
    pub fn seeds(mut self, seeds: Range<u64>) -> Self {
        self.seeds = seeds;
        self
    }

    /// Fails a run after this many points.
    pub fn max_steps(mut self, max_steps: u64) -> Self {
        self.max_steps = max_steps;
        self
    }

    /// For each seed: `setup(seed)` builds fresh state, every vCPU runs
    /// `body`, then `check` (on the calling thread, as vCPU 0, outside the
    /// schedule) judges the end state; it owns the state, so it may tear it
    /// down. The first failing seed is the error.
    pub fn run<S: SmpState>(
        &self,
        setup: impl Fn(u64) -> S,
        body: impl Fn(usize, &S) -> Result<(), String> + Sync,
        check: impl Fn(S) -> Result<(), String>,
    ) -> Result<Explored, Failure> {
        let mut out = Explored::default();
        let mut hashes = std::collections::HashSet::new();
        for seed in self.seeds.clone() {
            let state = setup(seed);
            let run = run_once(self.vcpus, Schedule::Seed(seed), self.max_steps, &state, &body);
            let failure = match run.failure.clone() {
                Some(f) => Some(f),
                None => crate::vcpu::on_vcpu(0, || check(state)).err(),
            };
            if let Some(message) = failure {
                return Err(Failure {
                    seed,
                    choices: Vec::new(),
                    message,
                    steps: run.steps,
                    trace_hash: run.trace_hash,
                });
            }
            out.runs += 1;
            out.steps += run.steps;
            hashes.insert(run.trace_hash);
        }
        out.distinct = hashes.len();
        Ok(out)
    }
}

impl Explorer {
    /// Every interleaving, depth first, up to `max_runs` runs (stateless
    /// model checking): each run follows a [`Schedule::Choices`] list; the
    /// next one changes the last choice that still has an untried branch.
    /// `Explored::complete` says whether the tree was exhausted. Only for
    /// small bodies: the count grows exponentially with their points.
    pub fn run_all<S: SmpState>(
        &self,
        max_runs: u64,
        setup: impl Fn(u64) -> S,
        body: impl Fn(usize, &S) -> Result<(), String> + Sync,
        check: impl Fn(S) -> Result<(), String>,
    ) -> Result<Explored, Failure> {
        let mut out = Explored::default();
        let mut hashes = std::collections::HashSet::new();
        let mut choices: Vec<usize> = Vec::new();
        while out.runs < max_runs {
            let state = setup(out.runs);
            let run = run_once(self.vcpus, Schedule::Choices(choices.clone()), self.max_steps, &state, &body);
            let failure = match run.failure.clone() {
                Some(f) => Some(f),
                None => crate::vcpu::on_vcpu(0, || check(state)).err(),
            };
            if let Some(message) = failure {
                let taken = run.decisions.iter().map(|&(i, _)| i).collect();
                return Err(Failure {
                    seed: out.runs,
                    choices: taken,
                    message,
                    steps: run.steps,
                    trace_hash: run.trace_hash,
                });
            }
            out.runs += 1;
            out.steps += run.steps;
            hashes.insert(run.trace_hash);
            // Backtrack: the deepest choice with an untried branch.
            let Some(i) = run.decisions.iter().rposition(|&(idx, k)| idx + 1 < k) else {
                out.complete = true;
                break;
            };
            choices = run.decisions[..i].iter().map(|&(idx, _)| idx).collect();
            choices.push(run.decisions[i].0 + 1);
        }
        out.distinct = hashes.len();
        Ok(out)
    }
}

/// [`Explorer::run`] with `vcpus` vCPUs over `seeds`.
pub fn explore<S: SmpState>(
    vcpus: usize,
    seeds: Range<u64>,
    setup: impl Fn(u64) -> S,
    body: impl Fn(usize, &S) -> Result<(), String> + Sync,
    check: impl Fn(S) -> Result<(), String>,
) -> Result<Explored, Failure> {
    Explorer::new(vcpus).seeds(seeds).run(setup, body, check)
}
