//! The demo workload of `cargo xtask run` (shared with the kernel, in
//! `pvops-conformance`), and its table.

pub use pvops_conformance::workload::{demo, Step};

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
