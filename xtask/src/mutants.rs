//! `cargo xtask mutants`: mutation testing of the MMU crates with the host tests.
//!
//! `cargo mutants` (crate `cargo-mutants`) rewrites one function at a time in
//! `backends/xen64`, `backends/native` and `kernel-glue` (returns a default,
//! flips a comparison, deletes a `!`, …) and runs the host tests against each
//! mutant. A mutant that no test kills is a behaviour no test pins: it is
//! either killed by a new test or listed as equivalent, with the reason, in
//! `docs/RELIABILITY.md`. Slow (minutes per crate on 2 cores), so it is not part
//! of `cargo xtask test`.
//!
//! The tests run are the host tests that exercise those crates (their own unit
//! tests, the model, the integration and conformance suites); the real boots
//! are not part of a mutant's run. `--file GLOB` and `--shard K/N` are passed
//! through so a run can be split.

use std::process::Command;

use crate::{cargo, run};

/// The crates whose mutants are run.
const CRATES: &[&str] = &["pvops-xen64", "pvops-native", "kernel-glue"];

/// Installs cargo-mutants from crates.io when it is missing.
fn ensure_cargo_mutants() -> Result<(), String> {
    let have = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["mutants", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return Ok(());
    }
    let mut c = cargo();
    c.args(["install", "cargo-mutants", "--locked"]);
    run(c)
}

/// Runs `cargo mutants` over [`CRATES`]; extra arguments go to cargo-mutants.
pub fn mutants(args: &[String]) -> Result<(), String> {
    ensure_cargo_mutants()?;
    let mut c = cargo();
    // nextest runs the test binaries in parallel: about 6 s a mutant instead of 15.
    c.args(["mutants", "--test-tool", "nextest", "--timeout", "120", "--output", "target/mutants"]);
    for k in CRATES {
        c.args(["--package", k]);
    }
    // Every host test of the workspace (the model, integration and conformance
    // suites live in other packages than the code they exercise); proptest
    // cases trimmed so a mutant's run stays short (the full counts run in `test`).
    // (`--test-workspace` is not honoured with nextest: ask nextest directly.)
    c.arg("--cargo-test-arg=--workspace");
    c.env("PROPTEST_CASES", "32");
    c.args(args);
    run(c)
}
