//! The deterministic scheduler: one vCPU thread runs at a time, a seed
//! fixes the interleaving, races are found within a few seeds, cross-calls
//! are delivered at the target's preemption points only while its events are
//! unmasked, and waits are bounded.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use pvops::{CpuMask, Cpus, PvError};
use pvops_model::sched::{run_once, yield_now, Body};
use pvops_model::{explore, vcpu, Explorer, ModelCpus, Point, Schedule, SmpState};

/// Two vCPUs and a shared counter.
struct Toy {
    cpus: ModelCpus,
    counter: AtomicU64,
    /// Where each vCPU is: `true` inside a "backend call".
    busy: Vec<AtomicBool>,
    /// Which vCPU ran each handler.
    ran_on: Mutex<Vec<usize>>,
    running: AtomicUsize,
}

impl SmpState for Toy {
    fn cpus(&self) -> &ModelCpus {
        &self.cpus
    }
}

fn toy(_seed: u64) -> Toy {
    Toy {
        cpus: ModelCpus::new(2),
        counter: AtomicU64::new(0),
        busy: (0..2).map(|_| AtomicBool::new(false)).collect(),
        ran_on: Mutex::new(Vec::new()),
        running: AtomicUsize::new(0),
    }
}

/// Increments with a load, a preemption point, then a store: a lost update
/// when the other vCPU runs in between.
fn racy_increments(_id: usize, t: &Toy) -> Result<(), String> {
    for _ in 0..3 {
        let v = t.counter.load(Ordering::SeqCst);
        t.cpus.yield_point(Point::Load);
        t.counter.store(v + 1, Ordering::SeqCst);
        t.cpus.yield_point(Point::Store);
    }
    Ok(())
}

fn six(t: Toy) -> Result<(), String> {
    match t.counter.load(Ordering::SeqCst) {
        6 => Ok(()),
        n => Err(format!("counter {n}, not 6: an update was lost")),
    }
}

#[test]
fn a_racy_read_yield_write_toy_is_found_and_its_seed_replays() {
    let f = explore(2, 0..50, toy, racy_increments, six).expect_err("a lost update within 50 seeds");
    assert!(f.message.contains("lost"), "{f}");
    // The failing seed replays to the same interleaving and the same failure.
    let replay = |_| {
        let t = toy(f.seed);
        let body: &Body<'_, Toy> = &racy_increments;
        let run = run_once(2, Schedule::Seed(f.seed), 10_000, &t, body);
        (run.trace_hash, six(t).is_err())
    };
    assert_eq!(replay(()), (f.trace_hash, true));
    assert_eq!(replay(()), (f.trace_hash, true));
}

#[test]
fn exhaustive_exploration_finds_the_race_and_covers_the_atomic_toy() {
    let f = Explorer::new(2).run_all(10_000, toy, racy_increments, six).expect_err("a lost update");
    assert!(f.message.contains("lost"), "{f}");
    // Its choices replay it.
    let t = toy(0);
    let body: &Body<'_, Toy> = &racy_increments;
    let run = run_once(2, Schedule::Choices(f.choices.clone()), 10_000, &t, body);
    assert_eq!((run.trace_hash, six(t).is_err()), (f.trace_hash, true));

    let atomic = |_id: usize, t: &Toy| {
        for _ in 0..2 {
            t.counter.fetch_add(3, Ordering::SeqCst);
            t.cpus.yield_point(Point::Store);
        }
        Ok(())
    };
    let twelve = |t: Toy| match t.counter.load(Ordering::SeqCst) {
        12 => Ok(()),
        n => Err(format!("{n}")),
    };
    let e = Explorer::new(2).run_all(10_000, toy, atomic, twelve).expect("no lost update");
    assert!(e.complete, "{e:?}");
    assert_eq!(e.distinct as u64, e.runs, "every run a different interleaving");
    assert!(e.runs >= 6, "at least C(4,2) orders of the four increments: {e:?}");
}

#[test]
fn the_same_toy_made_atomic_passes_every_seed() {
    let atomic = |_id: usize, t: &Toy| {
        for _ in 0..3 {
            t.counter.fetch_add(1, Ordering::SeqCst);
            t.cpus.yield_point(Point::Store);
        }
        Ok(())
    };
    let e = explore(2, 0..100, toy, atomic, six).expect("no lost update");
    assert_eq!(e.runs, 100);
    assert!(e.distinct > 10, "different seeds interleave differently: {e:?}");
}

#[test]
fn the_same_seed_gives_the_same_interleaving() {
    let trace = |seed| {
        let t = toy(seed);
        let body: &Body<'_, Toy> = &racy_increments;
        run_once(2, Schedule::Seed(seed), 10_000, &t, body)
    };
    for seed in 0..20 {
        let (a, b) = (trace(seed), trace(seed));
        assert_eq!(a, b, "seed {seed}");
        assert!(a.failure.is_none());
    }
    let hashes: std::collections::HashSet<u64> = (0..20).map(|s| trace(s).trace_hash).collect();
    assert!(hashes.len() > 5, "{} distinct interleavings of 20", hashes.len());
}

#[test]
fn a_choice_list_fixes_the_interleaving_too() {
    // Always pick the first runnable vCPU: vCPU 0 runs to its end first.
    let order = |choices: Vec<usize>| {
        let t = toy(0);
        let body = |id: usize, t: &Toy| {
            for _ in 0..2 {
                t.ran_on.lock().unwrap().push(id);
                t.cpus.yield_point(Point::Explicit);
            }
            Ok(())
        };
        let run = run_once(2, Schedule::Choices(choices), 1_000, &t, &body);
        assert_eq!(run.failure, None);
        let v = t.ran_on.lock().unwrap().clone();
        v
    };
    assert_eq!(order(vec![0; 8]), [0, 0, 1, 1], "always the first runnable");
    assert_eq!(order(vec![1; 8]), [1, 1, 0, 0], "always the second while there is one");
    assert_eq!(order(vec![1, 0, 1, 0, 1, 0]), [1, 0, 1, 0], "alternating");
}

#[test]
fn only_one_vcpu_runs_at_a_time() {
    let body = |_id: usize, t: &Toy| {
        for _ in 0..20 {
            if t.running.fetch_add(1, Ordering::SeqCst) != 0 {
                return Err(String::from("two vCPUs ran at once"));
            }
            std::thread::yield_now();
            t.running.fetch_sub(1, Ordering::SeqCst);
            yield_now(Point::Explicit);
        }
        Ok(())
    };
    explore(2, 0..20, toy, body, |_| Ok(())).expect("a baton");
}

#[test]
fn a_cross_call_runs_on_the_target_thread_at_its_points() {
    let body = |id: usize, t: &Toy| {
        if id == 0 {
            let f = || {
                t.ran_on.lock().unwrap().push(vcpu::current());
                Ok(())
            };
            t.cpus.call_on(CpuMask::first(2), &f).map_err(|e| e.to_string())?;
            if *t.ran_on.lock().unwrap() != [1] {
                return Err(String::from("handler did not run on vCPU 1 before call_on returned"));
            }
        } else {
            for _ in 0..5 {
                t.cpus.yield_point(Point::Explicit);
            }
        }
        Ok(())
    };
    let e = explore(2, 0..50, toy, body, |_| Ok(())).expect("delivered");
    assert_eq!(e.runs, 50);
}

#[test]
fn an_idle_vcpu_still_answers_cross_calls() {
    let body = |id: usize, t: &Toy| {
        if id == 0 {
            for _ in 0..5 {
                t.cpus.yield_point(Point::Explicit);
            }
            t.cpus.call_on(CpuMask::one(1), &|| Ok(())).map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    explore(2, 0..50, toy, body, |t: Toy| match t.cpus.counters().handled {
        1 => Ok(()),
        n => Err(format!("{n} handled")),
    })
    .expect("the idle vCPU took the IPI");
}

#[test]
fn two_vcpus_calling_each_other_do_not_deadlock() {
    let body = |id: usize, t: &Toy| {
        let _masked = pvops::EventsMasked::new(&t.cpus);
        t.cpus.call_on(CpuMask::one(1 - id), &|| Ok(())).map_err(|e| e.to_string())
    };
    explore(2, 0..50, toy, body, |_| Ok(())).expect("each serves the other while it waits");
}

#[test]
fn a_target_with_events_masked_for_good_times_out_naming_it() {
    let body = |id: usize, t: &Toy| {
        if id == 1 {
            t.cpus.mask_events();
            t.busy[1].store(true, Ordering::SeqCst);
            return Ok(());
        }
        while !t.busy[1].load(Ordering::SeqCst) {
            t.cpus.relax();
        }
        t.cpus.set_wait_limit(50);
        match t.cpus.call_on(CpuMask::one(1), &|| Ok(())) {
            Err(PvError::CpuTimeout { cpu: 1 }) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    };
    explore(2, 0..20, toy, body, |t: Toy| if t.cpus.pending(1) == 0 { Ok(()) } else { Err("left queued".into()) })
        .expect("a bounded wait");
}

/// The point of masking events around a backend call: a handler that runs
/// at a preemption point inside it sees the call half done.
fn backend_call(id: usize, t: &Toy, mask: bool) -> Result<(), String> {
    if id == 1 {
        for _ in 0..4 {
            let was = mask.then(|| t.cpus.mask_events());
            t.busy[1].store(true, Ordering::SeqCst);
            t.cpus.yield_point(Point::Hypercall);
            t.cpus.yield_point(Point::Store);
            t.busy[1].store(false, Ordering::SeqCst);
            if let Some(was) = was {
                t.cpus.restore_events(was);
            }
        }
        return Ok(());
    }
    let handler = || {
        let me = vcpu::current();
        if t.busy[me].load(Ordering::SeqCst) {
            Err(PvError::Reentered { cpu: me })
        } else {
            Ok(())
        }
    };
    for _ in 0..3 {
        t.cpus.call_on(CpuMask::one(1), &handler).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn a_handler_inside_an_unmasked_call_is_caught_and_masking_prevents_it() {
    let f = explore(2, 0..50, toy, |id, t| backend_call(id, t, false), |_| Ok(()))
        .expect_err("an interrupt lands inside the call");
    assert!(f.message.contains("re-entered on CPU 1"), "{f}");
    explore(2, 0..200, toy, |id, t| backend_call(id, t, true), |_| Ok(())).expect("never with events masked");
}

#[test]
fn a_livelock_is_a_failure_not_a_hang() {
    let body = |_id: usize, t: &Toy| loop {
        t.cpus.relax();
    };
    let f = Explorer::new(2).seeds(0..1).max_steps(1_000).run(toy, body, |_| Ok(())).expect_err("bounded");
    assert!(f.message.contains("no end after 1000 steps"), "{f}");
}

#[test]
fn a_panicking_vcpu_fails_the_run_and_the_others_stop() {
    let body = |id: usize, t: &Toy| {
        if id == 1 {
            t.cpus.yield_point(Point::Explicit);
            panic!("vCPU 1 gives up");
        }
        loop {
            t.cpus.yield_point(Point::Explicit);
        }
    };
    let f = explore(2, 0..5, toy, body, |_| Ok(())).expect_err("the panic is the failure");
    assert!(f.message.contains("vCPU 1 panicked: vCPU 1 gives up"), "{f}");
}
