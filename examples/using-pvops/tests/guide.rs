//! docs/using-pvops.md stays true. Its Rust snippets are this crate's
//! doctests (`cargo test -p using-pvops --doc`); here, every other snippet:
//! the build settings and linker-script lines must appear verbatim in the
//! example kernel, and the dependency lines must name library crates of this
//! workspace at its version.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fenced blocks of the guide: (language, lines).
fn blocks() -> Vec<(String, Vec<String>)> {
    let guide = std::fs::read_to_string(root().join("docs/using-pvops.md")).expect("the guide exists");
    let mut out = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in guide.lines() {
        if let Some(lang) = line.strip_prefix("```") {
            match current.take() {
                Some(block) => out.push(block),
                None => current = Some((lang.to_string(), Vec::new())),
            }
        } else if let Some((_, lines)) = current.as_mut() {
            lines.push(line.to_string());
        }
    }
    assert!(current.is_none(), "an unclosed block in the guide");
    out
}

#[test]
fn every_snippet_is_compiled_or_checked() {
    let blocks = blocks();
    let known = ["rust", "toml", "ld"];
    for (lang, _) in &blocks {
        assert!(known.contains(&lang.as_str()), "a ```{lang} block: neither compiled nor checked");
    }
    assert!(blocks.iter().filter(|(l, _)| l == "rust").count() >= 7, "the guide's Rust snippets");
}

#[test]
fn build_settings_and_linker_lines_are_the_example_kernels() {
    let kernel = root().join("examples/pvkernel");
    let config = std::fs::read_to_string(kernel.join(".cargo/config.toml")).expect("kernel build config");
    let script = std::fs::read_to_string(kernel.join("link.ld")).expect("kernel linker script");
    let mut checked = 0;
    for (lang, lines) in blocks() {
        let against = match lang.as_str() {
            "ld" => &script,
            "toml" if lines.iter().any(|l| l.starts_with("[target.")) => &config,
            _ => continue,
        };
        for l in lines.iter().filter(|l| !l.trim().is_empty()) {
            assert!(against.lines().any(|k| k == l), "guide line {l:?} is not in the example kernel");
        }
        checked += 1;
    }
    assert_eq!(checked, 2);
}

#[test]
fn dependency_lines_name_this_workspaces_library_crates_at_its_version() {
    let ws = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let version = ws
        .lines()
        .find_map(|l| l.strip_prefix("version = \"").and_then(|v| v.strip_suffix('"')))
        .expect("workspace version");
    let minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
    let deps: Vec<String> = blocks()
        .into_iter()
        .filter(|(l, lines)| l == "toml" && !lines.iter().any(|x| x.starts_with('[')))
        .flat_map(|(_, lines)| lines)
        .collect();
    assert!(deps.len() >= 4);
    for line in deps {
        let (name, v) = line.split_once(" = ").expect("name = \"version\"");
        assert_eq!(v, format!("\"{minor}\""), "{name}");
        let dir =
            ["pvops", "backends/native", "backends/xen64", "backends/xen-pvh", "kernel-glue"].into_iter().find(|d| {
                std::fs::read_to_string(root().join(d).join("Cargo.toml"))
                    .is_ok_and(|m| m.contains(&format!("name = \"{name}\"")))
            });
        assert!(dir.is_some(), "{name} is not a library crate of this workspace");
    }
}
