//! `cargo fuzz` driving: the differential fuzz target over both host models.
//!
//! cargo-fuzz needs nightly (these machines have it) and is installed from
//! crates.io when missing. Inputs that crash are left under
//! `tests/fuzz/artifacts/`; copy them to `tests/fuzz/regressions/*.bin` and
//! they become a stable regression test.

use std::process::Command;

use crate::{run, workspace_root};

fn ensure_cargo_fuzz() -> Result<(), String> {
    let ok = Command::new("cargo").args(["+nightly", "fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if ok {
        return Ok(());
    }
    let nightly = Command::new("rustup").args(["run", "nightly", "rustc", "--version"]).output();
    if !nightly.is_ok_and(|o| o.status.success()) {
        return Err("the fuzzer needs the nightly toolchain (`rustup toolchain list` shows none)".into());
    }
    let mut c = Command::new("cargo");
    c.args(["install", "cargo-fuzz", "--locked"]);
    run(c)
}

/// Runs the fuzzer for `seconds`; returns the number of executions.
pub fn fuzz(seconds: u64) -> Result<u64, String> {
    ensure_cargo_fuzz()?;
    let root = workspace_root();
    let mut c = Command::new("cargo");
    c.current_dir(&root)
        .args(["+nightly", "fuzz", "run", "--sanitizer", "none", "--fuzz-dir", "tests/fuzz", "differential", "--"])
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTUP_TOOLCHAIN");
    eprintln!("xtask: $ {c:?}");
    let out = c.output().map_err(|e| format!("cannot start cargo fuzz: {e}"))?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let tail: Vec<&str> = text.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(format!("fuzzing found a failure (artifacts under tests/fuzz/artifacts):\n{}", tail.join("\n")));
    }
    let runs = text
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:").map(|n| n.trim().parse::<u64>()))
        .ok_or("cargo fuzz printed no execution count")?
        .map_err(|e| format!("bad execution count: {e}"))?;
    println!("fuzz: {runs} executions in {seconds} s, no failure");
    Ok(runs)
}
