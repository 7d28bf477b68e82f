//! Proof that a new backend is one crate and nothing else.
//!
//! A scratch copy of the workspace (every tracked file) gets one new directory,
//! `examples/second-backend`: a renamed copy of `examples/custom-backend`
//! (package `pvops-trace-copy`, registered as `trace-copy`). No other file of
//! the copy differs from the repository. That crate's own conformance test must
//! then find its backend in the registry and pass the whole suite.
//!
//! Then the same for the real-hypervisor backend, `backends/xen-pvh`: in the
//! scratch copy it is taken out (its directory and its one workspace line,
//! the member entry: no member depends on it), the core and the other backends must still build
//! without it, and put back, unchanged, its own tests (the three-way
//! selection, the conformance and SMP suites over the machine model) must
//! pass. So adding it needed no edit to `pvops/` or `kernel-glue/`.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::{run, workspace_root};

const SOURCE: &str = "examples/custom-backend/";
const NEW_DIR: &str = "examples/second-backend/";

fn rename(text: &str) -> String {
    text.replace("pvops-trace", "pvops-trace-copy")
        .replace("pvops_trace", "pvops_trace_copy")
        .replace("\"trace\"", "\"trace-copy\"")
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Builds the scratch workspace and runs the new crate's conformance test.
pub fn check() -> Result<(), String> {
    let root = workspace_root();
    let scratch = root.join("target/new-backend-check");
    let ws = scratch.join("ws");
    if ws.exists() {
        fs::remove_dir_all(&ws).map_err(|e| format!("{}: {e}", ws.display()))?;
    }
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&root)
        .output()
        .map_err(|e| format!("git ls-files: {e}"))?;
    if !out.status.success() {
        return Err("git ls-files failed (the check needs a git checkout)".into());
    }
    let files: Vec<String> = out
        .stdout
        .split(|&b| b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    let mut copied = 0;
    for f in &files {
        let bytes = fs::read(root.join(f)).map_err(|e| format!("{f}: {e}"))?;
        write(&ws.join(f), &bytes)?;
        if let Some(rel) = f.strip_prefix(SOURCE) {
            // The guide test checks docs against the original crate's names.
            if rel == "tests/guide.rs" {
                continue;
            }
            let text = String::from_utf8(bytes).map_err(|e| format!("{f}: {e}"))?;
            write(&ws.join(NEW_DIR).join(rel), rename(&text).as_bytes())?;
            copied += 1;
        }
    }
    println!(
        "new-backend check: {} tracked files copied unchanged; the only addition is {NEW_DIR} ({copied} files)",
        files.len()
    );
    let cargo = || {
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.current_dir(&ws).env("CARGO_TARGET_DIR", scratch.join("target"));
        c
    };
    let mut c = cargo();
    c.args(["test", "-p", "pvops-trace-copy", "--test", "conformance", "--", "--nocapture"]);
    run(c)?;
    xen_pvh_is_one_crate(&ws, cargo)
}

const PVH_DIR: &str = "backends/xen-pvh";
/// The workspace line that names it: its member entry (nothing in the
/// workspace depends on it; the example kernel names it by path).
fn is_pvh_line(line: &str) -> bool {
    line.trim() == "\"backends/xen-pvh\"," || line.starts_with("pvops-xen-pvh = ")
}

/// `xen-pvh` out of the scratch workspace (the rest builds), then back in
/// unchanged (its tests pass).
fn xen_pvh_is_one_crate(ws: &Path, cargo: impl Fn() -> Command) -> Result<(), String> {
    let manifest = ws.join("Cargo.toml");
    let full = fs::read_to_string(&manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let without: String = full.split_inclusive('\n').filter(|l| !is_pvh_line(l)).collect();
    let removed = full.split_inclusive('\n').filter(|l| is_pvh_line(l)).count();
    if removed != 1 {
        return Err(format!("new-backend check: expected 1 workspace line naming {PVH_DIR}, found {removed}"));
    }
    let (dir, parked) = (ws.join(PVH_DIR), ws.join("xen-pvh.parked"));
    fs::rename(&dir, &parked).map_err(|e| format!("{}: {e}", dir.display()))?;
    fs::write(&manifest, &without).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let mut c = cargo();
    c.args(["check", "-p", "pvops", "-p", "kernel-glue", "-p", "pvops-native", "-p", "pvops-xen64"]);
    c.args(["-p", "pvops-integration", "-p", "pvops-conformance"]);
    let built = run(c);
    fs::rename(&parked, &dir).map_err(|e| format!("{}: {e}", parked.display()))?;
    fs::write(&manifest, &full).map_err(|e| format!("{}: {e}", manifest.display()))?;
    built.map_err(|e| format!("new-backend check: the workspace does not build without {PVH_DIR}: {e}"))?;
    println!("new-backend check: the core and the other backends build without {PVH_DIR}; adding it back:");
    let mut c = cargo();
    c.args(["test", "-p", "pvops-xen-pvh"]);
    run(c)
}
