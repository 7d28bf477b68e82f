//! The frame allocator against a plain set of free frames (the test's own
//! model): after every step of a long pseudo-random sequence of range adds,
//! reservations, allocations, frees (good and bad) and metadata use, the
//! allocator agrees with the model on every frame, on the counts, and on
//! which calls fail. It hands out every free frame, each once, zeroed, and
//! reports each frame it gets back to the memory.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use kernel_glue::{FrameAllocator, FrameInfo};
use pvops::{MmServices, Pfn, PhysMem, PvError};

/// Sparse memory that remembers what the allocator told it.
#[derive(Default)]
struct Mem {
    /// Frames ever written; absent = all zero.
    words: Mutex<HashMap<u64, Vec<u64>>>,
    freed: Mutex<Vec<Pfn>>,
}

impl PhysMem for Mem {
    fn read_entry(&self, pfn: Pfn, index: usize) -> u64 {
        self.words.lock().unwrap().get(&pfn.0).map_or(0, |w| w[index])
    }
    fn write_entry(&self, pfn: Pfn, index: usize, value: u64) {
        self.words.lock().unwrap().entry(pfn.0).or_insert_with(|| vec![0; 512])[index] = value;
    }
    fn compare_exchange_entry(&self, pfn: Pfn, index: usize, current: u64, new: u64) -> Result<u64, u64> {
        let mut words = self.words.lock().unwrap();
        let w = words.entry(pfn.0).or_insert_with(|| vec![0; 512]);
        if w[index] != current {
            return Err(w[index]);
        }
        w[index] = new;
        Ok(current)
    }
    fn zero_frame(&self, pfn: Pfn) {
        self.words.lock().unwrap().remove(&pfn.0);
    }
    fn frame_freed(&self, pfn: Pfn) {
        self.freed.lock().unwrap().push(pfn);
    }
}

/// xorshift64: a fixed, reproducible sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn agree(frames: &FrameAllocator<'_>, free: &BTreeSet<u64>, nr: u64, step: usize) {
    assert_eq!(frames.free_count(), free.len() as u64, "step {step}: free count");
    for f in 0..nr + 70 {
        assert_eq!(frames.is_free(Pfn(f)), free.contains(&f), "step {step}: frame {f}");
    }
}

/// One run over `nr` frames (a multiple of 64 or not: the bitmap's last word
/// full or partial).
fn run(nr: u64, seed: u64) {
    let mem = Mem::default();
    let frames = FrameAllocator::new(&mem, nr);
    assert_eq!(frames.nr_frames(), nr);
    let mut free = BTreeSet::new();
    let mut used: BTreeSet<u64> = BTreeSet::new(); // handed out by alloc
    let mut rng = Rng(seed);
    let mut allocations = 0;
    agree(&frames, &free, nr, 0);
    frames.init_metadata();
    for step in 1..2000 {
        match rng.below(10) {
            0 => {
                // Ranges reach past the end and overlap what is free already.
                let start = rng.below(nr + 10);
                let count = rng.below(80);
                frames.add_free_range(Pfn(start), count);
                for f in start..(start + count).min(nr) {
                    if !used.contains(&f) {
                        free.insert(f);
                    } else {
                        // Adding an allocated frame frees it (the caller's
                        // word is law); keep the model's books the same way.
                        used.remove(&f);
                        free.insert(f);
                    }
                }
            }
            1 => {
                // Free, allocated, or out of range (ignored), twice in a row.
                let f = rng.below(nr + 2);
                frames.reserve(Pfn(f));
                frames.reserve(Pfn(f));
                free.remove(&f);
                used.remove(&f);
            }
            2..=5 => {
                let r = frames.alloc_zeroed_frame();
                match r {
                    Ok(p) => {
                        assert!(free.remove(&p.0), "step {step}: {p:?} was not free");
                        used.insert(p.0);
                        allocations += 1;
                        for i in [0, 1, 255, 511] {
                            assert_eq!(mem.read_entry(p, i), 0, "step {step}: {p:?} not zeroed");
                        }
                        assert_eq!(frames.info(p), Some(FrameInfo::default()), "step {step}: fresh metadata");
                        mem.write_entry(p, 255, 0xdead);
                        frames.set_private(p, step as u64).expect("private");
                    }
                    Err(e) => {
                        assert_eq!(e, PvError::OutOfMemory, "step {step}");
                        assert!(free.is_empty(), "step {step}: out of memory with {} free", free.len());
                    }
                }
            }
            6..=8 => {
                // A frame in use, a free one, or one past the end.
                let pick = match rng.below(3) {
                    0 if !used.is_empty() => *used.iter().nth(rng.below(used.len() as u64) as usize).expect("used"),
                    _ => rng.below(nr + 3),
                };
                let was_used = !free.contains(&pick) && pick < nr;
                let pinned = was_used && rng.below(4) == 0;
                if pinned {
                    frames.set_pinned(Pfn(pick), true).expect("pin");
                    let r = frames.free_frame(Pfn(pick));
                    assert!(matches!(r, Err(PvError::WrongState { .. })), "step {step}: freed a pinned frame");
                    frames.set_pinned(Pfn(pick), false).expect("unpin");
                }
                let before = mem.freed.lock().unwrap().len();
                let r = frames.free_frame(Pfn(pick));
                if was_used {
                    assert_eq!(r, Ok(()), "step {step}: free {pick}");
                    free.insert(pick);
                    used.remove(&pick);
                    assert_eq!(mem.freed.lock().unwrap()[before..], [Pfn(pick)], "step {step}: reported to memory");
                    assert_eq!(frames.info(Pfn(pick)), Some(FrameInfo::default()), "step {step}: metadata cleared");
                } else {
                    assert_eq!(r, Err(PvError::BadFrame { pfn: Pfn(pick) }), "step {step}: bad free of {pick}");
                    assert_eq!(mem.freed.lock().unwrap().len(), before, "step {step}: nothing reported");
                }
            }
            _ => {
                // Drain: every free frame comes out, once each, then OOM.
                let mut got = BTreeSet::new();
                while let Ok(p) = frames.alloc_zeroed_frame() {
                    assert!(got.insert(p.0), "step {step}: {p:?} twice");
                    allocations += 1;
                }
                assert_eq!(got, free, "step {step}: drained exactly the free frames");
                used.extend(got);
                free.clear();
            }
        }
        assert_eq!(frames.allocations(), allocations, "step {step}: allocation count");
        agree(&frames, &free, nr, step);
    }
}

#[test]
fn the_allocator_agrees_with_a_set_of_free_frames_at_every_step() {
    for (nr, seed) in [(256, 0x5eed), (200, 0xfeed), (64, 0xbeef), (320, 0x1234)] {
        run(nr, seed);
    }
}

/// `put_frame` of the last reference frees the frame exactly as
/// `free_frame` does (its own path since the allocator's fast free): the
/// frame counts as free, is reported to the memory once, its metadata is
/// cleared; a pinned frame or one already free is refused and keeps its
/// reference, counts and report untouched.
#[test]
fn put_of_the_last_reference_frees_as_free_frame_does() {
    let mem = Mem::default();
    let frames = FrameAllocator::new(&mem, 64);
    frames.add_free_range(Pfn(0), 64);
    frames.init_metadata();
    let f = frames.alloc_zeroed_frame().expect("frame");
    frames.set_private(f, 7).expect("private");
    assert_eq!(frames.get_frame(f), Ok(2));
    assert_eq!(frames.put_frame(f), Ok(false), "another reference holds it");
    assert_eq!((frames.refcount(f), frames.is_free(f), frames.free_count()), (1, false, 63));

    frames.set_pinned(f, true).expect("pin");
    assert!(matches!(frames.put_frame(f), Err(PvError::WrongState { .. })), "a pinned frame is not freed");
    assert_eq!((frames.refcount(f), frames.is_free(f), frames.free_count()), (1, false, 63));
    assert!(mem.freed.lock().unwrap().is_empty(), "nothing reported");
    frames.set_pinned(f, false).expect("unpin");

    assert_eq!(frames.put_frame(f), Ok(true), "the last reference frees it");
    assert_eq!((frames.refcount(f), frames.is_free(f), frames.free_count()), (0, true, 64));
    assert_eq!(frames.info(f), Some(FrameInfo::default()), "metadata cleared");
    assert_eq!(*mem.freed.lock().unwrap(), [f], "reported once");
    assert!(matches!(frames.put_frame(f), Err(PvError::WrongState { .. })), "nobody holds it now");

    // Freed behind its holder's back (the caller's word is law): the last
    // put finds it free already, refuses, and keeps the reference.
    let g = frames.alloc_zeroed_frame().expect("frame");
    frames.add_free_range(g, 1);
    assert_eq!(frames.put_frame(g), Err(PvError::BadFrame { pfn: g }));
    assert_eq!((frames.refcount(g), frames.free_count()), (1, 64));
    assert_eq!(mem.freed.lock().unwrap().len(), 1, "nothing more reported");
}

/// The allocator's `Debug` gives its counts.
#[test]
fn allocator_debug_gives_free_and_total() {
    let mem = Mem::default();
    let frames = FrameAllocator::new(&mem, 64);
    frames.add_free_range(Pfn(16), 48);
    assert_eq!(format!("{frames:?}"), "FrameAllocator(48 of 64 free)");
    frames.alloc_zeroed_frame().expect("frame");
    assert_eq!(format!("{frames:?}"), "FrameAllocator(47 of 64 free)");
}

/// Allocation fault injection: the k-th allocation from now fails, once.
#[test]
fn injected_allocation_failure_hits_the_kth_allocation_once() {
    let mem = Mem::default();
    let frames = FrameAllocator::new(&mem, 64);
    frames.add_free_range(Pfn(0), 64);
    for k in 0..4 {
        frames.fail_allocation_after(Some(k));
        for i in 0..k {
            assert!(frames.injection_armed(), "k={k}: armed before allocation {i}");
            frames.alloc_zeroed_frame().expect("before the k-th");
        }
        assert_eq!(frames.alloc_zeroed_frame(), Err(PvError::OutOfMemory), "k={k}");
        assert!(!frames.injection_armed(), "k={k}: consumed");
        frames.alloc_zeroed_frame().expect("after");
    }
    frames.fail_allocation_after(Some(0));
    frames.fail_allocation_after(None);
    assert!(!frames.injection_armed());
    frames.alloc_zeroed_frame().expect("disarmed");
}

/// Per-frame metadata: refused before `init_metadata` (the early-boot path)
/// and past the last frame; afterwards each word reads back what was
/// written, per frame; a fresh allocation starts with default metadata.
#[test]
fn metadata_exists_only_after_init_and_reads_back_per_frame() {
    let mem = Mem::default();
    let frames = FrameAllocator::new(&mem, 64);
    frames.add_free_range(Pfn(0), 64);
    let early = PvError::WrongState { what: "frame metadata not initialised" };
    assert!(!frames.has_metadata());
    assert_eq!(frames.private(Pfn(3)), Err(early));
    assert_eq!(frames.set_private(Pfn(3), 1), Err(early));
    assert_eq!(frames.is_pinned(Pfn(3)), Err(early));
    assert_eq!(frames.set_pinned(Pfn(3), true), Err(early));
    assert_eq!(frames.info(Pfn(3)), None);
    frames.init_metadata();
    assert!(frames.has_metadata());
    for f in [3u64, 4, 63] {
        assert_eq!((frames.private(Pfn(f)), frames.is_pinned(Pfn(f))), (Ok(0), Ok(false)), "{f}");
    }
    frames.set_private(Pfn(3), 0xabc).expect("set");
    frames.set_pinned(Pfn(4), true).expect("pin");
    assert_eq!((frames.private(Pfn(3)), frames.is_pinned(Pfn(3))), (Ok(0xabc), Ok(false)));
    assert_eq!((frames.private(Pfn(4)), frames.is_pinned(Pfn(4))), (Ok(0), Ok(true)));
    assert_eq!(frames.info(Pfn(4)), Some(FrameInfo { private: 0, pinned: true }));
    // A second init keeps what is there.
    frames.init_metadata();
    assert_eq!(frames.private(Pfn(3)), Ok(0xabc));
    let bad = Err(PvError::BadFrame { pfn: Pfn(64) });
    assert_eq!(frames.private(Pfn(64)), bad);
    assert_eq!(frames.is_pinned(Pfn(64)), bad.map(|_: u64| false));
    assert_eq!(frames.info(Pfn(64)), None);
}
