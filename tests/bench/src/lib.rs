//! # pvops-bench — counted benchmarks
//!
//! Instructions (Callgrind) and hypercalls (the xen64 backend's `stats()` and
//! the Xen model's `counters()`), never time: the machines are shared and
//! noisy, counts are exact. Three targets (issue 6):
//!
//! 1. [`overhead`] — a native call through the registry-selected backend
//!    ([`builtin::Builtin`], `pvops::static_dispatch!`) against a direct call
//!    and a `&dyn PvMmuOps` call;
//! 2. [`economy`] — hypercalls per operation on the Xen model beside Linux's
//!    `mmu_pv.c` ([`linux`]);
//! 3. [`scaling`] — cost per page as address spaces grow, and [`memory`].
//!
//! And [`smp`] (issue 12): hypercalls and IPIs per remote TLB flush on the
//! 2-vCPU models, beside Linux (`--smp` renders only that section); and
//! [`baseline`] (issue 15): `kernel_glue::Mm` against hand-written page-table
//! code in one Callgrind run, framework ÷ hand-written per operation and
//! where the instructions go (`--baseline` renders only that section); and
//! [`lifecycle`] (issue 14): hypercalls and IPIs per COW fault, `mprotect`,
//! COW fork and demand-zero touch on the 2-vCPU models, beside Linux
//! (`--lifecycle` renders only that section).
//!
//! [`report`] runs them all and writes `docs/PERFORMANCE.md` and
//! `docs/scaling.svg`; [`cg`] is the Callgrind harness.
#![warn(missing_docs)]

pub use pvops_integration::builtin;
pub mod baseline;
pub mod cg;
pub mod economy;
pub mod lifecycle;
pub mod linux;
pub mod memory;
pub mod overhead;
pub mod report;
pub mod scaling;
pub mod smp;

/// Counts heap use (see [`memory`]); forwards to the system allocator.
#[global_allocator]
static ALLOC: memory::CountingAlloc = memory::CountingAlloc;

/// Entry point of a child run: `child …` runs one measured workload (normally
/// under Callgrind, started by [`report::run_all`]).
pub fn child_main(args: &[String]) -> Result<(), String> {
    match args {
        [kind, mem] if kind == "overhead" => overhead::child(mem),
        [kind] if kind == "baseline" => baseline::child(),
        [kind, backend, pages] if kind == "scaling" => {
            scaling::child(backend, pages.parse().map_err(|e| format!("pages {pages:?}: {e}"))?)
        }
        _ => Err(format!("unknown child workload {args:?}")),
    }
}

/// What the command line asked for.
#[derive(Debug, Default)]
struct Cli {
    opts: report::Options,
    out: Option<std::path::PathBuf>,
    /// Only the SMP section (`--smp`), spliced into the existing document.
    smp_only: bool,
    /// Only the framework-vs-hand-written section (`--baseline`), likewise.
    baseline_only: bool,
    /// Only the lifecycle section (`--lifecycle`), likewise.
    lifecycle_only: bool,
}

fn parse(args: &[String], write_by_default: bool) -> Result<Cli, String> {
    let mut cli = Cli {
        opts: report::Options::default(),
        out: write_by_default.then(report::docs_dir),
        smp_only: false,
        baseline_only: false,
        lifecycle_only: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => cli.opts.max_pages = 1_000,
            "--max-pages" => cli.opts.max_pages = value(a)?.parse().map_err(|e| format!("--max-pages: {e}"))?,
            "--jobs" => cli.opts.jobs = value(a)?.parse().map_err(|e| format!("--jobs: {e}"))?,
            "--out" => cli.out = Some(value(a)?.into()),
            "--no-write" => cli.out = None,
            "--smp" => cli.smp_only = true,
            "--baseline" => cli.baseline_only = true,
            "--lifecycle" => cli.lifecycle_only = true,
            // What `cargo bench` passes to a harness-less bench; filters are not supported.
            "--bench" => {}
            "-h" | "--help" => {
                return Err(
                    "usage: pvops-bench-report [--quick | --max-pages N] [--jobs N] [--smp | --baseline | --lifecycle] [--out DIR | --no-write]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(cli)
}

/// `main` of both bench binaries. `write_by_default`: the report binary
/// writes `docs/`; `cargo bench` only prints. Returns the process exit code.
pub fn main(write_by_default: bool) -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        return match child_main(&args[1..]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("pvops-bench child: {e}");
                1
            }
        };
    }
    let cli = match parse(&args, write_by_default) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    if cli.smp_only {
        return match smp_only(cli.out.as_deref()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("pvops-bench: {e}");
                1
            }
        };
    }
    if cli.lifecycle_only {
        return match lifecycle_only(cli.out.as_deref()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("pvops-bench: {e}");
                1
            }
        };
    }
    if cli.baseline_only {
        return match baseline_only(cli.out.as_deref()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("pvops-bench: {e}");
                1
            }
        };
    }
    let results = match report::run_all(&cli.opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pvops-bench: {e}");
            return 1;
        }
    };
    let md = report::markdown(&results);
    match &cli.out {
        Some(dir) => {
            if let Err(e) = report::write(&results, dir) {
                eprintln!("pvops-bench: {e}");
                return 1;
            }
            println!("{md}");
            println!("pvops-bench: wrote {}/PERFORMANCE.md and scaling.svg", dir.display());
        }
        None => println!("{md}"),
    }
    0
}

/// `doc` with the section between `begin` and `end` replaced by `section`;
/// without those markers, `section` goes before the first of `before` found
/// in `doc` (or at the end). Every generated section of PERFORMANCE.md uses it.
pub fn splice_section(doc: &str, begin: &str, end: &str, section: &str, before: &[&str]) -> String {
    if let (Some(a), Some(z)) = (doc.find(begin), doc.find(end)) {
        if a < z {
            let rest = doc[z + end.len()..].trim_start_matches('\n');
            return format!("{}{}{}", &doc[..a], section, rest);
        }
    }
    match before.iter().find_map(|m| doc.find(m)) {
        Some(i) => format!("{}{}{}", &doc[..i], section, &doc[i..]),
        None => format!("{doc}\n{section}"),
    }
}

/// Rewrites one generated section (`what`) of `dir/PERFORMANCE.md` with
/// `splice`, leaving the rest as it was.
fn rewrite_section(
    dir: Option<&std::path::Path>,
    what: &str,
    section: &str,
    splice: fn(&str, &str) -> String,
) -> Result<(), String> {
    println!("{section}");
    if let Some(dir) = dir {
        let path = dir.join("PERFORMANCE.md");
        let doc = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::write(&path, splice(&doc, section)).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("pvops-bench: rewrote the {what} section of {}", path.display());
    }
    Ok(())
}

/// `--smp`: measures only the SMP section and rewrites it in
/// `dir/PERFORMANCE.md` (between its markers), leaving the rest as it was.
fn smp_only(dir: Option<&std::path::Path>) -> Result<(), String> {
    rewrite_section(dir, "SMP", &smp::markdown(&smp::measure()?), smp::splice)
}

/// `--lifecycle`: measures only the lifecycle section and rewrites it in
/// `dir/PERFORMANCE.md` (between its markers), leaving the rest as it was.
fn lifecycle_only(dir: Option<&std::path::Path>) -> Result<(), String> {
    rewrite_section(dir, "lifecycle", &lifecycle::markdown(&lifecycle::measure()?), lifecycle::splice)
}

/// `--baseline`: runs only the framework-vs-hand-written child under
/// Callgrind and rewrites its section in `dir/PERFORMANCE.md`.
fn baseline_only(dir: Option<&std::path::Path>) -> Result<(), String> {
    let vg = cg::ensure_valgrind().ok_or("--baseline needs valgrind")?;
    let work = std::env::temp_dir().join(format!("pvops-bench-{}", std::process::id()));
    let section = baseline::markdown(&baseline::measure(&vg, &work)?);
    let _ = std::fs::remove_dir_all(&work);
    rewrite_section(dir, "framework-vs-hand-written", &section, baseline::splice)
}

#[cfg(test)]
mod tests {
    /// The counting harness is exact: a fixed workload on the Xen model costs
    /// exactly these hypercalls, counted alike by the backend and the model
    /// (which `Guest::cost` checks), and the Linux replay gives its known
    /// counts. Instruction counting needs Valgrind and is not run here: its
    /// client requests are checked to be no-ops outside it.
    #[test]
    fn fixed_workload_costs_exactly_the_expected_hypercalls() {
        use crate::economy::{self, Guest};
        use crate::linux::{self, Tables};

        let g = Guest::boot(1024).unwrap();
        let mm = g.mm();
        // Unpinned: mapping writes tables directly.
        let (a, c) = g
            .cost(|| {
                let a = mm.create()?;
                for i in 0..3 {
                    mm.map(&a, 0x40_0000 + i * 4096, kernel_glue::PageFlags::DATA)?;
                }
                Ok(a)
            })
            .unwrap();
        assert_eq!(c.hypercalls(), 0);
        assert_eq!(c.backend.direct_writes, 10, "3 kernel-half slots, pgd + user pgd slot, pud, pmd, 3 ptes");
        // First activation: one pin (the read-only remaps of 3 table pages and
        // 2 pgds, and both pins), then one mmuext_op with both base pointers.
        let (_, c) = g.cost(|| mm.activate(&a)).unwrap();
        assert_eq!(c.hypercalls(), 2);
        assert_eq!(c.backend.mmuext_ops, 4, "2 pins + NEW_BASEPTR + NEW_USER_BASEPTR");
        let (_, c) = g.cost(|| mm.activate_init()).unwrap();
        assert_eq!((c.hypercalls(), c.model_entries, c.backend.mmuext_ops), (1, 0, 2));
        // 33 ptes in lazy mode: 32 fill the 512 argument bytes, the 33rd goes alone.
        let c = economy::lazy_map(&g, 33).unwrap();
        assert_eq!((c.hypercalls(), c.backend.mmu_updates), (2, 33));
        let (_, c) = g.cost(|| mm.exit(a).map_err(|(e, _)| e)).unwrap();
        assert_eq!((c.hypercalls(), c.backend.mmuext_ops), (1, 2), "one unpin multicall: both unpins and the remaps");
        g.model().check_invariants().unwrap();

        let t = Tables { l3: 1, l2: 1, l1: 1000 };
        assert_eq!((linux::pin_entries(t), linux::pin(t), linux::unpin(t)), (2006, 63, 63));
        assert_eq!((linux::context_switch(), linux::set_pgd_pinned(), linux::lazy_map(33)), (1, 1, 2));
        assert!(!crate::cg::on_valgrind());
    }
}
