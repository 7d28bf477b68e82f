//! `cargo xtask`: the project's automation.
//!
//! * `cargo xtask run [--backend NAME]` — the main job: the host-model report,
//!   then the example kernel built once and booted natively (PVH) and as a
//!   Xen PV64 dom0, both `RESULT` lines, a comparison table and the
//!   kernel-vs-model hypercall comparison.
//! * `cargo xtask test [--platform native|xen]` — every test (what CI runs):
//!   fmt, clippy, no_std builds, `cargo test`, the kernel's own fmt/clippy,
//!   both boots (or only the named one), and the deliberately broken kernels,
//!   each of which must fail.
//! * `cargo xtask calibrate [--save]` — the calibration corpus on the real Xen
//!   and the model, record by record (`--save` refreshes the checked-in copy).
//! * `cargo xtask fuzz [--seconds N]` — the differential fuzzer (default 180 s).
//! * `cargo xtask bench [--quick]` — counted benchmarks; writes docs/PERFORMANCE.md.
//! * `cargo xtask mutants [cargo-mutants args]` — mutation testing of the MMU crates (slow).

mod boot;
mod calibrate;
mod fuzz;
mod mutants;
mod newbackend;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use boot::Platform;
use report::{compare_hypercalls, parse_host_steps, parse_kernel_steps, KernelResult};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Runs a command, echoing it; an error names the command.
fn run(mut cmd: Command) -> Result<(), String> {
    boot::run_quiet(&mut cmd)
}

/// Library crates that must also build for the bare-metal target.
const NO_STD_CRATES: &[&str] =
    &["pvops", "pvops-native", "pvops-xen64", "kernel-glue", "pvops-conformance", "pvops-trace"];

/// Seconds of fuzzing in `cargo xtask test` (a smoke run) and `cargo xtask fuzz`.
const FUZZ_SMOKE_SECONDS: u64 = 20;
const FUZZ_DEFAULT_SECONDS: u64 = 180;

/// Kernel variants that must NOT pass, and where each is booted.
const BROKEN: &[(&str, &[Platform])] = &[
    ("broken-isolation", &[Platform::Native, Platform::Xen]),
    ("leak-frame", &[Platform::Native, Platform::Xen]),
    ("direct-write-pinned", &[Platform::Xen]),
];

/// Runs the host report, printing it and returning its output.
fn host_report(backend: Option<&str>) -> Result<String, String> {
    let mut c = cargo();
    c.args(["run", "--quiet", "-p", "pvops-integration", "--bin", "host-report", "--"]);
    if let Some(b) = backend {
        c.args(["--backend", b]);
    }
    eprintln!("xtask: $ {c:?}");
    let out = c.output().map_err(|e| format!("cannot start host-report: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("host-report failed with {}", out.status))
    }
}

/// The platforms whose native backend is `backend` (all if `None`).
fn platforms_for(backend: Option<&str>) -> Result<Vec<Platform>, String> {
    match backend {
        None => Ok(Platform::ALL.to_vec()),
        Some(b) => {
            let v: Vec<Platform> = Platform::ALL.iter().copied().filter(|p| p.backend() == b).collect();
            if v.is_empty() {
                Err(format!("no platform boots backend {b:?} (native -> native, xen -> xen64)"))
            } else {
                Ok(v)
            }
        }
    }
}

/// Boots the good kernel on `platforms`, returning each parsed result (and
/// an error naming every failing boot, with its serial log).
fn boot_all(kernel: &Path, platforms: &[Platform]) -> (Vec<(boot::BootOutcome, Option<KernelResult>)>, Vec<String>) {
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for &p in platforms {
        match boot::boot(p, kernel, p.default_timeout()) {
            Ok(out) => {
                let parsed = KernelResult::parse(&out.serial);
                if !out.passed() {
                    errors.push(format!(
                        "{p} boot failed: {} (serial log above, saved at {})",
                        out.verdict(),
                        out.serial_path.display()
                    ));
                } else if let Err(e) = parsed.as_ref().map_or(Err("no RESULT line".into()), |r| r.check(p)) {
                    errors.push(format!("{p} boot passed but its RESULT line is wrong: {e}"));
                }
                results.push((out, parsed));
            }
            Err(e) => errors.push(format!("{p}: {e}")),
        }
    }
    (results, errors)
}

fn print_results(results: &[(boot::BootOutcome, Option<KernelResult>)], calibration: Option<&str>) {
    println!("\n== example kernel ==");
    for (out, r) in results {
        match r {
            Some(r) if out.platform == Platform::Xen => {
                println!("{} calibration={}", r.line, calibration.unwrap_or("FAILED"))
            }
            Some(r) => println!("{}", r.line),
            None => println!("RESULT {} missing ({})", out.platform, out.verdict()),
        }
    }
    println!();
    println!(
        "{:<8} {:<8} {:>12} {:>10} {:>14}  verdict",
        "platform", "backend", "conformance", "hypercalls", "boot-to-exit"
    );
    for (out, r) in results {
        let (backend, conf, hc) = match r {
            Some(r) => (r.backend.clone(), r.conformance.clone(), r.hypercalls.map_or("-".into(), |h| h.to_string())),
            None => ("?".into(), "?".into(), "?".into()),
        };
        println!(
            "{:<8} {:<8} {:>12} {:>10} {:>13.2}s  {}",
            out.platform.name(),
            backend,
            conf,
            hc,
            out.elapsed.as_secs_f64(),
            out.verdict()
        );
    }
}

/// Compares the Xen kernel's per-step hypercall counts with the host model's.
/// `Ok(None)` when there is nothing to compare (no Xen boot or no model table).
fn hypercall_comparison(
    host: &str,
    results: &[(boot::BootOutcome, Option<KernelResult>)],
) -> Result<Option<String>, String> {
    let Some((out, _)) = results.iter().find(|(o, _)| o.platform == Platform::Xen) else {
        return Ok(None);
    };
    let kernel = parse_kernel_steps(&out.serial, "xen64");
    let model = parse_host_steps(host, "xen64");
    if model.is_empty() {
        println!("\nhypercall comparison: the host report has no xen64 table; nothing to compare");
        return Ok(None);
    }
    if kernel.is_empty() {
        return Err("hypercall comparison: the Xen kernel printed no HCSTEP lines".into());
    }
    let (table, mismatches) = compare_hypercalls(&kernel, &model);
    println!("\n== hypercalls by kind, fixed workload (demo, 8 pages): real Xen kernel vs host model ==\n{table}");
    if mismatches == 0 {
        println!(
            "hypercall comparison: all {} steps match the model in every hypercall kind \
             (direct stores are informational: init_mm has 3 kernel-half slots in the kernel, 1 in the model)",
            kernel.len()
        );
        Ok(Some(table))
    } else {
        Err(format!("hypercall comparison: {mismatches} step(s) differ between the real Xen and the model"))
    }
}

fn cmd_run(args: &[String]) -> Result<(), String> {
    let backend = args.iter().position(|a| a == "--backend").and_then(|i| args.get(i + 1)).map(String::as_str);
    println!("== host models ==");
    // Errors on an unknown name (listing the registered ones) or a probe that
    // refuses every platform.
    let host = host_report(backend)?;
    let platforms = match platforms_for(backend) {
        Ok(p) => p,
        Err(e) => {
            // A registered backend the example kernel does not choose on either
            // platform (e.g. the `trace` example): the host models are its run.
            println!("\nnote: {e}; ran {} on the host models only", backend.unwrap_or_default());
            return Ok(());
        }
    };
    boot::ensure_target()?;
    let kernel = boot::build_kernel(&[])?;
    let (results, errors) = boot_all(&kernel, &platforms);
    let cal = calibrate::on_boots(&results);
    print_results(&results, cal.as_ref().and_then(|c| c.as_ref().ok()).map(String::as_str));
    let cmp = hypercall_comparison(&host, &results);
    let mut all: Vec<String> = errors;
    all.extend(cal.and_then(Result::err));
    if let Err(e) = cmp {
        all.push(e);
    }
    if all.is_empty() {
        Ok(())
    } else {
        Err(all.join("\n"))
    }
}

/// The loom model of the backend-selection cell (its own target dir: other cfg).
fn loom_model() -> Result<(), String> {
    let mut c = cargo();
    c.args(["test", "-p", "pvops", "--test", "loom", "--release"])
        .env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", workspace_root().join("target/loom"));
    run(c)
}

/// The counted benchmarks (issue 6): writes docs/PERFORMANCE.md and docs/scaling.svg.
fn cmd_bench(args: &[String]) -> Result<(), String> {
    let mut c = cargo();
    c.args(["run", "--release", "-p", "pvops-bench", "--bin", "pvops-bench-report", "--"]).args(args);
    run(c)
}

fn cmd_fuzz(args: &[String]) -> Result<(), String> {
    let seconds = match args.iter().position(|a| a == "--seconds").and_then(|i| args.get(i + 1)) {
        Some(s) => s.parse().map_err(|e| format!("--seconds {s}: {e}"))?,
        None => FUZZ_DEFAULT_SECONDS,
    };
    fuzz::fuzz(seconds).map(|_| ())
}

/// fmt + clippy of the kernel, which lives outside the host workspace.
fn kernel_lints() -> Result<(), String> {
    let dir = boot::kernel_dir();
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(&dir).args(["fmt", "--check"]);
    run(c)?;
    let features = ["", "broken-isolation,leak-frame,direct-write-pinned"];
    for f in features {
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.current_dir(&dir)
            .args(["clippy", "--release", "--target", boot::KERNEL_TARGET, "--target-dir"])
            .arg(boot::kernel_target_dir())
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
        if !f.is_empty() {
            c.args(["--features", f]);
        }
        c.args(["--", "-D", "warnings"]);
        run(c)?;
    }
    Ok(())
}

fn cmd_test(args: &[String]) -> Result<(), String> {
    let only = args.iter().position(|a| a == "--platform").and_then(|i| args.get(i + 1)).map(String::as_str);
    let platforms: Vec<Platform> = match only {
        None => Platform::ALL.to_vec(),
        Some(n) => match Platform::ALL.iter().find(|p| p.name() == n) {
            Some(&p) => vec![p],
            None => return Err(format!("unknown platform {n:?} (native, xen)")),
        },
    };
    let t0 = Instant::now();
    boot::ensure_target()?;
    let mut c = cargo();
    c.args(["fmt", "--all", "--check"]);
    run(c)?;
    let mut c = cargo();
    c.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    run(c)?;
    for krate in NO_STD_CRATES {
        let mut c = cargo();
        c.args(["build", "-p", krate, "--target", boot::KERNEL_TARGET]);
        run(c)?;
    }
    let mut c = cargo();
    c.args(["test", "--workspace"]);
    run(c)?;
    let mut c = cargo();
    c.args(["doc", "--no-deps", "--workspace"]).env("RUSTDOCFLAGS", "-D warnings");
    run(c)?;
    loom_model()?;
    newbackend::check()?;
    fuzz::fuzz(FUZZ_SMOKE_SECONDS)?;
    kernel_lints()?;

    // The real kernel on both platforms, and the model comparison.
    let host = host_report(None)?;
    let kernel = boot::build_kernel(&[])?;
    let (results, mut failures) = boot_all(&kernel, &platforms);
    let cal = calibrate::on_boots(&results);
    print_results(&results, cal.as_ref().and_then(|c| c.as_ref().ok()).map(String::as_str));
    failures.extend(cal.and_then(Result::err));
    if let Err(e) = hypercall_comparison(&host, &results) {
        failures.push(e);
    }

    // Every broken kernel must fail: proof that the harness can fail.
    let mut checks = Vec::new();
    let plats = &platforms;
    for (feature, platforms) in BROKEN {
        if !platforms.iter().any(|p| plats.contains(p)) {
            continue;
        }
        let elf = boot::build_kernel(&[feature])?;
        for &p in platforms.iter().filter(|p| plats.contains(p)) {
            let out = boot::boot_quiet(p, &elf, p.default_timeout())?;
            let verdict = out.verdict();
            let last = out.last_result_or_line();
            if out.passed() {
                failures.push(format!(
                    "broken kernel `{feature}` PASSED on {p}: the harness cannot see this failure\n--- serial log ---\n{}",
                    out.serial.trim_end()
                ));
                checks.push((feature, p, "PASSED (bad)".to_string(), last));
            } else {
                checks.push((feature, p, format!("failed as required: {verdict}"), last));
            }
        }
    }
    println!("\n== broken kernels (each must fail) ==");
    for (feature, p, what, last) in &checks {
        println!("{feature:<20} {:<7} {what}\n{:<29}{last}", p.name(), "");
    }
    let good = results.iter().filter(|(o, r)| o.passed() && r.as_ref().is_some_and(|r| r.check(o.platform).is_ok()));
    let passed = good.count() + checks.iter().filter(|c| !c.2.starts_with("PASSED")).count();
    let total = plats.len() + checks.len();
    println!("\nkernel test took {:.0?}", t0.elapsed());
    println!("boots: {} passed, {} failed", passed, total - passed);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n\n"))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => cmd_run(&args[1..]),
        Some("test") => cmd_test(&args[1..]),
        Some("fuzz") => cmd_fuzz(&args[1..]),
        Some("bench") => cmd_bench(&args[1..]),
        Some("calibrate") => calibrate::cmd(&args[1..]),
        Some("mutants") => mutants::mutants(&args[1..]),
        _ => {
            Err("usage: cargo xtask <run [--backend NAME] | test [--platform native|xen] | calibrate [--save] | fuzz [--seconds N] | bench [--quick] | mutants [ARGS]>".into())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}
