//! The native machine's TLB and paging-structure caches: filled cautiously,
//! dropped only by what drops real ones (Intel SDM vol. 3A §4.10.4).

use pvops::pte::flags;
use pvops::{Level, Pfn, PhysMem};
use pvops_model::{Access, Fault, Machine, TlbHazard};
use pvops_native::NativeCpu;

mod common;
use common::{e, va};

const ROOT: u64 = 1;
const L3: u64 = 2;
const L2: u64 = 3;
const L1: u64 = 4;
const DATA: u64 = 10;
const OTHER: u64 = 11;
const URW: u64 = flags::PRESENT | flags::WRITABLE | flags::USER;
const VA: u64 = 0x40_0000;

/// A machine with `VA` → `DATA` (user, writable) under cr3 = `ROOT`.
fn machine(leaf_flags: u64) -> Machine {
    let m = Machine::new(64);
    let v = va(VA);
    m.write(ROOT, v.index(Level::L4), e(L3, URW));
    m.write(L3, v.index(Level::L3), e(L2, URW));
    m.write(L2, v.index(Level::L2), e(L1, URW));
    m.write(L1, v.index(Level::L1), e(DATA, leaf_flags));
    m.set_cr3(ROOT << 12);
    m
}

fn l1_index(a: u64) -> usize {
    va(a).index(Level::L1)
}

#[test]
fn a_live_translation_is_used_and_nothing_is_stale() {
    let m = machine(URW);
    assert_eq!(m.access(va(VA), Access::USER_WRITE), Ok(DATA));
    assert!(m.tlb_stale().is_empty());
    assert_eq!(m.check_tlb(), Ok(()));
}

#[test]
fn a_cleared_loaded_leaf_stays_reachable_until_invlpg() {
    let m = machine(URW);
    m.write(L1, l1_index(VA), 0);
    assert_eq!(m.translate_from(ROOT, va(VA), Access::USER_READ), Err(Fault::NotPresent(Level::L1)), "tables");
    assert_eq!(m.access(va(VA), Access::USER_READ), Ok(DATA), "the TLB may still hold it");
    m.invlpg(va(VA + 0x1000));
    assert_eq!(m.access(va(VA), Access::USER_READ), Ok(DATA), "invlpg of another page");
    m.invlpg(va(VA));
    assert_eq!(m.access(va(VA), Access::USER_READ), Err(Fault::NotPresent(Level::L1)));
    assert!(m.tlb_stale().is_empty());
}

#[test]
fn a_flush_before_the_entry_is_cleared_does_not_count() {
    let m = machine(URW);
    m.invlpg(va(VA));
    m.flush_all();
    m.write(L1, l1_index(VA), 0);
    assert_eq!(m.access(va(VA), Access::USER_READ), Ok(DATA));
}

#[test]
fn entries_of_tables_that_are_not_loaded_are_never_cached() {
    let m = machine(URW);
    m.set_cr3(20 << 12);
    m.write(L1, l1_index(VA), 0);
    assert!(m.tlb_stale().is_empty());
    m.set_cr3(ROOT << 12);
    assert_eq!(m.access(va(VA), Access::USER_READ), Err(Fault::NotPresent(Level::L1)));
}

#[test]
fn removing_write_permission_is_stale_until_flushed_and_a_stale_write_is_recorded() {
    let m = machine(URW);
    m.write(L1, l1_index(VA), e(DATA, flags::PRESENT | flags::USER));
    assert_eq!(m.access(va(VA), Access::USER_READ), Ok(DATA));
    assert!(m.tlb_violations().is_empty(), "reading is no hazard");
    assert_eq!(m.access(va(VA), Access::USER_WRITE), Ok(DATA), "a stale writable entry");
    let v = m.tlb_violations();
    assert_eq!(v.len(), 1);
    assert_eq!((v[0].hazard, v[0].frame, v[0].stale), (TlbHazard::StaleWrite, DATA, true));
    assert!(m.check_tlb().is_err());
    m.invlpg(va(VA));
    m.clear_tlb_violations();
    assert_eq!(m.access(va(VA), Access::USER_WRITE), Err(Fault::Protection(Level::L1)));
    assert!(m.tlb_violations().is_empty());
}

#[test]
fn a_remapped_page_may_still_reach_the_old_frame() {
    let m = machine(URW);
    m.write(L1, l1_index(VA), e(OTHER, URW));
    assert_eq!(m.access(va(VA), Access::USER_READ), Ok(DATA), "worst case: the stale frame");
    m.invlpg(va(VA));
    assert_eq!(m.access(va(VA), Access::USER_READ), Ok(OTHER));
}

#[test]
fn a_cr3_write_drops_non_global_entries_and_keeps_global_ones() {
    let m = machine(URW | flags::GLOBAL);
    let b = VA + 0x1000;
    m.write(L1, l1_index(b), e(OTHER, URW));
    m.set_cr3(20 << 12);
    assert_eq!(m.access(va(VA), Access::USER_READ), Ok(DATA), "global: survives the cr3 write");
    assert_eq!(m.access(va(b), Access::USER_READ), Err(Fault::NotPresent(Level::L4)), "non-global: gone");
    m.flush_all();
    assert_eq!(m.access(va(VA), Access::USER_READ), Ok(DATA), "a cr3 reload keeps globals too");
    m.invlpg(va(VA));
    assert_eq!(m.access(va(VA), Access::USER_READ), Err(Fault::NotPresent(Level::L4)), "invlpg drops globals");
}

#[test]
fn a_full_flush_drops_global_entries() {
    let m = machine(URW | flags::GLOBAL);
    m.write(L1, l1_index(VA), 0);
    m.flush_all();
    assert_eq!(m.access(va(VA), Access::USER_READ), Ok(DATA));
    m.tlb_flush_everything();
    assert_eq!(m.access(va(VA), Access::USER_READ), Err(Fault::NotPresent(Level::L1)));
}

#[test]
fn clearing_an_upper_entry_caches_paging_structures_that_any_invlpg_drops() {
    let m = machine(URW);
    let v = va(VA);
    m.write(ROOT, v.index(Level::L4), 0);
    let stale = m.tlb_stale();
    // The L4 entry (→ L3), the L3 entry (→ L2), the L2 entry (→ L1), the leaf.
    assert_eq!(stale.len(), 4, "{stale:?}");
    for frame in [L3, L2, L1] {
        assert!(stale.iter().any(|c| c.frame == frame && c.level != Level::L1), "{frame} cached");
    }
    // Freeing a table a paging-structure cache may point at is a hazard.
    m.frame_freed(Pfn(L2));
    assert_eq!(m.tlb_violations().first().map(|v| (v.hazard, v.frame)), Some((TlbHazard::Freed, L2)));
    m.clear_tlb_violations();
    // Any invlpg drops every paging-structure-cache entry (SDM: INVLPG), not other leaves.
    m.invlpg(va(0x7000_0000));
    let stale = m.tlb_stale();
    assert_eq!(stale.len(), 1);
    assert_eq!((stale[0].level, stale[0].frame), (Level::L1, DATA));
    m.frame_freed(Pfn(L2));
    assert!(m.tlb_violations().is_empty());
}

#[test]
fn a_stale_paging_structure_entry_walks_what_the_old_table_holds_now() {
    let m = machine(URW);
    let v = va(VA);
    m.write(L2, v.index(Level::L2), 0);
    m.invlpg(va(VA)); // drops the paging-structure entries and the leaf
    m.write(L2, v.index(Level::L2), e(L1, URW));
    m.write(L3, v.index(Level::L3), 0);
    // L3 → L2 is cached; the old L2 still links L1; a new leaf in L1 is reachable.
    let b = VA + 0x3000;
    m.write(L1, l1_index(b), e(OTHER, URW));
    assert_eq!(m.translate_from(ROOT, va(b), Access::USER_READ), Err(Fault::NotPresent(Level::L3)));
    assert_eq!(m.access(va(b), Access::USER_READ), Ok(OTHER));
}

#[test]
fn freeing_or_reusing_a_frame_a_tlb_may_reach_is_recorded() {
    let m = machine(URW);
    m.frame_freed(Pfn(DATA));
    let v = m.tlb_violations();
    assert_eq!(v.len(), 1);
    assert_eq!((v[0].hazard, v[0].frame, v[0].stale, v[0].va), (TlbHazard::Freed, DATA, false, VA), "still live");
    m.clear_tlb_violations();
    m.write(L1, l1_index(VA), 0);
    m.zero_frame(Pfn(DATA));
    let v = m.tlb_violations();
    assert_eq!((v[0].hazard, v[0].frame, v[0].stale), (TlbHazard::Reused, DATA, true), "stale");
    m.clear_tlb_violations();
    m.invlpg(va(VA));
    m.frame_freed(Pfn(DATA));
    m.zero_frame(Pfn(DATA));
    m.frame_freed(Pfn(OTHER));
    assert!(m.tlb_violations().is_empty());
}

#[test]
fn a_fork_sized_copy_does_not_rewalk_the_tables_per_word() {
    // 64 pages mapped under the loaded root; 64 pages of data and a new
    // (not loaded) tree written word by word: the reachable set of the
    // loaded tables is computed once, not per write.
    let m = Machine::new(4096);
    for i in 0..64u64 {
        let v = va(0x40_0000 + i * (1 << 21));
        m.write(ROOT, v.index(Level::L4), e(L3, URW));
        m.write(L3, v.index(Level::L3), e(L2, URW));
        m.write(L2, v.index(Level::L2), e(100 + i, URW));
        m.write(100 + i, v.index(Level::L1), e(200 + i, URW));
    }
    m.set_cr3(ROOT << 12);
    m.write(1000, 0, 1);
    let builds = m.tlb_reach_builds();
    let start = std::time::Instant::now();
    for page in 0..64u64 {
        let v = va(0x40_0000 + page * (1 << 21));
        m.write(2000, v.index(Level::L2), e(2100 + page, URW));
        m.write(2100 + page, v.index(Level::L1), e(1000 + page, URW));
        for w in 0..512 {
            m.write(1000 + page, w, w as u64 + 1);
        }
    }
    assert_eq!(m.tlb_reach_builds(), builds, "no write touched a loaded table");
    let took = start.elapsed();
    assert!(took < std::time::Duration::from_secs(5), "copy took {took:?}");
    // A write to a loaded table does invalidate it.
    m.write(L2, 511, e(300, URW));
    m.write(1000, 1, 7);
    assert_eq!(m.tlb_reach_builds(), builds + 1);
}
