//! The engine's layers (see `engine/src/lib.rs`): no import cycle between
//! its top-level modules. Run alone with
//! `cargo test -p spanlake-engine --test layers`.
//!
//! Each non-test source file belongs to the top-level module of its path
//! (`src/export/run.rs` to `export`, `src/error.rs` to `error`); every
//! `crate::<module>` it names outside comments and `#[cfg(test)]` blocks is
//! an edge. A cycle among the modules fails the test, naming each module
//! of the cycle and, for each edge, a file and the line that makes it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files under `dir`, recursively, in path order.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` without `#[cfg(test)]` items (the brace block that follows the
/// attribute) and without `//` comments.
fn production_code(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut skip_depth: Option<i64> = None;
    let mut pending_test_attr = false;
    for (index, raw) in text.lines().enumerate() {
        let code = match raw.find("//") {
            Some(at) => &raw[..at],
            None => raw,
        };
        if let Some(depth) = skip_depth.as_mut() {
            *depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
            if *depth <= 0 {
                skip_depth = None;
            }
            continue;
        }
        if code.trim() == "#[cfg(test)]" {
            pending_test_attr = true;
            continue;
        }
        if pending_test_attr {
            let opens = code.matches('{').count() as i64;
            let closes = code.matches('}').count() as i64;
            if opens > 0 && opens > closes {
                skip_depth = Some(opens - closes);
            }
            // A one-line item (`mod tests;`, `use ...;`) is skipped alone.
            pending_test_attr = opens == 0 && !code.trim_end().ends_with(';');
            continue;
        }
        lines.push((index + 1, code.to_string()));
    }
    lines
}

/// The top-level modules named as `crate::<name>` in `line`.
fn crate_references(line: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `spanlake_crate::`, not ours
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::X, b};`
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    names.push(name);
                }
            }
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            names.push(name);
        }
    }
    names
}

#[test]
fn no_import_cycle_between_engine_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let top_level = |path: &Path| -> String {
        let relative = path.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        first.to_string_lossy().trim_end_matches(".rs").to_string()
    };
    let modules: BTreeSet<String> = files.iter().map(|f| top_level(f)).collect();
    // module -> module -> (file, line) of one reference
    let mut edges: BTreeMap<String, BTreeMap<String, (String, usize)>> = BTreeMap::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        if name == "tests.rs" || file.components().any(|c| c.as_os_str() == "tests") {
            continue;
        }
        let from = top_level(file);
        if from == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (line_no, line) in production_code(&text) {
            for to in crate_references(&line) {
                if to != from && modules.contains(&to) {
                    edges
                        .entry(from.clone())
                        .or_default()
                        .entry(to)
                        .or_insert_with(|| {
                            (
                                file.strip_prefix(&src).unwrap().display().to_string(),
                                line_no,
                            )
                        });
                }
            }
        }
    }
    // Tarjan's strongly connected components: a component of more than one
    // module is a cycle.
    struct Tarjan<'a> {
        edges: &'a BTreeMap<String, BTreeMap<String, (String, usize)>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on_stack: BTreeSet<String>,
        components: Vec<Vec<String>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: &str) {
            let i = self.index.len();
            self.index.insert(v.to_string(), i);
            self.low.insert(v.to_string(), i);
            self.stack.push(v.to_string());
            self.on_stack.insert(v.to_string());
            let targets: Vec<String> = self
                .edges
                .get(v)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for w in targets {
                if !self.index.contains_key(&w) {
                    self.visit(&w);
                    let low = self.low[v].min(self.low[&w]);
                    self.low.insert(v.to_string(), low);
                } else if self.on_stack.contains(&w) {
                    let low = self.low[v].min(self.index[&w]);
                    self.low.insert(v.to_string(), low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on_stack.remove(&w);
                    let done = w == v;
                    component.push(w);
                    if done {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.components.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        edges: &edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for module in &modules {
        if !tarjan.index.contains_key(module) {
            tarjan.visit(module);
        }
    }
    let mut report = String::new();
    for component in &tarjan.components {
        report.push_str(&format!("cycle among {}:\n", component.join(", ")));
        for from in component {
            for (to, (file, line)) in edges.get(from).into_iter().flatten() {
                if component.contains(to) {
                    report.push_str(&format!("  {from} -> {to}  ({file}:{line})\n"));
                }
            }
        }
    }
    assert!(
        report.is_empty(),
        "import cycles between engine modules (dependencies must point down the layers of engine/src/lib.rs):\n{report}"
    );
}
