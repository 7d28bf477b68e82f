//! Runs every benchmark and renders the results: `docs/PERFORMANCE.md` (tables
//! generated from the run) and `docs/scaling.svg` (a hand-written plot).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::baseline::{self, Baseline};
use crate::economy::{self, Row};
use crate::lifecycle::{self, LcRow};
use crate::memory::{self, Memory};
use crate::overhead::{self, Overhead};
use crate::scaling::{self, Run, PHASES};
use crate::smp::{self, SmpRow};
use crate::{cg, linux};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Largest address space of the scaling runs (pages).
    pub max_pages: u64,
    /// Parallel child runs.
    pub jobs: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_pages: *scaling::SIZES.last().expect("sizes"),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct Results {
    /// `uname -a`.
    pub uname: String,
    /// `nproc`.
    pub nproc: String,
    /// UTC date and time of the run.
    pub date: String,
    /// `rustc -V`.
    pub rustc: String,
    /// `valgrind --version`, if it was available.
    pub valgrind: Option<String>,
    /// Target 1, per memory model (empty without Valgrind).
    pub overhead: Vec<Overhead>,
    /// Target 2.
    pub economy: Vec<Row>,
    /// Memory.
    pub memory: Memory,
    /// Target 3.
    pub scaling: Vec<Run>,
    /// SMP: remote flushes on the 2-vCPU models.
    pub smp: Vec<SmpRow>,
    /// Issue 14: lifecycle operations on the 2-vCPU models.
    pub lifecycle: Vec<LcRow>,
    /// Framework vs hand-written (`None` without Valgrind).
    pub baseline: Option<Baseline>,
    /// Wall-clock seconds of the whole run (for planning, not a result).
    pub seconds: f64,
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

type Job<'a> = Box<dyn FnOnce() -> Result<Outcome, String> + Send + 'a>;

enum Outcome {
    Overhead(Overhead),
    Scaling(Run),
    Baseline(Baseline),
}

/// Runs everything: the in-process counts first, then the Callgrind children
/// (largest first) on `opts.jobs` threads.
pub fn run_all(opts: &Options) -> Result<Results, String> {
    let start = Instant::now();
    let economy = economy::measure()?;
    let memory = memory::measure()?;
    let smp = smp::measure()?;
    let lifecycle = lifecycle::measure()?;
    let vg = cg::ensure_valgrind();
    let valgrind = vg.as_ref().map(|p| command_line(&p.to_string_lossy(), &["--version"]));
    let work = std::env::temp_dir().join(format!("pvops-bench-{}", std::process::id()));
    let mut jobs: Vec<(u64, Job<'_>)> = Vec::new();
    for &pages in scaling::SIZES.iter().filter(|&&p| p <= opts.max_pages) {
        for backend in scaling::BACKENDS {
            let (vg, work) = (vg.clone(), work.clone());
            let weight = pages * if backend == "xen64" { 4 } else { 1 };
            jobs.push((
                weight,
                Box::new(move || {
                    let args = ["scaling".to_string(), backend.to_string(), pages.to_string()];
                    let run = cg::run_child(vg.as_deref(), &work, &args)?;
                    scaling::collect(backend, pages, &run).map(Outcome::Scaling)
                }),
            ));
        }
    }
    if vg.is_some() {
        for mem in overhead::MEMS {
            let (vg, work) = (vg.clone(), work.clone());
            jobs.push((
                1_000,
                Box::new(move || {
                    let run = cg::run_child(vg.as_deref(), &work, &["overhead".into(), mem.into()])?;
                    overhead::collect(mem, &run).map(Outcome::Overhead)
                }),
            ));
        }
    }
    if let Some(vg) = vg.clone() {
        let work = work.clone();
        jobs.push((1_000, Box::new(move || baseline::measure(&vg, &work).map(Outcome::Baseline))));
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(j.0));
    let outcomes = cg::run_parallel(opts.jobs, jobs.into_iter().map(|(_, j)| j).collect());
    let _ = std::fs::remove_dir_all(&work);
    let mut results = Results {
        uname: command_line("uname", &["-a"]),
        nproc: command_line("nproc", &[]),
        date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        rustc: command_line("rustc", &["-V"]),
        valgrind,
        overhead: Vec::new(),
        economy,
        memory,
        scaling: Vec::new(),
        smp,
        lifecycle,
        baseline: None,
        seconds: 0.0,
    };
    for o in outcomes {
        match o? {
            Outcome::Overhead(o) => results.overhead.push(o),
            Outcome::Scaling(r) => results.scaling.push(r),
            Outcome::Baseline(b) => results.baseline = Some(b),
        }
    }
    results.overhead.sort_by_key(|o| o.cells.first().map(|c| overhead::MEMS.iter().position(|m| *m == c.mem)));
    results.scaling.sort_by(|a, b| a.backend.cmp(&b.backend).then(a.pages.cmp(&b.pages)));
    results.seconds = start.elapsed().as_secs_f64();
    Ok(results)
}

/// The workspace's `docs/` directory.
pub fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..").join("docs")
}

fn fmt_ir(v: f64) -> String {
    if v >= 100.0 || (v - v.round()).abs() < 0.005 {
        group(v.round() as u64)
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn group(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn signed(v: f64) -> String {
    let v = (v * 100.0).round() / 100.0;
    if v == v.trunc() {
        format!("{v:+.0}")
    } else {
        format!("{v:+.2}")
    }
}

/// Verdicts of the targets, computed from the results.
#[derive(Clone, Debug, Default)]
pub struct Verdicts {
    /// Largest `static − direct` over the three operations (primary harness, each memory model).
    pub dispatch_gap: Option<f64>,
    /// Target 1 met.
    pub dispatch_met: Option<bool>,
    /// Target 2 rows missing their target: `(operation, ours, target)`.
    pub economy_misses: Vec<(String, u64, u64)>,
    /// Per-page growth of every scaling phase from 1,000 pages to the largest size, as a ratio.
    pub growth: Vec<(String, String, f64)>,
    /// Target 3 met (instructions and hypercalls per page never grow by more than 25 %).
    pub scaling_met: Option<bool>,
    /// Xen frames per address space minus native's, for every size.
    pub extra_frames: Vec<i64>,
}

/// Allowed growth of a per-page cost from 1,000 pages to the largest size.
pub const FLAT: f64 = 1.25;

/// Computes the verdicts.
pub fn verdicts(r: &Results) -> Verdicts {
    let mut v = Verdicts::default();
    let mut gaps = Vec::new();
    for o in &r.overhead {
        for mem in overhead::MEMS {
            for op in overhead::OPS {
                if let (Some(d), Some(s)) = (o.get(mem, "regs", op, "direct"), o.get(mem, "regs", op, "static")) {
                    gaps.push(s - d);
                }
            }
        }
    }
    if !gaps.is_empty() {
        let worst = gaps.iter().copied().fold(f64::MIN, f64::max);
        v.dispatch_gap = Some(worst);
        v.dispatch_met = Some(worst <= 2.0 + 0.005);
    }
    for row in &r.economy {
        if let Some(t) = row.target {
            if row.cost.hypercalls() > t {
                v.economy_misses.push((row.what.clone(), row.cost.hypercalls(), t));
            }
        }
    }
    let mut flat = true;
    let mut any = false;
    for backend in scaling::BACKENDS {
        let runs: Vec<&Run> = r.scaling.iter().filter(|x| x.backend == backend).collect();
        let (Some(base), Some(top)) = (runs.iter().find(|x| x.pages == 1_000), runs.last()) else { continue };
        if top.pages <= base.pages {
            continue;
        }
        let per = |x: &Run, i: usize| x.phases[i].ir.map(|ir| ir as f64 / x.pages as f64);
        for (i, name) in PHASES.iter().enumerate() {
            if *name == "create" || *name == "switch" {
                continue; // constant work: per page it can only fall
            }
            if let (Some(a), Some(b)) = (per(base, i), per(top, i)) {
                any = true;
                let g = b / a;
                flat &= g <= FLAT;
                v.growth.push((backend.into(), format!("{name} (instructions)"), g));
            }
        }
        if let (Some(a), Some(b)) = (base.total_ir(), top.total_ir()) {
            let g = (b as f64 / top.pages as f64) / (a as f64 / base.pages as f64);
            flat &= g <= FLAT;
            v.growth.push((backend.into(), "whole run (instructions)".into(), g));
        }
        let (ha, hb) = (base.total_hypercalls(), top.total_hypercalls());
        if ha > 0 {
            let g = (hb as f64 / top.pages as f64) / (ha as f64 / base.pages as f64);
            flat &= g <= FLAT;
            v.growth.push((backend.into(), "whole run (hypercalls)".into(), g));
        }
    }
    if any {
        v.scaling_met = Some(flat);
    }
    for n in scaling::SIZES {
        let f = |b: &str| r.scaling.iter().find(|x| x.backend == b && x.pages == n).map(|x| x.frames_create as i64);
        if let (Some(x), Some(nat)) = (f("xen64"), f("native")) {
            v.extra_frames.push(x - nat);
        }
    }
    v
}

fn yes(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

/// Renders `docs/PERFORMANCE.md`.
pub fn markdown(r: &Results) -> String {
    let v = verdicts(r);
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "# Performance\n");
    let _ = writeln!(
        w,
        "<!-- Generated by `cargo xtask bench` (= `cargo run --release -p pvops-bench --bin pvops-bench-report`). \
         Do not edit: rerun it. -->\n"
    );
    let _ = writeln!(
        w,
        "Everything here is **counted**, not timed: instructions with Callgrind (a deterministic \
         count of executed instructions), hypercalls with the xen64 backend's `stats()` and the Xen \
         model's `counters()`, which must agree. The machines are shared and noisy; counts are exact \
         and repeatable.\n"
    );
    let _ = writeln!(w, "| run | |\n|---|---|");
    let _ = writeln!(w, "| date | {} |", r.date);
    let _ = writeln!(w, "| machine | `{}` |", r.uname);
    let _ = writeln!(w, "| cores (`nproc`) | {} |", r.nproc);
    let _ = writeln!(w, "| compiler | `{}`, release profile |", r.rustc);
    let _ = writeln!(
        w,
        "| valgrind | {} |",
        r.valgrind.as_deref().map_or("not available: no instruction counts".into(), |v| format!("`{v}`"))
    );
    let _ = writeln!(w, "| bench run | {:.0} s wall clock |\n", r.seconds);

    // Summary.
    let _ = writeln!(w, "## Targets\n");
    let _ = writeln!(w, "| target | measured | verdict |\n|---|---|---|");
    let _ = writeln!(
        w,
        "| 1. native dispatch: registry-selected backend ≤ direct call + 2 instructions (`set_pte`, `set_pgd`, `write_cr3`) | {} | {} |",
        v.dispatch_gap.map_or("—".into(), |g| format!("worst {} instructions", signed(g))),
        yes(v.dispatch_met)
    );
    let econ_met = Some(v.economy_misses.is_empty());
    let econ_text = if v.economy_misses.is_empty() {
        "every operation at its target".to_string()
    } else {
        v.economy_misses.iter().map(|(w, o, t)| format!("{w}: {o} (target {t})")).collect::<Vec<_>>().join("; ")
    };
    let _ = writeln!(
        w,
        "| 2. Xen hypercalls: switch 1, pinned `set_pgd` 1, pin/unpin ⌈(table pages + 3) / 32⌉ (1 up to 29 table pages), lazy map ⌈N / {}⌉ | {} | {} |",
        economy::batch_ptes(),
        econ_text,
        yes(econ_met)
    );
    let worst_growth = v.growth.iter().map(|g| g.2).fold(0.0f64, f64::max);
    let _ = writeln!(
        w,
        "| 3. flat cost per page from 1 to {} pages (growth ≤ {FLAT}× from 1,000 pages up) | worst growth {:.2}× | {} |",
        group(r.scaling.iter().map(|x| x.pages).max().unwrap_or(0)),
        worst_growth,
        yes(v.scaling_met)
    );
    let extra = if v.extra_frames.is_empty() {
        "—".to_string()
    } else if v.extra_frames.iter().all(|&x| x == v.extra_frames[0]) {
        format!(
            "{} frame(s) per address space at every size; batch buffers {} B per backend",
            v.extra_frames[0], r.memory.xen_heap
        )
    } else {
        format!("{:?} frames", v.extra_frames)
    };
    let mem_met = if v.extra_frames.is_empty() { None } else { Some(v.extra_frames.iter().all(|&x| x == 1)) };
    let _ = writeln!(
        w,
        "| 3. Xen memory: one frame (user pgd) per address space + batch buffers | {extra} | {} |",
        yes(mem_met)
    );
    let (base_text, base_met) = match &r.baseline {
        None => ("—".to_string(), None),
        Some(b) => {
            let m = baseline::misses(b);
            let worst = |imp: &str| {
                baseline::OPS
                    .iter()
                    .filter(|op| baseline::target(op).is_some())
                    .filter_map(|op| b.ratio(imp, op).map(|x| format!("{op} {x:.2}×")))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            (format!("`Mm<Builtin>`: {}; `Mm<dyn>`: {}", worst("static"), worst("dyn")), Some(m.is_empty()))
        }
    };
    let _ = writeln!(
        w,
        "| 4. framework ÷ hand-written (Callgrind, bare-metal memory path): ≤ 1.25× map, unmap, switch; ≤ 1.1× fork per page | {base_text} | {} |\n",
        yes(base_met)
    );

    // Target 1.
    let _ = writeln!(w, "## 1. Dispatch overhead on native\n");
    let _ = writeln!(
        w,
        "Three ways to call the native backend, in instructions per call (Callgrind; each loop \
         runs as two regions of S = {} and S + N iterations, N = {} on the machine model and {} \
         on `DirectMap`; per call = `(Ir(S + N) − Ir(S)) / N`, so the loop's entry and exit cancel \
         out):\n\n\
         * **direct** — the method on `pvops_native::NativeBackend` itself;\n\
         * **static** — on `Builtin`, the registry-selected backend with static dispatch of the \
         built-ins (`pvops::static_dispatch!`, `tests/integration/src/builtin.rs`): the registry's own \
         `select` over every linked backend picks `native`, and the enum holds it by value;\n\
         * **dyn** — on the `&'static dyn PvMmuOps` the registry instantiates (what `pvops::init` returns).\n\n\
         The receiver goes through `black_box` on every iteration, so the enum's tag test is not \
         hoisted out of the loop and every call happens; `loop` is the same loop without the call. \
         *regs* passes the arguments as a call site does (in registers; the slot index and the \
         pgd through `black_box`); *stack* passes every argument through `black_box` (each one \
         reloaded from a reused stack slot) — a harsher, less realistic harness. The memory \
         behind the backend is the host `Machine` model (a mutex and a hash map per access: \
         large, but the same in every column) or `pvops_native::DirectMap` over a host buffer \
         (the bare-metal code path). Only the differences matter.\n",
        overhead::SMALL,
        overhead::calls("machine"),
        overhead::calls("directmap")
    );
    if r.overhead.is_empty() {
        let _ = writeln!(w, "*Not measured: Valgrind was not available.*\n");
    } else {
        let _ = writeln!(
            w,
            "| memory | args | operation | loop | direct (a) | static (b) | dyn (c) | b − a | c − a |\n|---|---|---|---:|---:|---:|---:|---:|---:|"
        );
        for o in &r.overhead {
            for mem in overhead::MEMS {
                for args in overhead::ARGS {
                    for op in overhead::OPS {
                        let g = |m: &str| o.get(mem, args, op, m);
                        let (Some(l), Some(a), Some(b), Some(c)) = (g("loop"), g("direct"), g("static"), g("dyn"))
                        else {
                            continue;
                        };
                        let _ = writeln!(
                            w,
                            "| {mem} | {args} | `{op}` | {} | {} | {} | {} | **{}** | {} |",
                            fmt_ir(l),
                            fmt_ir(a),
                            fmt_ir(b),
                            fmt_ir(c),
                            signed(b - a),
                            signed(c - a)
                        );
                    }
                }
            }
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(
        w,
        "**What static dispatch is here.** `enum_dispatch` cannot be used: it links an enum to a \
         trait only inside one crate (its registry lives in the proc-macro process; cross-crate \
         links are dropped silently), `PvMmuOps` lives in `pvops`, the backends in their own \
         crates, and `pvops` must not depend on its backends. So `pvops/src/dispatch.rs` exports a \
         `macro_rules!` macro, `pvops::static_dispatch!`, that the kernel expands naming the \
         backend types it links:\n\n\
         ```rust\n\
         pvops::static_dispatch! {{\n    \
             pub enum Builtin {{\n        \
                 dyn Other,                                              // any other registered backend, via its vtable\n        \
                 Native(NativeBackend) = \"native\" => NativeBackend::from_env,   // first = fast path\n        \
                 Xen64(XenBackend) = \"xen64\" => XenBackend::from_env,\n    \
             }}\n\
         }}\n\
         let ops = Builtin::init_static(&env)?; // the registry's selection, published for pvops::ops(); built-ins by value\n\
         ```\n\n\
         The example kernel does exactly this (`examples/pvkernel/src/backends.rs`, `KernelOps`), and `kernel_glue::Mm` \
         and the conformance suite are generic over the backend type, so every MMU call the kernel makes is \
         statically dispatched.\n\n\
         Every `PvMmuOps` method of the enum is `#[inline]`: it tests the tag for the **first** \
         built-in (one `cmp` with memory + one branch) and calls that backend's method directly, \
         so its `#[inline]` methods inline into the call site. Every other variant goes to an \
         out-of-line `#[cold]` function holding the full `match`, which takes the receiver and the \
         arguments as one tuple: the slow call reserves no register, so the fast path's register \
         allocation is the direct call's. (While building it we measured the alternatives on \
         `write_cr3`: a plain three-arm `match`, +8 — a shared tag load and the Xen arm's result \
         merged through memory; the cold function with separate arguments, +3 to +5 — the \
         receiver pinned to `rsi` for the slow call.) The \
         price is on the other built-ins: a Xen call pays the failed test, an out-of-line call \
         with its arguments in a stack tuple and a second `match` (not measured here; a handful \
         of instructions in front of a hypercall). Declare the native backend first.\n"
    );
    if !r.overhead.is_empty() {
        let diffs = |args: &str, col: &str| -> Vec<String> {
            let mut out = Vec::new();
            for o in &r.overhead {
                for mem in overhead::MEMS {
                    for op in overhead::OPS {
                        if let (Some(a), Some(x)) = (o.get(mem, args, op, "direct"), o.get(mem, args, op, col)) {
                            out.push(format!("{mem} `{op}` {}", signed(x - a)));
                        }
                    }
                }
            }
            out
        };
        let _ = writeln!(
            w,
            "Result, static − direct: *regs* {}; *stack* {}. The tag test itself is two \
             instructions (`cmpq $0, (reg)` + `jne`); anything beyond that in the *stack* harness \
             comes from it: the `mm` argument (which native ignores) must be reloaded before its \
             reused stack slot is overwritten, and an `Ok` merged with the cold path's result. \
             Through `&dyn PvMmuOps` (dyn − direct: {}) nothing can be inlined: an indirect call \
             to the default `set_pte`, its prologue and a `Result` returned through memory.\n",
            diffs("regs", "static").join(", "),
            diffs("stack", "static").join(", "),
            diffs("regs", "dyn").join(", ")
        );
    }

    // Target 2.
    let _ = writeln!(w, "## 2. Hypercall economy on Xen (model)\n");
    let _ = writeln!(
        w,
        "Hypercalls per operation on the xen64 backend over the strict Xen PV MMU model \
         (`tests/model`), booted as the kernel boots. *ours* is the backend's `stats()`; the model's \
         own trap count is checked equal on every row. *entries* is the multicall entries the model \
         ran (0 when the batch was a single hypercall). *Linux* is what `arch/x86/xen/mmu_pv.c` \
         needs for the same operation, derived by replaying its calls through a model of \
         `multicalls.c`'s rules (`tests/bench/src/linux.rs`): 32 entries and 512 argument bytes \
         per batch, consecutive `mmu_update`/`mmuext_op` records extending the previous entry, a \
         full batch flushed before the next entry; `__xen_pgd_pin` remaps every table page with \
         its own `update_va_mapping` entry and, with split PTE locks (SMP builds), adds a \
         `PIN_L1_TABLE` entry and an unlock callback per L1 page. Pin/unpin rows: an address \
         space with one page in each of K consecutive 2 MiB regions (K L1 pages, ⌈K/512⌉ L2, one \
         L3). Lazy-map rows: N `set_pte`s into existing L1 tables of a pinned space between \
         `lazy_mmu_enter` and `lazy_mmu_leave`.\n"
    );
    let _ = writeln!(
        w,
        "| operation | table pages | ours | entries | Linux `mmu_pv.c` | target | verdict |\n|---|---:|---:|---:|---:|---:|---|"
    );
    for row in &r.economy {
        let met = row.target.map(|t| row.cost.hypercalls() <= t);
        let _ = writeln!(
            w,
            "| {} | {} | **{}** | {} | {} | {} | {} |",
            row.what,
            row.size.filter(|_| row.what.starts_with("pin") || row.what.starts_with("unpin")).map_or("".into(), group),
            row.cost.hypercalls(),
            group(row.cost.model_entries),
            row.linux,
            row.target.map_or("—".into(), |t| t.to_string()),
            match met {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "",
            }
        );
    }
    let _ = writeln!(w);
    let pin_rows: Vec<&Row> = r.economy.iter().filter(|x| x.what.starts_with("pin")).collect();
    let better: Vec<String> = pin_rows
        .iter()
        .filter(|x| x.cost.hypercalls() < x.linux)
        .map(|x| format!("{} ({} vs {})", x.what, x.cost.hypercalls(), x.linux))
        .collect();
    let _ = writeln!(
        w,
        "**Where we do better, and why.** Context switch, pinned `set_pgd` and lazy mapping need \
         exactly what Linux needs: the same records merge into one entry the same way (both \
         base pointers in one `mmuext_op`; both pgd slots in one `mmu_update`; 32 `mmu_update`s of \
         16 bytes fill the 512 argument bytes). Pin and unpin need fewer{}: we never pin L1 \
         pages one by one — pinning the two L4s makes Xen validate the whole tree, so the only \
         per-table-page record is its read-only (or writable) remap; Linux pins each L1 separately \
         (split PTE locks: it must pin an L1 while holding that L1's lock, and cannot hold a \
         whole tree's locks), which doubles its entries ({} entries for K = 1000 against our {}).\n",
        if better.is_empty() { String::new() } else { format!(" ({})", better.join("; ")) },
        linux::pin_entries(pin_tables_of(1000)),
        pin_rows.last().map_or(0, |x| x.cost.model_entries)
    );
    let pin_misses: Vec<&(String, u64, u64)> =
        v.economy_misses.iter().filter(|m| m.0.starts_with("pin") || m.0.starts_with("unpin")).collect();
    if !pin_misses.is_empty() {
        let _ = writeln!(
            w,
            "**Gap: pin/unpin are not one hypercall for large K.** Measured: {}. Reason: the backend \
             puts one `update_va_mapping` multicall entry per table page into the shared 32-entry \
             batch, so a pin of T table pages (plus the two pgds and one `mmuext_op` entry for both \
             pins) takes ⌈(T + 3) / 32⌉ multicalls. The limit is our batch buffer's (Linux's size), \
             not Xen's. **Xen's own per-call limits**: `multicall` takes any number of entries (it \
             preempts itself with a continuation, invisible to the guest); `mmu_update` and \
             `mmuext_op` take up to 2³¹ − 1 records per call (bit 31 of the count is \
             `MMU_UPDATE_PREEMPTED`); `update_va_mapping` changes one PTE. So nothing in Xen forces \
             a split. A pin becomes one hypercall either as one multicall of all its entries built in \
             a buffer sized for the pin (T + 3 entries of 64 bytes) instead of the 32-entry batch, \
             or — smaller — as a two-entry multicall: one `mmu_update` array writing the \
             direct-map L1 entries of the T + 2 table pages read-only (16 bytes each) and one \
             `mmuext_op` array with a local TLB flush (what `UVMF_INVLPG` did per page) and both pins. That change belongs to `backends/xen64` (`pin.rs`, \
             `multicall.rs`).\n",
            pin_misses.iter().map(|m| format!("{} = {} (target {})", m.0, m.1, m.2)).collect::<Vec<_>>().join(", ")
        );
    } else {
        let _ = writeln!(
            w,
            "**What splits a pin**: the per-vCPU batch, fixed at 32 entries (Linux's `MC_BATCH`; \
             allocated once, never grown: a full batch is issued before the next entry, so a \
             pin of K table pages costs ⌈(K + 3) / 32⌉ hypercalls; `tests/integration/tests/no_heap.rs` \
             has the sweep against larger capacities: 64 entries halve it for ≈ 5 KiB more per \
             vCPU, and Xen validates every table page anyway). Xen's own per-call limits: `multicall` takes \
             any number of entries (Xen preempts itself with a continuation); `mmu_update` and \
             `mmuext_op` take up to 2³¹ − 1 records per call (bit 31 of the count is \
             `MMU_UPDATE_PREEMPTED`); `update_va_mapping` changes one PTE.\n"
        );
    }
    let lazy_allocs: Vec<String> = r
        .economy
        .iter()
        .filter(|x| x.what.starts_with("map") && x.cost.hypercalls() > 0)
        .map(|x| format!("{:.1}", x.cost.allocations as f64 / x.cost.hypercalls() as f64))
        .collect();
    if r.memory.counted {
        let _ = writeln!(
            w,
            "Heap allocations per hypercall while mapping lazily, counted over the whole \
             process (transient, freed again): {}; a context switch: {}. The count includes \
             the host model's own bookkeeping; with the model's allocations left out, the \
             backend's share is 0 after a vCPU's first call (its batch buffers are allocated \
             once): `tests/integration/tests/no_heap.rs`.\n",
            lazy_allocs.join(", "),
            r.economy.first().map_or(0, |x| x.cost.allocations)
        );
    }

    let _ = writeln!(
        w,
        "**On the real Xen**: the Xen PV kernel runs the same pin/unpin and lazy-map workloads \
         (`examples/pvkernel/src/xensweep.rs`; N = 10,000 left out: 40 MiB of the 64 MiB dom0), counted at its \
         hypercall transport; `cargo xtask run`/`test` fail if a count differs from the table in \
         `xtask/src/sweep.rs` (the figures above), and `cargo xtask bench` prints the counts saved by the \
         unmodified kernel's last Xen boot (`target/boot/xensweep-pvkernel.log`, written by `cargo xtask \
         run`/`test`; the bench does not boot Xen) beside these.\n"
    );

    // Target 3.
    let _ = writeln!(w, "## 3. Scaling\n");
    let _ = writeln!(
        w,
        "One run per configuration and size P, on a platform of `2·P + P/256 + 256` frames, \
         booted as the kernel boots. Phases: **create** an address space A; **map** P pages into \
         it (contiguous from 4 MiB, unpinned); **fork** A → B (copies every page); **pin** = the \
         first `activate` of A and of B (pin + switch); **switch** A → B → init_mm (three \
         switches); **exit** A and B (unpin, free everything). Per page = divided by P (the size \
         of A). Configurations:\n\n\
         * **native** — the native backend on the host `Machine` model, which locks a mutex and \
         hashes a frame number on every word it reads or writes: most of these instructions are \
         the model's;\n\
         * **native-directmap** — the native backend on `pvops_native::DirectMap` over a host \
         buffer, the bare-metal code path: the instructions are kernel-glue's and the backend's own;\n\
         * **xen64** — the xen64 backend on the strict Xen model, which also validates every \
         entry it is handed and zeroes frames word by word through the p2m: again mostly the \
         model's instructions.\n\n\
         What must hold is that no phase grows per page (no quadratic walk) and that no per-page \
         hypercall appears.\n"
    );
    for backend in scaling::BACKENDS {
        let runs: Vec<&Run> = r.scaling.iter().filter(|x| x.backend == backend).collect();
        if runs.is_empty() {
            continue;
        }
        let _ = writeln!(w, "### {backend}\n");
        let _ = write!(w, "| pages |");
        for p in PHASES {
            let _ = write!(w, " {p} Ir/page |");
        }
        let _ = writeln!(
            w,
            " **total Ir/page** | hypercalls (pin / switch / exit) | **hypercalls/page** | frames create + map |"
        );
        let _ = writeln!(w, "|---:|{}---|---:|---:|", "---:|".repeat(PHASES.len() + 1));
        for x in runs {
            let _ = write!(w, "| {} |", group(x.pages));
            for p in &x.phases {
                let _ = write!(w, " {} |", p.ir.map_or("—".into(), |ir| fmt_ir(ir as f64 / x.pages as f64)));
            }
            let h = |n: &str| PHASES.iter().position(|p| *p == n).map_or(0, |i| x.phases[i].hypercalls);
            let _ = writeln!(
                w,
                " **{}** | {} / {} / {} | **{}** | {} + {} |",
                x.total_ir().map_or("—".into(), |ir| fmt_ir(ir as f64 / x.pages as f64)),
                h("pin"),
                h("switch"),
                h("exit"),
                fmt_ratio(x.total_hypercalls() as f64 / x.pages as f64),
                x.frames_create,
                x.frames_map
            );
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(w, "![instructions and hypercalls per page against address-space size](scaling.svg)\n");
    if !v.growth.is_empty() {
        let _ = writeln!(
            w,
            "Growth of the per-page cost from 1,000 pages to the largest size (1.00 = flat; a \
             quadratic walk would show ≈ 100×): {}.\n",
            v.growth.iter().map(|(b, p, g)| format!("{b} {p} {g:.2}×")).collect::<Vec<_>>().join("; ")
        );
    }
    let _ = writeln!(
        w,
        "Per page, create and switch (constant work) fall as 1/P and every other phase levels off: \
         map and exit are linear walks, fork copies each page once (512 word reads through the \
         model, most of its cost), pin reads each table once and the Xen model validates each \
         entry once. Hypercalls: map and fork write unpinned tables directly (none); pin, unpin \
         and switch cost what §2 shows for their sizes.\n"
    );

    // Memory.
    let _ = writeln!(w, "## Memory\n");
    let m = &r.memory;
    let _ = writeln!(w, "| | native | xen64 |\n|---|---:|---:|");
    let fc = |b: &str| {
        let v: Vec<u64> = r.scaling.iter().filter(|x| x.backend == b).map(|x| x.frames_create).collect();
        if v.is_empty() {
            "—".to_string()
        } else if v.iter().all(|&x| x == v[0]) {
            v[0].to_string()
        } else {
            format!("{v:?}")
        }
    };
    let _ = writeln!(w, "| frames per address space (`create`, every size) | {} | {} |", fc("native"), fc("xen64"));
    let fm = |b: &str, n: u64| {
        r.scaling.iter().find(|x| x.backend == b && x.pages == n).map_or("—".into(), |x| x.frames_map.to_string())
    };
    let top = r.scaling.iter().map(|x| x.pages).max().unwrap_or(0);
    let _ = writeln!(
        w,
        "| frames for {} mapped pages (pages + tables) | {} | {} |",
        group(top),
        fm("native", top),
        fm("xen64", top)
    );
    let _ = writeln!(w, "| `size_of` the backend value | {} B | {} B |", m.native_size, m.xen_size);
    if m.counted {
        let _ = writeln!(w, "| heap the backend keeps (batch buffers) | {} B | {} B |", m.native_heap, m.xen_heap);
        let _ = writeln!(
            w,
            "| heap the backend holds after {} address-space lives (freed when it is dropped) | — | {} B |",
            memory::LIVES,
            m.xen_heap_after_use
        );
    }
    let _ = writeln!(
        w,
        "\nThe Xen backend's extra memory per address space is exactly its user pgd: one frame \
         (`create` takes {} frame(s) on xen64 against {} natively, at every size; `map` the same \
         frames on both). Its batch buffers — `mmu_update` records ({} B of arguments), `mmuext_op` \
         records, entry and callback vectors, allocated once with their final capacity — belong to \
         the backend (Linux: one set per CPU, ≈ 3 KiB), not to address spaces: {}.\n",
        fc("xen64"),
        fc("native"),
        pvops_xen64::MAX_ARG_BYTES,
        if !m.counted {
            "heap not counted in this run".to_string()
        } else if m.xen_heap_after_use == m.xen_heap {
            "after many address-space lives the backend holds the same heap as when it was built".to_string()
        } else {
            format!(
                "after {} address-space lives the backend holds {} B against {} B when it was built ({:+} B)",
                memory::LIVES,
                m.xen_heap_after_use,
                m.xen_heap,
                m.xen_heap_after_use - m.xen_heap
            )
        }
    );

    if let Some(b) = &r.baseline {
        let _ = write!(w, "{}", baseline::markdown(b));
    }
    let _ = write!(w, "{}", smp::markdown(&r.smp));
    let _ = write!(w, "{}", lifecycle::markdown(&r.lifecycle));

    // How.
    let _ = writeln!(w, "## Reproduce\n");
    let _ = writeln!(
        w,
        "```sh\n\
         cargo xtask bench                                          # this report (docs/PERFORMANCE.md, docs/scaling.svg)\n\
         cargo xtask bench --smp                                    # only the SMP section, rewritten in place (no Valgrind)\n\
         cargo xtask bench --baseline                               # only the framework-vs-hand-written section, in place\n\
         cargo xtask bench --lifecycle                              # only the lifecycle section, in place (no Valgrind)\n\
         cargo run --release -p pvops-bench --bin pvops-bench-report  # the same, directly\n\
         cargo bench -p pvops-bench                                 # the same tables on stdout, nothing written\n\
         cargo test -p pvops-bench                                  # the counting harness's exact check\n\
         ```\n\n\
         The report binary installs Valgrind with `apt-get` when it is missing and it runs as \
         root (`PVOPS_VALGRIND=/path/to/valgrind` overrides). Each measured program is the same \
         binary re-run as `child …` under `valgrind --tool=callgrind`; it brackets each region \
         with Callgrind client requests (`CALLGRIND_ZERO_STATS`, `CALLGRIND_DUMP_STATS_AT(label)`, \
         issued by inline assembly in `tests/bench/src/cg.rs`) and the parent reads each dump's \
         `totals:` line. Outside Valgrind the requests are no-ops, so hypercall counts need no Valgrind.\n"
    );
    s
}

fn fmt_ratio(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.2e}")
    }
}

fn pin_tables_of(l1: u64) -> linux::Tables {
    economy::pin_tables(l1)
}

/// Renders `docs/scaling.svg`: two log–log panels, instructions per page and
/// hypercalls per page against pages mapped.
pub fn svg(r: &Results) -> String {
    const W: f64 = 1000.0;
    const H: f64 = 520.0;
    let panel_w = 370.0;
    let panel_h = 300.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">pvops scaling on the host models ({})</text>"#,
        W / 2.0,
        r.date
    );
    let max_pages = r.scaling.iter().map(|x| x.pages).max().unwrap_or(100_000).max(10) as f64;
    let colors = [("native", "#1f77b4"), ("native-directmap", "#2ca02c"), ("xen64", "#d62728")];
    // Panel 1: instructions per page (whole run, and the map phase alone).
    let mut series1 = Vec::new();
    for (b, color) in colors {
        let runs: Vec<&Run> = r.scaling.iter().filter(|x| x.backend == b).collect();
        let total: Vec<(f64, f64)> =
            runs.iter().filter_map(|x| x.total_ir().map(|ir| (x.pages as f64, ir as f64 / x.pages as f64))).collect();
        let map_i = PHASES.iter().position(|p| *p == "map").unwrap_or(1);
        let map: Vec<(f64, f64)> = runs
            .iter()
            .filter_map(|x| x.phases[map_i].ir.map(|ir| (x.pages as f64, ir as f64 / x.pages as f64)))
            .collect();
        series1.push((format!("{b}, whole run"), color, false, total));
        series1.push((format!("{b}, map phase"), color, true, map));
    }
    panel(&mut s, 95.0, 50.0, panel_w, panel_h, max_pages, "instructions per page (Callgrind)", &series1);
    // Panel 2: hypercalls per page on xen64 (native makes none).
    let mut series2 = Vec::new();
    let runs: Vec<&Run> = r.scaling.iter().filter(|x| x.backend == "xen64").collect();
    let total: Vec<(f64, f64)> = runs
        .iter()
        .map(|x| (x.pages as f64, x.total_hypercalls() as f64 / x.pages as f64))
        .filter(|p| p.1 > 0.0)
        .collect();
    let pin_i = PHASES.iter().position(|p| *p == "pin").unwrap_or(3);
    let exit_i = PHASES.iter().position(|p| *p == "exit").unwrap_or(5);
    let pin_exit: Vec<(f64, f64)> = runs
        .iter()
        .map(|x| (x.pages as f64, (x.phases[pin_i].hypercalls + x.phases[exit_i].hypercalls) as f64 / x.pages as f64))
        .filter(|p| p.1 > 0.0)
        .collect();
    series2.push(("xen64, whole run".to_string(), "#d62728", false, total));
    series2.push(("xen64, pin + exit".to_string(), "#d62728", true, pin_exit));
    panel(&mut s, 595.0, 50.0, panel_w, panel_h, max_pages, "hypercalls per page (xen64; native: 0)", &series2);
    let _ = writeln!(s, "</svg>");
    s
}

type Series = (String, &'static str, bool, Vec<(f64, f64)>);

#[allow(clippy::too_many_arguments)]
fn panel(s: &mut String, x0: f64, y0: f64, w: f64, h: f64, max_x: f64, title: &str, series: &[Series]) {
    let ys: Vec<f64> = series.iter().flat_map(|x| x.3.iter().map(|p| p.1)).filter(|v| *v > 0.0).collect();
    let (mut lo, mut hi) = ys.iter().fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    if ys.is_empty() {
        (lo, hi) = (1.0, 10.0);
    }
    let (ylo, yhi) = (lo.log10().floor(), hi.log10().ceil().max(lo.log10().floor() + 1.0));
    let xhi = max_x.log10().ceil();
    let px = |x: f64| x0 + w * (x.log10() / xhi);
    let py = |y: f64| y0 + h - h * ((y.log10() - ylo) / (yhi - ylo));
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{title}</text>"#,
        x0 + w / 2.0,
        y0 - 10.0
    );
    let _ = writeln!(s, r##"<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#444"/>"##);
    for d in 0..=(xhi as i32) {
        let x = px(10f64.powi(d));
        let _ = writeln!(s, r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="#ddd"/>"##, y0 + h);
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            y0 + h + 16.0,
            group(10u64.pow(d as u32))
        );
    }
    for d in (ylo as i32)..=(yhi as i32) {
        let y = py(10f64.powi(d));
        let _ = writeln!(s, r##"<line x1="{x0}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>"##, x0 + w);
        let label = if d >= 0 { group(10u64.pow(d as u32)) } else { format!("1e{d}") };
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{label}</text>"#, x0 - 4.0, y + 4.0);
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">pages mapped (log)</text>"#,
        x0 + w / 2.0,
        y0 + h + 34.0
    );
    for (i, (name, color, dashed, pts)) in series.iter().enumerate() {
        if pts.is_empty() {
            continue;
        }
        let dash = if *dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let points: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            points.join(" ")
        );
        for &(x, y) in pts {
            let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#, px(x), py(y));
        }
        let ly = y0 + h + 56.0 + 16.0 * i as f64;
        let lx = x0 + 10.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{name}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0
        );
    }
}

/// Prints a short text summary of `r` (for `cargo bench`).
pub fn summary(r: &Results) -> String {
    markdown(r)
}

/// Writes `PERFORMANCE.md` and `scaling.svg` into `dir`.
pub fn write(r: &Results, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let md = dir.join("PERFORMANCE.md");
    std::fs::write(&md, markdown(r)).map_err(|e| format!("{}: {e}", md.display()))?;
    let svg_path = dir.join("scaling.svg");
    std::fs::write(&svg_path, svg(r)).map_err(|e| format!("{}: {e}", svg_path.display()))?;
    Ok(())
}
