//! Whole-frame zeroing and copying on both models: exactly the frame is
//! written, under one lock, and the result equals what the word-by-word
//! defaults of `PhysMem` (512 loads and stores through the seam) leave —
//! including the frames and the A/D race a test arms around them. The
//! expected words are the test's own, never read back from the operation.

use pvops::pte::flags;
use pvops::{Mfn, Pfn, PhysMem, ENTRIES_PER_TABLE};
use pvops_model::xen::XenModel;
use pvops_model::Machine;

const FRAMES: u64 = 6;

/// A word unique to (frame, index), never zero.
fn word(frame: u64, index: usize) -> u64 {
    0x0100_0000_0000_0000 | frame << 20 | (index as u64) << 3 | 1
}

/// The test's own memory: frame `f` holds `word(f, i)`.
fn expected() -> Vec<[u64; ENTRIES_PER_TABLE]> {
    (0..FRAMES).map(|f| core::array::from_fn(|i| word(f, i))).collect()
}

fn filled_machine() -> Machine {
    let m = Machine::new(FRAMES);
    for f in 0..FRAMES {
        for i in 0..ENTRIES_PER_TABLE {
            assert!(m.write(f, i, word(f, i)));
        }
    }
    m
}

fn machine_words(m: &Machine) -> Vec<[u64; ENTRIES_PER_TABLE]> {
    (0..FRAMES).map(|f| core::array::from_fn(|i| m.read(f, i).unwrap())).collect()
}

/// The first word where `a` and `b` differ, as (frame, index, a, b).
fn first_diff(a: &[[u64; ENTRIES_PER_TABLE]], b: &[[u64; ENTRIES_PER_TABLE]]) -> Option<(usize, usize, u64, u64)> {
    a.iter()
        .zip(b)
        .enumerate()
        .find_map(|(f, (x, y))| (0..ENTRIES_PER_TABLE).find(|&i| x[i] != y[i]).map(|i| (f, i, x[i], y[i])))
}

/// Only the required word methods: `PhysMem`'s defaults for the rest.
struct WordByWord<'a, M: PhysMem>(&'a M);
impl<M: PhysMem> PhysMem for WordByWord<'_, M> {
    fn read_entry(&self, pfn: Pfn, index: usize) -> u64 {
        self.0.read_entry(pfn, index)
    }
    fn write_entry(&self, pfn: Pfn, index: usize, value: u64) {
        self.0.write_entry(pfn, index, value)
    }
    fn compare_exchange_entry(&self, pfn: Pfn, index: usize, current: u64, new: u64) -> Result<u64, u64> {
        self.0.compare_exchange_entry(pfn, index, current, new)
    }
}

#[test]
fn machine_copy_frame_writes_exactly_the_destination() {
    let m = filled_machine();
    let mut want = expected();
    PhysMem::copy_frame(&m, Pfn(1), Pfn(4));
    want[4] = want[1];
    assert_eq!(first_diff(&machine_words(&m), &want), None);
    // From a never-written frame (reads as zeros) and onto itself.
    let m2 = Machine::new(FRAMES);
    m2.write(2, 7, 0x55);
    PhysMem::copy_frame(&m2, Pfn(3), Pfn(2));
    assert_eq!(m2.read(2, 7), Some(0));
    PhysMem::copy_frame(&m, Pfn(4), Pfn(4));
    assert_eq!(first_diff(&machine_words(&m), &want), None);
    // Out of range: a destination is not written, a source reads as zeros.
    PhysMem::copy_frame(&m, Pfn(0), Pfn(FRAMES));
    assert_eq!(first_diff(&machine_words(&m), &want), None);
    PhysMem::copy_frame(&m, Pfn(FRAMES), Pfn(5));
    want[5] = [0; ENTRIES_PER_TABLE];
    assert_eq!(first_diff(&machine_words(&m), &want), None);
}

#[test]
fn machine_zero_frame_writes_exactly_the_frame() {
    let m = filled_machine();
    let mut want = expected();
    PhysMem::zero_frame(&m, Pfn(3));
    want[3] = [0; ENTRIES_PER_TABLE];
    assert_eq!(first_diff(&machine_words(&m), &want), None);
}

#[test]
fn machine_bulk_equals_word_by_word_with_an_a_d_race_armed() {
    let bulk = filled_machine();
    let words = filled_machine();
    let slow = WordByWord(&words);
    let steps: [(u64, u64); 6] = [(0, 3), (3, 1), (2, 2), (FRAMES, 0), (4, FRAMES), (5, 4)];
    for (n, (from, to)) in steps.into_iter().enumerate() {
        // "The hardware" sets A/D in a source word right after it is read
        // (not for a copy onto itself: word by word, the store of the word
        // as read then drops the bits, while the bulk copy keeps them; nor
        // for a frame the machine does not have).
        if from != to && from < FRAMES {
            let armed = (from, (n * 97) % ENTRIES_PER_TABLE, flags::ACCESSED | flags::DIRTY);
            bulk.touch_after_guest_read(armed.0, armed.1, armed.2);
            words.touch_after_guest_read(armed.0, armed.1, armed.2);
        }
        PhysMem::copy_frame(&bulk, Pfn(from), Pfn(to));
        slow.copy_frame(Pfn(from), Pfn(to));
        assert_eq!(first_diff(&machine_words(&bulk), &machine_words(&words)), None, "copy {from} -> {to}");
        assert_eq!(bulk.touch_pending(), words.touch_pending(), "copy {from} -> {to}");
        PhysMem::zero_frame(&bulk, Pfn(n as u64 % FRAMES));
        slow.zero_frame(Pfn(n as u64 % FRAMES));
        assert_eq!(first_diff(&machine_words(&bulk), &machine_words(&words)), None, "zero {n}");
    }
}

// ---- the Xen model: through the guest's direct map ----

fn xen() -> &'static XenModel {
    let m = XenModel::leaked(32, 5);
    for p in 8..8 + FRAMES {
        for i in 0..ENTRIES_PER_TABLE {
            PhysMem::write_entry(m, Pfn(p), i, word(p - 8, i));
        }
    }
    m
}

fn xen_words(m: &XenModel) -> Vec<[u64; ENTRIES_PER_TABLE]> {
    (8..8 + FRAMES).map(|p| core::array::from_fn(|i| m.read_guest(Pfn(p), i))).collect()
}

#[test]
fn xen_copy_and_zero_frame_write_exactly_the_frame_through_the_direct_map() {
    let m = xen();
    let mut want = expected();
    PhysMem::copy_frame(m, Pfn(9), Pfn(12));
    want[4] = want[1];
    assert_eq!(first_diff(&xen_words(m), &want), None);
    PhysMem::zero_frame(m, Pfn(10));
    want[2] = [0; ENTRIES_PER_TABLE];
    assert_eq!(first_diff(&xen_words(m), &want), None);
    // The other frames of the machine: untouched (zero since boot).
    for p in (0..m.nr_pages()).filter(|p| !(8..8 + FRAMES).contains(p) && Pfn(*p) != m.pt_base()) {
        let mfn: Mfn = m.mfn_of(Pfn(p)).unwrap();
        assert!((0..ENTRIES_PER_TABLE).all(|i| m.read_machine(mfn, i) == 0), "pfn {p} written");
    }
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

#[test]
fn xen_copy_into_a_pinned_table_faults_once_and_writes_nothing() {
    let m = xen();
    let root = m.pt_base();
    let before: Vec<u64> = (0..ENTRIES_PER_TABLE).map(|i| m.read_guest(root, i)).collect();
    PhysMem::copy_frame(m, Pfn(8), root);
    let after: Vec<u64> = (0..ENTRIES_PER_TABLE).map(|i| m.read_guest(root, i)).collect();
    assert_eq!(before, after, "the read-only slot was written through");
    let v = m.violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].write && v[0].pfn == root && v[0].index.is_none(), "{v:?}");
    // Reading a pinned table is fine: it may be the source.
    m.clear_violations();
    PhysMem::copy_frame(m, root, Pfn(13));
    assert!((0..ENTRIES_PER_TABLE).all(|i| m.read_guest(Pfn(13), i) == before[i]));
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

#[test]
fn xen_bulk_equals_word_by_word() {
    let bulk = xen();
    let words = xen();
    let slow = WordByWord(words);
    for (n, (from, to)) in [(8u64, 11u64), (11, 9), (10, 10), (13, 8), (9, 12)].into_iter().enumerate() {
        PhysMem::copy_frame(bulk, Pfn(from), Pfn(to));
        slow.copy_frame(Pfn(from), Pfn(to));
        assert_eq!(first_diff(&xen_words(bulk), &xen_words(words)), None, "copy {from} -> {to}");
        let z = Pfn(8 + (n as u64 * 5) % FRAMES);
        PhysMem::zero_frame(bulk, z);
        slow.zero_frame(z);
        assert_eq!(first_diff(&xen_words(bulk), &xen_words(words)), None, "zero {z:?}");
    }
    assert!(bulk.violations().is_empty() && words.violations().is_empty());
}

#[test]
fn machine_copy_into_a_frame_the_loaded_tables_reach_is_a_reuse_hazard() {
    use pvops_model::TlbHazard;
    let m = Machine::new(8);
    // Root 2 maps table 3 (user, writable); frame 4 is reached by nothing.
    m.set_cr3(Pfn(2).addr());
    m.write(2, 0, Pfn(3).addr() | flags::PRESENT | flags::WRITABLE | flags::USER);
    PhysMem::copy_frame(&m, Pfn(5), Pfn(4));
    assert_eq!(m.tlb_violations(), vec![], "a frame nothing reaches is fine");
    PhysMem::copy_frame(&m, Pfn(5), Pfn(3));
    let v = m.tlb_violations();
    assert!(v.len() == 1 && v[0].hazard == TlbHazard::Reused && v[0].frame == 3, "{v:?}");
}
