//! Accessed/dirty bits: the models set them as hardware does, and the
//! backends' protection changes and A/D clears lose none of them, also when
//! "the hardware" sets one in the middle of the operation
//! (`Machine::touch_after_guest_read`, or a user access between two calls).

use pvops::pte::flags;
use pvops::{Level, MmServices, Pfn, PhysMem, Pte, PvError, PvMmuOps};
use pvops_model::xen::guest::USER_PAGE;
use pvops_model::xen::XenGuest;
use pvops_model::{Access, Machine};
use pvops_native::NativeBackend;

mod common;
use common::{e, va};

const ROOT: u64 = 1;
const L3: u64 = 2;
const L2: u64 = 3;
const L1: u64 = 4;
const DATA: u64 = 10;
const URW: u64 = flags::PRESENT | flags::WRITABLE | flags::USER;
const VA: u64 = 0x40_0000;
const A: u64 = flags::ACCESSED;
const D: u64 = flags::DIRTY;

/// A leaked machine with `VA` → `DATA` (user, writable) under cr3 = `ROOT`.
fn machine() -> &'static Machine {
    let m = Machine::leaked(64);
    let v = va(VA);
    m.write(ROOT, v.index(Level::L4), e(L3, URW));
    m.write(L3, v.index(Level::L3), e(L2, URW));
    m.write(L2, v.index(Level::L2), e(L1, URW));
    m.write(L1, v.index(Level::L1), e(DATA, URW));
    m.set_cr3(ROOT << 12);
    m
}

fn idx(level: Level) -> usize {
    va(VA).index(level)
}

fn native(m: &'static Machine) -> NativeBackend {
    NativeBackend::new(m, m)
}

/// The frame metadata is not used by the native backend.
struct NoMm;
impl MmServices for NoMm {
    fn has_metadata(&self) -> bool {
        true
    }
    fn alloc_zeroed_frame(&self) -> Result<Pfn, PvError> {
        Err(PvError::OutOfMemory)
    }
    fn free_frame(&self, _: Pfn) -> Result<(), PvError> {
        Ok(())
    }
    fn private(&self, _: Pfn) -> Result<u64, PvError> {
        Ok(0)
    }
    fn set_private(&self, _: Pfn, _: u64) -> Result<(), PvError> {
        Ok(())
    }
    fn is_pinned(&self, _: Pfn) -> Result<bool, PvError> {
        Ok(false)
    }
    fn set_pinned(&self, _: Pfn, _: bool) -> Result<(), PvError> {
        Ok(())
    }
}

// ---- the machine model ------------------------------------------------------

#[test]
fn a_walk_sets_accessed_at_every_level_and_dirty_only_on_a_writes_leaf() {
    let m = machine();
    let path = [(ROOT, Level::L4), (L3, Level::L3), (L2, Level::L2), (L1, Level::L1)];
    assert!(path.iter().all(|&(t, l)| m.read(t, idx(l)).unwrap() & (A | D) == 0), "nothing set before");
    assert_eq!(m.access(va(VA), Access::USER_READ), Ok(DATA));
    for &(t, l) in &path {
        assert_eq!(m.read(t, idx(l)).unwrap() & (A | D), A, "after a read, {l:?}");
    }
    assert_eq!(m.access(va(VA), Access::USER_WRITE), Ok(DATA));
    for &(t, l) in &path {
        let want = if l == Level::L1 { A | D } else { A };
        assert_eq!(m.read(t, idx(l)).unwrap() & (A | D), want, "after a write, {l:?}");
    }
}

#[test]
fn a_refused_access_sets_nothing() {
    let m = machine();
    m.write(L1, idx(Level::L1), e(DATA, flags::PRESENT | flags::USER));
    m.tlb_invlpg(VA);
    assert!(m.access(va(VA), Access::USER_WRITE).is_err());
    assert_eq!(m.read(L1, idx(Level::L1)).unwrap() & (A | D), 0);
}

#[test]
fn an_armed_touch_fires_once_right_after_the_guests_next_read_of_that_word() {
    let m = machine();
    m.touch_after_guest_read(L1, idx(Level::L1), D);
    assert_eq!(PhysMem::read_entry(m, Pfn(L2), idx(Level::L2)) & D, 0, "another word: not fired");
    assert!(m.touch_pending());
    let seen = PhysMem::read_entry(m, Pfn(L1), idx(Level::L1));
    assert_eq!(seen & D, 0, "the read itself sees the word before the touch");
    assert!(!m.touch_pending());
    assert_eq!(m.read(L1, idx(Level::L1)).unwrap() & D, D, "set right after it");
    m.write(L1, idx(Level::L1), e(DATA, URW));
    let _ = PhysMem::read_entry(m, Pfn(L1), idx(Level::L1));
    assert_eq!(m.read(L1, idx(Level::L1)).unwrap() & D, 0, "one shot");
}

#[test]
fn the_machines_compare_exchange_writes_only_on_a_match() {
    let m = machine();
    let i = idx(Level::L1);
    let cur = m.read(L1, i).unwrap();
    assert_eq!(m.compare_exchange(L1, i, cur ^ 1, 0), Err(cur));
    assert_eq!(m.read(L1, i), Some(cur));
    assert_eq!(m.compare_exchange(L1, i, cur, 0), Ok(cur));
    assert_eq!(m.read(L1, i), Some(0));
    assert_eq!(m.compare_exchange(64, 0, 0, 1), Err(0), "out of range");
}

// ---- native -----------------------------------------------------------------

#[test]
fn native_protect_start_empties_the_slot_and_returns_a_bit_set_during_the_exchange() {
    let m = machine();
    let ops = native(m);
    m.touch_after_guest_read(L1, idx(Level::L1), D);
    let old = ops.protect_start(&NoMm, Pfn(L1), idx(Level::L1)).unwrap();
    assert!(!m.touch_pending(), "the backend read the entry");
    assert_eq!(old.0 & D, D, "D set between the read and the exchange is returned: {old:?}");
    assert_eq!(m.read(L1, idx(Level::L1)), Some(0), "withdrawn");
    assert!(m.access(va(VA), Access::USER_READ).is_err() || !m.tlb_stale().is_empty());
    ops.protect_commit(&NoMm, Pfn(L1), idx(Level::L1), old, Pte::new(Pfn(DATA), flags::PRESENT | flags::USER)).unwrap();
    assert_eq!(m.read(L1, idx(Level::L1)), Some(e(DATA, flags::PRESENT | flags::USER | D)));
}

#[test]
fn native_commit_keeps_a_dirty_bit_a_cpu_ors_into_the_withdrawn_entry() {
    let m = machine();
    let ops = native(m);
    let old = ops.protect_start(&NoMm, Pfn(L1), idx(Level::L1)).unwrap();
    assert_eq!(old.0 & D, 0);
    // A CPU without CET writing through its cached clean translation sets D
    // in the (now empty) entry while the commit runs.
    m.touch_after_guest_read(L1, idx(Level::L1), D);
    ops.protect_commit(&NoMm, Pfn(L1), idx(Level::L1), old, Pte::new(Pfn(DATA), flags::PRESENT | flags::USER)).unwrap();
    assert!(!m.touch_pending());
    assert_eq!(m.read(L1, idx(Level::L1)), Some(e(DATA, flags::PRESENT | flags::USER | D)));
}

#[test]
fn native_commit_without_start_is_refused_and_changes_nothing() {
    let m = machine();
    let ops = native(m);
    let live = Pte(m.read(L1, idx(Level::L1)).unwrap());
    let r = ops.protect_commit(&NoMm, Pfn(L1), idx(Level::L1), live, Pte::new(Pfn(DATA), flags::PRESENT));
    assert!(matches!(r, Err(PvError::WrongState { .. })), "{r:?}");
    assert_eq!(m.read(L1, idx(Level::L1)), Some(live.0));
}

#[test]
fn native_clear_is_atomic_against_the_hardware_setting_another_bit() {
    let m = machine();
    let ops = native(m);
    assert_eq!(m.access(va(VA), Access::USER_READ), Ok(DATA));
    m.touch_after_guest_read(L1, idx(Level::L1), D);
    let was = ops.clear_accessed_dirty(&NoMm, Pfn(L1), idx(Level::L1), A).unwrap();
    assert_eq!(was.0 & (A | D), A | D, "the entry just before the clear: {was:?}");
    assert_eq!(m.read(L1, idx(Level::L1)).unwrap() & (A | D), D, "A cleared, the racing D kept");
}

// ---- xen64 over the Xen model -------------------------------------------------

const UVA: u64 = 0x40_0000;

/// A pinned, loaded address space with `n` user pages from `UVA` on;
/// returns the guest, its L1 table and the data frames.
fn xen_space(n: u64) -> (XenGuest, Pfn, Vec<Pfn>) {
    let g = XenGuest::boot(512, 5);
    let pgd = g.new_pgd().unwrap();
    let mut data = Vec::new();
    for i in 0..n {
        let f = g.mm.alloc_zeroed_frame().unwrap();
        g.map(pgd, UVA + i * 0x1000, f, USER_PAGE).unwrap();
        data.push(f);
    }
    g.ops().activate_mm(g.mm, pgd).unwrap();
    g.ops().write_cr3(g.mm, pgd).unwrap();
    let l1 = g.table_for(pgd, va(UVA), Level::L1).unwrap().unwrap();
    (g, l1, data)
}

fn uidx(i: u64) -> usize {
    va(UVA + i * 0x1000).index(Level::L1)
}

/// The L1 entry of page `i` as the guest reads it (machine form).
fn raw(g: &XenGuest, l1: Pfn, i: u64) -> u64 {
    g.model.read_guest(l1, uidx(i))
}

#[test]
fn xen_user_accesses_set_accessed_and_dirty_in_the_guests_l1() {
    let (g, l1, data) = xen_space(1);
    assert_eq!(raw(&g, l1, 0) & (A | D), 0);
    assert_eq!(g.model.access(UVA, true, false), Ok(data[0]));
    assert_eq!(raw(&g, l1, 0) & (A | D), A);
    assert_eq!(g.model.access(UVA, true, true), Ok(data[0]));
    assert_eq!(raw(&g, l1, 0) & (A | D), A | D);
}

#[test]
fn xen_protect_commit_is_one_preserve_ad_update_that_keeps_a_bit_set_in_between() {
    let (g, l1, data) = xen_space(1);
    let ops = g.ops();
    assert_eq!(g.model.access(UVA, true, false), Ok(data[0]));
    let before = ops.stats();
    let old = ops.protect_start(g.mm, l1, uidx(0)).unwrap();
    assert_eq!(ops.stats().since(before).hypercalls, 0, "start is a read");
    assert_eq!(old.0 & (A | D), A);
    // The entry stays live: a user write lands and sets D before the commit.
    assert_eq!(g.model.access(UVA, true, true), Ok(data[0]));
    let new = Pte::new(data[0], flags::PRESENT | flags::USER);
    ops.protect_commit(g.mm, l1, uidx(0), old, new).unwrap();
    let used = ops.stats().since(before);
    assert_eq!((used.hypercalls, used.mmu_updates), (1, 1), "{used:?}");
    assert_eq!(raw(&g, l1, 0) & (A | D | flags::WRITABLE), A | D, "read-only, both bits kept");
    ops.flush_tlb_all().unwrap();
    assert!(g.model.access(UVA, true, true).is_err(), "write refused after the flush");
    assert!(g.model.violations().is_empty(), "{:?}", g.model.violations());
}

#[test]
fn xen_protect_commits_in_a_lazy_section_cost_one_hypercall_per_32() {
    let (g, l1, data) = xen_space(40);
    let ops = g.ops();
    let before = ops.stats();
    ops.lazy_mmu_enter();
    for (i, &f) in data.iter().enumerate() {
        let i = i as u64;
        let old = ops.protect_start(g.mm, l1, uidx(i)).unwrap();
        ops.protect_commit(g.mm, l1, uidx(i), old, Pte::new(f, flags::PRESENT | flags::USER)).unwrap();
        // Reads see the queued change.
        assert!(!ops.read_entry(Level::L1, l1, uidx(i)).unwrap().is_writable());
    }
    ops.lazy_mmu_leave().unwrap();
    let used = ops.stats().since(before);
    assert_eq!((used.hypercalls, used.mmu_updates), (2, 40), "⌈40/32⌉ calls: {used:?}");
    ops.flush_tlb_all().unwrap();
    for i in 0..40 {
        assert!(g.model.access(UVA + i * 0x1000, true, true).is_err(), "page {i} still writable");
    }
}

#[test]
fn xen_clear_costs_two_hypercalls_and_keeps_a_bit_set_before_the_withdraw() {
    let (g, l1, data) = xen_space(1);
    let ops = g.ops();
    assert_eq!(g.model.access(UVA, true, false), Ok(data[0]));
    // The hardware sets D between the backend's read and its first hypercall.
    g.model.touch_after_guest_read(l1, uidx(0), D);
    let before = ops.stats();
    let was = ops.clear_accessed_dirty(g.mm, l1, uidx(0), A).unwrap();
    let used = ops.stats().since(before);
    assert_eq!((used.hypercalls, used.mmu_updates), (2, 2), "{used:?}");
    assert_eq!(was.0 & (A | D), A | D, "the entry just before the clear: {was:?}");
    assert_eq!(raw(&g, l1, 0) & (A | D), D, "A cleared, the racing D kept");
    assert!(raw(&g, l1, 0) & flags::PRESENT != 0 && raw(&g, l1, 0) & flags::WRITABLE != 0, "put back whole");
    let before = ops.stats();
    let was = ops.clear_accessed_dirty(g.mm, l1, uidx(0), A).unwrap();
    assert_eq!(ops.stats().since(before).hypercalls, 0, "nothing to clear: no hypercall");
    assert_eq!(was.0 & (A | D), D);
    assert_eq!(g.model.access(UVA, true, true), Ok(data[0]), "still mapped and writable");
    assert!(g.model.violations().is_empty(), "{:?}", g.model.violations());
    g.model.check_invariants().unwrap();
}

#[test]
fn xen_clear_in_a_lazy_section_issues_a_queued_update_of_the_slot_first() {
    let (g, l1, data) = xen_space(1);
    let ops = g.ops();
    assert_eq!(g.model.access(UVA, true, true), Ok(data[0]));
    ops.lazy_mmu_enter();
    // Queued: the same page, read-only, with A and D set by the caller.
    ops.set_entry(g.mm, Level::L1, l1, uidx(0), Pte::new(data[0], flags::PRESENT | flags::USER | A | D)).unwrap();
    let was = ops.clear_accessed_dirty(g.mm, l1, uidx(0), D).unwrap();
    assert!(!was.is_writable(), "the clear saw the queued update: {was:?}");
    ops.lazy_mmu_leave().unwrap();
    assert_eq!(raw(&g, l1, 0) & (A | D | flags::WRITABLE), A);
    assert!(g.model.violations().is_empty(), "{:?}", g.model.violations());
}

#[test]
fn xen_refused_updates_leave_the_entry_as_it_was() {
    let (g, l1, data) = xen_space(1);
    let ops = g.ops();
    assert_eq!(g.model.access(UVA, true, true), Ok(data[0]));
    let live = raw(&g, l1, 0);
    assert_eq!(live & (A | D), A | D);
    let refused = |r: Result<(), PvError>, what: &str| {
        assert!(matches!(r, Err(PvError::Hypercall { code: -22, .. })), "{what}: {r:?}");
        assert_eq!(raw(&g, l1, 0), live, "{what}: the entry changed");
        assert!(!g.model.clear_injections(), "{what}: the injection did not fire");
    };
    // The commit's mmu_update.
    let old = ops.protect_start(g.mm, l1, uidx(0)).unwrap();
    g.model.inject_subop_failure(0, -22);
    refused(ops.protect_commit(g.mm, l1, uidx(0), old, Pte::new(data[0], flags::PRESENT | flags::USER)), "commit");
    // The clear's withdraw, then its put-back (the entry is put back whole).
    for after in [0, 1] {
        g.model.inject_subop_failure(after, -22);
        refused(ops.clear_accessed_dirty(g.mm, l1, uidx(0), A | D).map(|_| ()), "clear");
    }
    assert_eq!(g.model.access(UVA, true, true), Ok(data[0]), "still mapped and writable");
    assert!(g.model.violations().is_empty(), "{:?}", g.model.violations());
    g.model.check_invariants().unwrap();
}
