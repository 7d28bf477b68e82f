//! The native machine with two vCPUs: each has its own cr3 and TLB, a flush
//! on one leaves the other's stale entries alone, and a cross-call runs a
//! flush on the other (what a native shootdown IPI does; smp-notes §5.4).

use pvops::pte::flags;
use pvops::{CpuMask, Cpus, Level, Pfn, PhysMem, PvError};
use pvops_model::{on_vcpu, Access, Fault, Machine, TlbHazard};
use pvops_native::NativeCpu;

mod common;
use common::{e, va};

const ROOT: u64 = 1;
const L3: u64 = 2;
const L2: u64 = 3;
const L1: u64 = 4;
const OTHER_ROOT: u64 = 5;
const DATA: u64 = 10;
const OTHER: u64 = 11;
const URW: u64 = flags::PRESENT | flags::WRITABLE | flags::USER;
const VA: u64 = 0x40_0000;

/// Two vCPUs, both with cr3 = `ROOT`, where `VA` → `DATA`; each has read it.
fn machine() -> Machine {
    let m = Machine::with_vcpus(64, 2);
    let v = va(VA);
    m.write(ROOT, v.index(Level::L4), e(L3, URW));
    m.write(L3, v.index(Level::L3), e(L2, URW));
    m.write(L2, v.index(Level::L2), e(L1, URW));
    m.write(L1, v.index(Level::L1), e(DATA, URW));
    for cpu in 0..2 {
        on_vcpu(cpu, || {
            m.set_cr3(ROOT << 12);
            assert_eq!(m.access(v, Access::USER_READ), Ok(DATA));
        });
    }
    m
}

fn read_on(m: &Machine, cpu: usize) -> Result<u64, Fault> {
    on_vcpu(cpu, || m.access(va(VA), Access::USER_READ))
}

/// vCPU 0 points `VA` at `OTHER` and flushes only itself.
fn remap_local(m: &Machine) {
    m.write_entry(Pfn(L1), va(VA).index(Level::L1), e(OTHER, URW));
    m.invlpg(va(VA));
}

#[test]
fn each_vcpu_has_its_own_cr3() {
    let m = machine();
    on_vcpu(1, || m.set_cr3(OTHER_ROOT << 12));
    assert_eq!(m.cr3_of(0), ROOT << 12);
    assert_eq!(m.cr3_of(1), OTHER_ROOT << 12);
    assert_eq!(on_vcpu(1, || m.read_cr3()), OTHER_ROOT << 12);
    assert_eq!(m.read_cr3(), ROOT << 12, "the test thread is vCPU 0");
    assert_eq!(read_on(&m, 1), Err(Fault::NotPresent(Level::L4)));
}

#[test]
fn a_local_invlpg_leaves_the_other_vcpu_stale() {
    let m = machine();
    remap_local(&m);
    assert_eq!(read_on(&m, 0), Ok(OTHER), "vCPU 0 flushed");
    assert_eq!(read_on(&m, 1), Ok(DATA), "vCPU 1 still has the old translation");
    assert!(m.tlb_stale_of(0).is_empty());
    assert_eq!(m.tlb_stale_of(1).iter().map(|c| (c.va, c.frame)).collect::<Vec<_>>(), [(VA, DATA)]);
    // Only a flush on vCPU 1 drops it; a full flush of vCPU 0 does not.
    m.flush_all();
    assert_eq!(read_on(&m, 1), Ok(DATA));
    on_vcpu(1, || m.invlpg(va(VA)));
    assert_eq!(read_on(&m, 1), Ok(OTHER));
}

#[test]
fn a_cross_call_flush_makes_the_other_vcpu_fresh() {
    let m = machine();
    remap_local(&m);
    let flush = || {
        assert_eq!(pvops_model::vcpu::current(), 1, "the handler runs as its target");
        m.invlpg(va(VA));
        Ok(())
    };
    assert_eq!(m.cpus().call_on(CpuMask::first(2), &flush), Ok(()));
    assert_eq!(read_on(&m, 1), Ok(OTHER));
    let c = m.cpus().counters();
    assert_eq!((c.calls, c.ipis, c.handled, c.timeouts), (1, 1, 1, 0));
}

#[test]
fn a_vcpu_that_never_loaded_the_root_caches_nothing_of_it() {
    let m = machine();
    on_vcpu(1, || m.set_cr3(OTHER_ROOT << 12));
    remap_local(&m);
    assert!(m.tlb_stale_of(1).is_empty(), "a cr3 write dropped vCPU 1's non-global entries");
    on_vcpu(1, || m.set_cr3(ROOT << 12));
    assert_eq!(read_on(&m, 1), Ok(OTHER));
}

#[test]
fn freeing_a_frame_only_the_other_vcpus_stale_entry_reaches_is_a_hazard() {
    let m = machine();
    remap_local(&m);
    m.frame_freed(Pfn(DATA));
    let v = m.tlb_violations();
    // The remap itself already diverged (vCPU 1 may still read DATA while
    // the tables give OTHER); the free is a hazard of its own.
    assert_eq!(
        v.iter().map(|v| (v.hazard, v.frame, v.stale)).collect::<Vec<_>>(),
        [(TlbHazard::Diverged, DATA, true), (TlbHazard::Freed, DATA, true)]
    );
}

#[test]
fn pointing_a_leaf_at_another_frame_before_the_flush_is_a_hazard() {
    // Clear, flush every CPU, then install: no divergence.
    let m = machine();
    let index = va(VA).index(Level::L1);
    m.write_entry(Pfn(L1), index, 0);
    m.invlpg(va(VA));
    on_vcpu(1, || m.invlpg(va(VA)));
    m.write_entry(Pfn(L1), index, e(OTHER, URW));
    assert_eq!(m.tlb_violations(), []);
    // Clear, flush this CPU only, install: vCPU 1 may still hold DATA.
    let m = machine();
    m.write_entry(Pfn(L1), index, 0);
    m.invlpg(va(VA));
    m.write_entry(Pfn(L1), index, e(OTHER, URW));
    let v = m.tlb_violations();
    assert_eq!(v.iter().map(|v| (v.hazard, v.frame, v.va)).collect::<Vec<_>>(), [(TlbHazard::Diverged, DATA, VA)]);
    // A vCPU alone with the space may switch the frame and then flush: it
    // runs no user code in between.
    let m = machine();
    on_vcpu(1, || m.set_cr3(OTHER_ROOT << 12));
    m.write_entry(Pfn(L1), index, e(OTHER, URW));
    m.invlpg(va(VA));
    assert_eq!(m.tlb_violations(), []);
}

#[test]
fn freeing_a_root_the_other_vcpu_has_loaded_is_a_hazard() {
    let m = machine();
    m.set_cr3(OTHER_ROOT << 12);
    m.frame_freed(Pfn(ROOT));
    let v = m.tlb_violations();
    assert_eq!(v.iter().map(|v| (v.hazard, v.frame, v.stale)).collect::<Vec<_>>(), [(TlbHazard::Freed, ROOT, false)]);
}

#[test]
fn cross_calls_to_offline_masked_or_deaf_vcpus_are_errors_naming_them() {
    let m = Machine::with_vcpus(16, 3);
    let cpus = m.cpus();
    let ok = || Ok(());
    m.cpus().set_online(2, false);
    assert_eq!(cpus.online(), CpuMask::first(2));
    assert_eq!(cpus.call_on(CpuMask::first(3), &ok), Err(PvError::CpuOffline { cpu: 2 }));
    assert_eq!(cpus.counters().ipis, 0, "nothing sent when a target is offline");
    on_vcpu(1, || assert!(!cpus.mask_events()));
    assert_eq!(cpus.call_on(CpuMask::one(1), &ok), Err(PvError::CpuTimeout { cpu: 1 }));
    assert_eq!(cpus.pending(1), 0, "a timed-out call is withdrawn");
    on_vcpu(1, || cpus.restore_events(false));
    cpus.set_unresponsive(1, true);
    assert_eq!(cpus.call_on(CpuMask::one(1), &ok), Err(PvError::CpuTimeout { cpu: 1 }));
    cpus.set_unresponsive(1, false);
    assert_eq!(cpus.call_on(CpuMask::one(1), &ok), Ok(()));
    assert_eq!(cpus.call_on(CpuMask::one(0), &ok), Ok(()), "the caller itself is skipped");
    let refuse = || Err(PvError::Reentered { cpu: 1 });
    assert_eq!(cpus.call_on(CpuMask::one(1), &refuse), Err(PvError::Reentered { cpu: 1 }));
    assert_eq!(cpus.handler_errors(), [(1, PvError::Reentered { cpu: 1 })]);
    let c = cpus.counters();
    assert_eq!((c.calls, c.ipis, c.handled, c.timeouts), (4, 4, 2, 2));
}

#[test]
fn events_are_masked_per_vcpu_and_while_a_handler_runs() {
    let m = Machine::with_vcpus(16, 2);
    let cpus = m.cpus();
    assert!(!cpus.mask_events());
    assert!(cpus.mask_events(), "already masked");
    assert!(!cpus.events_masked(1));
    let seen = std::sync::Mutex::new(None);
    let probe = || {
        *seen.lock().unwrap() = Some(cpus.events_masked(1));
        Ok(())
    };
    assert_eq!(cpus.call_on(CpuMask::one(1), &probe), Ok(()), "the caller's own mask does not matter");
    assert_eq!(*seen.lock().unwrap(), Some(true), "a handler runs with events masked");
    assert!(!cpus.events_masked(1), "and unmasks them after");
    cpus.restore_events(false);
    assert!(!cpus.events_masked(0));
}

#[test]
fn a_thread_running_as_a_vcpu_the_machine_lacks_is_a_setup_error() {
    let m = Machine::with_vcpus(16, 2);
    let r = std::panic::catch_unwind(|| on_vcpu(2, || m.cr3()));
    assert!(r.is_err());
    assert_eq!(m.cr3_of(2), 0);
}
