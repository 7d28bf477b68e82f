//! What a case runs against, and what it returns.

use alloc::format;
use alloc::string::String;
use core::fmt;

use kernel_glue::Mm;
use pvops::{Pfn, PvMmuOps};

/// What user (or kernel) mode can reach through the translation that is live now.
pub trait Machine {
    /// The frame user mode reaches at `va` for a read (or a write), or `None` if it faults.
    fn user_access(&self, va: u64, write: bool) -> Option<Pfn>;
    /// The frame kernel mode reaches at `va`, or `None` if it faults.
    fn kernel_access(&self, va: u64, write: bool) -> Option<Pfn>;
    /// The 64-bit word kernel mode on CPU `cpu` reads at `va` now, through
    /// that CPU's own TLB (real code on that CPU, or the model's vCPU), for
    /// the SMP cases. `va` is mapped whenever a case asks. `None`: this
    /// oracle cannot run code on `cpu` (a case that needs it fails).
    fn read_on(&self, cpu: usize, va: u64) -> Option<u64> {
        let _ = (cpu, va);
        None
    }
}

/// Everything a case needs. `O` is how the backend is called (see `kernel_glue::Mm`).
pub struct Env<'a, O: PvMmuOps + ?Sized = dyn PvMmuOps> {
    /// The memory manager under test.
    pub mm: &'a Mm<'a, O>,
    /// The access oracle.
    pub machine: &'a dyn Machine,
    /// A kernel-half address mapped (supervisor, writable) in `init_mm`.
    pub kernel_va: u64,
}

impl<O: PvMmuOps + ?Sized> fmt::Debug for Env<'_, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Env({:?})", self.mm)
    }
}

/// One conformance case.
pub struct Case<O: PvMmuOps + ?Sized = dyn PvMmuOps> {
    /// A claim, as a name.
    pub name: &'static str,
    /// The check.
    pub run: fn(&Env<'_, O>) -> CaseResult,
}

impl<O: PvMmuOps + ?Sized> fmt::Debug for Case<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Case({})", self.name)
    }
}

/// `Err(reason)` when the backend broke the claim.
pub type CaseResult = Result<(), String>;

/// Totals of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Cases that passed.
    pub passed: usize,
    /// Cases run.
    pub total: usize,
}

impl<O: PvMmuOps + ?Sized> Env<'_, O> {
    /// Runs one case, then checks the environment is back where it started:
    /// init_mm active, no frame leaked, no fault injection left armed.
    pub fn run_case(&self, case: &Case<O>) -> CaseResult {
        let frames = self.mm.frames();
        let before = frames.free_count();
        let result = (case.run)(self);
        frames.fail_allocation_after(None);
        if self.mm.active_pgd() != self.mm.init_pgd() {
            let _ = self.mm.activate_init();
            return result.and(Err(String::from("case left a user address space active")));
        }
        let after = frames.free_count();
        if after != before {
            return result.and(Err(format!("{} frame(s) leaked", before as i64 - after as i64)));
        }
        if !frames.has_metadata() {
            return result.and(Err(String::from("frame metadata vanished")));
        }
        result
    }
}
