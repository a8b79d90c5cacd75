//! The sidecar's layering, checked from its sources: a module may name (`crate::x`) only the
//! modules its layer allows, so an import loop between layers fails CI instead of growing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules of `sidecar/src` and the ones each may import besides itself.
/// `None`: the wiring layer, which may import anything.
fn allowed(module: &str) -> Option<&'static [&'static str]> {
    const BASE: &[&str] = &["config", "model", "memory", "metrics"];
    const COMPONENT: &[&str] = &["config", "model", "memory", "metrics", "component"];
    match module {
        "config" | "memory" => Some(&[]),
        "model" | "metrics" => Some(&["memory"]),
        "component" => Some(BASE),
        "receivers" | "processors" | "exporters" | "extensions" => Some(COMPONENT),
        "pipeline" | "service" | "load" | "lib" | "main" => None,
        other => panic!(
            "sidecar/src/{other}: a module this test does not know; give it a layer in `allowed`"
        ),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read sidecar/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::name` a source names, in `use` lines and in paths alike; `crate::{a, b}`
/// groups included.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `loom_crate::` or similar
        }
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name = ident(part.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn modules_import_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("utf-8 path");
        if first == "bin" {
            continue; // the binaries use the library's public paths, not `crate::`
        }
        let module = first.trim_end_matches(".rs");
        let Some(allowed) = allowed(module) else {
            continue;
        };
        checked += 1;
        let text = std::fs::read_to_string(&file).expect("read source");
        for name in crate_refs(&text) {
            if name != module && !allowed.contains(&name.as_str()) {
                violations.push(format!("{}: crate::{name}", rel.display()));
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} files checked: is the walk broken?"
    );
    assert!(
        violations.is_empty(),
        "imports against the layering (see sidecar/src/lib.rs):\n  {}",
        violations.join("\n  ")
    );
}

#[test]
fn the_reference_scanner_sees_groups_and_paths() {
    let refs = crate_refs(
        "use crate::{config::X, model};\nlet a = crate::pipeline::f();\nuse my_crate::nope;",
    );
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        ["config", "model", "pipeline"]
    );
}
