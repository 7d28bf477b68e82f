//! The address-space lifecycle (issue 14, item 4): what a copy-on-write
//! fault, an `mprotect` of N pages, a copy-on-write fork of an N-page
//! process and a demand-zero first touch cost, counted on the 2-vCPU host
//! models, beside what Linux needs for the same operation.
//!
//! Every count comes from the models, as in [`crate::smp`]: the Xen model's
//! counters (traps into the modelled Xen, records by command, flushes it did
//! on other vCPUs), `ModelCpus` (IPIs) and the machine model (`invlpg`s and
//! full flushes on every CPU) — never the backend's `stats()` nor
//! kernel-glue's `cow_copies()`. Pages copied are counted from the model's
//! own table walk (a child page whose frame is not the parent's was
//! copied), frames from the allocator's free count. After each operation
//! the models check what it must have done: no holder can still write a
//! write-protected page, a copy is what user mode now reaches on every
//! holder, a touched page is backed.

use std::fmt::Write as _;

use kernel_glue::{AddressSpace, FaultFix, PageFlags};
use pvops::{Pfn, VirtAddr};
use pvops_integration::platform::SmpBooted;
use pvops_model::vcpu;

use crate::linux;
use crate::smp::{self, SmpCost, LINUX_CEILING};

/// The backends measured.
pub const BACKENDS: [&str; 2] = ["native", "xen64"];
/// Page counts of the `protect_range` rows.
pub const PROTECT_PAGES: [u64; 5] = [1, 8, 32, 64, 512];
/// Page counts of the `fork_cow` rows.
pub const FORK_PAGES: [u64; 4] = [1, 32, 64, 512];
/// New page tables a demand-zero first touch needs in the rows: none (an
/// L1 already maps a neighbour), one L1, or an L3, L2 and L1 (past the
/// first 512 GiB).
pub const ZERO_TABLES: [u64; 3] = [0, 1, 3];
/// Every range starts at 4 MiB, an L1 table's first slot (512 pages fill it).
const VA: u64 = 0x40_0000;
const PAGE: u64 = 0x1000;
/// Where the demand-zero rows touch: in the L1 that maps [`VA`]; in a new
/// L1 under the same L2 (256 MiB); under a new L3 (1 TiB: L4 slot 2).
fn zero_va(tables: u64) -> u64 {
    match tables {
        0 => VA + PAGE,
        1 => 0x1000_0000,
        _ => 0x100_0000_0000,
    }
}

/// The measured operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A write fault on a copy-on-write page another space shares: a copy.
    CowCopy,
    /// A write fault on a copy-on-write page this space is the last holder of.
    CowReuse,
    /// `Mm::protect_range` of this many writable pages to read-only.
    Protect(u64),
    /// `Mm::fork_cow` of a process with this many written pages.
    Fork(u64),
    /// The first touch (a write) of a demand-zero page needing this many new tables.
    ZeroTouch(u64),
}

impl Op {
    /// Every operation, in table order.
    pub fn all() -> Vec<Op> {
        let mut v = vec![Op::CowCopy, Op::CowReuse];
        v.extend(PROTECT_PAGES.iter().map(|&n| Op::Protect(n)));
        v.extend(FORK_PAGES.iter().map(|&n| Op::Fork(n)));
        v.extend(ZERO_TABLES.iter().map(|&t| Op::ZeroTouch(t)));
        v
    }

    /// The row label.
    pub fn label(self) -> String {
        match self {
            Op::CowCopy => "COW fault, copy".into(),
            Op::CowReuse => "COW fault, sole owner (reuse)".into(),
            Op::Protect(n) => format!("`protect_range` {n}"),
            Op::Fork(n) => format!("`fork_cow`, {n} pages"),
            Op::ZeroTouch(0) => "demand-zero touch, L1 present".into(),
            Op::ZeroTouch(t) => format!("demand-zero touch, {t} new table(s)"),
        }
    }
}

/// What one operation cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LcCost {
    /// What the models counted (see [`SmpCost`]).
    pub model: SmpCost,
    /// Frames taken from the allocator (its free count before − after).
    pub frames: u64,
    /// Pages whose frame changed (COW) or differs between parent and child
    /// (fork): copies, by the model's table walk.
    pub copies: u64,
}

/// One measured row.
#[derive(Clone, Debug)]
pub struct LcRow {
    /// `native` or `xen64`.
    pub backend: &'static str,
    /// The operation.
    pub op: Op,
    /// The space was loaded on both vCPUs (false: on vCPU 0 only).
    pub both: bool,
    /// What it cost.
    pub cost: LcCost,
}

fn err(what: &str) -> impl Fn(pvops::PvError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// A user-mode write of `va` on the calling vCPU, through its TLB (the
/// model sets the accessed and dirty bits as the hardware would).
fn user_write(b: &SmpBooted, va: u64) -> Option<Pfn> {
    match b.xen {
        Some(m) => m.access(va, true, true).ok(),
        None => b.machine.access(VirtAddr::try_new(va).ok()?, pvops_model::Access::USER_WRITE).ok().map(Pfn),
    }
}

fn holders(both: bool) -> &'static [usize] {
    if both {
        &[1, 0]
    } else {
        &[0]
    }
}

/// A space with `pages` pages from [`VA`], loaded on vCPU 1 (if `both`) and
/// vCPU 0, each of which wrote every page (dirty, writable, in its TLB).
fn written_space(b: &SmpBooted, pages: u64, both: bool) -> Result<AddressSpace, String> {
    let s = b.mm.create().map_err(err("create"))?;
    b.mm.map_range(&s, VA, pages, PageFlags::DATA).map_err(err("map_range"))?;
    for &cpu in holders(both) {
        vcpu::on_vcpu(cpu, || b.mm.activate(&s)).map_err(err("activate"))?;
        for i in 0..pages {
            if vcpu::on_vcpu(cpu, || user_write(b, VA + i * PAGE)).is_none() {
                return Err(format!("vCPU {cpu} cannot write page {i}"));
            }
        }
    }
    Ok(s)
}

/// Both vCPUs back on init_mm, then every space in `spaces` exits.
fn teardown(b: &SmpBooted, spaces: Vec<AddressSpace>) -> Result<(), String> {
    for cpu in [1, 0] {
        vcpu::on_vcpu(cpu, || b.mm.activate_init()).map_err(err("activate_init"))?;
    }
    for s in spaces {
        b.mm.exit(s).map_err(|(e, _)| format!("exit: {e}"))?;
    }
    Ok(())
}

/// Runs `f` (as vCPU 0) and returns its result with what the models counted
/// and the frames it took.
fn counted<T>(b: &SmpBooted, f: impl FnOnce() -> Result<T, String>) -> Result<(T, LcCost), String> {
    let free = b.frames.free_count();
    let before = smp::snapshot(b);
    let r = f()?;
    let model = smp::delta(before, smp::snapshot(b));
    Ok((r, LcCost { model, frames: free.saturating_sub(b.frames.free_count()), copies: 0 }))
}

/// Runs `op` once on `b` (vCPU 0 runs it; the space is loaded on vCPU 0, and
/// on vCPU 1 too if `both`) and returns what it cost, after checking on the
/// models that it did its job.
pub fn run_op(b: &SmpBooted, op: Op, both: bool) -> Result<LcCost, String> {
    let cost = match op {
        Op::CowCopy | Op::CowReuse => {
            let p = written_space(b, 1, both)?;
            let old = b.table_walk(p.pgd(), VA).ok_or("parent page not mapped")?;
            let c = b.mm.fork_cow(&p).map_err(err("fork_cow"))?;
            let mut spaces = vec![p];
            if op == Op::CowReuse {
                // The child goes: the parent holds the frame's last reference.
                b.mm.exit(c).map_err(|(e, _)| format!("exit child: {e}"))?;
            } else {
                spaces.push(c);
            }
            let p = &spaces[0];
            // Every holder caches the write-protected entry of the old frame.
            for &cpu in holders(both) {
                if vcpu::on_vcpu(cpu, || b.user_read(VA)) != Some(old) {
                    return Err(format!("vCPU {cpu} does not read the shared frame before the fault"));
                }
            }
            let (fix, mut cost) = counted(b, || b.mm.handle_fault(p, VA, true).map_err(|k| format!("fault: {k}")))?;
            let want = if op == Op::CowCopy { FaultFix::CopiedOnWrite } else { FaultFix::ReusedSoleOwner };
            if fix != want {
                return Err(format!("{fix:?}, expected {want:?}"));
            }
            let now = b.table_walk(p.pgd(), VA).ok_or("parent page gone")?;
            cost.copies = u64::from(now != old);
            for &cpu in holders(both) {
                if vcpu::on_vcpu(cpu, || b.user_read(VA)) != Some(now) {
                    return Err(format!("vCPU {cpu} still reads another frame than {now:?} after the fault"));
                }
                if vcpu::on_vcpu(cpu, || user_write(b, VA)) != Some(now) {
                    return Err(format!("vCPU {cpu} does not write the page's frame {now:?} after the fault"));
                }
            }
            teardown(b, spaces)?;
            cost
        }
        Op::Protect(n) => {
            let s = written_space(b, n, both)?;
            let (changed, cost) =
                counted(b, || b.mm.protect_range(&s, VA, n, PageFlags::RODATA).map_err(err("protect_range")))?;
            if changed != n {
                return Err(format!("protect_range changed {changed} of {n} entries"));
            }
            for i in 0..n {
                for &cpu in holders(both) {
                    if let Some(f) = vcpu::on_vcpu(cpu, || user_write(b, VA + i * PAGE)) {
                        return Err(format!("vCPU {cpu} still writes page {i} ({f:?}) after the mprotect"));
                    }
                }
            }
            teardown(b, vec![s])?;
            cost
        }
        Op::Fork(n) => {
            let p = written_space(b, n, both)?;
            let frames: Vec<Option<Pfn>> = (0..n).map(|i| b.table_walk(p.pgd(), VA + i * PAGE)).collect();
            let (c, mut cost) = counted(b, || b.mm.fork_cow(&p).map_err(err("fork_cow")))?;
            for (i, f) in frames.iter().enumerate() {
                let va = VA + i as u64 * PAGE;
                let in_child = b.table_walk(c.pgd(), va);
                if in_child.is_none() || f.is_none() {
                    return Err(format!("page {i} missing after the fork"));
                }
                cost.copies += u64::from(in_child != *f);
                for &cpu in holders(both) {
                    if let Some(w) = vcpu::on_vcpu(cpu, || user_write(b, va)) {
                        return Err(format!("vCPU {cpu} still writes parent page {i} ({w:?}) after the fork"));
                    }
                }
            }
            teardown(b, vec![p, c])?;
            cost
        }
        Op::ZeroTouch(tables) => {
            let s = written_space(b, 1, both)?;
            let va = zero_va(tables);
            b.mm.reserve_zero(&s, va, 1, PageFlags::DATA).map_err(err("reserve_zero"))?;
            let (fix, cost) = counted(b, || b.mm.handle_fault(&s, va, true).map_err(|k| format!("fault: {k}")))?;
            if fix != FaultFix::ZeroFilled {
                return Err(format!("{fix:?}, expected ZeroFilled"));
            }
            let f = b.table_walk(s.pgd(), va).ok_or("not backed after the touch")?;
            if vcpu::on_vcpu(0, || user_write(b, va)) != Some(f) {
                return Err("vCPU 0 cannot write the new page".into());
            }
            teardown(b, vec![s])?;
            cost
        }
    };
    b.check()?;
    Ok(cost)
}

/// Every row: both backends, every operation, loaded on both vCPUs and on vCPU 0 only.
pub fn measure() -> Result<Vec<LcRow>, String> {
    let mut rows = Vec::new();
    for backend in BACKENDS {
        let b = smp::boot(backend)?;
        let free0 = b.frames.free_count();
        for op in Op::all() {
            for both in [true, false] {
                let cost = run_op(&b, op, both).map_err(|e| format!("{backend} {op:?} both={both}: {e}"))?;
                rows.push(LcRow { backend, op, both, cost });
            }
        }
        b.check_quiescent()?;
        if b.frames.free_count() != free0 {
            return Err(format!("{backend}: {} frames leaked", free0 - b.frames.free_count()));
        }
    }
    Ok(rows)
}

/// What Linux needs for the same operation with the mm on both CPUs (or,
/// if `!both`, on the calling CPU only). See the section text for sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxCost {
    /// Hypercalls (Xen PV).
    pub hypercalls: u64,
    /// PTE writes that trap into Xen's writable-page-table emulation (Xen PV).
    pub trapped_writes: u64,
    /// IPIs sent (native).
    pub ipis: u64,
    /// `invlpg`s on every CPU (native).
    pub invlpgs: u64,
    /// Full flushes on every CPU (native).
    pub full_flushes: u64,
}

/// Linux's flush of `n` pages after a PTE change (`flush_tlb_mm_range`,
/// arch/x86/mm/tlb.c), as (Xen hypercalls, native IPIs, invlpg, full
/// flushes): on Xen PV one `xen_flush_tlb_multi` hypercall with another CPU
/// in the mask, else one `INVLPG_LOCAL` hypercall per page up to the
/// ceiling (`xen_flush_tlb_one_user`, outside lazy mode) or one
/// `TLB_FLUSH_LOCAL`; natively one IPI per other CPU, `invlpg` per page up
/// to the ceiling on every CPU, else a full flush. `n = None`: the whole mm
/// (`flush_tlb_mm`).
fn linux_flush(n: Option<u64>, both: bool) -> (u64, u64, u64, u64) {
    let cpus = if both { 2 } else { 1 };
    let single = n.filter(|&n| n <= LINUX_CEILING);
    let xen = match single {
        Some(n) if !both => n,
        _ => 1,
    };
    match single {
        Some(n) => (xen, u64::from(both), n * cpus, 0),
        None => (xen, u64::from(both), 0, cpus),
    }
}

/// Linux's cost of `op` (see [`LinuxCost`]).
pub fn linux_cost(xen: bool, op: Op, both: bool) -> LinuxCost {
    let (flush_hc, ipis, invlpgs, full) = match op {
        Op::CowCopy => linux_flush(Some(1), both),
        Op::Protect(n) => linux_flush(Some(n), both),
        Op::Fork(_) => linux_flush(None, both),
        Op::CowReuse | Op::ZeroTouch(_) => (0, 0, 0, 0),
    };
    if !xen {
        return LinuxCost { hypercalls: 0, trapped_writes: 0, ipis, invlpgs, full_flushes: full };
    }
    let (hypercalls, trapped_writes) = match op {
        // wp_page_copy: ptep_clear_flush = an xchg on the pinned L1 (a trap)
        // + flush_tlb_page; then set_pte_at → xen_set_pte outside lazy mode:
        // one mmu_update hypercall.
        Op::CowCopy => (flush_hc + 1, 1),
        // wp_page_reuse → ptep_set_access_flags → set_pte: one mmu_update, no flush.
        Op::CowReuse => (1, 0),
        // change_pte_range in lazy mode: ptep_modify_prot_commit →
        // xen_ptep_modify_prot_commit, one PRESERVE_AD mmu_update record
        // each, batched; then the flush, a hypercall of its own.
        Op::Protect(n) => (linux::lazy_map(n) + flush_hc, 0),
        // copy_pte_range in lazy mode: ptep_set_wrprotect (an atomic bit
        // clear on the parent's pinned L1: a trap each, unbatched), the
        // child's set_ptes batched as mmu_update records (xen_batched_set_pte
        // batches even into the unpinned child); flush_tlb_mm(oldmm) at the
        // end of dup_mmap.
        Op::Fork(n) => (linux::lazy_map(n) + flush_hc, n),
        // do_anonymous_page: each new table is made read-only and (L1) pinned
        // (xen_alloc_ptpage: one multicall) and linked into the pinned mm
        // (xen_set_pmd_hyper / set_pud / set_p4d: one hypercall); then
        // set_pte_at: one mmu_update.
        Op::ZeroTouch(t) => (1 + 2 * t, 0),
    };
    LinuxCost { hypercalls, trapped_writes, ipis, invlpgs, full_flushes: full }
}

/// The targets (issue 14, item 4) for our xen64 hypercalls: one per COW
/// fault with the space on this vCPU alone (the clear, its local flush and
/// the new entry in one call) — two when another vCPU holds it (the clear
/// with the remote flush, then the new entry: an install queued behind a
/// failing flush would still run) —; ⌈N/32⌉ lazy batches plus one for the
/// flush (it rides in the last batch when its argument bytes have room) per
/// `protect_range` and per `fork_cow`; `None`: no target.
pub fn xen_target(op: Op, shared: bool) -> Option<u64> {
    match op {
        Op::CowCopy => Some(1 + u64::from(shared)),
        Op::CowReuse => Some(1),
        Op::Protect(n) | Op::Fork(n) => Some(n.div_ceil(crate::economy::batch_ptes()) + 1),
        Op::ZeroTouch(_) => None,
    }
}

/// Our xen64 hypercalls for `n` protection changes and a flush record:
/// 16-byte `mmu_update` records and the 24-byte flush fill batches of
/// [`pvops_xen64::MAX_ARG_BYTES`] argument bytes (as `unmap_range`'s).
pub fn xen_batched(n: u64) -> u64 {
    smp::xen_unmap_hypercalls(n)
}

/// Marks the start of the generated section in `docs/PERFORMANCE.md`
/// (`--lifecycle` rewrites only what lies between the markers).
pub const BEGIN: &str = "<!-- lifecycle:begin -->";
/// Marks its end.
pub const END: &str = "<!-- lifecycle:end -->";

fn where_loaded(both: bool) -> &'static str {
    if both {
        "vCPUs 0 + 1"
    } else {
        "vCPU 0 only"
    }
}

/// The section "Address-space lifecycle", between [`BEGIN`] and [`END`].
pub fn markdown(rows: &[LcRow]) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "{BEGIN}\n## Address-space lifecycle: COW faults, mprotect, fork, demand-zero\n");
    let _ = writeln!(
        w,
        "What issue 14's lifecycle operations cost, counted on the 2-vCPU host models \
         (`tests/bench/src/lifecycle.rs`; `cargo xtask bench --lifecycle` regenerates this section \
         alone). Each row builds a fresh address space with its pages from 4 MiB (one L1 table), \
         loads it on vCPU 1 and vCPU 0 (or, as the baseline, on vCPU 0 only), and every vCPU holding \
         it writes every page first (entries dirty and writable, in its TLB); vCPU 0 then runs the \
         operation. Counts come from the models, never from the backend's `stats()` or \
         kernel-glue's `cow_copies()`: the Xen model's traps and records, `ModelCpus`' IPIs, the \
         machine model's `invlpg`s and full flushes on every CPU. *Frames* is what the allocator \
         handed out; *pages copied* is counted on the model's own table walk (a child page whose \
         frame is not the parent's, a faulting page whose frame changed). After each operation \
         the models confirm it: no vCPU holding the space still writes a page made read-only (the \
         flush reached it), after a COW fault every holder writes the new frame, a touched page is \
         backed; no TLB hazard, no leak. *COW fault, copy*: the parent, just forked, writes its \
         page; *sole owner*: the child has exited first. *`protect_range` N*: N writable pages to \
         read-only. *`fork_cow`, N pages*: the parent's live (pinned on Xen) entries are \
         write-protected, the child's new tables are written directly. *Demand-zero touch*: a \
         write to a reserved page whose L1 exists, or needing a new L1, or a new L3 + L2 + L1.\n"
    );
    let _ = writeln!(w, "### xen64 (strict Xen PV MMU model)\n");
    let _ = writeln!(
        w,
        "| operation | space loaded on | **hypercalls** | target | `mmu_update` records | `mmuext_op` records | \
         `update_va_mapping` | MULTI flushes | local flushes | vCPUs Xen flushed remotely | frames | pages copied | \
         Linux: hypercalls | Linux: trapped PTE writes |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows.iter().filter(|r| r.backend == "xen64") {
        let (c, m) = (&r.cost, &r.cost.model);
        let l = linux_cost(true, r.op, r.both);
        let target = xen_target(r.op, r.both).map_or("—".to_string(), |t| format!("≤ {t}"));
        let _ = writeln!(
            w,
            "| {} | {} | **{}** | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.op.label(),
            where_loaded(r.both),
            m.hypercalls,
            target,
            m.mmu_updates,
            m.mmuext_ops,
            m.update_va_mappings,
            m.multi_flushes,
            m.local_flushes,
            m.remote_flushes,
            c.frames,
            c.copies,
            l.hypercalls,
            l.trapped_writes
        );
    }
    let _ = writeln!(w, "\n### native (machine model)\n");
    let _ = writeln!(
        w,
        "| operation | space loaded on | **IPIs sent** | `invlpg` (all CPUs) | full flushes (all CPUs) | \
         frames | pages copied | Linux: IPIs | Linux: `invlpg` | Linux: full flushes |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows.iter().filter(|r| r.backend == "native") {
        let (c, m) = (&r.cost, &r.cost.model);
        let l = linux_cost(false, r.op, r.both);
        let _ = writeln!(
            w,
            "| {} | {} | **{}** | {} | {} | {} | {} | {} | {} | {} |",
            r.op.label(),
            where_loaded(r.both),
            m.ipis,
            m.invlpgs,
            m.full_flushes,
            c.frames,
            c.copies,
            l.ipis,
            l.invlpgs,
            l.full_flushes
        );
    }
    let _ = writeln!(w);
    let xen: Vec<&LcRow> = rows.iter().filter(|r| r.backend == "xen64").collect();
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    let within = |pred: fn(Op) -> bool| {
        xen.iter()
            .filter(|r| pred(r.op))
            .all(|r| xen_target(r.op, r.both).is_some_and(|t| r.cost.model.hypercalls <= t))
    };
    let cow_ok = within(|op| matches!(op, Op::CowCopy | Op::CowReuse));
    let protect_ok = within(|op| matches!(op, Op::Protect(_)));
    let fork_ok = within(|op| matches!(op, Op::Fork(_)));
    let no_copy = rows.iter().filter(|r| matches!(r.op, Op::Fork(_))).all(|r| r.cost.copies == 0);
    let of = |op: fn(u64) -> Op, sizes: &[u64], both: bool| -> String {
        sizes
            .iter()
            .map(|&n| {
                xen.iter()
                    .find(|r| r.op == op(n) && r.both == both)
                    .map_or("?".into(), |r| r.cost.model.hypercalls.to_string())
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let linux_of = |op: fn(u64) -> Op, sizes: &[u64], both: bool| -> String {
        sizes
            .iter()
            .map(|&n| {
                let l = linux_cost(true, op(n), both);
                (l.hypercalls + l.trapped_writes).to_string()
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let list = |sizes: &[u64]| sizes.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    let _ = writeln!(
        w,
        "**Targets.** *One hypercall per COW fault* with the space on this vCPU alone (the clear, \
         its local flush and the new entry in one call), two with another vCPU holding it: \
         {}. *`protect_range` of N pages in ⌈N/32⌉ batches plus one for the flush*: {} — N = {}: \
         {} hypercalls with the space on both vCPUs, {} on vCPU 0 alone, i.e. ⌈(16·N + 24) / {}⌉: \
         the flush record (`INVLPG_MULTI`/`TLB_FLUSH_MULTI` with vCPU 1 in the mask, else a `_LOCAL` \
         one) rides in the last batch when its argument bytes have room, so a full last batch \
         (N = 32, 64, 512) costs the one extra hypercall. *`fork_cow` copies no page*: {} (0 on every \
         row, both backends; the frames taken are the child's roots and tables only). *The \
         parent's write-protection batched*: {} — N = {}: {} hypercalls (both vCPUs), the same \
         ⌈(16·N + 24) / 512⌉ as `protect_range`: one `MMU_PT_UPDATE_PRESERVE_AD` record per \
         writable entry and one flush of every holder, in one lazy-MMU section; the child's \
         unpinned tables are plain stores.\n",
        verdict(cow_ok),
        verdict(protect_ok),
        list(&PROTECT_PAGES),
        of(Op::Protect, &PROTECT_PAGES, true),
        of(Op::Protect, &PROTECT_PAGES, false),
        pvops_xen64::MAX_ARG_BYTES,
        verdict(no_copy),
        verdict(fork_ok),
        list(&FORK_PAGES),
        of(Op::Fork, &FORK_PAGES, true),
    );
    let _ = writeln!(
        w,
        "**What Linux does** (read in torvalds/linux, mm/memory.c, mm/mprotect.c, mm/pgtable-generic.c, \
         arch/x86/mm/pgtable.c, arch/x86/include/asm/pgtable.h, arch/x86/xen/mmu_pv.c; counted as \
         in the SMP section — entries into Xen are hypercalls plus trapped PTE writes, the latter \
         emulated by Xen's writable page tables, xen/arch/x86/pv/ro-page-fault.c):\n\n\
         * *COW copy* (`do_wp_page` → `wp_page_copy`): `ptep_clear_flush` clears the old entry with \
         an `xchg` on the pinned L1 (a trap) and flushes the page (`flush_tlb_page`: \
         `xen_flush_tlb_multi` with another CPU in the mask, else `xen_flush_tlb_one_user`, one \
         hypercall either way); then `set_pte_at` → `xen_set_pte` outside lazy mode is one \
         `mmu_update` hypercall (`__xen_set_pte`). 3 entries into Xen; natively one IPI with \
         another CPU (an `invlpg` on each).\n\
         * *COW reuse* (`wp_page_reuse`): `ptep_set_access_flags` (arch/x86/mm/pgtable.c) only \
         `set_pte`s the writable, dirty entry — one `mmu_update` hypercall, no flush (a stale \
         read-only entry only faults again).\n\
         * *mprotect* (`change_pte_range`, mm/mprotect.c): inside `arch_enter_lazy_mmu_mode`, \
         `ptep_modify_prot_start` (`xen_ptep_modify_prot_start`: a plain read) and \
         `ptep_modify_prot_commit` (`xen_ptep_modify_prot_commit`: an `mmu_update` record with \
         `MMU_PT_UPDATE_PRESERVE_AD`, `xen_extend_mmu_update`), 32 per batch; the flush \
         (`flush_tlb_mm_range`) comes after lazy mode, a hypercall of its own — or, with the mm on \
         this CPU alone, one `INVLPG_LOCAL` hypercall per page up to {LINUX_CEILING} pages. \
         Natively the same flush as an unmap (SMP section).\n\
         * *fork* (`copy_pte_range` → `copy_present_ptes`, mm/memory.c, in lazy MMU mode): a \
         writable private page is write-protected in the parent with `ptep_set_wrprotect` \
         (`wrprotect_ptes`) — an atomic bit clear on the entry, not a paravirt op: on Xen PV a \
         trapped, emulated write per PTE, unbatched — and `set_ptes` into the child, which \
         `xen_batched_set_pte` turns into batched `mmu_update` records even though the child is \
         not pinned yet; `dup_mmap` ends with `flush_tlb_mm(oldmm)`: one hypercall, natively a full \
         flush on each CPU of the mask (one IPI). Page copies at fork: none, as ours.\n\
         * *Demand-zero* (`do_anonymous_page`): each missing table is allocated into the pinned mm \
         (`xen_alloc_pte`/`_pmd`/`_pud` → `xen_alloc_ptpage`: a read-only remap, and for an L1 its \
         pin, in one multicall) and linked (`xen_set_pmd_hyper`, `xen_set_pud_hyper`, \
         `xen_set_p4d`: one hypercall each); then `set_pte_at`: one `mmu_update`. 1 + 2·(new \
         tables) hypercalls; natively no flush and no IPI.\n"
    );
    let _ = writeln!(
        w,
        "**Where pvops differs.** Entries into Xen, space on both vCPUs — `protect_range` N = {}: \
         ours {}, Linux {}; `fork_cow` N = {}: ours {}, Linux {} (its parent PTEs trap one by one, \
         its child PTEs are batched hypercalls, and its flush is a separate hypercall; ours batches \
         the parent's changes with the flush and writes the unpinned child directly). A COW copy \
         clears, flushes and only then sets the new entry, in Linux's order (`wp_page_copy`: \
         setting first would leave a window where the new entry is in some TLBs while the old \
         remains in others; the machine model records such a switch as a `Diverged` hazard): \
         with the space on this vCPU alone that is one multicall (`mmu_update`, `INVLPG_LOCAL`, \
         `mmu_update`; nobody else can use the page before the fault returns), with another \
         holder two hypercalls — the clear with `INVLPG_MULTI`, then the new entry — because Xen \
         runs every entry of a multicall whatever an earlier one returned, and an install queued \
         behind a failed flush would still happen. Linux: 3 entries either way. \
         A demand-zero touch is one hypercall whatever tables it needs (a multicall: each new \
         table's read-only remap, an `update_va_mapping` that Xen follows with a flush of every \
         vCPU — the remote-flush column —, its link (a new L3 into both pgds) and the leaf) against Linux's 1 + 2·tables. \
         With the space on vCPU 0 alone our flush is one `_LOCAL` record in the batch where Linux \
         issues one `INVLPG_LOCAL` hypercall per page up to {LINUX_CEILING} pages. Natively the \
         counts match Linux's except where our `invlpg` ceiling (32) and Linux's \
         ({LINUX_CEILING}) differ, and the fork: we flush every holder entirely, as Linux's \
         `flush_tlb_mm`.\n",
        list(&PROTECT_PAGES),
        of(Op::Protect, &PROTECT_PAGES, true),
        linux_of(Op::Protect, &PROTECT_PAGES, true),
        list(&FORK_PAGES),
        of(Op::Fork, &FORK_PAGES, true),
        linux_of(Op::Fork, &FORK_PAGES, true),
    );
    let _ = writeln!(w, "{END}\n");
    s
}

/// `doc` with its lifecycle section replaced by `section`; without markers,
/// the section goes before "## Reproduce" (or at the end).
pub fn splice(doc: &str, section: &str) -> String {
    crate::splice_section(doc, BEGIN, END, section, &["## Reproduce"])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(rows: &'a [LcRow], backend: &str, op: Op, both: bool) -> &'a LcCost {
        &rows.iter().find(|r| r.backend == backend && r.op == op && r.both == both).expect("row measured").cost
    }

    /// Expected xen64 hypercalls, written down: COW copy and reuse, then
    /// `protect_range` N = 1, 8, 32, 64, 512, then `fork_cow` N = 1, 32, 64, 512
    /// (both vCPUs and vCPU 0 alone alike: the flush record rides in the batch).
    /// A copy costs 2 with vCPU 1 holding the space (clear + MULTI flush,
    /// then the install), 1 alone.
    const XEN_COW_COPY: [u64; 2] = [2, 1];
    const XEN_COW_REUSE: u64 = 1;
    const XEN_PROTECT: [u64; 5] = [1, 1, 2, 3, 17];
    const XEN_FORK: [u64; 4] = [1, 2, 3, 17];
    /// Frames a demand-zero touch takes on each backend: the page and its new tables.
    const ZERO_FRAMES: [u64; 3] = [1, 2, 4];
    /// xen64 `mmu_update` records of a demand-zero touch: the leaf, a link
    /// per new table, and a new L3 linked into the user pgd as well.
    const ZERO_MMU_UPDATES: [u64; 3] = [1, 2, 5];

    /// The figures the lifecycle section writes down, counted by the models.
    #[test]
    fn lifecycle_counts_are_the_expected_ones() {
        let rows = measure().unwrap();
        assert_eq!(rows.len(), BACKENDS.len() * Op::all().len() * 2);
        for both in [true, false] {
            let other = u64::from(both);
            let want = XEN_COW_COPY[1 - other as usize];
            let x = row(&rows, "xen64", Op::CowCopy, both);
            assert_eq!(x.model.hypercalls, want, "xen64 COW copy both={both}: {x:?}");
            assert!(want <= xen_target(Op::CowCopy, both).unwrap());
            let x = row(&rows, "xen64", Op::CowReuse, both);
            assert_eq!(x.model.hypercalls, XEN_COW_REUSE, "xen64 COW reuse both={both}: {x:?}");
            let x = row(&rows, "xen64", Op::CowCopy, both);
            assert_eq!(
                (x.model.mmu_updates, x.model.multi_flushes, x.model.local_flushes, x.frames, x.copies),
                (2, other, 1 - other, 1, 1),
                "xen64 COW copy both={both}: the clear, one flush, the new entry: {x:?}"
            );
            let x = row(&rows, "xen64", Op::CowReuse, both);
            assert_eq!((x.model.multi_flushes + x.model.local_flushes, x.frames, x.copies), (0, 0, 0), "{x:?}");
            for (n, want) in PROTECT_PAGES.into_iter().zip(XEN_PROTECT) {
                let x = row(&rows, "xen64", Op::Protect(n), both);
                assert_eq!(
                    (x.model.hypercalls, x.model.mmu_updates, x.model.multi_flushes, x.model.ipis),
                    (want, n, other, 0),
                    "xen64 protect_range {n} both={both}: {x:?}"
                );
                assert_eq!(want, xen_batched(n));
                assert!(want <= xen_target(Op::Protect(n), both).unwrap());
            }
            for (n, want) in FORK_PAGES.into_iter().zip(XEN_FORK) {
                let x = row(&rows, "xen64", Op::Fork(n), both);
                assert_eq!(
                    (x.model.hypercalls, x.model.mmu_updates, x.model.multi_flushes, x.copies),
                    (want, n, other, 0),
                    "xen64 fork_cow {n} both={both}: {x:?}"
                );
                // The child's two roots and its L3, L2, L1: no data page.
                assert_eq!(x.frames, 2 + 3, "xen64 fork_cow {n}: frames {x:?}");
                assert!(want <= xen_target(Op::Fork(n), both).unwrap());
            }
            for ((t, frames), records) in ZERO_TABLES.into_iter().zip(ZERO_FRAMES).zip(ZERO_MMU_UPDATES) {
                let x = row(&rows, "xen64", Op::ZeroTouch(t), both);
                assert_eq!(
                    (x.model.hypercalls, x.model.update_va_mappings, x.model.mmu_updates),
                    (1, t, records),
                    "xen64 zero touch {t}: one multicall, a remap and a link per new table, the leaf: {x:?}"
                );
                for backend in BACKENDS {
                    let c = row(&rows, backend, Op::ZeroTouch(t), both);
                    assert_eq!((c.frames, c.model.ipis), (frames, 0), "{backend} zero touch {t} both={both}: {c:?}");
                }
            }
            // Natively: an IPI exactly when vCPU 1 holds the space and something was flushed.
            for op in Op::all() {
                let c = row(&rows, "native", op, both);
                let flushes = !matches!(op, Op::CowReuse | Op::ZeroTouch(_));
                assert_eq!(c.model.ipis, other * u64::from(flushes), "native {op:?} both={both}: {c:?}");
                assert_eq!(c.model.hypercalls, 0);
                if let Op::Fork(_) = op {
                    assert_eq!((c.copies, c.frames, c.model.full_flushes), (0, 1 + 3, 1 + other), "{c:?}");
                }
                if let Op::Protect(n) = op {
                    let (inv, full) = smp::native_flush(n);
                    assert_eq!((c.model.invlpgs, c.model.full_flushes), ((1 + other) * inv, (1 + other) * full));
                }
            }
            let c = row(&rows, "native", Op::CowCopy, both);
            assert_eq!((c.model.invlpgs, c.frames, c.copies), (1 + other, 1, 1), "native COW copy: {c:?}");
        }
    }

    /// Linux's side, as written in the section.
    #[test]
    fn linux_costs() {
        let x = |op, both| {
            let l = linux_cost(true, op, both);
            (l.hypercalls, l.trapped_writes)
        };
        assert_eq!(x(Op::CowCopy, true), (2, 1));
        assert_eq!(x(Op::CowReuse, true), (1, 0));
        assert_eq!(x(Op::Protect(64), true), (3, 0));
        assert_eq!(x(Op::Protect(8), false), (9, 0), "one INVLPG_LOCAL hypercall per page");
        assert_eq!(x(Op::Fork(512), true), (17, 512));
        assert_eq!(x(Op::ZeroTouch(3), true), (7, 0));
        let n = linux_cost(false, Op::Fork(32), true);
        assert_eq!((n.ipis, n.invlpgs, n.full_flushes), (1, 0, 2));
    }

    #[test]
    fn the_section_is_spliced_between_its_markers_or_before_reproduce() {
        let section = format!("{BEGIN}\nnew\n{END}\n\n");
        let doc = format!("# P\n\n{BEGIN}\nold\n{END}\n\n## Reproduce\nx\n");
        assert_eq!(splice(&doc, &section), format!("# P\n\n{BEGIN}\nnew\n{END}\n\n## Reproduce\nx\n"));
        let bare = "# P\n\n## Reproduce\nx\n";
        assert_eq!(splice(&splice(bare, &section), &section), splice(bare, &section), "idempotent");
    }
}
