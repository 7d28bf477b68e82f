//! `cargo xtask`: the project's automation.
//!
//! * `cargo xtask run [--backend NAME] [--cpus N]` — the main job: the host-model report,
//!   then the example kernel built once and booted natively (PVH) and as a
//!   Xen PV64 dom0 on N CPUs (default 2), both `RESULT` lines, a comparison
//!   table and the kernel-vs-model hypercall comparison.
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
mod manifest;
mod mutants;
mod newbackend;
mod report;
mod sweep;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use boot::Platform;
use report::{
    check_prog_checks, compare_with_expected, parse_host_steps, parse_kernel_steps, parse_prog_checks,
    parse_readme_steps, KernelResult,
};

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
    &["pvops", "pvops-native", "pvops-xen64", "pvops-xen-pvh", "kernel-glue", "pvops-conformance", "pvops-trace"];

/// Seconds of fuzzing in `cargo xtask test` (a smoke run) and `cargo xtask fuzz`.
const FUZZ_SMOKE_SECONDS: u64 = 20;
const FUZZ_DEFAULT_SECONDS: u64 = 180;

/// Kernel variants that must NOT pass, and where each is booted. A boot
/// "fails" when the kernel fails or (Xen) its per-step counts differ from the
/// README table.
/// On `pvh` the kernel runs the native paths under Xen (xen-pvh = native by
/// composition), so the native sabotages apply there too.
const BROKEN: &[(&str, &[Platform])] = &[
    ("broken-isolation", &[Platform::Native, Platform::Xen, Platform::Pvh]),
    ("leak-frame", &[Platform::Native, Platform::Xen, Platform::Pvh]),
    ("direct-write-pinned", &[Platform::Xen]),
    // Natively both TLB tests read the unmapped page through the stale entry;
    // on Xen the kernel-mode one does (the user-mode one cannot: Xen reloads
    // cr3 on every guest user/kernel switch).
    // On pvh both fail too, since `this_cpu` no longer reads the emulated
    // LAPIC (each read was a VM exit, and every VM exit under nested TCG
    // dropped the whole TLB, hiding the missing flush).
    ("no-tlb-flush", &[Platform::Native, Platform::Xen, Platform::Pvh]),
    ("no-user-baseptr", &[Platform::Xen]),
    ("zero-user-baseptr", &[Platform::Xen]),
    ("user-pgd-maps-kernel", &[Platform::Xen]),
    // (Xen) lazy-MMU sections do nothing: the demo's pinned map step and the
    // sweep's lazy-map rows N = 32..1000 cost one hypercall per page.
    ("no-lazy-batching", &[Platform::Xen]),
    // Only Xen knows the frame is still pinned: the measured pins_left sees it.
    ("leak-pin", &[Platform::Xen]),
    // Cross-calls do nothing: natively the SMP shootdown case reads the old
    // page on the other CPU; on both the lazy-exit case's exit is refused
    // (the idle CPU was never made to drop the root) and call_errors sees no
    // errors (Xen's flushes are MMUEXT_*_MULTI: see no-multi-flush).
    ("no-remote-flush", &[Platform::Native, Platform::Xen, Platform::Pvh]),
    // The APs never get STARTUP: the kernel carries on with cpus=1, which is
    // not the 2 CPUs the machine has.
    ("no-ap-startup", &[Platform::Native, Platform::Pvh]),
    // (Xen) the MULTI flushes reach the calling vCPU only: the shootdown
    // case reads the old page on the other vCPU.
    ("no-multi-flush", &[Platform::Xen]),
    // (Xen) the backend's event masking does nothing: the SMP case
    // ipi_during_batches sees its handler refused as a re-entry or queued
    // into the interrupted vCPU's open batch. (Natively there is no batch.)
    ("no-event-masking", &[Platform::Xen]),
    // (pvh) the xen-pvh backend's HVMOP_flush_tlbs is skipped: the SMP
    // shootdown case reads the old page on the other vCPU.
    ("no-hvm-flush", &[Platform::Pvh]),
    // fork shares frames writable: the ELF program's fork_cow check sees the
    // child's writes in the parent, cow_oom's child is not killed, no page is
    // copied: programs=7/9 cow_copies=0 (measured on all three; pvh runs the
    // native paths, so it is left out to save CI time).
    ("no-cow", &[Platform::Native, Platform::Xen]),
];

/// Every kernel feature, for the kernel's clippy run.
const KERNEL_FEATURES: &str = "broken-isolation,leak-frame,direct-write-pinned,no-tlb-flush,no-user-baseptr,\
                               zero-user-baseptr,user-pgd-maps-kernel,no-lazy-batching,leak-pin,no-remote-flush,\
                               no-ap-startup,no-multi-flush,no-event-masking,no-hvm-flush,no-cow";

/// Runs the host report, printing it and returning its output: every
/// backend `pvops-integration`'s `host-report` knows, then `xen-pvh`'s own
/// (an example of its crate, which the workspace must build without).
fn host_report(backend: Option<&str>) -> Result<String, String> {
    let pvh = boot::Platform::Pvh.backend();
    let mut text = String::new();
    if backend.is_none_or(|b| b != pvh) {
        let mut c = cargo();
        c.args(["run", "--quiet", "-p", "pvops-integration", "--bin", "host-report", "--"]);
        if let Some(b) = backend {
            c.args(["--backend", b]);
        }
        text += &report_of(c, "host-report")?;
    }
    if backend.is_none_or(|b| b == pvh) {
        let mut c = cargo();
        c.args(["run", "--quiet", "-p", "pvops-xen-pvh", "--example", "host-report"]);
        text += &report_of(c, "xen-pvh host-report")?;
    }
    Ok(text)
}

/// Runs one report command, printing and returning its output.
fn report_of(mut c: Command, what: &str) -> Result<String, String> {
    eprintln!("xtask: $ {c:?}");
    let out = c.output().map_err(|e| format!("cannot start {what}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{what} failed with {}", out.status))
    }
}

/// The platforms whose native backend is `backend` (all if `None`).
fn platforms_for(backend: Option<&str>) -> Result<Vec<Platform>, String> {
    match backend {
        None => Ok(Platform::ALL.to_vec()),
        Some(b) => {
            let v: Vec<Platform> = Platform::ALL.iter().copied().filter(|p| p.backend() == b).collect();
            if v.is_empty() {
                Err(format!("no platform boots backend {b:?} (native -> native, xen -> xen64, pvh -> xen-pvh)"))
            } else {
                Ok(v)
            }
        }
    }
}

/// Boots the good kernel on `platforms`, returning each parsed result (and
/// an error naming every failing boot, with its serial log).
fn boot_all(
    kernel: &Path,
    platforms: &[Platform],
    cpus: usize,
) -> (Vec<(boot::BootOutcome, Option<KernelResult>)>, Vec<String>) {
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for &p in platforms {
        match boot::boot(p, kernel, p.default_timeout(), cpus) {
            Ok(out) => {
                if p == Platform::Xen {
                    sweep::save(&out.serial, kernel);
                }
                let parsed = KernelResult::parse(&out.serial);
                if !out.passed() {
                    errors.push(format!(
                        "{p} boot failed: {} (serial log above, saved at {})",
                        out.verdict(),
                        out.serial_path.display()
                    ));
                } else if let Err(e) = parsed.as_ref().map_or(Err("no RESULT line".into()), |r| r.check(p, cpus)) {
                    errors.push(format!("{p} boot passed but its RESULT line is wrong: {e}"));
                } else if let Err(e) =
                    check_prog_checks(&parse_prog_checks(&out.serial), parsed.as_ref().and_then(|r| r.programs))
                {
                    errors.push(format!("{p} boot passed but the ELF program's checks are wrong: {e}"));
                }
                results.push((out, parsed));
            }
            Err(e) => errors.push(format!("{p}: {e}")),
        }
    }
    (results, errors)
}

/// The ELF program's checks with their figures, one column per platform.
fn print_prog_checks(results: &[(boot::BootOutcome, Option<KernelResult>)]) {
    let per: Vec<(Platform, Vec<report::ProgCheck>)> =
        results.iter().map(|(o, _)| (o.platform, parse_prog_checks(&o.serial))).collect();
    let Some((_, first)) = per.iter().find(|(_, c)| !c.is_empty()) else { return };
    println!("\n== ELF user program: checks from user space (figure per platform) ==");
    print!("{:<16}", "check");
    for (p, _) in &per {
        print!(" {:>10}", p.name());
    }
    println!("  what the figure is");
    let what = |n: &str| match n {
        "getpid" => "pid of the first process",
        "sparse_mmap" => "frames a 256 MiB mmap cost after 4 touches",
        "fork_cow" => "pages copied on write (3 written)",
        "cow_oom" => "child's wait status (SIGSEGV | reason 3 << 8)",
        "mprotect_kill" => "child's wait status (SIGSEGV | reason 2 << 8)",
        "munmap_kill" => "child's wait status (SIGSEGV | reason 1 << 8)",
        "exec_nx" => "child's wait status (SIGSEGV | reason 6 << 8)",
        "fork_exit_100" => "frames leaked by 100 fork/exit",
        "bad_calls" => "bad calls refused with Linux's errno (of 9)",
        _ => "",
    };
    for c in first {
        print!("{:<16}", c.name);
        for (_, checks) in &per {
            let cell = checks.iter().find(|x| x.name == c.name).map_or("-".to_string(), |x| {
                if x.ok {
                    x.figure.to_string()
                } else {
                    format!("FAIL:{}", x.figure)
                }
            });
            print!(" {cell:>10}");
        }
        println!("  {}", what(&c.name));
    }
    // What the program's operations cost, counted at each kernel's transport
    // (`what=count x/hypercalls hc`; natively there are none).
    for (o, _) in results {
        if let Some(l) = o.serial.lines().find(|l| l.starts_with("PROGCOST ")) {
            println!("{:<8} {}", o.platform.name(), l.trim());
        }
    }
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
    print_prog_checks(results);
    println!();
    println!(
        "{:<8} {:<8} {:>12} {:>10} {:>6} {:>5} {:>14}  verdict",
        "platform", "backend", "conformance", "hypercalls", "cpus", "smp", "boot-to-exit"
    );
    for (out, r) in results {
        let (backend, conf, hc, cpus, smp) = match r {
            Some(r) => (
                r.backend.clone(),
                r.conformance.clone(),
                r.hypercalls.map_or("-".into(), |h| h.to_string()),
                format!("{}/{}", r.cpus.map_or("?".into(), |c| c.to_string()), out.cpus),
                r.smp.map_or("-".into(), |(p, t)| format!("{p}/{t}")),
            ),
            None => ("?".into(), "?".into(), "?".into(), format!("?/{}", out.cpus), "?".into()),
        };
        println!(
            "{:<8} {:<8} {:>12} {:>10} {:>6} {:>5} {:>13.2}s  {}",
            out.platform.name(),
            backend,
            conf,
            hc,
            cpus,
            smp,
            out.elapsed.as_secs_f64(),
            out.verdict()
        );
    }
}

/// The README's checked table of per-step counts.
fn expected_steps() -> Result<Vec<report::Step>, String> {
    let path = workspace_root().join("README.md");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_readme_steps(&text)
}

/// The Xen kernel's `HCSTEP` lines against the README table.
fn check_kernel_steps(serial: &str, expected: &[report::Step]) -> Result<String, String> {
    let kernel = parse_kernel_steps(serial, "xen64");
    if kernel.is_empty() {
        return Err("the Xen kernel printed no HCSTEP lines".into());
    }
    let (table, mismatches) = compare_with_expected(&kernel, expected);
    if mismatches == 0 {
        Ok(table)
    } else {
        Err(format!("{mismatches} step(s) of the real Xen kernel differ from the README table:\n{table}"))
    }
}

/// Checks the Xen kernel's and the host model's per-step counts, both
/// measured at the trap/store seams, against the README table (every kind,
/// direct stores included). `Ok(None)` when neither ran.
fn hypercall_comparison(
    host: &str,
    results: &[(boot::BootOutcome, Option<KernelResult>)],
) -> Result<Option<String>, String> {
    let expected = expected_steps()?;
    let mut errors = Vec::new();
    let mut compared = false;
    if let Some((out, _)) = results.iter().find(|(o, _)| o.platform == Platform::Xen) {
        compared = true;
        match check_kernel_steps(&out.serial, &expected) {
            Ok(table) => println!(
                "\n== demo workload, real Xen kernel (counted at its transport and PhysMem seam) vs README ==\n{table}"
            ),
            Err(e) => errors.push(format!("hypercall table: {e}")),
        }
        match sweep::check(&out.serial) {
            Ok(table) => println!(
                "\n== pin/unpin and lazy-map sweeps, real Xen kernel (its transport) vs xtask's table ==\n{table}"
            ),
            Err(e) => errors.push(format!("sweeps: {e}")),
        }
    }
    if host.contains("[xen64] step") {
        compared = true;
        let model = parse_host_steps(host, "xen64-seams");
        if model.is_empty() {
            errors.push("hypercall table: the host report has no [xen64-seams] table".into());
        } else {
            let (table, mismatches) = compare_with_expected(&model, &expected);
            if mismatches == 0 {
                println!(
                    "== demo workload, host model (counted at its transport and PhysMem seam) vs README ==\n{table}"
                );
            } else {
                errors.push(format!(
                    "hypercall table: {mismatches} step(s) of the host model differ from the README table:\n{table}"
                ));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    if compared {
        println!("hypercall table: every step matches README.md in every kind (real Xen and host model)");
        Ok(Some(String::new()))
    } else {
        Ok(None)
    }
}

/// `--cpus N` (1..=16; default [`boot::DEFAULT_CPUS`]).
fn cpus_arg(args: &[String]) -> Result<usize, String> {
    match args.iter().position(|a| a == "--cpus").map(|i| args.get(i + 1)) {
        None => Ok(boot::DEFAULT_CPUS),
        Some(Some(n)) => match n.parse::<usize>() {
            Ok(c) if (1..=16).contains(&c) => Ok(c),
            _ => Err(format!("--cpus {n}: expected a number of CPUs from 1 to 16")),
        },
        Some(None) => Err("--cpus needs a number".into()),
    }
}

fn cmd_run(args: &[String]) -> Result<(), String> {
    let backend = args.iter().position(|a| a == "--backend").and_then(|i| args.get(i + 1)).map(String::as_str);
    // `--features F,G`: boot a kernel built with test features (e.g. a sabotage).
    let features: Vec<&str> = args
        .iter()
        .position(|a| a == "--features")
        .and_then(|i| args.get(i + 1))
        .map(|f| f.split(',').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let cpus = cpus_arg(args)?;
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
    let kernel = boot::build_kernel(&features)?;
    let (results, errors) = boot_all(&kernel, &platforms, cpus);
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

/// Every workspace member outside `examples/` (those are found by listing).
const MEMBER_MANIFESTS: [&str; 11] = [
    "pvops",
    "backends/native",
    "backends/xen64",
    "backends/xen-pvh",
    "kernel-glue",
    "tests/model",
    "tests/conformance",
    "tests/integration",
    "tests/bench",
    "tests/calibration",
    "xtask",
];

/// The library crates a kernel author depends on, in publishing order.
const PUBLISHED: [&str; 5] = ["pvops", "pvops-native", "pvops-xen64", "pvops-xen-pvh", "kernel-glue"];

/// `cargo publish --dry-run` of every library crate: the manifests are publishable
/// (versions on path dependencies, metadata, no missing files). `verify`
/// also builds each packaged crate on its own against the others' packages
/// (slower: `cargo xtask publish-check`; `test` runs the quick form).
fn publish_check(verify: bool) -> Result<(), String> {
    let root = workspace_root();
    let read = |rel: &str| fs::read_to_string(root.join(rel)).map_err(|e| format!("{rel}: {e}"));
    let workspace = read("Cargo.toml")?;
    let mut members = Vec::new();
    for dir in MEMBER_MANIFESTS {
        members.push((dir.to_string(), read(&format!("{dir}/Cargo.toml"))?));
    }
    for dir in fs::read_dir(root.join("examples")).map_err(|e| format!("examples/: {e}"))?.flatten() {
        let m = dir.path().join("Cargo.toml");
        if let Ok(text) = fs::read_to_string(&m) {
            members.push((format!("examples/{}", dir.file_name().to_string_lossy()), text));
        }
    }
    manifest::check(&workspace, &members, &PUBLISHED)?;
    // `cargo publish --dry-run` of all of them at once: cargo packages each and
    // resolves the others against the packages (no upload).
    let mut c = cargo();
    c.args(["publish", "--dry-run"]);
    for p in PUBLISHED {
        c.args(["-p", p]);
    }
    // A clean clone is clean; a working tree may not be.
    c.arg("--allow-dirty");
    if !verify {
        c.arg("--no-verify");
    }
    run(c)
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
    run(c)?;
    // The real-Xen sweep counts saved by the unmodified kernel's last Xen
    // boot (`cargo xtask run`/`test`; not booted again here).
    let root = workspace_root();
    println!(
        "\n== pin/unpin and lazy-map sweeps: real Xen vs model vs Linux ==\n{}",
        sweep::bench_table(&sweep::saved_path("pvkernel"), &root.join("docs/PERFORMANCE.md"))
    );
    Ok(())
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
    let user_prog = boot::build_user_prog()?;
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(&dir).args(["fmt", "--check"]);
    run(c)?;
    let features = ["", KERNEL_FEATURES];
    for f in features {
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.current_dir(&dir)
            .env(boot::USER_PROG_ENV, &user_prog)
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
            None => return Err(format!("unknown platform {n:?} (native, xen, pvh)")),
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
    publish_check(false)?;
    newbackend::check()?;
    fuzz::fuzz(FUZZ_SMOKE_SECONDS)?;
    kernel_lints()?;

    // The real kernel on both platforms, and the model comparison.
    let t_kernel = Instant::now();
    let host = host_report(None)?;
    let kernel = boot::build_kernel(&[])?;
    let (results, mut failures) = boot_all(&kernel, &platforms, boot::DEFAULT_CPUS);
    let cal = calibrate::on_boots(&results);
    print_results(&results, cal.as_ref().and_then(|c| c.as_ref().ok()).map(String::as_str));
    failures.extend(cal.and_then(Result::err));
    if let Err(e) = hypercall_comparison(&host, &results) {
        failures.push(e);
    }

    // Every broken kernel must fail: proof that the harness can fail.
    let expected = expected_steps()?;
    let mut checks = Vec::new();
    let plats = &platforms;
    for (feature, platforms) in BROKEN {
        if !platforms.iter().any(|p| plats.contains(p)) {
            continue;
        }
        let elf = boot::build_kernel(&[feature])?;
        for &p in platforms.iter().filter(|p| plats.contains(p)) {
            let out = boot::boot_quiet(p, &elf, p.default_timeout(), boot::DEFAULT_CPUS)?;
            let mut verdict = out.verdict();
            let last = out.last_result_or_line();
            let table = if p == Platform::Xen { check_kernel_steps(&out.serial, &expected) } else { Ok(String::new()) };
            if let Err(e) = &table {
                verdict = format!("{verdict}; {}", e.lines().next().unwrap_or_default());
            }
            let sweeps = if p == Platform::Xen { sweep::check(&out.serial) } else { Ok(String::new()) };
            if let Err(e) = &sweeps {
                verdict = format!("{verdict}; {}", e.lines().next().unwrap_or_default());
            }
            // The RESULT line is judged as for the good kernel (e.g. a CPU
            // that stayed down: the kernel passes, its cpus= does not).
            let result = KernelResult::parse(&out.serial)
                .map_or(Err("no RESULT line".to_string()), |r| r.check(p, boot::DEFAULT_CPUS));
            if let (true, Err(e)) = (out.passed(), &result) {
                verdict = format!("{verdict}; RESULT line: {e}");
            }
            if out.passed() && table.is_ok() && sweeps.is_ok() && result.is_ok() {
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
    let good =
        results.iter().filter(|(o, r)| o.passed() && r.as_ref().is_some_and(|r| r.check(o.platform, o.cpus).is_ok()));
    let passed = good.count() + checks.iter().filter(|c| !c.2.starts_with("PASSED")).count();
    let total = plats.len() + checks.len();
    println!("\ntest took {:.0?} (kernel builds, boots and broken kernels: {:.0?})", t0.elapsed(), t_kernel.elapsed());
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
        // The new-backend check alone (`test` runs it too).
        Some("new-backend") => newbackend::check(),
        Some("publish-check") => publish_check(true),
        _ => {
            Err("usage: cargo xtask <run [--backend NAME] [--features F,..] [--cpus N] | test [--platform native|xen|pvh] | calibrate [--save] | fuzz [--seconds N] | bench [--quick] | mutants [ARGS] | new-backend | publish-check>".into())
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
