//! Whole-frame operations at the `PhysMem` seam: fork and the copy-on-write
//! fault copy each page with one `copy_frame` into a fresh frame not zeroed
//! first (no word-by-word traffic into it), on both backends, and the copies hold what the test wrote
//! (read back through the models' own user-mode page walks); the counting
//! seam the kernel's figures come from forwards the bulk operations whole.

use std::collections::HashMap;
use std::sync::Mutex;

use kernel_glue::{FaultFix, PageFlags};
use pvops::{Pfn, PhysMem};
use pvops_conformance::workload::CountingMem;
use pvops_integration::platform::{assert_invariants, boot_backend, platform_for, HostPlatform};

const VA: u64 = 0x40_0000;
const PAGES: u64 = 4;

/// Forwards to the platform's memory and records what reaches it.
struct Recording {
    inner: &'static dyn PhysMem,
    /// (from, to) of every `copy_frame`.
    copies: Mutex<Vec<(Pfn, Pfn)>>,
    /// Word stores per frame (`write_entry`).
    word_stores: Mutex<HashMap<u64, u64>>,
    /// Every frame `zero_frame` was given.
    zeroed: Mutex<Vec<Pfn>>,
}

impl PhysMem for Recording {
    fn read_entry(&self, pfn: Pfn, index: usize) -> u64 {
        self.inner.read_entry(pfn, index)
    }
    fn write_entry(&self, pfn: Pfn, index: usize, value: u64) {
        *self.word_stores.lock().unwrap().entry(pfn.0).or_default() += 1;
        self.inner.write_entry(pfn, index, value)
    }
    fn compare_exchange_entry(&self, pfn: Pfn, index: usize, current: u64, new: u64) -> Result<u64, u64> {
        self.inner.compare_exchange_entry(pfn, index, current, new)
    }
    fn zero_frame(&self, pfn: Pfn) {
        self.zeroed.lock().unwrap().push(pfn);
        self.inner.zero_frame(pfn)
    }
    fn copy_frame(&self, from: Pfn, to: Pfn) {
        self.copies.lock().unwrap().push((from, to));
        self.inner.copy_frame(from, to)
    }
    fn frame_freed(&self, pfn: Pfn) {
        self.inner.frame_freed(pfn)
    }
}

/// A word unique to (page, slot).
fn word(page: u64, slot: u64) -> u64 {
    0x5eed_0000_0000 | page << 16 | slot
}

/// Word `slot` of guest frame `pfn`, read from the model's memory (by mfn
/// under Xen), not through the code under test.
fn word_at(host: &HostPlatform, pfn: Pfn, slot: u64) -> u64 {
    match host.xen {
        Some(x) => x.read_guest(pfn, slot as usize),
        None => host.machine.read(pfn.0, slot as usize).expect("in range"),
    }
}

#[test]
fn fork_and_the_cow_fault_copy_each_page_whole_on_both_backends() {
    for desc in pvops::backends().into_iter().filter(|d| ["native", "xen64"].contains(&d.name)) {
        let name = desc.name;
        let mut host = platform_for(desc).expect("a platform");
        let rec: &'static Recording = Box::leak(Box::new(Recording {
            inner: host.mem,
            copies: Mutex::new(Vec::new()),
            word_stores: Mutex::new(HashMap::new()),
            zeroed: Mutex::new(Vec::new()),
        }));
        host.mem = rec;
        let booted = boot_backend(desc, &host).expect("boot");
        let mm = booted.mm;
        let a = mm.create().expect("create");
        let mut frames = Vec::new();
        for p in 0..PAGES {
            frames.push(mm.map(&a, VA + p * 0x1000, PageFlags::DATA).expect("map"));
            for slot in [0, 1, 255, 511] {
                mm.poke(&a, VA + p * 0x1000 + slot * 8, word(p, slot)).expect("poke");
            }
        }
        rec.copies.lock().unwrap().clear();
        rec.word_stores.lock().unwrap().clear();
        rec.zeroed.lock().unwrap().clear();

        let b = mm.fork(&a).expect("fork");
        let forked = std::mem::take(&mut *rec.copies.lock().unwrap());
        let copies = &forked;
        assert_eq!(copies.len() as u64, PAGES, "{name}: one copy per page: {copies:?}");
        for (p, &(from, to)) in copies.iter().enumerate() {
            assert_eq!(from, frames[p], "{name}: page {p} copied from the parent's frame");
            assert!(!frames.contains(&to), "{name}: into a new frame");
            let stores = rec.word_stores.lock().unwrap().get(&to.0).copied();
            assert_eq!(stores, None, "{name}: word stores into the copy of page {p}");
            assert!(!rec.zeroed.lock().unwrap().contains(&to), "{name}: page {p}'s copy zeroed first");
        }
        // The child's pages, read by user mode through the child's tables.
        mm.activate(&b).expect("activate child");
        for p in 0..PAGES {
            let got = host.oracle.user_access(VA + p * 0x1000, false).expect("child page readable");
            assert_eq!(got, copies[p as usize].1, "{name}: the child maps the copy");
            for slot in [0, 1, 255, 511] {
                assert_eq!(word_at(&host, got, slot), word(p, slot), "{name}: page {p} slot {slot}");
            }
        }

        // Copy-on-write: a write fault in the child copies the page whole.
        let c = mm.fork_cow(&b).expect("fork_cow");
        mm.activate(&c).expect("activate cow child");
        rec.word_stores.lock().unwrap().clear();
        rec.zeroed.lock().unwrap().clear();
        assert_eq!(mm.handle_fault(&c, VA + 0x1000, true), Ok(FaultFix::CopiedOnWrite), "{name}");
        let copies = std::mem::take(&mut *rec.copies.lock().unwrap());
        assert_eq!(copies.len(), 1, "{name}: {copies:?}");
        let (from, to) = copies[0];
        assert_eq!(from, forked[1].1, "{name}: from the shared frame");
        assert_eq!(rec.word_stores.lock().unwrap().get(&to.0), None, "{name}: word stores into the COW copy");
        assert!(!rec.zeroed.lock().unwrap().contains(&to), "{name}: the COW copy zeroed first");
        let got = host.oracle.user_access(VA + 0x1000, true).expect("writable after the fault");
        assert_eq!(got, to, "{name}: the faulting space maps the copy");
        for slot in [0, 1, 255, 511] {
            assert_eq!(word_at(&host, got, slot), word(1, slot), "{name}: COW copy slot {slot}");
        }
        mm.activate_init().expect("init");
        for s in [c, b, a] {
            mm.exit(s).map_err(|(e, _)| e).expect("exit");
        }
        assert_invariants(name, &host, &booted, "after exit");
    }
}

/// A memory that only records which method reached it.
#[derive(Default)]
struct Calls(Mutex<Vec<&'static str>>);

impl PhysMem for Calls {
    fn read_entry(&self, _: Pfn, _: usize) -> u64 {
        self.0.lock().unwrap().push("read_entry");
        0
    }
    fn write_entry(&self, _: Pfn, _: usize, _: u64) {
        self.0.lock().unwrap().push("write_entry");
    }
    fn compare_exchange_entry(&self, _: Pfn, _: usize, _: u64, _: u64) -> Result<u64, u64> {
        self.0.lock().unwrap().push("compare_exchange_entry");
        Ok(0)
    }
    fn zero_frame(&self, _: Pfn) {
        self.0.lock().unwrap().push("zero_frame");
    }
    fn copy_frame(&self, _: Pfn, _: Pfn) {
        self.0.lock().unwrap().push("copy_frame");
    }
}

#[test]
fn the_counting_seam_forwards_whole_frame_operations_whole_and_counts_a_store_per_word() {
    let inner: &'static Calls = Box::leak(Box::default());
    let counting = CountingMem::new(inner);
    counting.copy_frame(Pfn(1), Pfn(2));
    counting.zero_frame(Pfn(3));
    assert_eq!(*inner.0.lock().unwrap(), ["copy_frame", "zero_frame"]);
    assert_eq!(counting.stores(), 2 * pvops::ENTRIES_PER_TABLE as u64);
}
