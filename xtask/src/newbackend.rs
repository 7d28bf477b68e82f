//! Proof that a new backend is one crate and nothing else.
//!
//! A scratch copy of the workspace (every tracked file) gets one new directory,
//! `examples/second-backend`: a renamed copy of `examples/custom-backend`
//! (package `pvops-trace-copy`, registered as `trace-copy`). No other file of
//! the copy differs from the repository. That crate's own conformance test must
//! then find its backend in the registry and pass the whole suite.

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
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(&ws)
        .args(["test", "-p", "pvops-trace-copy", "--test", "conformance", "--", "--nocapture"])
        .env("CARGO_TARGET_DIR", scratch.join("target"));
    run(c)
}
