//! Turns every notebook under `../notebooks` into one Rust function (its code cells in order,
//! evcxr `:` commands dropped, a cell's trailing expression kept as `let _ = &(…);`, borrowed
//! as evcxr's display call borrows it), so that the
//! integration tests compile the notebooks against the current library. Each generated line ends
//! with a comment naming its notebook and cell, which compiler errors show.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest).join("../notebooks");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "ipynb"))
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    let mut out = String::from(
        "/// What `?` turns an error into, as in evcxr: anything displayable.\n\
         pub struct CellError;\n\
         impl<T: std::fmt::Display> From<T> for CellError {\n    \
         fn from(_: T) -> Self {\n        CellError\n    }\n}\n\n",
    );
    let mut names = Vec::new();
    for path in &paths {
        println!("cargo:rerun-if-changed={}", path.display());
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("notebook {file}: cannot read: {e}"));
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("notebook {file}: not valid JSON: {e}"));
        let cells = json["cells"]
            .as_array()
            .unwrap_or_else(|| panic!("notebook {file}: no `cells` array"));
        let func: String = file
            .trim_end_matches(".ipynb")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let func = format!("notebook_{func}");
        let _ = writeln!(out, "/// The code cells of `notebooks/{file}`.");
        let _ = writeln!(out, "pub fn {func}() -> Result<(), CellError> {{");
        let mut number = 0;
        for cell in cells {
            if cell["cell_type"] != "code" {
                continue;
            }
            number += 1;
            let source = match &cell["source"] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(lines) => {
                    lines.iter().filter_map(|l| l.as_str()).collect::<String>()
                }
                _ => panic!("notebook {file}: code cell {number} has no source"),
            };
            let code: Vec<&str> = source
                .lines()
                .filter(|l| !l.trim_start().starts_with(':'))
                .collect();
            let code = code.join("\n");
            let (body, tail) = split_tail(&code);
            let tag = format!(" // {file} cell {number}");
            for line in body.lines() {
                let _ = writeln!(out, "    {line}{tag}");
            }
            if !tail.trim().is_empty() {
                let _ = writeln!(out, "    let _ = &({});{tag}", tail.trim());
            }
        }
        let _ = writeln!(out, "    Ok(())\n}}\n");
        names.push((file, func));
    }
    let _ = writeln!(out, "/// Every notebook and its generated function.");
    let _ = writeln!(
        out,
        "pub const NOTEBOOKS: &[(&str, fn() -> Result<(), CellError>)] = &["
    );
    for (file, func) in &names {
        let _ = writeln!(out, "    ({file:?}, {func}),");
    }
    let _ = writeln!(out, "];");
    let target =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("notebooks.rs");
    std::fs::write(&target, out).expect("cannot write the generated notebooks");
}

/// Splits a cell into its statements and its trailing expression (the text after the last `;`
/// or statement-ending `}` outside any brackets, strings and comments; empty when the cell ends
/// in one).
fn split_tail(code: &str) -> (&str, &str) {
    let bytes = code.as_bytes();
    let (mut depth, mut end, mut i) = (0i32, 0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'\'' if bytes.get(i + 2) == Some(&b'\'') => i += 2,
            b'\'' if bytes.get(i + 1) == Some(&b'\\') => {
                while i + 1 < bytes.len() && bytes[i + 1] != b'\'' {
                    i += 1;
                }
                i += 1;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' => depth -= 1,
            b'}' => {
                depth -= 1;
                // `}` ends a statement unless a method call or `?` continues the expression.
                let next = code[i + 1..].trim_start().bytes().next();
                if depth == 0 && !matches!(next, Some(b'.' | b'?')) {
                    end = i + 1;
                }
            }
            b';' if depth == 0 => end = i + 1,
            _ => {}
        }
        i += 1;
    }
    let end = end.min(code.len());
    let tail = &code[end..];
    // Only comments after the last statement: nothing to keep.
    if tail.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with("//")
    }) {
        return (code, "");
    }
    (&code[..end], tail)
}
