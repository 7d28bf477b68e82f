//! The demo workload, shared by `cargo xtask run`'s host report and the booted
//! kernel so both count hypercalls for exactly the same steps: create, map,
//! pin, fork, switch and exit a few address spaces.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use kernel_glue::{Mm, PageFlags};
use pvops::{OpStats, PvError, PvMmuOps};

/// One step of the workload and what it cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// What was done.
    pub what: String,
    /// Hypervisor traffic of this step.
    pub cost: OpStats,
}

fn step<T, O: PvMmuOps + ?Sized>(
    ops: &O,
    steps: &mut Vec<Step>,
    what: String,
    f: impl FnOnce() -> Result<T, PvError>,
) -> Result<T, PvError> {
    let before = ops.stats();
    let r = f()?;
    steps.push(Step { what, cost: ops.stats().since(before) });
    Ok(r)
}

/// Runs the demo: a process with `pages` pages, pinned, one more page, a fork,
/// switches, exits. Returns the steps and the number of frames not returned
/// (0 unless something leaked).
pub fn demo<O: PvMmuOps + ?Sized>(mm: &Mm<'_, O>, pages: u64) -> Result<(Vec<Step>, i64), PvError> {
    let ops = mm.ops();
    let free_before = mm.frames().free_frames() as i64;
    let mut steps = Vec::new();
    let mut a = step(ops, &mut steps, "create A".into(), || mm.create())?;
    step(ops, &mut steps, format!("map {pages} pages in A (unpinned)"), || {
        for i in 0..pages {
            mm.map(&a, 0x40_0000 + i * 0x1000, PageFlags::DATA)?;
        }
        Ok(())
    })?;
    step(ops, &mut steps, "activate A (first use: pin)".into(), || mm.activate(&mut a))?;
    step(ops, &mut steps, "map 1 page in A (pinned, new tables)".into(), || {
        mm.map(&a, 0x7f00_0000_0000, PageFlags::DATA)
    })?;
    let mut b = step(ops, &mut steps, "fork A -> B".into(), || mm.fork(&a))?;
    step(ops, &mut steps, "switch to B (first use: pin)".into(), || mm.activate(&mut b))?;
    step(ops, &mut steps, "switch to A".into(), || mm.activate(&mut a))?;
    step(ops, &mut steps, "switch to B".into(), || mm.activate(&mut b))?;
    step(ops, &mut steps, "switch to init_mm".into(), || mm.activate_init())?;
    step(ops, &mut steps, "exit A (unpin, free)".into(), || mm.exit(a).map_err(|(e, _)| e))?;
    step(ops, &mut steps, "exit B (unpin, free)".into(), || mm.exit(b).map_err(|(e, _)| e))?;
    let leaked = free_before - mm.frames().free_frames() as i64;
    Ok((steps, leaked))
}
