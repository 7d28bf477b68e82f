//! The demo workload of `cargo xtask run`: create, map, fork, switch and exit a
//! few address spaces, counting what each step cost.

use kernel_glue::{Mm, PageFlags};
use pvops::{OpStats, PvError, PvMmuOps};

/// One step of the workload and what it cost.
#[derive(Clone, Debug)]
pub struct Step {
    /// What was done.
    pub what: String,
    /// Hypervisor traffic of this step.
    pub cost: OpStats,
}

fn delta(a: OpStats, b: OpStats) -> OpStats {
    OpStats {
        hypercalls: b.hypercalls - a.hypercalls,
        multicall_entries: b.multicall_entries - a.multicall_entries,
        mmu_updates: b.mmu_updates - a.mmu_updates,
        mmuext_ops: b.mmuext_ops - a.mmuext_ops,
        update_va_mappings: b.update_va_mappings - a.update_va_mappings,
        direct_writes: b.direct_writes - a.direct_writes,
    }
}

fn step<T>(
    ops: &dyn PvMmuOps,
    steps: &mut Vec<Step>,
    what: String,
    f: impl FnOnce() -> Result<T, PvError>,
) -> Result<T, PvError> {
    let before = ops.stats();
    let r = f()?;
    steps.push(Step { what, cost: delta(before, ops.stats()) });
    Ok(r)
}

/// Runs the demo: two processes of `pages` pages each, a fork, switches, exits.
/// Returns the steps and the number of frames not returned (must be 0).
pub fn demo(mm: &Mm<'_>, pages: u64) -> Result<(Vec<Step>, i64), PvError> {
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

/// Renders steps as a table.
pub fn render(backend: &str, steps: &[Step]) -> String {
    let mut out = format!(
        "{:<42} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        format!("[{backend}] step"),
        "hypercalls",
        "mc-ents",
        "mmu_upd",
        "mmuext",
        "uvm",
        "direct"
    );
    for s in steps {
        let c = s.cost;
        out += &format!(
            "{:<42} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            s.what,
            c.hypercalls,
            c.multicall_entries,
            c.mmu_updates,
            c.mmuext_ops,
            c.update_va_mappings,
            c.direct_writes
        );
    }
    out
}
