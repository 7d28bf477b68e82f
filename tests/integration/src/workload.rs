//! The demo workload of `cargo xtask run` (shared with the kernel, in
//! `pvops-conformance`), and its tables.
//!
//! [`measured_xen_demo`] runs the same steps on the Xen model but counts
//! where the traffic happens, not with the backend's own `stats()`:
//! hypercalls by kind from `XenModel::counters()` deltas (the model's
//! transport), and direct stores with a [`CountingMem`] between the backend
//! and the model's memory. The kernel does the same at its own seams; xtask
//! compares both with the README table.

use kernel_glue::{Mm, PageFlags};
use pvops::PvError;
use pvops_conformance::workload::CountingMem;
pub use pvops_conformance::workload::{demo, Step};

use crate::platform::{boot_backend, HostPlatform};

/// Renders steps as a table.
pub fn render(backend: &str, steps: &[Step]) -> String {
    let rows: Vec<(String, [u64; 6])> = steps
        .iter()
        .map(|s| {
            let c = s.cost;
            (
                s.what.clone(),
                [c.hypercalls, c.multicall_entries, c.mmu_updates, c.mmuext_ops, c.update_va_mappings, c.direct_writes],
            )
        })
        .collect();
    render_counts(&format!("[{backend}] step"), &rows)
}

/// A table of per-kind counts under `title`.
pub fn render_counts(title: &str, rows: &[(String, [u64; 6])]) -> String {
    let mut out = format!(
        "{:<42} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        title, "hypercalls", "mc-ents", "mmu_upd", "mmuext", "uvm", "direct"
    );
    for (what, c) in rows {
        out += &format!("{:<42} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}\n", what, c[0], c[1], c[2], c[3], c[4], c[5]);
    }
    out
}

/// Runs the demo of `pages` pages on `mm` (backend `name`, on `host`) and
/// prints its table and leak line as the host reports do; true when it ran
/// and leaked nothing.
pub fn print_demo(name: &str, mm: &Mm<'_>, host: &HostPlatform, pages: u64) -> bool {
    match demo(mm, pages) {
        Ok((steps, leaked)) => {
            print!("{}", render(name, &steps));
            println!("[{name}] frames leaked: {leaked}{}", (host.counters)());
            leaked == 0
        }
        Err(e) => {
            println!("{name}: demo failed: {e}");
            false
        }
    }
}

/// The demo's steps (the names and order of `pvops_conformance::workload::demo`,
/// which the kernel's `HCSTEP` lines and the README table use too), each
/// measured by `measure` (cumulative counts in README column order).
pub fn measured_demo(
    mm: &Mm<'_>,
    pages: u64,
    measure: &dyn Fn() -> [u64; 6],
) -> Result<Vec<(String, [u64; 6])>, PvError> {
    let mut rows = Vec::new();
    let mut step = |what: String, f: &mut dyn FnMut() -> Result<(), PvError>| {
        let before = measure();
        let r = f();
        let after = measure();
        let mut d = [0u64; 6];
        for i in 0..6 {
            d[i] = after[i] - before[i];
        }
        rows.push((what, d));
        r
    };
    let mut a = None;
    step("create A".into(), &mut || mm.create().map(|s| a = Some(s)))?;
    let a = a.ok_or(PvError::WrongState { what: "demo: no space A" })?;
    step(format!("map {pages} pages in A (unpinned)"), &mut || {
        (0..pages).try_for_each(|i| mm.map(&a, 0x40_0000 + i * 0x1000, PageFlags::DATA).map(|_| ()))
    })?;
    step("activate A (first use: pin)".into(), &mut || mm.activate(&a))?;
    step("map 1 page in A (pinned, new tables)".into(), &mut || {
        mm.map(&a, 0x7f00_0000_0000, PageFlags::DATA).map(|_| ())
    })?;
    let mut b = None;
    step("fork A -> B".into(), &mut || mm.fork(&a).map(|s| b = Some(s)))?;
    let b = b.ok_or(PvError::WrongState { what: "demo: no space B" })?;
    step("switch to B (first use: pin)".into(), &mut || mm.activate(&b))?;
    step("switch to A".into(), &mut || mm.activate(&a))?;
    step("switch to B".into(), &mut || mm.activate(&b))?;
    step("switch to init_mm".into(), &mut || mm.activate_init())?;
    let mut a = Some(a);
    step("exit A (unpin, free)".into(), &mut || a.take().map_or(Ok(()), |s| mm.exit(s).map_err(|(e, _)| e)))?;
    let mut b = Some(b);
    step("exit B (unpin, free)".into(), &mut || b.take().map_or(Ok(()), |s| mm.exit(s).map_err(|(e, _)| e)))?;
    Ok(rows)
}

/// The demo on a fresh Xen model with the xen64 backend, measured at the
/// model's transport and at a counting `PhysMem` seam.
pub fn measured_xen_demo(pages: u64) -> Result<Vec<(String, [u64; 6])>, String> {
    let mut host: HostPlatform = crate::xen_host::xen_platform(4096);
    let model = host.xen.ok_or("the Xen host platform has no model")?;
    let mut plat = model.platform();
    let counter: &'static CountingMem = Box::leak(Box::new(CountingMem::new(plat.mem)));
    plat.mem = counter;
    host.platform = Box::leak(Box::new(plat));
    let desc = pvops::backends().into_iter().find(|d| d.name == "xen64").ok_or("xen64 is not registered")?;
    let booted = boot_backend(desc, &host).map_err(|e| format!("boot: {e}"))?;
    let measure = || {
        let c = model.counters();
        [c.hypercalls, c.multicall_entries, c.mmu_updates, c.mmuext_ops, c.update_va_mappings, counter.stores()]
    };
    measured_demo(booted.mm, pages, &measure).map_err(|e| format!("demo: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvops_xen64 as _;

    #[test]
    fn measured_demo_counts_at_the_model_and_matches_the_backend_on_hypercalls() {
        let rows = measured_xen_demo(8).expect("demo");
        assert_eq!(rows.len(), 11);
        // Pinning A is one multicall of remaps and pins, then the switch.
        assert_eq!(rows[2].0, "activate A (first use: pin)");
        assert!(rows[2].1[0] >= 1, "{rows:?}");
        // Nothing traps while A is not live; its tables are stored directly.
        assert_eq!(rows[1].1[0], 0);
        assert!(rows[1].1[5] > 0, "direct stores are counted: {rows:?}");
    }
}
