//! `cargo xtask`: the project's automation.
//!
//! * `cargo xtask run [--backend NAME]` — the main job: host-model report, then
//!   the example kernel booted natively and on Xen.
//! * `cargo xtask test` — every test (what CI runs).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

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
    eprintln!("xtask: $ {cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn ensure_target() -> Result<(), String> {
    let mut c = Command::new("rustup");
    c.args(["target", "add", "x86_64-unknown-none"]).current_dir(workspace_root());
    run(c)
}

/// Library crates that must also build for the bare-metal target.
const NO_STD_CRATES: &[&str] = &["pvops", "pvops-native", "pvops-xen64", "kernel-glue", "pvops-conformance"];

fn host_report(backend: Option<&str>) -> Result<(), String> {
    let mut c = cargo();
    c.args(["run", "--quiet", "-p", "pvops-integration", "--bin", "host-report", "--"]);
    if let Some(b) = backend {
        c.args(["--backend", b]);
    }
    run(c)
}

fn cmd_run(args: &[String]) -> Result<(), String> {
    let backend = args.iter().position(|a| a == "--backend").and_then(|i| args.get(i + 1)).map(String::as_str);
    println!("== host models ==");
    host_report(backend)?;
    Ok(())
}

fn cmd_test() -> Result<(), String> {
    ensure_target()?;
    let mut c = cargo();
    c.args(["fmt", "--all", "--check"]);
    run(c)?;
    let mut c = cargo();
    c.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    run(c)?;
    for krate in NO_STD_CRATES {
        let mut c = cargo();
        c.args(["build", "-p", krate, "--target", "x86_64-unknown-none"]);
        run(c)?;
    }
    let mut c = cargo();
    c.args(["test", "--workspace"]);
    run(c)?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => cmd_run(&args[1..]),
        Some("test") => cmd_test(),
        _ => Err("usage: cargo xtask <run [--backend NAME] | test>".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}
