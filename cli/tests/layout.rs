//! The code's shape: no import cycles between sibling modules of any crate (a module may use its children and
//! its children may use it; two siblings may not use each other, directly or around a loop), and a thin `main.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path: `["dryrun", "gate"]`; the crate root is `[]`.
type Module = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("under src").with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The module paths a file names after `crate::` and `super::` (grouped imports expanded one level). Test code
/// (from a file's first `#[cfg(test)]` on) is not the shipped dependency graph and is left out.
fn references(text: &str, this: &Module) -> Vec<Module> {
    let mut out = Vec::new();
    let code = without_tests(text);
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &code[i..];
        let (base, skip): (Module, usize) = if rest.starts_with("crate::") && !prev_is_ident(bytes, i) {
            (Vec::new(), "crate::".len())
        } else if rest.starts_with("super::") && !prev_is_ident(bytes, i) {
            // `super` is the parent of the module the file is (a `mod.rs` is its directory's module).
            let mut parent = this.clone();
            parent.pop();
            (parent, "super::".len())
        } else {
            i += 1;
            continue;
        };
        let after = &rest[skip..];
        for path in expand(after) {
            let mut m = base.clone();
            m.extend(path);
            out.push(m);
        }
        i += skip;
    }
    out
}

/// `text` without comments and test code: a `#[cfg(test)]` module with a body ends the file's shipped code; a
/// `#[cfg(test)]` declaration or item line is dropped.
fn without_tests(text: &str) -> String {
    let mut kept = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            match lines.next() {
                Some(next) if next.trim_end().ends_with('{') && next.contains("mod ") => break,
                _ => continue,
            }
        }
        if !line.trim_start().starts_with("//") {
            kept.push(line);
        }
    }
    kept.join("\n")
}

fn prev_is_ident(bytes: &[u8], i: usize) -> bool {
    i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':')
}

/// `a::b::c` → [[a, b, c]]; `{a, b::c}` → [[a], [b, c]] (one level of braces).
fn expand(after: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> Vec<String> {
        let mut parts = Vec::new();
        for seg in s.split("::") {
            let name: String = seg
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_uppercase()) {
                break;
            }
            parts.push(name.clone());
            if name.len() != seg.len() {
                break;
            }
        }
        parts
    };
    if let Some(inner) = after.strip_prefix('{') {
        let mut depth = 0;
        let mut end = inner.len();
        for (k, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = k;
                    break;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        let mut out = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        let body = &inner[..end];
        for (k, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(ident(body[start..k].trim()));
                    start = k + 1;
                }
                _ => {}
            }
        }
        out.push(ident(body[start..].trim()));
        out
    } else {
        vec![ident(after)]
    }
}

/// The cycles among siblings in one crate, as readable paths.
fn sibling_cycles(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(src, f)).collect();
    // Edges between siblings under their lowest common parent.
    let mut graphs: BTreeMap<Module, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in files.iter().filter(|f| f.file_stem().is_none_or(|s| s != "tests")) {
        let this = module_of(src, file);
        let text = std::fs::read_to_string(file).expect("read");
        for target in references(&text, &this) {
            // The longest prefix of the reference that is a module.
            let mut target = target;
            while !target.is_empty() && !modules.contains(&target) {
                target.pop();
            }
            let common = this.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == this.len() || common == target.len() {
                continue; // a module and its descendant or ancestor
            }
            graphs
                .entry(this[..common].to_vec())
                .or_default()
                .entry(this[common].clone())
                .or_default()
                .insert(target[common].clone());
        }
    }
    let mut cycles = Vec::new();
    for (parent, graph) in &graphs {
        for start in graph.keys() {
            // Depth-first search for a path back to `start`.
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            let mut seen = BTreeSet::new();
            while let Some((node, path)) = stack.pop() {
                for next in graph.get(&node).into_iter().flatten() {
                    if next == start {
                        let mut p = path.clone();
                        p.push(start.clone());
                        let prefix = if parent.is_empty() {
                            String::new()
                        } else {
                            format!("{}::", parent.join("::"))
                        };
                        cycles.push(format!("{prefix}{{{}}}", p.join(" -> ")));
                    } else if seen.insert(next.clone()) {
                        let mut p = path.clone();
                        p.push(next.clone());
                        stack.push((next.clone(), p));
                    }
                }
            }
        }
    }
    cycles.sort();
    cycles.dedup();
    cycles
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn no_crate_has_an_import_cycle_between_sibling_modules() {
    let mut all = Vec::new();
    for krate in ["agent/src", "cli/src", "bench/src", "tests/src"] {
        for cycle in sibling_cycles(&workspace().join(krate)) {
            all.push(format!("{krate}: {cycle}"));
        }
    }
    assert!(all.is_empty(), "import cycles:\n{}", all.join("\n"));
}

#[test]
fn the_checker_finds_a_cycle_when_there_is_one() {
    let dir = std::env::temp_dir().join(format!("layout-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("src/a")).expect("dirs");
    std::fs::write(dir.join("src/lib.rs"), "pub mod a;\npub mod b;\n").expect("lib");
    std::fs::write(
        dir.join("src/a/mod.rs"),
        "pub mod x;\npub mod y;\nuse crate::b::Thing;\n",
    )
    .expect("a");
    std::fs::write(dir.join("src/a/x.rs"), "use super::y::Y;\n").expect("x");
    std::fs::write(dir.join("src/a/y.rs"), "use super::{x, z};\nuse crate::a::x::X;\n").expect("y");
    std::fs::write(dir.join("src/b.rs"), "fn f() { crate::a::x::g(); }\n").expect("b");
    let cycles = sibling_cycles(&dir.join("src"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        cycles.iter().any(|c| c == "{a -> b -> a}" || c == "{b -> a -> b}"),
        "{cycles:?}"
    );
    assert!(
        cycles
            .iter()
            .any(|c| c.starts_with("a::{") && c.contains('x') && c.contains('y')),
        "{cycles:?}"
    );
}

#[test]
fn main_is_a_thin_layer() {
    let main = std::fs::read_to_string(workspace().join("cli/src/main.rs")).expect("main.rs");
    let lines = main.lines().count();
    assert!(
        lines <= 150,
        "cli/src/main.rs has {lines} lines: move what it does into commands/ or the library"
    );
}
