//! The Xen model with two vCPUs, against what smp-notes §4 measured on the
//! real Xen 4.17: `*_LOCAL` and `UVMF_LOCAL` flush only the caller,
//! `MMUEXT_INVLPG_MULTI` / `MMUEXT_TLB_FLUSH_MULTI` the vCPUs in the bitmap,
//! `UVMF_ALL` every vCPU; `NEW_BASEPTR` changes only the caller's root, and
//! the root another vCPU holds stays typed after its unpin (-EBUSY on a
//! writable remap), so freeing it is a hazard.

use pvops::pte::flags;
use pvops::{Mfn, Pfn, PhysMem};
use pvops_model::xen::hypercalls::{INVLPG_MULTI, TLB_FLUSH_MULTI, UVMF_ALL};
use pvops_model::xen::{PageType, XenFault, XenModel};
use pvops_model::{on_vcpu, Fault, TlbHazard};
use pvops_xen64::abi::{errno, mmuext, uvmf, Call, MmuextOp};
use pvops_xen64::{HypercallTransport, Outcome};

mod common;
use common::{entry, mfn, mmu};

const RW: u64 = flags::PRESENT | flags::WRITABLE;
const URW: u64 = RW | flags::USER;
/// Tables under the boot root: L3 (10), L2 (11), L1 (12); a spare L4 (13).
const SPARE_L4: u64 = 13;
const PAGE_A: u64 = 20;
const PAGE_B: u64 = 21;
/// The probe address: L4/L3/L2/L1 index 0, page 0.
const PROBE: u64 = 0;

fn ext(m: &XenModel, cmd: u32, arg1: u64, arg2: u64) -> Outcome {
    m.call(&Call::MmuextOp(&[MmuextOp { cmd, arg1, arg2 }]))
}

fn remap(m: &XenModel, pfn: u64, writable: bool, uvm: u64) -> Outcome {
    let f = if writable { RW } else { flags::PRESENT };
    m.call(&Call::UpdateVaMapping { va: m.direct_map_va(Pfn(pfn)), val: entry(m, pfn, f), flags: uvm })
}

/// Two vCPUs on the boot root, where `PROBE` → `PAGE_A` (kernel mapping);
/// both have read it.
fn model() -> &'static XenModel {
    let m = XenModel::leaked_smp(64, 11, 2);
    let root = m.pt_base().0;
    for p in [10, 11, 12, SPARE_L4] {
        assert!(remap(m, p, false, uvmf::NONE).is_ok());
    }
    assert!(mmu(m, 12, 0, entry(m, PAGE_A, RW)).is_ok());
    assert!(mmu(m, 11, 0, entry(m, 12, URW)).is_ok());
    assert!(mmu(m, 10, 0, entry(m, 11, URW)).is_ok());
    assert!(mmu(m, root, 0, entry(m, 10, URW)).is_ok());
    for cpu in 0..2 {
        assert_eq!(read_on(m, cpu), Ok(Pfn(PAGE_A)));
    }
    m.reset_counters();
    m
}

fn read_on(m: &XenModel, cpu: usize) -> Result<Pfn, XenFault> {
    on_vcpu(cpu, || m.access(PROBE, false, false))
}

/// vCPU 0 points the probe at `to` with `mmu_update`, then `INVLPG_LOCAL`.
fn retarget_local(m: &XenModel, to: u64) {
    assert!(mmu(m, 12, 0, entry(m, to, RW)).is_ok());
    assert!(ext(m, mmuext::INVLPG_LOCAL, PROBE, 0).is_ok());
}

#[test]
fn a_local_flush_leaves_the_other_vcpu_stale_and_multi_flushes_it() {
    // smp-notes §4, the stale-TLB experiment, row by row.
    let m = model();
    retarget_local(m, PAGE_B);
    assert_eq!(read_on(m, 0), Ok(Pfn(PAGE_B)));
    assert_eq!(read_on(m, 1), Ok(Pfn(PAGE_A)), "stale on vCPU 1");
    assert!(ext(m, INVLPG_MULTI, PROBE + 0x1000, 0b10).is_ok());
    assert_eq!(read_on(m, 1), Ok(Pfn(PAGE_A)), "INVLPG_MULTI of another page");
    assert!(ext(m, INVLPG_MULTI, PROBE, 0b01).is_ok());
    assert_eq!(read_on(m, 1), Ok(Pfn(PAGE_A)), "a bitmap without vCPU 1");
    assert!(ext(m, INVLPG_MULTI, PROBE, 0b10).is_ok());
    assert_eq!(read_on(m, 1), Ok(Pfn(PAGE_B)));

    retarget_local(m, PAGE_A);
    assert_eq!(read_on(m, 1), Ok(Pfn(PAGE_B)), "stale again after a LOCAL flush");
    assert!(ext(m, TLB_FLUSH_MULTI, 0, 0b10).is_ok());
    assert_eq!(read_on(m, 1), Ok(Pfn(PAGE_A)));

    // Bits for vCPUs the domain lacks are ignored, not refused.
    assert!(ext(m, TLB_FLUSH_MULTI, 0, u64::MAX).is_ok());
    let c = m.counters();
    assert_eq!((c.invlpg_multis, c.tlb_flush_multis, c.remote_flushes), (3, 2, 4));
}

#[test]
fn a_cross_call_whose_handler_flushes_locally_makes_the_other_vcpu_fresh() {
    // An event-channel IPI: vCPU 1's handler issues its own INVLPG_LOCAL.
    use pvops::Cpus;
    let m = model();
    retarget_local(m, PAGE_B);
    let handler = || {
        assert_eq!(pvops_model::vcpu::current(), 1);
        let r = ext(m, mmuext::INVLPG_LOCAL, PROBE, 0);
        if r.is_ok() {
            Ok(())
        } else {
            Err(pvops::PvError::WrongState { what: "INVLPG_LOCAL refused" })
        }
    };
    assert_eq!(read_on(m, 1), Ok(Pfn(PAGE_A)));
    assert_eq!(m.cpus().call_on(pvops::CpuMask::first(2), &handler), Ok(()));
    assert_eq!(read_on(m, 1), Ok(Pfn(PAGE_B)));
    assert_eq!(m.counters().remote_flushes, 0, "each vCPU flushed itself");
}

#[test]
fn a_flush_on_vcpu_1_is_local_to_it_too() {
    let m = model();
    retarget_local(m, PAGE_B);
    on_vcpu(1, || assert!(ext(m, mmuext::TLB_FLUSH_LOCAL, 0, 0).is_ok()));
    assert_eq!(read_on(m, 1), Ok(Pfn(PAGE_B)));
    on_vcpu(1, || assert!(mmu(m, 12, 0, entry(m, PAGE_A, RW)).is_ok()));
    assert_eq!(read_on(m, 0), Ok(Pfn(PAGE_B)), "vCPU 0 stale after vCPU 1's change");
    on_vcpu(1, || assert!(ext(m, INVLPG_MULTI, PROBE, 0b11).is_ok()));
    assert_eq!((read_on(m, 0), read_on(m, 1)), (Ok(Pfn(PAGE_A)), Ok(Pfn(PAGE_A))));
}

#[test]
fn update_va_mapping_flushes_the_caller_locally_and_every_vcpu_with_uvmf_all() {
    // A direct-map slot made read-only: with a LOCAL flush vCPU 1 may still
    // write through its old writable translation; with UVMF_ALL it may not.
    fn store(m: &XenModel, cpu: usize) {
        on_vcpu(cpu, || m.write_entry(Pfn(PAGE_B), 0, 7));
    }
    let m = model();
    assert!(remap(m, PAGE_B, false, uvmf::INVLPG).is_ok());
    store(m, 0);
    assert_eq!(m.violations().len(), 1, "vCPU 0 faults on the read-only slot");
    assert!(m.tlb_violations().is_empty());
    store(m, 1);
    let h = m.tlb_violations();
    assert_eq!(h.iter().map(|v| (v.hazard, v.frame)).collect::<Vec<_>>(), [(TlbHazard::StaleWrite, PAGE_B)]);

    let m = model();
    assert!(remap(m, PAGE_B, false, uvmf::INVLPG | UVMF_ALL).is_ok());
    store(m, 1);
    assert_eq!(m.violations().len(), 1, "vCPU 1 faults too");
    assert!(m.tlb_violations().is_empty());

    // The same for the machine TLB: a full flush to all.
    let m = model();
    retarget_local(m, PAGE_B);
    assert!(remap(m, PAGE_A, true, uvmf::TLB_FLUSH | UVMF_ALL).is_ok());
    assert_eq!(read_on(m, 1), Ok(Pfn(PAGE_B)));
    assert_eq!(m.counters().remote_flushes, 1);
}

#[test]
fn new_baseptr_loads_only_the_callers_root() {
    let m = model();
    let root = m.pt_base().0;
    let spare = mfn(m, SPARE_L4);
    assert!(ext(m, mmuext::PIN_L4_TABLE, spare.0, 0).is_ok());
    on_vcpu(1, || assert!(ext(m, mmuext::NEW_BASEPTR, spare.0, 0).is_ok()));
    assert_eq!((m.kernel_base_of(0), m.kernel_base_of(1)), (mfn(m, root), spare));
    assert_eq!(on_vcpu(1, || m.kernel_base()), spare);
    assert_eq!(read_on(m, 1), Err(XenFault::Page(Fault::NotPresent(pvops::Level::L4))));
    assert_eq!(read_on(m, 0), Ok(Pfn(PAGE_A)));
    // Pin + vCPU 1's guest_table; the boot root: pin + vCPU 0's.
    assert_eq!(m.frame_info(Pfn(SPARE_L4)).type_count, 2);
    assert_eq!(m.frame_info(m.pt_base()).type_count, 2);
    assert!(ext(m, mmuext::UNPIN_TABLE, spare.0, 0).is_ok());
    let e = m.check_quiescent().unwrap_err();
    assert!(e.contains("vCPU 1: kernel base"), "{e}");
}

#[test]
fn unpinning_a_root_another_vcpu_holds_succeeds_but_it_stays_typed() {
    // smp-notes §4 "drop_mm_ref hazard, reproduced", step by step.
    let m = model();
    let spare = mfn(m, SPARE_L4);
    assert!(mmu(m, SPARE_L4, 0, entry(m, 10, URW)).is_ok(), "a copy of the boot root's user half");
    assert!(ext(m, mmuext::PIN_L4_TABLE, spare.0, 0).is_ok());
    on_vcpu(1, || assert!(ext(m, mmuext::NEW_BASEPTR, spare.0, 0).is_ok()));
    assert!(ext(m, mmuext::UNPIN_TABLE, spare.0, 0).is_ok(), "rc 0: unpin drops only the pin");
    assert!(!m.is_pinned(Pfn(SPARE_L4)));
    assert_eq!(m.page_type(Pfn(SPARE_L4)), PageType::Table(pvops::Level::L4));
    assert_eq!(remap(m, SPARE_L4, true, uvmf::INVLPG).status, -errno::EBUSY);
    // Freeing it now is what the model must catch: vCPU 1 still runs on it.
    m.frame_freed(Pfn(SPARE_L4));
    let v = m.tlb_violations();
    assert_eq!(v.first().map(|v| (v.hazard, v.frame, v.stale)), Some((TlbHazard::Freed, SPARE_L4, false)));
    m.machine().clear_tlb_violations();

    // Once vCPU 1 has switched away, it is untyped and free to go.
    let root = mfn(m, m.pt_base().0);
    on_vcpu(1, || assert!(ext(m, mmuext::NEW_BASEPTR, root.0, 0).is_ok()));
    assert_eq!(m.page_type(Pfn(SPARE_L4)), PageType::None);
    assert!(remap(m, SPARE_L4, true, uvmf::INVLPG | UVMF_ALL).is_ok());
    m.frame_freed(Pfn(SPARE_L4));
    assert_eq!(m.tlb_violations(), []);
    assert_eq!(m.check_quiescent(), Ok(()));
}

#[test]
fn user_base_pointers_are_per_vcpu_and_checked_on_each() {
    let m = model();
    let spare = mfn(m, SPARE_L4);
    on_vcpu(1, || assert!(ext(m, mmuext::NEW_USER_BASEPTR, spare.0, 0).is_ok()));
    assert_eq!((m.user_base_of(0), m.user_base_of(1)), (Mfn(0), spare));
    assert_eq!(m.probe(PROBE, true, false), Err(XenFault::DomainCrashed), "vCPU 0 has no user root");
    // The boot root maps slot 0, the empty user root does not: not a pair.
    let e = m.check_invariants().unwrap_err();
    assert!(e.contains("vCPU 1") && e.contains("slot 0"), "{e}");
}

#[test]
fn a_type_change_flushes_every_vcpu_that_has_not_flushed_since() {
    // PAGE_A's writable L1e goes; vCPU 1 flushed after that, vCPU 0 did
    // not. Pinning PAGE_A as a table flushes vCPU 0 (tlbflush_filter keeps
    // vCPU 1 out), so no writable translation of the new table is left.
    let m = model();
    assert!(remap(m, PAGE_A, false, uvmf::NONE).is_ok());
    assert!(mmu(m, 12, 1, entry(m, PAGE_B, RW)).is_ok());
    assert!(mmu(m, 12, 0, 0).is_ok());
    on_vcpu(1, || assert!(ext(m, mmuext::TLB_FLUSH_LOCAL, 0, 0).is_ok()));
    assert!(mmu(m, 12, 1, 0).is_ok());
    assert_eq!(read_on(m, 0), Ok(Pfn(PAGE_A)), "stale on vCPU 0");
    let before = m.counters().tlb_flushes;
    assert!(ext(m, mmuext::PIN_L1_TABLE, mfn(m, PAGE_A).0, 0).is_ok());
    assert_eq!(m.counters().tlb_flushes, before, "no flush record: Xen's own");
    assert_eq!(read_on(m, 0), Err(XenFault::Page(Fault::NotPresent(pvops::Level::L1))), "vCPU 0 flushed");
    assert_eq!(
        on_vcpu(1, || m.access(0x1000, false, false)),
        Ok(Pfn(PAGE_B)),
        "vCPU 1 flushed after PAGE_A's last reference went: filtered out, its later stale entry stays"
    );
    assert_eq!(m.check_invariants(), Ok(()));
}

#[test]
fn event_masks_are_per_vcpu() {
    use pvops::Cpus;
    let m = model();
    let cpus = m.cpus();
    on_vcpu(1, || assert!(!cpus.mask_events()));
    assert!(cpus.events_masked(1) && !cpus.events_masked(0));
    let ok = || Ok(());
    assert_eq!(cpus.call_on(pvops::CpuMask::one(1), &ok), Err(pvops::PvError::CpuTimeout { cpu: 1 }));
    on_vcpu(1, || cpus.restore_events(false));
    assert_eq!(cpus.call_on(pvops::CpuMask::one(1), &ok), Ok(()));
    let p = m.platform();
    assert_eq!(p.cpus.online(), pvops::CpuMask::first(2), "the platform hands the backend these vCPUs");
}
