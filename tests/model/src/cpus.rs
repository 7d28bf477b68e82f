//! [`pvops::Cpus`] for the models' vCPUs: the calling vCPU, which are online,
//! a per-vCPU event mask, and cross-calls.
//!
//! The mask stands for `cli` natively and for the vCPU's
//! `evtchn_upcall_mask` on Xen PV; a cross-call stands for a fixed-vector
//! IPI natively and for an event-channel IPI on Xen (`EVTCHNOP_send` on a
//! port bound with `bind_ipi`, smp-notes §3). Either way the target runs the
//! function in its handler, with events masked, at its next preemption point
//! while its events are unmasked, and the caller waits for it.
//!
//! In a scheduled run ([`crate::sched`]) the handler runs on the target's
//! thread at one of its points; the caller yields while it waits, serving
//! calls aimed at itself (two vCPUs calling each other do not deadlock), and
//! gives up after a bounded number of turns with [`PvError::CpuTimeout`].
//! Outside one (a single-threaded test), `call_on` runs each target's
//! handler at once on the calling thread, as that vCPU — or times out if
//! the target has events masked or was made unresponsive.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pvops::{CpuMask, Cpus, PvError, MAX_CPUS};

use crate::sched::{self, Point};
use crate::vcpu;

type CallFn<'a> = dyn Fn() -> Result<(), PvError> + Sync + 'a;

#[derive(Clone, Debug, PartialEq, Eq)]
enum CallState {
    Pending,
    Running,
    Done(Result<(), PvError>),
    Cancelled,
}

/// One cross-call to one vCPU.
struct Request {
    /// The caller's function, its lifetime erased: see `call_on`.
    f: *const CallFn<'static>,
    state: Mutex<CallState>,
}

// SAFETY: 1. `f` points at a `Sync` closure, so calling it from another
// thread is sound; 2. `call_on` does not return while a request that holds
// `f` can still be started or is running (pending ones are cancelled under
// the queue lock, running ones are waited for), so `f` outlives every use.
unsafe impl Send for Request {}
// SAFETY: as for `Send`; `state` is behind a mutex.
unsafe impl Sync for Request {}

impl Request {
    fn state(&self) -> MutexGuard<'_, CallState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Cross-call traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuCounters {
    /// `call_on` calls that sent at least one IPI.
    pub calls: u64,
    /// IPIs sent (one per target).
    pub ipis: u64,
    /// Handlers run.
    pub handled: u64,
    /// Targets that timed out.
    pub timeouts: u64,
}

/// The vCPUs of a model: `this_cpu` is [`vcpu::current`].
pub struct ModelCpus {
    n: usize,
    online: AtomicU64,
    unresponsive: AtomicU64,
    masked: Vec<AtomicBool>,
    queues: Mutex<Vec<VecDeque<Arc<Request>>>>,
    wait_limit: AtomicU64,
    calls: AtomicU64,
    ipis: AtomicU64,
    handled: AtomicU64,
    timeouts: AtomicU64,
    handler_errors: Mutex<Vec<(usize, PvError)>>,
}

impl std::fmt::Debug for ModelCpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModelCpus({} vCPUs, online {:?})", self.n, self.online())
    }
}

/// Turns a cross-call caller waits by default before [`PvError::CpuTimeout`].
pub const DEFAULT_WAIT_LIMIT: u64 = 20_000;

impl ModelCpus {
    /// `n` vCPUs (1..=64), all online, events unmasked.
    ///
    /// # Panics
    /// If `n` is 0 or above [`MAX_CPUS`] (test setup only).
    pub fn new(n: usize) -> Self {
        assert!((1..=MAX_CPUS).contains(&n), "a model has 1..={MAX_CPUS} vCPUs, not {n}");
        ModelCpus {
            n,
            online: AtomicU64::new(CpuMask::first(n).0),
            unresponsive: AtomicU64::new(0),
            masked: (0..n).map(|_| AtomicBool::new(false)).collect(),
            queues: Mutex::new(vec![VecDeque::new(); n]),
            wait_limit: AtomicU64::new(DEFAULT_WAIT_LIMIT),
            calls: AtomicU64::new(0),
            ipis: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            handler_errors: Mutex::new(Vec::new()),
        }
    }

    /// Number of vCPUs.
    pub fn count(&self) -> usize {
        self.n
    }

    /// The calling vCPU, checked against this model.
    ///
    /// # Panics
    /// If the thread runs as a vCPU this model does not have (test setup).
    pub fn index(&self) -> usize {
        let c = vcpu::current();
        assert!(c < self.n, "running as vCPU {c} on a model with {} vCPUs", self.n);
        c
    }

    fn queues(&self) -> MutexGuard<'_, Vec<VecDeque<Arc<Request>>>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `cpu` online or offline.
    pub fn set_online(&self, cpu: usize, online: bool) {
        let bit = CpuMask::one(cpu).0 & CpuMask::first(self.n).0;
        if online {
            self.online.fetch_or(bit, Ordering::SeqCst);
        } else {
            self.online.fetch_and(!bit, Ordering::SeqCst);
        }
    }

    /// Makes `cpu` ignore cross-calls (an IPI that is never acknowledged).
    pub fn set_unresponsive(&self, cpu: usize, unresponsive: bool) {
        let bit = CpuMask::one(cpu).0;
        if unresponsive {
            self.unresponsive.fetch_or(bit, Ordering::SeqCst);
        } else {
            self.unresponsive.fetch_and(!bit, Ordering::SeqCst);
        }
    }

    /// Turns a caller waits for its targets before giving up.
    pub fn set_wait_limit(&self, turns: u64) {
        self.wait_limit.store(turns, Ordering::SeqCst);
    }

    /// True while `cpu` has events masked.
    pub fn events_masked(&self, cpu: usize) -> bool {
        self.masked.get(cpu).is_some_and(|m| m.load(Ordering::SeqCst))
    }

    /// Cross-calls posted to `cpu` and not yet started.
    pub fn pending(&self, cpu: usize) -> usize {
        self.queues().get(cpu).map_or(0, VecDeque::len)
    }

    /// The traffic so far.
    pub fn counters(&self) -> CpuCounters {
        CpuCounters {
            calls: self.calls.load(Ordering::SeqCst),
            ipis: self.ipis.load(Ordering::SeqCst),
            handled: self.handled.load(Ordering::SeqCst),
            timeouts: self.timeouts.load(Ordering::SeqCst),
        }
    }

    /// Errors handlers returned, with the vCPU that ran them (e.g. a backend
    /// that refused with [`PvError::Reentered`]).
    pub fn handler_errors(&self) -> Vec<(usize, PvError)> {
        self.handler_errors.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A preemption point of the calling vCPU: the schedule may switch, then
    /// cross-calls pending for it are delivered if its events are unmasked.
    /// Every seam call of the models passes one.
    pub fn yield_point(&self, point: Point) {
        sched::yield_now(point);
        self.deliver();
    }

    /// Runs the calling vCPU's pending cross-calls, if its events are unmasked.
    pub fn deliver(&self) {
        if std::thread::panicking() {
            return;
        }
        let cpu = vcpu::current();
        if cpu >= self.n || self.events_masked(cpu) {
            return;
        }
        self.run_pending(cpu);
    }

    /// Runs `cpu`'s pending calls on this thread (which runs as `cpu`), each
    /// with events masked, as a handler would; not if `cpu` is unresponsive.
    fn run_pending(&self, cpu: usize) {
        if CpuMask(self.unresponsive.load(Ordering::SeqCst)).contains(cpu) {
            return;
        }
        loop {
            let req = {
                let mut q = self.queues();
                let Some(req) = q.get_mut(cpu).and_then(VecDeque::pop_front) else { return };
                *req.state() = CallState::Running;
                req
            };
            let was = self.masked[cpu].swap(true, Ordering::SeqCst);
            // SAFETY: 1. `call_on` keeps `f` alive until this request is
            // Done (a Running request is waited for, never cancelled).
            let f = unsafe { &*req.f };
            let result = f();
            self.masked[cpu].store(was, Ordering::SeqCst);
            if let Err(e) = &result {
                self.handler_errors.lock().unwrap_or_else(|e| e.into_inner()).push((cpu, *e));
            }
            self.handled.fetch_add(1, Ordering::SeqCst);
            *req.state() = CallState::Done(result);
        }
    }
}

impl Cpus for ModelCpus {
    fn this_cpu(&self) -> usize {
        self.index()
    }

    fn online(&self) -> CpuMask {
        CpuMask(self.online.load(Ordering::SeqCst))
    }

    fn mask_events(&self) -> bool {
        // An interrupt may still arrive just before the `cli`.
        self.yield_point(Point::MaskEvents);
        let cpu = self.index();
        self.masked[cpu].swap(true, Ordering::SeqCst)
    }

    fn restore_events(&self, was_masked: bool) {
        let cpu = self.index();
        self.masked[cpu].store(was_masked, Ordering::SeqCst);
        // Unmasking delivers what is pending at once (Xen: the guest checks
        // `evtchn_upcall_pending` and forces the upcall; natively `sti`).
        self.yield_point(Point::RestoreEvents);
    }

    fn call_on(&self, cpus: CpuMask, f: &CallFn<'_>) -> Result<(), PvError> {
        let me = self.index();
        let targets = cpus.without(me);
        if let Some(cpu) = targets.iter().find(|&c| !self.online().contains(c)) {
            return Err(PvError::CpuOffline { cpu });
        }
        if targets.is_empty() {
            return Ok(());
        }
        // SAFETY: 1. only the lifetime is erased; 2. this function returns
        // only after every request holding the pointer is Done or was
        // Cancelled before any handler could start it (see `Request`).
        let f: *const CallFn<'static> = unsafe { std::mem::transmute::<&CallFn<'_>, &CallFn<'static>>(f) };
        let reqs: Vec<(usize, Arc<Request>)> =
            targets.iter().map(|c| (c, Arc::new(Request { f, state: Mutex::new(CallState::Pending) }))).collect();
        {
            let mut q = self.queues();
            for (c, r) in &reqs {
                q[*c].push_back(r.clone());
            }
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.ipis.fetch_add(reqs.len() as u64, Ordering::SeqCst);
        for (c, _) in &reqs {
            sched::kick(*c);
        }
        let limit = self.wait_limit.load(Ordering::SeqCst);
        let mut turns = 0u64;
        loop {
            // Serve calls aimed at this vCPU while waiting, masked or not.
            self.run_pending(me);
            let open = reqs.iter().filter(|(_, r)| matches!(*r.state(), CallState::Pending | CallState::Running));
            if open.count() == 0 {
                break;
            }
            if !sched::scheduled() {
                // No other thread will ever run them: deliver here, as each target.
                for (c, _) in &reqs {
                    if !self.events_masked(*c) {
                        vcpu::on_vcpu(*c, || self.run_pending(*c));
                    }
                }
            }
            turns += 1;
            if turns > limit || (!sched::scheduled() && turns > 1) {
                let mut q = self.queues();
                for (c, r) in &reqs {
                    let mut s = r.state();
                    if *s == CallState::Pending {
                        *s = CallState::Cancelled;
                        drop(s);
                        q[*c].retain(|x| !Arc::ptr_eq(x, r));
                    }
                }
                drop(q);
                // A running handler is waited for: it holds `f`.
                while reqs.iter().any(|(_, r)| *r.state() == CallState::Running) {
                    sched::yield_now(Point::CallWait);
                }
                break;
            }
            sched::yield_now(Point::CallWait);
        }
        let mut first_err = None;
        for (c, r) in &reqs {
            let s = r.state().clone();
            match s {
                CallState::Done(Ok(())) => {}
                CallState::Done(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                _ => {
                    self.timeouts.fetch_add(1, Ordering::SeqCst);
                    first_err.get_or_insert(PvError::CpuTimeout { cpu: *c });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn relax(&self) {
        self.yield_point(Point::Relax);
    }
}
