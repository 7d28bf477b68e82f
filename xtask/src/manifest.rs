//! Manifest facts `cargo package` does not check: metadata that is true (no
//! placeholder address), and no dependency declared for the workspace that
//! no member uses (issue 15). Plain text scans of the TOML files: the
//! manifests are ours and written one key per line.

/// Placeholders a manifest must not carry.
const PLACEHOLDERS: [&str; 3] = ["example.invalid", "example.com", "TODO"];

/// `Err` lists every problem: a placeholder anywhere, a published crate
/// without a description or license, a `[workspace.dependencies]` entry no
/// member uses (`name.workspace = true` or `name = { workspace = true … }`).
pub fn check(workspace: &str, members: &[(String, String)], published: &[&str]) -> Result<(), String> {
    let mut problems = Vec::new();
    let all = std::iter::once(("Cargo.toml".to_string(), workspace.to_string()))
        .chain(members.iter().map(|(d, t)| (format!("{d}/Cargo.toml"), t.clone())));
    for (path, text) in all {
        for p in PLACEHOLDERS {
            if text.contains(p) {
                problems.push(format!("{path}: placeholder {p:?}"));
            }
        }
    }
    for name in published {
        let Some((dir, text)) = members.iter().find(|(_, t)| package_name(t) == Some(name)) else {
            problems.push(format!("published crate {name} is not a member"));
            continue;
        };
        for key in ["description", "license"] {
            if !text.lines().any(|l| l.trim_start().starts_with(key)) {
                problems.push(format!("{dir}/Cargo.toml: published crate {name} has no {key}"));
            }
        }
    }
    for dep in workspace_dependencies(workspace) {
        let used = members.iter().any(|(_, t)| {
            t.lines().map(str::trim).any(|l| {
                l.starts_with(&format!("{dep}.workspace = true"))
                    || (l.starts_with(&format!("{dep} = {{")) && l.contains("workspace = true"))
            })
        });
        if !used {
            problems.push(format!("Cargo.toml: [workspace.dependencies] {dep} is used by no member"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn package_name(manifest: &str) -> Option<&str> {
    manifest.lines().map(str::trim).find_map(|l| l.strip_prefix("name = \"").and_then(|r| r.strip_suffix('"')))
}

fn workspace_dependencies(workspace: &str) -> Vec<&str> {
    let mut inside = false;
    let mut deps = Vec::new();
    for line in workspace.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[workspace.dependencies]";
            continue;
        }
        if inside && !line.is_empty() && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once('=') {
                deps.push(name.trim());
            }
        }
    }
    deps
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: &str =
        "[workspace]\nmembers = []\n\n[workspace.dependencies]\nlog = \"0.4\"\nspin = { version = \"0.10\" }\n";

    fn member(name: &str, deps: &str) -> (String, String) {
        (
            name.to_string(),
            format!(
                "[package]\nname = \"{name}\"\ndescription = \"d\"\nlicense.workspace = true\n\n[dependencies]\n{deps}"
            ),
        )
    }

    #[test]
    fn every_workspace_dependency_must_be_used() {
        let ws = WS;
        let used = [member("a", "log.workspace = true\nspin = { workspace = true, features = [] }\n")];
        assert_eq!(check(ws, &used, &["a"]), Ok(()));
        let unused = [member("a", "log.workspace = true\n")];
        let e = check(ws, &unused, &["a"]).unwrap_err();
        assert!(e.contains("spin is used by no member"), "{e}");
    }

    #[test]
    fn placeholders_and_missing_metadata_are_refused() {
        let ws = format!("{WS}repository = \"https://example.invalid/x\"\n");
        let e = check(&ws, &[member("a", "log.workspace = true\nspin.workspace = true\n")], &["a", "b"]).unwrap_err();
        assert!(e.contains("placeholder \"example.invalid\""), "{e}");
        assert!(e.contains("published crate b is not a member"), "{e}");
        let bare =
            [("a".to_string(), "[package]\nname = \"a\"\nlog.workspace = true\nspin.workspace = true\n".to_string())];
        let e = check(WS, &bare, &["a"]).unwrap_err();
        assert!(e.contains("has no description") && e.contains("has no license"), "{e}");
    }

    #[test]
    fn this_workspace_passes() {
        let root = crate::workspace_root();
        let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
        let members: Vec<_> = crate::MEMBER_MANIFESTS
            .iter()
            .map(|d| (d.to_string(), read(root.join(d).join("Cargo.toml"))))
            .chain(
                ["custom-backend", "user-elf", "user-prog"]
                    .map(|d| (format!("examples/{d}"), read(root.join("examples").join(d).join("Cargo.toml")))),
            )
            .collect();
        assert_eq!(check(&read(root.join("Cargo.toml")), &members, &crate::PUBLISHED), Ok(()));
    }
}
