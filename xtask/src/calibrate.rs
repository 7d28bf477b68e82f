//! `cargo xtask calibrate`: the calibration corpus (`tests/calibration`) on
//! the real Xen and on the host model, compared record by record.
//!
//! The kernel runs the corpus at the start of its Xen boot and prints `CAL`
//! lines; `calibrate-model --compare` runs the same corpus on the model,
//! prints the table and `calibration=A/T`, and fails on any disagreement not
//! listed as deliberate. `cargo xtask run` and `cargo xtask test` call
//! [`compare`] on the Xen boot they already did.

use std::path::Path;
use std::process::Command;

use crate::boot::{self, BootOutcome, Platform};
use crate::report::KernelResult;

/// The checked-in copy of the last real-Xen results (the host test's input).
pub const SAVED: &str = "tests/calibration/xen-results.txt";

fn model(args: &[&str], path: &Path) -> Command {
    let mut c = crate::cargo();
    c.args(["run", "--quiet", "-p", "pvops-calibration", "--bin", "calibrate-model", "--"]).args(args).arg(path);
    c
}

/// The comparison for the Xen boot among `results`, if there is one: `A/T`,
/// or an error when a record disagrees (or the kernel printed none).
pub fn on_boots(results: &[(BootOutcome, Option<KernelResult>)]) -> Option<Result<String, String>> {
    let (out, _) = results.iter().find(|(o, _)| o.platform == Platform::Xen)?;
    Some(compare(&out.serial_path, false))
}

/// Compares the `CAL` lines of a Xen serial log with the model; prints the
/// disagreeing records (all with `all`) and returns `A/T`.
pub fn compare(serial: &Path, all: bool) -> Result<String, String> {
    let mut c = model(&["--compare"], serial);
    if all {
        c.arg("--all");
    }
    eprintln!("xtask: $ {c:?}");
    let out = c.output().map_err(|e| format!("cannot start calibrate-model: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("\n== calibration: the corpus on the real Xen vs the host model, record by record ==");
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let fraction = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("calibration="))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string);
    match (out.status.success(), fraction) {
        (true, Some(f)) => Ok(f),
        (_, f) => Err(format!("calibration failed ({}): see the table above", f.unwrap_or_else(|| "no result".into()))),
    }
}

/// `cargo xtask calibrate [--save]`: boots Xen, compares, and with `--save`
/// refreshes the checked-in copy and prints the Markdown table for
/// docs/RELIABILITY.md.
pub fn cmd(args: &[String]) -> Result<(), String> {
    boot::ensure_target()?;
    let kernel = boot::build_kernel(&[])?;
    let out = boot::boot_quiet(Platform::Xen, &kernel, Platform::Xen.default_timeout(), boot::DEFAULT_CPUS)?;
    if !out.serial.contains("CALSUM ") {
        out.ensure_passed()?;
        return Err("the Xen boot printed no CALSUM line".into());
    }
    let result = compare(&out.serial_path, true);
    if args.iter().any(|a| a == "--save") {
        let mut c = model(&["--extract"], &out.serial_path);
        c.arg(crate::workspace_root().join(SAVED));
        crate::run(c)?;
        let md = model(&["--markdown"], &out.serial_path).output().map_err(|e| e.to_string())?;
        println!("\n== Markdown (docs/RELIABILITY.md) ==\n{}", String::from_utf8_lossy(&md.stdout));
    }
    let fraction = result?;
    println!("calibration={fraction}; the Xen boot itself: {}", out.verdict());
    out.ensure_passed()
}
