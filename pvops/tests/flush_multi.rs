//! The portable `PvMmuOps::flush_tlb_multi`: a local flush where the caller
//! is a target, one cross-call for the others (online only), never a
//! cross-call to itself. Observed through a recording `Cpus` and backend.

use std::ops::Range;
use std::sync::Mutex;

use pvops::{CpuMask, Cpus, Flush, Level, MmServices, Pfn, Pte, PvError, PvMmuOps, VirtAddr};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Invlpg(u64),
    FlushAll,
    CallOn(CpuMask),
}

struct Rec {
    me: usize,
    online: CpuMask,
    log: Mutex<Vec<Event>>,
    /// What `call_on` answers instead of running anything (a deaf CPU).
    deaf: Option<PvError>,
}

impl Cpus for Rec {
    fn this_cpu(&self) -> usize {
        self.me
    }
    fn online(&self) -> CpuMask {
        self.online
    }
    fn mask_events(&self) -> bool {
        false
    }
    fn restore_events(&self, _: bool) {}
    fn call_on(&self, cpus: CpuMask, f: &(dyn Fn() -> Result<(), PvError> + Sync)) -> Result<(), PvError> {
        self.log.lock().unwrap().push(Event::CallOn(cpus));
        if let Some(e) = self.deaf {
            return Err(e);
        }
        // Stand-in for the other CPUs: what they would run, logged here too.
        for _ in cpus.iter() {
            f()?;
        }
        Ok(())
    }
}

impl PvMmuOps for Rec {
    fn name(&self) -> &'static str {
        "rec"
    }
    fn reserved_l4_slots(&self) -> Range<usize> {
        0..0
    }
    fn pgd_alloc(&self, _: &dyn MmServices, _: Pfn) -> Result<(), PvError> {
        Ok(())
    }
    fn pgd_free(&self, _: &dyn MmServices, _: Pfn) -> Result<(), PvError> {
        Ok(())
    }
    fn alloc_pt(&self, _: &dyn MmServices, _: Pfn, _: Level, _: Pfn) -> Result<(), PvError> {
        Ok(())
    }
    fn release_pt(&self, _: &dyn MmServices, _: Pfn, _: Level, _: Pfn) -> Result<(), PvError> {
        Ok(())
    }
    fn set_entry(&self, _: &dyn MmServices, _: Level, _: Pfn, _: usize, _: Pte) -> Result<(), PvError> {
        Ok(())
    }
    fn read_entry(&self, _: Level, _: Pfn, _: usize) -> Result<Pte, PvError> {
        Ok(Pte::EMPTY)
    }
    fn protect_start(&self, _: &dyn MmServices, _: Pfn, _: usize) -> Result<Pte, PvError> {
        Ok(Pte::EMPTY)
    }
    fn protect_commit(&self, _: &dyn MmServices, _: Pfn, _: usize, _: Pte, _: Pte) -> Result<(), PvError> {
        Ok(())
    }
    fn clear_accessed_dirty(&self, _: &dyn MmServices, _: Pfn, _: usize, _: u64) -> Result<Pte, PvError> {
        Ok(Pte::EMPTY)
    }
    fn write_cr3(&self, _: &dyn MmServices, _: Pfn) -> Result<(), PvError> {
        Ok(())
    }
    fn read_cr3(&self) -> Pfn {
        Pfn(0)
    }
    fn activate_mm(&self, _: &dyn MmServices, _: Pfn) -> Result<(), PvError> {
        Ok(())
    }
    fn exit_mm(&self, _: &dyn MmServices, _: Pfn) -> Result<(), PvError> {
        Ok(())
    }
    fn flush_tlb_all(&self) -> Result<(), PvError> {
        self.log.lock().unwrap().push(Event::FlushAll);
        Ok(())
    }
    fn flush_tlb_one(&self, va: VirtAddr) -> Result<(), PvError> {
        self.log.lock().unwrap().push(Event::Invlpg(va.as_u64()));
        Ok(())
    }
    fn lazy_mmu_enter(&self) {}
    fn lazy_mmu_leave(&self) -> Result<(), PvError> {
        Ok(())
    }
    fn lazy_mmu_flush(&self) -> Result<(), PvError> {
        Ok(())
    }
    fn make_entry(&self, pte: Pte) -> Result<u64, PvError> {
        Ok(pte.0)
    }
    fn entry_value(&self, raw: u64) -> Pte {
        Pte(raw)
    }
    fn cpus(&self) -> &dyn Cpus {
        self
    }
}

fn rec(me: usize, online: CpuMask) -> Rec {
    Rec { me, online, log: Mutex::new(Vec::new()), deaf: None }
}

fn run(r: &Rec, cpus: CpuMask, flush: Flush) -> Vec<Event> {
    r.flush_tlb_multi(cpus, flush).unwrap();
    std::mem::take(&mut *r.log.lock().unwrap())
}

const VA: u64 = 0x40_0000;

#[test]
fn only_the_caller_is_a_local_flush_and_no_cross_call() {
    let r = rec(1, CpuMask::first(4));
    let va = VirtAddr::try_new(VA).unwrap();
    assert_eq!(run(&r, CpuMask::one(1), Flush::Page(va)), vec![Event::Invlpg(VA)]);
    assert_eq!(run(&r, CpuMask::one(1), Flush::All), vec![Event::FlushAll]);
    assert_eq!(run(&r, CpuMask::EMPTY, Flush::All), vec![]);
}

#[test]
fn other_online_targets_get_one_cross_call_and_the_caller_is_not_in_it() {
    let r = rec(1, CpuMask::first(3)); // CPUs 0..3 online; 5 is not
    let va = VirtAddr::try_new(VA).unwrap();
    let targets = CpuMask::EMPTY.with(0).with(1).with(2).with(5);
    let log = run(&r, targets, Flush::Page(va));
    assert_eq!(log[0], Event::CallOn(CpuMask::EMPTY.with(0).with(2)), "{log:?}");
    // Two remote invlpgs (stand-in) and the local one.
    assert_eq!(log.iter().filter(|e| **e == Event::Invlpg(VA)).count(), 3, "{log:?}");
    // Not a target itself: no local flush.
    let log = run(&r, CpuMask::one(0), Flush::Page(va));
    assert_eq!(log, vec![Event::CallOn(CpuMask::one(0)), Event::Invlpg(VA)]);
}

#[test]
fn a_short_range_is_page_by_page_and_a_long_one_a_full_flush() {
    let r = rec(0, CpuMask::one(0));
    let start = VirtAddr::try_new(VA).unwrap();
    let log = run(&r, CpuMask::one(0), Flush::Range { start, pages: 3 });
    assert_eq!(log, vec![Event::Invlpg(VA), Event::Invlpg(VA + 0x1000), Event::Invlpg(VA + 0x2000)]);
    assert_eq!(run(&r, CpuMask::one(0), Flush::Range { start, pages: 33 }), vec![Event::FlushAll]);
}

#[test]
fn an_unanswered_cross_call_is_the_error_and_the_local_flush_still_happens() {
    let r = Rec { deaf: Some(PvError::CpuTimeout { cpu: 2 }), ..rec(0, CpuMask::first(3)) };
    let va = VirtAddr::try_new(VA).unwrap();
    assert_eq!(r.flush_tlb_multi(CpuMask::first(3), Flush::Page(va)), Err(PvError::CpuTimeout { cpu: 2 }));
    let log = std::mem::take(&mut *r.log.lock().unwrap());
    assert_eq!(log, vec![Event::CallOn(CpuMask::EMPTY.with(1).with(2)), Event::Invlpg(VA)]);
}

#[test]
fn the_single_cpu_platform_has_no_one_to_call() {
    let single = pvops::SingleCpu;
    assert_eq!(single.call_on(CpuMask::one(1), &|| Ok(())), Err(PvError::CpuOffline { cpu: 1 }));
    assert_eq!(single.call_on(CpuMask::one(0), &|| Err(PvError::OutOfMemory)), Ok(()), "never calls itself");
}
