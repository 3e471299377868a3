//! The notebooks under `notebooks/`: valid JSON with the Rust kernel, every `:dep` in the first
//! cell and resolving to a crate, no error outputs committed — and their code compiles against
//! the current library, because `build.rs` turns each into a function of this module.

use std::path::{Path, PathBuf};

#[allow(
    warnings,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::dbg_macro,
    clippy::todo,
    missing_docs
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/notebooks.rs"));
}

fn notebook_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../notebooks")
}

/// The source of a cell as one string.
fn source(cell: &serde_json::Value) -> String {
    match &cell["source"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(lines) => lines.iter().filter_map(|l| l.as_str()).collect(),
        _ => String::new(),
    }
}

/// The `path = "…"` of a `:dep` line, if it has one.
fn dep_path(line: &str) -> Option<&str> {
    let rest = line.split("path").nth(1)?;
    let rest = rest
        .trim_start()
        .strip_prefix('=')?
        .trim_start()
        .strip_prefix('"')?;
    rest.split('"').next()
}

#[test]
fn every_notebook_is_generated_valid_and_its_deps_resolve() {
    let dir = notebook_dir();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ipynb"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let generated: Vec<&str> = generated::NOTEBOOKS.iter().map(|n| n.0).collect();
    assert_eq!(generated, files, "build.rs saw other notebooks");
    assert!(files.len() >= 6, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let nb: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(nb["metadata"]["kernelspec"]["name"], "rust", "{file}");
        let code: Vec<&serde_json::Value> = nb["cells"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["cell_type"] == "code")
            .collect();
        assert!(!code.is_empty(), "{file}");
        for (i, cell) in code.iter().enumerate() {
            let src = source(cell);
            let deps: Vec<&str> = src.lines().filter(|l| l.starts_with(":dep")).collect();
            assert!(
                i == 0 || deps.is_empty(),
                "{file} cell {}: `:dep` outside the first cell drops variables",
                i + 1
            );
            for dep in deps {
                if let Some(path) = dep_path(dep) {
                    let manifest = dir.join(path).join("Cargo.toml");
                    assert!(
                        manifest.is_file(),
                        "{file}: {dep}: no {}",
                        manifest.display()
                    );
                }
            }
            for output in cell["outputs"].as_array().into_iter().flatten() {
                assert_ne!(output["output_type"], "error", "{file} cell {}", i + 1);
            }
        }
        let first = source(code[0]);
        assert!(
            first.contains(":dep viz = { path = \"../viz\", default-features = false }"),
            "{file}"
        );
    }
}

#[test]
fn dep_paths_are_read_from_toml_syntax() {
    assert_eq!(
        dep_path(r#":dep viz = { path = "../viz", default-features = false }"#),
        Some("../viz")
    );
    assert_eq!(dep_path(r#":dep candle-core = "=0.11.1""#), None);
}
