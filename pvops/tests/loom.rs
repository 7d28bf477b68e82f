//! Loom model of the boot-time selection cell: two CPUs racing to publish
//! and one reading lock-free. Exactly one publisher wins, the loser gets
//! `AlreadyInitialized`, and a reader sees nothing or the winner's whole value.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p pvops --test loom --release`.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use pvops::publish::{publish_for_loom, Cell};
use pvops::PvError;

#[derive(Debug, PartialEq)]
struct Value {
    name: &'static str,
    priority: i32,
}

static A: Value = Value { name: "a", priority: 1 };
static B: Value = Value { name: "b", priority: 2 };

#[test]
fn one_publisher_wins_and_readers_see_a_whole_value() {
    loom::model(|| {
        let cell: Arc<Cell<'static, Value>> = Arc::new(Cell::new());
        let (c1, c2, c3) = (cell.clone(), cell.clone(), cell.clone());
        let t1 = thread::spawn(move || publish_for_loom(&c1, &A).map(|v| v.name));
        let t2 = thread::spawn(move || publish_for_loom(&c2, &B).map(|v| v.name));
        let reader = thread::spawn(move || c3.get().map(|v| (v.name, v.priority)));
        let (r1, r2) = (t1.join().expect("t1"), t2.join().expect("t2"));
        let seen = reader.join().expect("reader");
        let winners: Vec<_> = [r1, r2].into_iter().filter_map(Result::ok).collect();
        assert_eq!(winners.len(), 1, "exactly one publisher wins: {r1:?} {r2:?}");
        for r in [r1, r2] {
            if let Err(e) = r {
                assert_eq!(e, PvError::AlreadyInitialized);
            }
        }
        let published = cell.get().expect("published");
        assert_eq!(published.name, winners[0]);
        if let Some((name, priority)) = seen {
            assert!((name, priority) == ("a", 1) || (name, priority) == ("b", 2), "torn value {name} {priority}");
        }
    });
}
