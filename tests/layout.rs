//! The source layout's rules, read off the source itself (so a change that breaks one fails
//! here, not in a reviewer's head):
//! - `src/config/` is pure data: no GStreamer, no libtorch, nothing else of the crate;
//! - `src/pipeline/` never touches libtorch (the model is reached through `runtime`);
//! - no two modules import each other, and the top-level modules form no cycle;
//! - no function in the engine, supervisor or output code is longer than 80 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its module path (`pipeline::engine`, `models::arch`).
fn modules(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let relative = path.strip_prefix(dir).unwrap().with_extension("");
            let mut segments: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if segments.last().is_some_and(|s| s == "mod") {
                segments.pop();
            }
            let name = segments.join("::");
            if name == "lib" || name == "main" {
                continue;
            }
            found.insert(name, path);
        }
    }
    found
}

/// The file's code without its unit tests (their `super::*` is the file itself).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Comments and string literals blanked, so that only code is matched.
fn strip_comments_and_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                    }
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            other => out.push(other),
        }
    }
    out
}

/// Every crate path a file names: `use` trees expanded (`use super::{a, b::c}` gives
/// `super::a` and `super::b::c`), and paths written inline in code.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let rest: String = chars[i..chars.len().min(i + 7)].iter().collect();
        let boundary = i == 0
            || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_' || chars[i - 1] == ':');
        let root = ["crate::", "super::", "self::"]
            .into_iter()
            .find(|r| rest.starts_with(r));
        if let (true, Some(_)) = (boundary, root) {
            let (tree, end) = read_tree(&chars, i);
            found.extend(expand(&tree));
            i = end;
        } else {
            i += 1;
        }
    }
    found
        .into_iter()
        .map(|p| {
            p.split("::")
                .map(str::to_string)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .collect()
}

/// Reads a path, with a `{...}` group if it has one, from `start`; returns it without spaces.
fn read_tree(chars: &[char], start: usize) -> (String, usize) {
    let mut depth = 0;
    let mut i = start;
    let mut tree = String::new();
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            c if depth == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') => break,
            _ => {}
        }
        if !c.is_whitespace() {
            tree.push(c);
        }
        i += 1;
        if c == '}' && depth == 0 {
            break;
        }
    }
    (tree, i)
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.trim_end_matches("::").to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut items = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items
        .into_iter()
        .filter(|item| !item.is_empty())
        .flat_map(|item| {
            let item = if item == "self" { String::new() } else { item };
            expand(&format!("{prefix}{item}"))
        })
        .collect()
}

/// The module a path starting at `from` leads to: the longest prefix that is a module.
fn resolve(from: &str, path: &[String], known: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut base: Vec<String> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").map(str::to_string).collect()
    };
    let mut segments = path.iter().peekable();
    match segments.peek().map(|s| s.as_str()) {
        Some("crate") => {
            base.clear();
            segments.next();
        }
        Some("self") => {
            segments.next();
        }
        Some("super") => {
            while segments.peek().map(|s| s.as_str()) == Some("super") {
                base.pop();
                segments.next();
            }
        }
        _ => return None,
    }
    let mut best = (!base.is_empty()).then(|| base.join("::"));
    for segment in segments {
        base.push(segment.clone());
        let name = base.join("::");
        if known.contains_key(&name) {
            best = Some(name);
        } else {
            break;
        }
    }
    best
}

/// Which module imports which, from every file under `src/`.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let known = modules(&src());
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &known {
        let code = strip_comments_and_strings(&code(file));
        let edges = graph.entry(module.clone()).or_default();
        for path in paths(&code) {
            if let Some(target) = resolve(module, &path, &known)
                && &target != module
            {
                edges.insert(target);
            }
        }
    }
    graph
}

#[test]
fn no_two_modules_import_each_other() {
    let graph = import_graph();
    assert!(graph.len() > 40, "found only {} modules", graph.len());
    let mut mutual = Vec::new();
    for (module, targets) in &graph {
        for target in targets {
            if module < target && graph.get(target).is_some_and(|t| t.contains(module)) {
                mutual.push(format!("{module} <-> {target}"));
            }
        }
    }
    assert!(
        mutual.is_empty(),
        "modules importing each other: {mutual:#?}"
    );
}

#[test]
fn the_top_level_modules_form_no_cycle() {
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, targets) in import_graph() {
        let from = module.split("::").next().unwrap().to_string();
        for target in targets {
            let to = target.split("::").next().unwrap().to_string();
            if to != from {
                top.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // Depth-first search for a path back to the start.
    for start in top.keys() {
        let mut stack: Vec<Vec<String>> = vec![vec![start.clone()]];
        while let Some(route) = stack.pop() {
            for next in top.get(route.last().unwrap()).into_iter().flatten() {
                assert!(
                    next != start,
                    "top-level modules import each other in a cycle: {} -> {next}",
                    route.join(" -> ")
                );
                if !route.contains(next) {
                    let mut longer = route.clone();
                    longer.push(next.clone());
                    stack.push(longer);
                }
            }
        }
    }
    // The layering the crate docs describe, spot-checked.
    assert!(
        top.get("config").is_none_or(|t| t.is_empty()),
        "config imports {:?}",
        top.get("config")
    );
    assert!(
        !top["pipeline"].contains("models"),
        "pipeline reaches into models"
    );
    assert!(!top["media"].contains("pipeline"), "media imports pipeline");
}

/// Files under `dir` whose code names any of `crates` (as `use x` or `x::`).
fn files_naming(dir: &str, crates: &[&str]) -> Vec<String> {
    let mut offending = Vec::new();
    for (module, file) in modules(&src()) {
        if !file.starts_with(src().join(dir)) {
            continue;
        }
        let code = strip_comments_and_strings(&std::fs::read_to_string(&file).unwrap());
        for name in crates {
            let named = code.lines().any(|line| {
                let line = line.trim_start();
                line.starts_with(&format!("use {name}"))
                    || line.contains(&format!(" {name}::"))
                    || line.contains(&format!("({name}::"))
                    || line.contains(&format!("<{name}::"))
                    || line.starts_with(&format!("{name}::"))
            });
            if named {
                offending.push(format!("{module} names {name}"));
            }
        }
    }
    offending
}

#[test]
fn configuration_is_pure_data() {
    let offending = files_naming("config", &["gstreamer", "gst", "tch"]);
    assert!(offending.is_empty(), "{offending:#?}");
    let graph = import_graph();
    let outside: Vec<String> = graph
        .iter()
        .filter(|(module, _)| module.starts_with("config"))
        .flat_map(|(module, targets)| {
            targets
                .iter()
                .filter(|t| !t.starts_with("config"))
                .map(move |t| format!("{module} -> {t}"))
        })
        .collect();
    assert!(
        outside.is_empty(),
        "config imports the rest of the crate: {outside:#?}"
    );
}

#[test]
fn the_pipelines_never_touch_libtorch() {
    let offending = files_naming("pipeline", &["tch"]);
    assert!(offending.is_empty(), "{offending:#?}");
}

#[test]
fn the_checker_sees_what_it_must() {
    // The parser itself: a grouped use, a nested group, an inline path, `self` in a group.
    let code = "use super::{a, b::{c, d}};\nuse crate::x::{self, y};\nfn f() { crate::m::n::f(); }";
    let got: Vec<String> = paths(code).into_iter().map(|p| p.join("::")).collect();
    assert_eq!(
        got,
        [
            "super::a",
            "super::b::c",
            "super::b::d",
            "crate::x",
            "crate::x::y",
            "crate::m::n::f"
        ]
    );
    let offending = files_naming("models", &["tch"]);
    assert!(
        !offending.is_empty(),
        "the models use libtorch, and the check must see it"
    );
}

/// Functions in `file` longer than `limit` lines, by name.
fn long_functions(file: &Path, limit: usize) -> Vec<String> {
    let code = strip_comments_and_strings(&std::fs::read_to_string(file).unwrap());
    let lines: Vec<&str> = code.lines().collect();
    let mut long = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let is_fn = ["fn ", "pub fn ", "pub(crate) fn ", "pub(super) fn "]
            .iter()
            .any(|p| trimmed.starts_with(p));
        if !is_fn {
            continue;
        }
        let mut depth = 0i32;
        let mut opened = false;
        for (offset, body) in lines[start..].iter().enumerate() {
            depth += body.matches('{').count() as i32;
            opened |= body.contains('{');
            depth -= body.matches('}').count() as i32;
            // A declaration without a body (in a trait) ends at its `;`.
            if !opened && body.trim_end().ends_with(';') {
                break;
            }
            if opened && depth <= 0 {
                if offset + 1 > limit {
                    let name = trimmed.split('(').next().unwrap_or(trimmed);
                    long.push(format!("{}: {name} ({} lines)", file.display(), offset + 1));
                }
                break;
            }
        }
    }
    long
}

#[test]
fn engine_supervisor_and_output_functions_stay_short() {
    let mut long = Vec::new();
    for file in [
        "pipeline/engine.rs",
        "pipeline/build.rs",
        "pipeline/plan.rs",
        "pipeline/supervisor.rs",
        "pipeline/output_stage.rs",
        "media/output.rs",
        "media/source.rs",
    ] {
        long.extend(long_functions(&src().join(file), 80));
    }
    assert!(long.is_empty(), "functions over 80 lines: {long:#?}");
    // The measure works: this file's own checker is longer than 20 lines.
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/layout.rs");
    assert!(!long_functions(&here, 20).is_empty());
}
