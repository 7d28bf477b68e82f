//! The Xen model's TLB: Xen's own flushes, exactly where xen/arch/x86/mm.c,
//! flushtlb.c and pv/domain.c perform them, and nowhere else.

use pvops::pte::flags;
use pvops::{Pfn, PhysMem};
use pvops_model::xen::{XenFault, XenModel};
use pvops_model::{Fault, TlbHazard};
use pvops_xen64::abi::{mmuext, uvmf, Call, MmuextOp};
use pvops_xen64::{HypercallTransport, Outcome};

mod common;
use common::{entry, mfn, mmu};

const RW: u64 = flags::PRESENT | flags::WRITABLE;
const URW: u64 = RW | flags::USER;
/// Tables: user L4 (9), L3 (10), L2 (11), L1 (12); spare L4 (13).
const USER_L4: u64 = 9;
const SPARE_L4: u64 = 13;
/// Data: a user page at 0, another at 0x1000, a kernel page at 0x2000.
const USER_PAGE: u64 = 20;
const KERNEL_PAGE: u64 = 21;
const OTHER_PAGE: u64 = 22;

fn ext(m: &XenModel, cmd: u32, arg1: u64) -> Outcome {
    m.call(&Call::MmuextOp(&[MmuextOp { cmd, arg1, arg2: 0 }]))
}

fn remap(m: &XenModel, pfn: u64, writable: bool, uvm: u64) -> Outcome {
    let f = if writable { RW } else { flags::PRESENT };
    m.call(&Call::UpdateVaMapping { va: m.direct_map_va(Pfn(pfn)), val: entry(m, pfn, f), flags: uvm })
}

/// Both roots map 0 → USER_PAGE, 0x1000 → OTHER_PAGE (user) and 0x2000 →
/// KERNEL_PAGE (kernel-only: Xen adds U and bit 52, no G); user mode has run.
fn model() -> &'static XenModel {
    let m = XenModel::leaked(64, 11);
    let root = m.pt_base().0;
    for p in [USER_L4, 10, 11, 12, SPARE_L4] {
        assert!(remap(m, p, false, uvmf::NONE).is_ok());
    }
    assert!(mmu(m, 12, 0, entry(m, USER_PAGE, URW)).is_ok());
    assert!(mmu(m, 12, 1, entry(m, OTHER_PAGE, URW)).is_ok());
    assert!(mmu(m, 12, 2, entry(m, KERNEL_PAGE, RW)).is_ok());
    assert!(mmu(m, 11, 0, entry(m, 12, URW)).is_ok());
    assert!(mmu(m, 10, 0, entry(m, 11, URW)).is_ok());
    assert!(mmu(m, root, 0, entry(m, 10, URW)).is_ok());
    assert!(mmu(m, USER_L4, 0, entry(m, 10, URW)).is_ok());
    assert!(ext(m, mmuext::NEW_USER_BASEPTR, mfn(m, USER_L4).0).is_ok());
    assert_eq!(m.read_guest(Pfn(12), 0) & flags::GLOBAL, flags::GLOBAL, "Xen makes user L1es global");
    assert_eq!(m.read_guest(Pfn(12), 2) & flags::GLOBAL, 0, "guest-kernel L1es are not");
    assert_eq!(m.access(0, true, true), Ok(Pfn(USER_PAGE)), "user mode ran");
    m
}

fn not_present(level: pvops::Level) -> Result<Pfn, XenFault> {
    Err(XenFault::Page(Fault::NotPresent(level)))
}

#[test]
fn an_l1e_cleared_by_mmu_update_stays_cached_until_invlpg_local() {
    let m = model();
    assert!(mmu(m, 12, 0, 0).is_ok(), "Xen flushes nothing on mmu_update");
    assert_eq!(m.access(0, true, false), Ok(Pfn(USER_PAGE)));
    assert_eq!(m.access(0, false, false), Ok(Pfn(USER_PAGE)));
    m.frame_freed(Pfn(USER_PAGE));
    let v = m.tlb_violations();
    assert_eq!(v.first().map(|v| (v.hazard, v.frame, v.stale)), Some((TlbHazard::Freed, USER_PAGE, true)));
    assert!(m.check_invariants().is_err(), "the runners' per-step check sees it");
    m.machine().clear_tlb_violations();
    assert!(ext(m, mmuext::INVLPG_LOCAL, 0x1000).is_ok());
    assert_eq!(m.access(0, true, false), Ok(Pfn(USER_PAGE)), "invlpg of another page");
    assert!(ext(m, mmuext::INVLPG_LOCAL, 0).is_ok());
    assert_eq!(m.access(0, true, false), not_present(pvops::Level::L1));
    m.frame_freed(Pfn(USER_PAGE));
    assert!(m.tlb_violations().is_empty());
    assert_eq!(m.check_invariants(), Ok(()));
}

#[test]
fn update_va_mapping_flushes_as_its_flags_say_and_only_after_the_change() {
    let m = model();
    // Unlinking the L1 caches it (paging-structure caches) and its leaves.
    assert!(mmu(m, 11, 0, 0).is_ok());
    assert!(remap(m, 30, false, uvmf::NONE).is_ok());
    assert_eq!(m.access(0, true, false), Ok(Pfn(USER_PAGE)), "UVMF_NONE");
    m.frame_freed(Pfn(12));
    assert_eq!(m.tlb_violations().len(), 1, "the old L1 may still be walked");
    m.machine().clear_tlb_violations();
    assert!(remap(m, 30, true, uvmf::INVLPG).is_ok());
    m.frame_freed(Pfn(12));
    assert!(m.tlb_violations().is_empty(), "UVMF_INVLPG: an invlpg drops every paging-structure entry");
    assert_eq!(m.access(0, true, false), Ok(Pfn(USER_PAGE)), "UVMF_INVLPG of the direct-map address");
    // A refused update_va_mapping flushes nothing (Xen skips the flush on error).
    let refused = m.call(&Call::UpdateVaMapping { va: 0x1000, val: 0, flags: uvmf::TLB_FLUSH });
    assert!(!refused.is_ok());
    assert_eq!(m.access(0, true, false), Ok(Pfn(USER_PAGE)));
    assert!(remap(m, 30, true, uvmf::TLB_FLUSH).is_ok());
    assert_eq!(m.access(0, true, false), not_present(pvops::Level::L2), "UVMF_TLB_FLUSH");
}

#[test]
fn tlb_flush_local_and_new_baseptr_flush_global_entries_too() {
    let m = model();
    assert!(mmu(m, 12, 0, 0).is_ok());
    assert!(ext(m, mmuext::TLB_FLUSH_LOCAL, 0).is_ok());
    assert_eq!(m.access(0, true, false), not_present(pvops::Level::L1));
    assert!(mmu(m, 12, 1, 0).is_ok());
    assert_eq!(m.access(0x1000, true, false), Ok(Pfn(OTHER_PAGE)));
    // Reloading the same kernel root still goes through write_ptbase.
    assert!(ext(m, mmuext::NEW_BASEPTR, m.kernel_base().0).is_ok());
    assert_eq!(m.access(0x1000, true, false), not_present(pvops::Level::L1));
}

#[test]
fn new_user_baseptr_flushes_nothing_so_the_old_roots_user_pages_stay_reachable() {
    let m = model();
    assert!(ext(m, mmuext::NEW_USER_BASEPTR, mfn(m, SPARE_L4).0).is_ok());
    // The new user root maps nothing, but Linux-style NEW_USER_BASEPTR alone
    // leaves the previous process's (global) user pages in the TLB.
    assert_eq!(m.access(0, true, false), Ok(Pfn(USER_PAGE)));
    assert_eq!(m.access(0x2000, true, false), not_present(pvops::Level::L4), "non-global: gone with the toggle");
    assert!(ext(m, mmuext::TLB_FLUSH_LOCAL, 0).is_ok());
    assert_eq!(m.access(0, true, false), not_present(pvops::Level::L4));
}

#[test]
fn user_mode_sees_only_global_stale_entries_kernel_mode_sees_all() {
    let m = model();
    assert_eq!(m.access(0x2000, false, true), Ok(Pfn(KERNEL_PAGE)));
    assert!(mmu(m, 12, 2, 0).is_ok());
    assert_eq!(m.access(0x2000, false, false), Ok(Pfn(KERNEL_PAGE)), "kernel mode: stale");
    assert_eq!(m.access(0x2000, true, false), not_present(pvops::Level::L1), "entering user mode rewrote cr3");
}

#[test]
fn a_type_change_flushes_unless_this_cpu_flushed_since_the_last_reference_went() {
    // No flush since USER_PAGE's writable mapping went: pinning it flushes,
    // and takes the other stale entry with it.
    let m = model();
    assert!(mmu(m, 12, 1, 0).is_ok());
    assert!(mmu(m, 12, 0, 0).is_ok());
    assert!(remap(m, USER_PAGE, false, uvmf::NONE).is_ok());
    assert_eq!(m.access(0x1000, true, false), Ok(Pfn(OTHER_PAGE)));
    assert!(ext(m, mmuext::PIN_L1_TABLE, mfn(m, USER_PAGE).0).is_ok());
    assert_eq!(m.access(0x1000, true, false), not_present(pvops::Level::L1), "type-change flush");
    assert_eq!(m.check_invariants(), Ok(()));

    // A flush since: tlbflush_filter skips it, the other stale entry stays.
    let m = model();
    assert!(remap(m, USER_PAGE, false, uvmf::NONE).is_ok());
    assert!(mmu(m, 12, 0, 0).is_ok());
    assert!(ext(m, mmuext::TLB_FLUSH_LOCAL, 0).is_ok());
    assert!(mmu(m, 12, 1, 0).is_ok());
    assert!(ext(m, mmuext::PIN_L1_TABLE, mfn(m, USER_PAGE).0).is_ok());
    assert_eq!(m.access(0x1000, true, false), Ok(Pfn(OTHER_PAGE)), "no flush");
    assert_eq!(m.check_invariants(), Ok(()), "no writable translation of the new table is cached");
}

#[test]
fn unlinking_a_table_from_a_loaded_root_caches_it_until_a_flush() {
    let m = model();
    let root = m.pt_base().0;
    assert!(mmu(m, USER_L4, 0, 0).is_ok());
    assert!(mmu(m, root, 0, 0).is_ok());
    assert_eq!(m.access(0, true, false), Ok(Pfn(USER_PAGE)), "paging-structure caches and leaves");
    // Freeing the old L3 is a hazard until a flush.
    m.frame_freed(Pfn(10));
    assert_eq!(m.tlb_violations().first().map(|v| (v.hazard, v.frame)), Some((TlbHazard::Freed, 10)));
    m.machine().clear_tlb_violations();
    assert!(ext(m, mmuext::INVLPG_LOCAL, 0x5000).is_ok());
    m.frame_freed(Pfn(10));
    assert!(m.tlb_violations().is_empty(), "INVLPG drops every paging-structure-cache entry");
    assert_eq!(m.access(0, true, false), Ok(Pfn(USER_PAGE)), "but not other leaves");
}

/// The test allocator (`GuestMm`) reports freed frames too.
#[test]
fn guest_mm_reports_a_freed_frame_the_loaded_tables_still_map() {
    use pvops::MmServices;
    use pvops_model::xen::guest::USER_PAGE as PAGE_FLAGS;
    use pvops_model::XenGuest;
    let g = XenGuest::boot(256, 5);
    let pgd = g.new_pgd().expect("pgd");
    let frame = g.mm.alloc_zeroed_frame().expect("frame");
    g.map(pgd, 0x40_0000, frame, PAGE_FLAGS).expect("map");
    g.ops().activate_mm(g.mm, pgd).expect("pin");
    g.ops().write_cr3(g.mm, pgd).expect("load");
    assert!(g.model.tlb_violations().is_empty());
    g.mm.free_frame(frame).expect("free");
    let v = g.model.tlb_violations();
    assert_eq!(v.first().map(|v| (v.hazard, v.frame, v.stale)), Some((TlbHazard::Freed, frame.0, false)));
}

/// Zeroing a frame for reuse (what allocators do) while a stale entry maps it.
#[test]
fn reusing_a_frame_a_tlb_may_still_reach_is_recorded() {
    let m = model();
    assert!(mmu(m, 12, 1, 0).is_ok());
    m.zero_frame(Pfn(OTHER_PAGE));
    let v = m.tlb_violations();
    assert_eq!(v.first().map(|v| (v.hazard, v.frame, v.stale)), Some((TlbHazard::Reused, OTHER_PAGE, true)));
    m.machine().clear_tlb_violations();
    assert!(ext(m, mmuext::INVLPG_LOCAL, 0x1000).is_ok());
    m.zero_frame(Pfn(OTHER_PAGE));
    assert!(m.tlb_violations().is_empty());
}
