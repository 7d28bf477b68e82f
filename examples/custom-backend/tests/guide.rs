//! docs/adding-a-backend.md stays true: every snippet it shows appears verbatim
//! in this crate's files (which `cargo test` builds and runs).

use std::path::Path;

#[test]
fn every_snippet_in_the_guide_is_in_the_example() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide_path = crate_dir.join("../../docs/adding-a-backend.md");
    let guide = std::fs::read_to_string(&guide_path).expect("guide exists");
    let mut checked = 0;
    let mut in_block = false;
    let mut file: Option<String> = None;
    let mut body = Vec::new();
    for line in guide.lines() {
        if line.starts_with("```") {
            if in_block {
                if let Some(f) = file.take() {
                    let text = std::fs::read_to_string(crate_dir.join(&f)).unwrap_or_else(|e| panic!("{f}: {e}"));
                    for l in &body {
                        let l: &String = l;
                        assert!(text.contains(l.trim()), "guide line {l:?} not found in {f}");
                    }
                    checked += 1;
                }
                body.clear();
            }
            in_block = !in_block;
            continue;
        }
        if in_block {
            if let Some(f) = line.strip_prefix("// file: ").or_else(|| line.strip_prefix("# file: ")) {
                file = Some(f.to_string());
            } else if !line.trim().is_empty() {
                body.push(line.to_string());
            }
        }
    }
    assert!(checked >= 5, "only {checked} snippets checked");
}
