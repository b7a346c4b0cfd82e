//! ARCHITECTURE.md's layer table is the rule for imports: every `crate::` path in src/ must
//! point to a lower layer (or stay inside its own module), and every library module must be in
//! the table. Reading the table from the document keeps the two from drifting apart.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

/// Module name -> layer, from the table under "## Layers".
fn layers() -> BTreeMap<String, u32> {
    let doc = std::fs::read_to_string(common::repo().join("ARCHITECTURE.md")).unwrap();
    let table = doc.split("## Layers").nth(1).expect("a Layers section");
    let mut out = BTreeMap::new();
    for line in table.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(layer) = cells.get(1).and_then(|c| c.parse::<u32>().ok()) else {
            continue;
        };
        for module in cells[2].split(',') {
            out.insert(module.trim().to_string(), layer);
        }
    }
    assert!(out.len() >= 10, "layer table not found: {out:?}");
    out
}

/// `src/sinks/records/mod.rs` -> `sinks`; `src/verdict.rs` -> `verdict`.
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_string()
}

/// Every `crate::name` in the file, with its line number (comments skipped).
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for (i, _) in code.match_indices("crate::") {
            if i > 0 && code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `veriface_crate::`
            }
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push((n + 1, name));
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_imports_from_a_layer_above_or_beside_it() {
    let layers = layers();
    let src = common::repo().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let module = top_module(&src, file);
        if module == "main" || module == "cli" || module == "lib" {
            continue; // the binary sits above every layer
        }
        let own = *layers
            .get(&module)
            .unwrap_or_else(|| panic!("src/{module}: not in ARCHITECTURE.md's layer table"));
        let text = std::fs::read_to_string(file).unwrap();
        for (line, target) in crate_paths(&text) {
            if target == module {
                continue;
            }
            let Some(&theirs) = layers.get(&target) else {
                wrong.push(format!(
                    "{}:{line}: crate::{target} is in no layer",
                    file.display()
                ));
                continue;
            };
            if theirs >= own {
                wrong.push(format!(
                    "{}:{line}: {module} (layer {own}) imports {target} (layer {theirs})",
                    file.display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_library_module_has_a_layer() {
    let layers = layers();
    let lib = std::fs::read_to_string(common::repo().join("src/lib.rs")).unwrap();
    let modules: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
        .collect();
    assert!(modules.len() >= 10);
    for m in &modules {
        assert!(
            layers.contains_key(*m),
            "{m}: not in ARCHITECTURE.md's layer table"
        );
    }
    for m in layers.keys() {
        assert!(
            modules.contains(&m.as_str()),
            "{m}: in the table, not in src/lib.rs"
        );
    }
}

/// The checker itself: an upward import is found, a comment is not.
#[test]
fn the_import_scan_finds_paths_and_skips_comments() {
    let text =
        "use crate::frame::Frame;\n// crate::daemon in a comment\nlet x = crate::pipeline::X;";
    let found: Vec<String> = crate_paths(text).into_iter().map(|(_, n)| n).collect();
    assert_eq!(found, vec!["frame", "pipeline"]);
}
