//! SMP: what a remote TLB flush costs (issue 12, item 6), counted on the
//! 2-vCPU host models, beside what Linux does for the same operation.
//!
//! Each operation runs on vCPU 0 against an address space loaded on both
//! vCPUs (vCPU 1 has read every page, so its TLB holds them) or, as the
//! baseline, on vCPU 0 only. Every count comes from the models — the Xen
//! model's own counters (traps into the modelled Xen, records by command)
//! and `ModelCpus`' cross-call counters (IPIs sent, handlers run), the
//! machine model's `invlpg`/full-flush counts natively — never from the
//! backend's `stats()`. Single-threaded: a cross-call runs its handler at
//! once on the calling thread, as the target vCPU (`pvops_model::cpus`).

use std::fmt::Write as _;

use kernel_glue::{AddressSpace, PageFlags};
use pvops_integration::platform::{boot_smp, SmpBooted};
use pvops_model::vcpu;

use crate::linux::{self, Tables};

/// The backends measured.
pub const BACKENDS: [&str; 2] = ["native", "xen64"];
/// Page counts of the `unmap_range` rows.
pub const RANGE_PAGES: [u64; 5] = [1, 8, 32, 64, 512];
/// Frames per model: 512 pages and their tables, with room to spare.
const FRAMES: u64 = 2048;
/// First page of every range: one page past 4 MiB, so that no range
/// covers a whole L1 table's 2 MiB span and `unmap_range` frees no table
/// (these rows measure the clears and the flush; freed tables:
/// tests/integration/tests/lifecycle.rs).
const VA: u64 = 0x40_1000;
/// Pages the native backend's flush handler still `invlpg`s one by one
/// (`pvops/src/ops.rs`, the default `flush_tlb_multi`); above, a full flush.
pub const NATIVE_INVLPG_CEILING: u64 = 32;
/// Linux's `tlb_single_page_flush_ceiling` (arch/x86/mm/tlb.c): ranges of
/// up to this many pages are flushed page by page, larger ones entirely.
pub const LINUX_CEILING: u64 = 33;

/// The measured operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `Mm::unmap` of one page.
    Unmap,
    /// `Mm::unmap_range` of this many pages.
    UnmapRange(u64),
    /// `Mm::exit` of a space (one page mapped) that vCPU 1 holds lazily
    /// (baseline: that vCPU 1 never loaded): the drop-root cross-call.
    ExitLazy,
}

impl Op {
    /// Every operation, in table order.
    pub fn all() -> Vec<Op> {
        let mut v = vec![Op::Unmap];
        v.extend(RANGE_PAGES.iter().map(|&n| Op::UnmapRange(n)));
        v.push(Op::ExitLazy);
        v
    }

    /// Pages the operation unmaps (exit: the one mapped page).
    pub fn pages(self) -> u64 {
        match self {
            Op::Unmap | Op::ExitLazy => 1,
            Op::UnmapRange(n) => n,
        }
    }

    /// The row label.
    pub fn label(self) -> String {
        match self {
            Op::Unmap => "`unmap` 1 page".into(),
            Op::UnmapRange(n) => format!("`unmap_range` {n}"),
            Op::ExitLazy => "`exit`, vCPU 1 lazy".into(),
        }
    }
}

/// What one operation cost, as the models counted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmpCost {
    /// Traps into the modelled Xen (a multicall counts once).
    pub hypercalls: u64,
    /// `multicall` hypercalls.
    pub multicalls: u64,
    /// `mmu_update` records.
    pub mmu_updates: u64,
    /// `mmuext_op` records of every command.
    pub mmuext_ops: u64,
    /// `update_va_mapping` calls (alone or as a multicall entry).
    pub update_va_mappings: u64,
    /// `MMUEXT_TLB_FLUSH_MULTI` + `MMUEXT_INVLPG_MULTI` records.
    pub multi_flushes: u64,
    /// `MMUEXT_TLB_FLUSH_LOCAL` + `MMUEXT_INVLPG_LOCAL` records.
    pub local_flushes: u64,
    /// Flushes Xen did on a vCPU other than the caller (one per record and vCPU).
    pub remote_flushes: u64,
    /// `call_on`s that sent at least one IPI.
    pub cross_calls: u64,
    /// IPIs sent (one per target CPU).
    pub ipis: u64,
    /// Cross-call handlers run.
    pub handled: u64,
    /// `invlpg`s executed, on every CPU (machine model; native only).
    pub invlpgs: u64,
    /// Full TLB flushes (cr3 reloads) executed, on every CPU (native only).
    pub full_flushes: u64,
    /// cr3 writes, on every CPU (native only).
    pub cr3_writes: u64,
}

/// One measured row.
#[derive(Clone, Debug)]
pub struct SmpRow {
    /// `native` or `xen64`.
    pub backend: &'static str,
    /// The operation.
    pub op: Op,
    /// The space was loaded on both vCPUs (false: on vCPU 0 only).
    pub both: bool,
    /// What it cost.
    pub cost: SmpCost,
}

/// Every counter of the models now.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Snapshot {
    xen: pvops_model::xen::XenCounters,
    cpus: pvops_model::CpuCounters,
    tlb: (u64, u64, u64),
}

pub(crate) fn snapshot(b: &SmpBooted) -> Snapshot {
    Snapshot {
        xen: b.xen.map(|m| m.counters()).unwrap_or_default(),
        cpus: b.machine.cpus().counters(),
        tlb: b.machine.tlb_counts(),
    }
}

pub(crate) fn delta(a: Snapshot, z: Snapshot) -> SmpCost {
    let (x0, x1) = (a.xen, z.xen);
    SmpCost {
        hypercalls: x1.hypercalls - x0.hypercalls,
        multicalls: x1.multicalls - x0.multicalls,
        mmu_updates: x1.mmu_updates - x0.mmu_updates,
        mmuext_ops: x1.mmuext_ops - x0.mmuext_ops,
        update_va_mappings: x1.update_va_mappings - x0.update_va_mappings,
        multi_flushes: (x1.tlb_flush_multis + x1.invlpg_multis) - (x0.tlb_flush_multis + x0.invlpg_multis),
        local_flushes: (x1.tlb_flushes + x1.invlpgs) - (x0.tlb_flushes + x0.invlpgs),
        remote_flushes: x1.remote_flushes - x0.remote_flushes,
        cross_calls: z.cpus.calls - a.cpus.calls,
        ipis: z.cpus.ipis - a.cpus.ipis,
        handled: z.cpus.handled - a.cpus.handled,
        invlpgs: z.tlb.0 - a.tlb.0,
        full_flushes: z.tlb.1 - a.tlb.1,
        cr3_writes: z.tlb.2 - a.tlb.2,
    }
}

fn err(what: &str) -> impl Fn(pvops::PvError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// A space with `pages` pages mapped from [`VA`], activated on vCPU 1 (if
/// `both`; vCPU 1 then reads every page, so its TLB caches them) and on
/// vCPU 0, which runs the measured operation.
fn loaded_space(b: &SmpBooted, pages: u64, both: bool) -> Result<AddressSpace, String> {
    let s = b.mm.create().map_err(err("create"))?;
    for i in 0..pages {
        b.mm.map(&s, VA + i * 4096, PageFlags::DATA).map_err(err("map"))?;
    }
    if both {
        vcpu::on_vcpu(1, || b.mm.activate(&s)).map_err(err("activate on vCPU 1"))?;
        for i in 0..pages {
            if vcpu::on_vcpu(1, || b.user_read(VA + i * 4096)).is_none() {
                return Err(format!("vCPU 1 cannot read page {i}"));
            }
        }
    }
    b.mm.activate(&s).map_err(err("activate on vCPU 0"))?;
    Ok(s)
}

/// Back to `init_mm` on both vCPUs, then exit `s`.
fn teardown(b: &SmpBooted, s: AddressSpace) -> Result<(), String> {
    for cpu in [1, 0] {
        vcpu::on_vcpu(cpu, || b.mm.activate_init()).map_err(err("activate_init"))?;
    }
    b.mm.exit(s).map_err(|(e, _)| format!("exit: {e}"))
}

/// Runs `op` once on `b` (as vCPU 0) and returns what it cost. Fails if a
/// model saw a hazard or, with both vCPUs loaded, vCPU 1 can still read an
/// unmapped page afterwards (the flush did not reach it).
pub fn run_op(b: &SmpBooted, op: Op, both: bool) -> Result<SmpCost, String> {
    let s = loaded_space(b, op.pages(), both)?;
    let cost = match op {
        Op::Unmap | Op::UnmapRange(_) => {
            let before = snapshot(b);
            match op {
                Op::Unmap => b.mm.unmap(&s, VA).map_err(err("unmap"))?,
                _ => {
                    let n = b.mm.unmap_range(&s, VA, op.pages()).map_err(err("unmap_range"))?;
                    if n != op.pages() {
                        return Err(format!("unmap_range unmapped {n} of {} pages", op.pages()));
                    }
                }
            }
            let cost = delta(before, snapshot(b));
            let readers: &[usize] = if both { &[0, 1] } else { &[0] };
            for i in 0..op.pages() {
                for &cpu in readers {
                    if let Some(f) = vcpu::on_vcpu(cpu, || b.user_read(VA + i * 4096)) {
                        return Err(format!("vCPU {cpu} still reads page {i} ({f:?}) after the unmap"));
                    }
                }
            }
            teardown(b, s)?;
            cost
        }
        Op::ExitLazy => {
            if both {
                // vCPU 1 becomes a kernel thread that keeps the space loaded.
                vcpu::on_vcpu(1, || b.mm.enter_lazy());
            }
            b.mm.activate_init().map_err(err("activate_init"))?;
            let before = snapshot(b);
            b.mm.exit(s).map_err(|(e, _)| format!("exit: {e}"))?;
            let cost = delta(before, snapshot(b));
            if let Some(m) = b.xen {
                if m.kernel_base_of(1) != m.kernel_base_of(0) {
                    return Err("vCPU 1 is not back on init_mm after the exit".into());
                }
            }
            cost
        }
    };
    b.check()?;
    Ok(cost)
}

/// Boots `backend` on a 2-vCPU model.
pub fn boot(backend: &str) -> Result<SmpBooted, String> {
    boot_smp(backend, 2, FRAMES, 0).map_err(|e| format!("{backend} boots with 2 vCPUs: {e}"))
}

/// Every row: both backends, every operation, loaded on both vCPUs and on vCPU 0 only.
pub fn measure() -> Result<Vec<SmpRow>, String> {
    let mut rows = Vec::new();
    for backend in BACKENDS {
        let b = boot(backend)?;
        for op in Op::all() {
            for both in [true, false] {
                let cost = run_op(&b, op, both).map_err(|e| format!("{backend} {op:?} both={both}: {e}"))?;
                rows.push(SmpRow { backend, op, both, cost });
            }
        }
        b.check_quiescent()?;
    }
    Ok(rows)
}

/// What Linux does for the same operation with the mm on both CPUs (or, if
/// `!both`, on the calling CPU only), as (hypercalls, trapped PTE writes,
/// IPIs) on Xen PV or (IPIs, invlpg, full flushes) natively. See the
/// section text in `report.rs` for the sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxCost {
    /// Hypercalls (Xen PV).
    pub hypercalls: u64,
    /// `MMUEXT_*_MULTI` records (Xen PV).
    pub multi_flushes: u64,
    /// PTE clears that trap into Xen's writable-page-table emulation (Xen PV).
    pub trapped_writes: u64,
    /// IPIs sent.
    pub ipis: u64,
    /// `invlpg`s on every CPU (native).
    pub invlpgs: u64,
    /// Full flushes on every CPU (native).
    pub full_flushes: u64,
}

/// Linux's cost of `op` (see [`LinuxCost`]).
pub fn linux_cost(xen: bool, op: Op, both: bool) -> LinuxCost {
    let cpus = if both { 2 } else { 1 };
    let n = op.pages();
    match op {
        Op::Unmap | Op::UnmapRange(_) if xen => {
            // zap_pte_range: ptep_get_and_clear is a plain xchg on the
            // read-only (pinned) L1 → one emulated write each; then one
            // flush_tlb_mm_range at tlb_finish_mmu. Another CPU in
            // mm_cpumask: flush_tlb_multi → xen_flush_tlb_multi, one MULTI
            // record (INVLPG_MULTI if ≤ one page), issued alone. Only this
            // CPU: flush_tlb_func locally, each page ≤ the ceiling its own
            // INVLPG_LOCAL hypercall (xen_flush_tlb_one_user, issued at once
            // outside lazy mode), else one TLB_FLUSH_LOCAL (xen_flush_tlb).
            let hypercalls = if both || n > LINUX_CEILING { 1 } else { n };
            LinuxCost {
                hypercalls,
                multi_flushes: u64::from(both),
                trapped_writes: n,
                ipis: 0,
                invlpgs: 0,
                full_flushes: 0,
            }
        }
        Op::Unmap | Op::UnmapRange(_) => {
            let (invlpgs, full) = if n <= LINUX_CEILING { (n * cpus, 0) } else { (0, cpus) };
            LinuxCost {
                hypercalls: 0,
                multi_flushes: 0,
                trapped_writes: 0,
                ipis: u64::from(both),
                invlpgs,
                full_flushes: full,
            }
        }
        Op::ExitLazy if xen => {
            // xen_exit_mmap → xen_drop_mm_ref: smp_call_function_many to the
            // CPUs whose xen_current_cr3 is the pgd; each switches to init_mm
            // (xen_write_cr3: one mmuext_op hypercall); then xen_pgd_unpin.
            let unpin = linux::unpin(Tables { l3: 1, l2: 1, l1: 1 });
            LinuxCost {
                hypercalls: unpin + if both { linux::context_switch() } else { 0 },
                multi_flushes: 0,
                trapped_writes: 0,
                ipis: u64::from(both),
                invlpgs: 0,
                full_flushes: 0,
            }
        }
        Op::ExitLazy => {
            // No drop-root call natively: exit_mmap's last flush
            // (freed_tables) IPIs every CPU of mm_cpumask, lazy ones too,
            // and a lazy CPU's handler switches to init_mm.
            LinuxCost {
                hypercalls: 0,
                multi_flushes: 0,
                trapped_writes: 0,
                ipis: u64::from(both),
                invlpgs: 0,
                full_flushes: 0,
            }
        }
    }
}

/// Our native handler's choice for `n` pages, per CPU: (invlpg, full flushes).
pub fn native_flush(n: u64) -> (u64, u64) {
    if n <= NATIVE_INVLPG_CEILING {
        (n, 0)
    } else {
        (0, 1)
    }
}

/// Marks the start of the generated SMP section in `docs/PERFORMANCE.md`
/// (`--smp` rewrites only what lies between the markers).
pub const BEGIN: &str = "<!-- smp:begin -->";
/// Marks its end.
pub const END: &str = "<!-- smp:end -->";

/// Xen hypercalls our `unmap_range` of `n` pages needs: 16-byte
/// `mmu_update` records and the 24-byte flush record fill batches of
/// [`pvops_xen64::MAX_ARG_BYTES`] argument bytes, one hypercall each.
pub fn xen_unmap_hypercalls(n: u64) -> u64 {
    let rec = core::mem::size_of::<pvops_xen64::abi::MmuUpdate>() as u64;
    let flush = core::mem::size_of::<pvops_xen64::abi::MmuextOp>() as u64;
    (n * rec + flush).div_ceil(pvops_xen64::MAX_ARG_BYTES as u64)
}

fn where_loaded(both: bool) -> &'static str {
    if both {
        "vCPUs 0 + 1"
    } else {
        "vCPU 0 only"
    }
}

/// The section "SMP: remote flushes", between [`BEGIN`] and [`END`].
pub fn markdown(rows: &[SmpRow]) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "{BEGIN}\n## SMP: remote flushes\n");
    let _ = writeln!(
        w,
        "What flushing other CPUs' TLBs costs (issue 12), counted on the 2-vCPU host models \
         (`tests/bench/src/smp.rs`; `cargo xtask bench --smp` regenerates this section alone). \
         An address space with N pages mapped from 4 MiB + 4 KiB (no range covers a whole L1 table, so no table is freed) is loaded on vCPU 1, which then reads \
         every page (its TLB holds them), and on vCPU 0, which runs the operation; the baseline \
         has it loaded on vCPU 0 only. Every count comes from the models, never from the \
         backend's `stats()`: the Xen model's counters (traps into the modelled Xen; records by \
         command; flushes Xen did on a vCPU other than the caller), `ModelCpus` (cross-calls, \
         IPIs sent, handlers run) and the machine model (`invlpg`s and full flushes executed, on \
         every CPU). After each unmap the models confirm that no vCPU holding the space still \
         reads an unmapped page and that no frame was freed while a TLB could reach it. \
         *`exit`, vCPU 1 lazy*: vCPU 0 switches to init_mm and exits a space (one page, three \
         table pages) that vCPU 1 still has loaded as a kernel thread (`Mm::enter_lazy`), which \
         takes the drop-root cross-call (Linux's `xen_drop_mm_ref`); baseline: vCPU 1 never \
         loaded it.\n"
    );
    let _ = writeln!(w, "### xen64 (strict Xen PV MMU model)\n");
    let _ = writeln!(
        w,
        "| operation | space loaded on | **hypercalls** | multicalls | `mmu_update` records | \
         `mmuext_op` records | `update_va_mapping` | **MULTI flushes** | local flushes | vCPUs Xen \
         flushed remotely | IPIs | Linux: hypercalls | Linux: trapped PTE writes | Linux: MULTI | Linux: IPIs |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows.iter().filter(|r| r.backend == "xen64") {
        let c = &r.cost;
        let l = linux_cost(true, r.op, r.both);
        let _ = writeln!(
            w,
            "| {} | {} | **{}** | {} | {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {} | {} |",
            r.op.label(),
            where_loaded(r.both),
            c.hypercalls,
            c.multicalls,
            c.mmu_updates,
            c.mmuext_ops,
            c.update_va_mappings,
            c.multi_flushes,
            c.local_flushes,
            c.remote_flushes,
            c.ipis,
            l.hypercalls,
            l.trapped_writes,
            l.multi_flushes,
            l.ipis
        );
    }
    let _ = writeln!(w, "\n### native (machine model)\n");
    let _ = writeln!(
        w,
        "| operation | space loaded on | cross-calls | **IPIs sent** | handlers run | `invlpg` (all CPUs) | \
         full flushes (all CPUs) | cr3 writes | Linux: IPIs | Linux: `invlpg` | Linux: full flushes |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows.iter().filter(|r| r.backend == "native") {
        let c = &r.cost;
        let l = linux_cost(false, r.op, r.both);
        let linux = if r.op == Op::ExitLazy {
            format!("{} (the exit's last flush) | — | —", l.ipis)
        } else {
            format!("{} | {} | {}", l.ipis, l.invlpgs, l.full_flushes)
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | **{}** | {} | {} | {} | {} | {} |",
            r.op.label(),
            where_loaded(r.both),
            c.cross_calls,
            c.ipis,
            c.handled,
            c.invlpgs,
            c.full_flushes,
            c.cr3_writes,
            linux
        );
    }
    let _ = writeln!(w);
    let xen_unmaps: Vec<&SmpRow> =
        rows.iter().filter(|r| r.backend == "xen64" && r.both && r.op != Op::ExitLazy).collect();
    let one_multi = !xen_unmaps.is_empty() && xen_unmaps.iter().all(|r| r.cost.multi_flushes == 1 && r.cost.ipis == 0);
    let xen_both: Vec<&SmpRow> = xen_unmaps.iter().copied().filter(|r| matches!(r.op, Op::UnmapRange(_))).collect();
    let hc: Vec<String> = xen_both.iter().map(|r| r.cost.hypercalls.to_string()).collect();
    let linux_entries: Vec<String> = xen_both
        .iter()
        .map(|r| {
            let l = linux_cost(true, r.op, true);
            (l.hypercalls + l.trapped_writes).to_string()
        })
        .collect();
    let _ = writeln!(
        w,
        "**One MULTI flush per batch of unmaps, not per page: {}.** On Xen every unmap with the \
         space on both vCPUs issued exactly one `MMUEXT_INVLPG_MULTI` (one page) or \
         `MMUEXT_TLB_FLUSH_MULTI` (more) and no IPI: Xen flushes vCPU 1 itself before the \
         hypercall returns. The clears are `mmu_update` records, {} per batch, and the flush \
         record rides in the last batch when its {} argument bytes have room: ⌈(16·N + 24) / {}⌉ \
         hypercalls ({} for N = {}). The baseline costs the same hypercalls with a \
         `_LOCAL` record instead. Natively: one cross-call, one IPI to vCPU 1, whose handler \
         `invlpg`s up to {} pages and flushes everything above.\n",
        if one_multi { "met" } else { "**not met**" },
        crate::economy::batch_ptes(),
        pvops_xen64::MAX_ARG_BYTES,
        pvops_xen64::MAX_ARG_BYTES,
        hc.join(", "),
        RANGE_PAGES.map(|n| n.to_string()).join(", "),
        NATIVE_INVLPG_CEILING
    );
    let _ = writeln!(
        w,
        "**What Linux does for the same operations** (read in torvalds/linux, as of the kernels \
         with `flush_tlb_multi`, 2021 on):\n\n\
         * *Unmap, both platforms*: `zap_pte_range` (mm/memory.c) clears each PTE with \
         `ptep_get_and_clear` — a plain `xchg` (`native_ptep_get_and_clear`, \
         arch/x86/include/asm/pgtable.h), not a paravirt op — gathers the pages in an \
         `mmu_gather`, and `tlb_finish_mmu` flushes once for the range with \
         `flush_tlb_mm_range` (arch/x86/mm/tlb.c), before the pages are freed. Ranges of up to \
         `tlb_single_page_flush_ceiling` = {LINUX_CEILING} pages are flushed page by page, larger \
         ones entirely.\n\
         * *Native*: with another CPU in `mm_cpumask`, `flush_tlb_multi` → \
         `native_flush_tlb_multi` sends one IPI per other CPU (`on_each_cpu_cond_mask`; CPUs in \
         lazy TLB mode are skipped unless page tables were freed) and each CPU's \
         `flush_tlb_func` runs `invlpg` per page or a full flush; alone, it flushes locally, no IPI.\n\
         * *Xen PV*: `flush_tlb_multi` is `xen_flush_tlb_multi` (arch/x86/xen/mmu_pv.c): one \
         multicall entry, `MMUEXT_INVLPG_MULTI` if the range is at most one page, else \
         `MMUEXT_TLB_FLUSH_MULTI`, with the online CPUs of the mask (the caller included) as \
         the vCPU bitmap, issued with `xen_mc_issue(XEN_LAZY_MMU)`: at `tlb_finish_mmu` lazy \
         mode is over, so it is a hypercall of its own. No IPI. Each PTE `xchg` hits a \
         read-only (pinned) L1 page and traps into Xen, which emulates the write (writable page \
         tables, xen/arch/x86/pv/ro-page-fault.c): N traps, unbatched. With the mm on this CPU \
         only, `flush_tlb_func` flushes locally: `xen_flush_tlb_one_user` per page (an \
         `INVLPG_LOCAL` multicall entry issued at once outside lazy mode, so one hypercall per \
         page) up to {LINUX_CEILING} pages, else one `TLB_FLUSH_LOCAL` (`xen_flush_tlb`).\n\
         * *Exit*: `xen_exit_mmap` → `xen_drop_mm_ref` (mmu_pv.c) sends \
         `smp_call_function_many(drop_mm_ref_this_cpu)` to every CPU whose `xen_current_cr3` is \
         the pgd — one event-channel IPI per holder, whose `leave_mm` switches to init_mm with one \
         `mmuext_op` hypercall (`xen_write_cr3`) — then unpins (`xen_pgd_unpin`: {} hypercall(s) \
         for this space by the replay of §2). Natively there is no drop-root call: exit_mmap's \
         last flush frees page tables, so it IPIs every CPU of `mm_cpumask`, lazy ones too, and a \
         lazy CPU's `flush_tlb_func` switches to init_mm.\n",
        linux::unpin(Tables { l3: 1, l2: 1, l1: 1 })
    );
    let _ = writeln!(
        w,
        "**Where pvops differs.**\n\n\
         * *Xen clears*: ours are batched `mmu_update` records, Linux's are trapped writes. Entries \
         into Xen with both vCPUs, N = {}: ours {}, Linux {} (its one flush hypercall + N \
         traps). The MULTI flush itself is the same: one record, the same INVLPG/TLB_FLUSH \
         choice, no IPI.\n\
         * *Xen, space on this vCPU only*: one `_LOCAL` record in the same batch; Linux issues \
         one `INVLPG_LOCAL` hypercall per page up to {LINUX_CEILING} pages (8 for N = 8, 32 for N = 32).\n\
         * *Native ceiling*: our handler `invlpg`s up to {NATIVE_INVLPG_CEILING} pages and \
         flushes everything from {} (the default `PvMmuOps::flush_tlb_multi`, pvops/src/ops.rs); \
         Linux's ceiling is {LINUX_CEILING}, so only a 33-page range differs (we flush all, Linux \
         runs 33 `invlpg`s).\n\
         * *Who gets the flush*: a CPU stays in a space's cpumask once it activated it (pvops \
         never clears a bit), so a CPU that has since switched away or gone lazy still gets the \
         IPI natively and its bit in the MULTI mask on Xen; Linux clears the bit when a CPU \
         switches away (`switch_mm_irqs_off`) and natively skips lazy CPUs unless page tables \
         were freed.\n\
         * *Exit natively*: we make the lazy CPU switch away with a dedicated cross-call (one \
         IPI, one cr3 write) before the tables go; Linux gets the same effect from the exit's \
         final flush IPI.\n\n\
         **Xen PVH (`xen-pvh`), measured on the real Xen 4.17 PVH dom0 under TCG** (not a model: \
         every boot prints `pvh remote flush cost`, 200 rounds each, 2 vCPUs). A remote flush \
         is one `HVMOP_flush_tlbs` (Xen flushes every vCPU, the caller included, before it \
         returns) instead of the native cross-call: ≈ 0.10–0.15 M TSC cycles against ≈ 1.9–3.0 M \
         for one cross-call IPI through the local APIC Xen emulates (the ICR write, the \
         injection and the EOI each a VM exit, and the target vCPU must be scheduled), so 13–29× \
         cheaper across runs. The hypercall has no address and no mask: every vCPU loses its \
         whole TLB, global entries too. Linux PVH keeps the IPIs (it never calls \
         `HVMOP_flush_tlbs`; `arch/x86/xen/enlighten_hvm.c` sets no TLB ops). A flush of this \
         CPU alone stays a native `invlpg`. The real boot's `Mm::unmap` of a page loaded on \
         both vCPUs: 0 IPIs, 1 `HVMOP_flush_tlbs` (native: 1 IPI; Xen PV: 1 hypercall, 0 IPIs).\n",
        xen_both.iter().map(|r| r.op.pages().to_string()).collect::<Vec<_>>().join(", "),
        hc.join(", "),
        linux_entries.join(", "),
        NATIVE_INVLPG_CEILING + 1
    );
    let _ = writeln!(w, "{END}\n");
    s
}

/// `doc` with its SMP section replaced by `section`; without markers, the
/// section goes before "## Reproduce" (or at the end).
pub fn splice(doc: &str, section: &str) -> String {
    crate::splice_section(doc, BEGIN, END, section, &["## Reproduce"])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(rows: &'a [SmpRow], backend: &str, op: Op, both: bool) -> &'a SmpCost {
        &rows.iter().find(|r| r.backend == backend && r.op == op && r.both == both).expect("row measured").cost
    }

    /// The key figures of the SMP section, counted by the models: on Xen one
    /// MULTI flush per unmap batch whatever its size and no IPI, the clears
    /// in ⌈(16·N + 24)/512⌉ hypercalls; natively one IPI per unmap to the
    /// other vCPU, whose handler `invlpg`s up to 32 pages; one drop-root
    /// IPI for an exit while vCPU 1 holds the space lazily; none of it when
    /// the space is on vCPU 0 only.
    #[test]
    fn smp_flush_counts_are_the_expected_ones() {
        let rows = measure().unwrap();
        assert_eq!(rows.len(), BACKENDS.len() * Op::all().len() * 2);
        let unmaps = Op::all().into_iter().filter(|&op| op != Op::ExitLazy);
        for op in unmaps {
            let n = op.pages();
            let x = row(&rows, "xen64", op, true);
            assert_eq!(
                (x.hypercalls, x.mmu_updates, x.multi_flushes, x.local_flushes, x.ipis),
                (xen_unmap_hypercalls(n), n, 1, 0, 0),
                "xen64 {op:?} on both vCPUs: {x:?}"
            );
            assert_eq!(x.remote_flushes, 1, "Xen flushed vCPU 1 once: {x:?}");
            let x0 = row(&rows, "xen64", op, false);
            assert_eq!(
                (x0.hypercalls, x0.multi_flushes, x0.local_flushes, x0.remote_flushes, x0.ipis),
                (xen_unmap_hypercalls(n), 0, 1, 0, 0),
                "xen64 {op:?} on vCPU 0: {x0:?}"
            );
            let (inv, full) = native_flush(n);
            let c = row(&rows, "native", op, true);
            assert_eq!(
                (c.cross_calls, c.ipis, c.handled, c.invlpgs, c.full_flushes, c.hypercalls),
                (1, 1, 1, 2 * inv, 2 * full, 0),
                "native {op:?} on both vCPUs: {c:?}"
            );
            let c0 = row(&rows, "native", op, false);
            assert_eq!((c0.ipis, c0.invlpgs, c0.full_flushes), (0, inv, full), "native {op:?} on vCPU 0: {c0:?}");
        }
        // The brief's example: 64 pages = 2 full batches of clears + the flush.
        assert_eq!(row(&rows, "xen64", Op::UnmapRange(64), true).hypercalls, 3);
        assert_eq!(row(&rows, "xen64", Op::UnmapRange(8), true).hypercalls, 1, "the flush rides in the batch");
        for backend in BACKENDS {
            let (e, e0) = (row(&rows, backend, Op::ExitLazy, true), row(&rows, backend, Op::ExitLazy, false));
            assert_eq!((e.cross_calls, e.ipis, e.handled), (1, 1, 1), "{backend} drop-root: {e:?}");
            assert_eq!(e0.ipis, 0, "{backend} exit with no other holder: {e0:?}");
        }
        // On Xen the handler's switch to init_mm is one hypercall with both base pointers.
        let (e, e0) = (row(&rows, "xen64", Op::ExitLazy, true), row(&rows, "xen64", Op::ExitLazy, false));
        assert_eq!((e.hypercalls - e0.hypercalls, e.mmuext_ops - e0.mmuext_ops), (1, 2), "{e:?} vs {e0:?}");
        let (n, n0) = (row(&rows, "native", Op::ExitLazy, true), row(&rows, "native", Op::ExitLazy, false));
        assert_eq!(n.cr3_writes - n0.cr3_writes, 1, "vCPU 1 switched to init_mm: {n:?} vs {n0:?}");
    }

    #[test]
    fn the_section_is_spliced_between_its_markers_or_before_reproduce() {
        let section = format!("{BEGIN}\nnew\n{END}\n\n");
        let doc = format!("# P\n\n{BEGIN}\nold\n{END}\n\n## Reproduce\nx\n");
        assert_eq!(splice(&doc, &section), format!("# P\n\n{BEGIN}\nnew\n{END}\n\n## Reproduce\nx\n"));
        let bare = "# P\n\n## Reproduce\nx\n";
        assert_eq!(splice(bare, &section), format!("# P\n\n{BEGIN}\nnew\n{END}\n\n## Reproduce\nx\n"));
        assert_eq!(splice(&splice(bare, &section), &section), splice(bare, &section), "idempotent");
    }

    #[test]
    fn xen_hypercall_formula() {
        let got: Vec<u64> = RANGE_PAGES.iter().map(|&n| xen_unmap_hypercalls(n)).collect();
        assert_eq!(got, [1, 1, 2, 3, 17]);
    }
}
