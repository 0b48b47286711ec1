//! The shape of the workspace, as `docs/architecture.md` draws it: which crate may use which
//! (read from the table there and checked against `cargo metadata`), and the house rules of
//! size (no source file over 600 lines without a reason at its top, no function over 150
//! lines). The code is the record's; this test keeps the record true.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A source file longer than this needs a section with [`LONG_FILE_HEADING`] at its top.
const MAX_FILE_LINES: usize = 600;
/// The heading of the section, in a file's opening `//!` doc, that says why it is long.
const LONG_FILE_HEADING: &str = "//! # Why this file is long";
/// No function (test functions included) is longer than this, signature to closing brace.
const MAX_FN_LINES: usize = 150;

/// The crates that hold the mesh itself; the CLI and the bench sit on top of them.
const LIBRARIES: &[&str] = &["weft-runtime", "weft-identity", "weft-policy", "weft-proxy"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `crate → crates it may use`, from the table under "Crates and their boundaries".
fn allowed_by_the_architecture() -> BTreeMap<String, BTreeSet<String>> {
    let path = root().join("docs/architecture.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let section = doc
        .split("## Crates and their boundaries")
        .nth(1)
        .expect("docs/architecture.md has a section `## Crates and their boundaries`");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut allowed = BTreeMap::new();
    let mut in_table = false;
    for line in section.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells == ["crate", "may use"] {
            in_table = true;
            continue;
        }
        if !in_table || cells.iter().all(|c| c.chars().all(|c| c == '-')) {
            continue;
        }
        if !line.trim_start().starts_with('|') {
            break;
        }
        let [krate, uses] = cells[..] else {
            panic!("a row of the crate table is not `| crate | may use |`: {line}");
        };
        let names = |s: &str| -> BTreeSet<String> {
            s.split(',')
                .filter_map(|c| c.trim().strip_prefix('`')?.strip_suffix('`'))
                .map(String::from)
                .collect()
        };
        let krate = names(krate)
            .into_iter()
            .next()
            .expect("a crate name in backticks");
        allowed.insert(krate, names(uses));
    }
    assert!(
        !allowed.is_empty(),
        "no `| crate | may use |` table in the crates section of {}",
        path.display()
    );
    allowed
}

/// Every workspace member and the workspace crates it depends on (normal, dev and build).
fn actual_edges() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let members: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    packages
        .iter()
        .map(|p| {
            let uses = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|d| d["name"].as_str())
                .filter(|d| members.contains(*d))
                .map(String::from)
                .collect();
            (p["name"].as_str().unwrap().to_string(), uses)
        })
        .collect()
}

#[test]
fn crates_use_only_what_the_architecture_allows() {
    let allowed = allowed_by_the_architecture();
    let actual = actual_edges();
    let drawn: BTreeSet<_> = allowed.keys().collect();
    let members: BTreeSet<_> = actual.keys().collect();
    assert_eq!(
        drawn, members,
        "docs/architecture.md's crate table must name exactly the workspace's crates"
    );
    let mut wrong = Vec::new();
    for (krate, uses) in &actual {
        for dep in uses {
            if !allowed[krate].contains(dep) {
                wrong.push(format!(
                    "{krate} uses {dep}, which docs/architecture.md does not allow"
                ));
            }
        }
    }
    // The rules behind the table hold whatever the table says.
    for (krate, uses) in allowed.iter().chain(&actual) {
        let mut broken = |rule: &str, bad: bool| {
            if bad {
                wrong.push(format!("{krate}: {rule}"));
            }
        };
        let uses_any = |names: &[&str]| names.iter().any(|n| uses.contains(*n));
        if krate == "weft-identity" || krate == "weft-runtime" {
            broken(
                "the CA and the runtime never use the proxy or the control plane",
                uses_any(&["weft-proxy", "weft-policy"]),
            );
        }
        if krate == "weft-runtime" {
            broken("the runtime uses no weft crate", !uses.is_empty());
        }
        if LIBRARIES.contains(&krate.as_str()) {
            broken("a library never uses the CLI", uses.contains("weft"));
        }
        broken("nothing uses the bench", uses.contains("weft-bench"));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The workspace's Rust sources (not `target/`), relative to the root.
fn rust_sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name();
            if path.is_dir() {
                if name != "target" && !name.to_string_lossy().starts_with('.') {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for krate in actual_edges().keys() {
        let dir = match krate.as_str() {
            "weft" => "cli".to_string(),
            other => other.trim_start_matches("weft-").to_string(),
        };
        walk(&root().join(dir), &mut files);
    }
    files.sort();
    assert!(files.len() > 50, "found only {} Rust files", files.len());
    files
        .into_iter()
        .map(|f| f.strip_prefix(root()).map(Path::to_path_buf).unwrap_or(f))
        .collect()
}

#[test]
fn no_file_is_long_without_a_reason_at_its_top() {
    let mut long = Vec::new();
    for file in rust_sources() {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        let lines = text.lines().count();
        let header: Vec<&str> = text
            .lines()
            .take_while(|l| l.starts_with("//!") || l.starts_with("#!"))
            .collect();
        if lines > MAX_FILE_LINES && !header.iter().any(|l| l.trim_end() == LONG_FILE_HEADING) {
            long.push(format!("{}: {lines} lines", file.display()));
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines: split them along their seams, or say why one file \
         serves better under `{LONG_FILE_HEADING}` in their opening doc:\n{}",
        long.join("\n")
    );
}

/// `(name, first line, length)` of every function in rustfmt-formatted `text`: from the line
/// with `fn` to the closing brace at the same indentation.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let mut words = body.split_whitespace().peekable();
        while let Some(w) = words.peek() {
            let qualifier = w.starts_with("pub")
                || matches!(*w, "async" | "const" | "unsafe" | "extern" | "\"C\"");
            if !qualifier {
                break;
            }
            words.next();
        }
        if words.next() != Some("fn") {
            continue;
        }
        let name = words
            .next()
            .unwrap_or("")
            .split(['(', '<'])
            .next()
            .unwrap_or("")
            .to_string();
        // The signature ends at `{` (a body) or `;` (a declaration in a trait).
        let Some(open) = (i..lines.len()).find(|&j| {
            let l = lines[j].trim_end();
            l.ends_with('{') || l.ends_with(';') || l.ends_with('}')
        }) else {
            continue;
        };
        if !lines[open].trim_end().ends_with('{') {
            continue;
        }
        let closing = format!("{indent}}}");
        if let Some(end) = (open + 1..lines.len()).find(|&j| lines[j] == closing) {
            found.push((name, i + 1, end - i + 1));
        }
    }
    found
}

#[test]
fn the_function_finder_measures_what_rustfmt_writes() {
    let text = "fn a() {\n    x();\n}\n\nimpl T {\n    pub(crate) async fn b<T>(\n        t: T,\n    ) -> u8 {\n        \
                fn inner() {}\n        1\n    }\n}\ntrait U {\n    fn c(&self);\n}\n";
    // A one-line `fn inner() {}` and a trait's declaration have no body to measure.
    assert_eq!(
        functions(text),
        [("a".to_string(), 1, 3), ("b".to_string(), 6, 6)]
    );
}

#[test]
fn no_function_is_over_150_lines() {
    let mut long = Vec::new();
    for file in rust_sources() {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        for (name, line, len) in functions(&text) {
            if len > MAX_FN_LINES {
                long.push(format!("{}:{line}: fn {name}: {len} lines", file.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines: split them into named steps:\n{}",
        long.join("\n")
    );
}
