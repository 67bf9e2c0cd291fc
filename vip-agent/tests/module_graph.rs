//! The daemon's layering, checked on its source: the top-level modules of `vip-agent/src` import
//! each other without a loop (issue 18), so each can be read, tested and replaced from the bottom
//! up.
//!
//! Reads `crate::<module>` paths in code (comments skipped, `use crate::{a, b::c}` groups split)
//! and looks for a cycle among the top-level modules. A parser would be exact; this is the same
//! approximation a reviewer's grep makes, and it errs towards seeing an edge, never missing one
//! written as a path.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        panic!("cannot read {}", dir.display());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`agent/plan.rs` -> `agent`), `None` for the roots.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The top-level names referenced by one `use crate::{...}` group body.
fn group_heads(body: &str) -> Vec<String> {
    let (mut depth, mut item, mut heads) = (0_i32, String::new(), Vec::new());
    for ch in body.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                heads.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(ch);
    }
    heads.push(item);
    heads
        .iter()
        .filter_map(|i| i.trim().split("::").next().map(|h| h.trim().to_owned()))
        .collect()
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(&src, f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let Some(from) = module_of(&src, file) else {
            continue;
        };
        let text = fs::read_to_string(file).unwrap_or_default();
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let shown = file
            .strip_prefix(&src)
            .unwrap_or(file)
            .display()
            .to_string();
        let mut add = |to: &str| {
            if to != from && modules.contains(to) {
                graph
                    .entry(from.clone())
                    .or_default()
                    .entry(to.to_owned())
                    .or_default()
                    .insert(shown.clone());
            }
        };
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(body) = rest.strip_prefix('{') {
                let end = body.find("};").unwrap_or(body.len());
                for head in group_heads(&body[..end]) {
                    add(&head);
                }
            } else {
                let head: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                add(&head);
            }
        }
    }
    graph
}

/// One cycle, if any: depth-first search with colours.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(BTreeMap::keys) {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = visit(node, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn top_level_modules_import_each_other_without_a_loop() {
    let graph = graph();
    assert!(
        graph
            .get("agent")
            .is_some_and(|e| e.contains_key("dataplane")),
        "the scan sees no edge agent -> dataplane: it is broken"
    );
    if let Some(cycle) = find_cycle(&graph) {
        let edges: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                let files = &graph[&w[0]][&w[1]];
                format!("{} -> {} (in {:?})", w[0], w[1], files)
            })
            .collect();
        panic!("import loop: {}", edges.join(", "));
    }
}

#[test]
fn the_scan_finds_a_loop_when_there_is_one() {
    let mut graph = Graph::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        graph
            .entry(a.to_owned())
            .or_default()
            .entry(b.to_owned())
            .or_default()
            .insert("x.rs".to_owned());
    }
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    graph.get_mut("c").map(|e| e.remove("a"));
    assert_eq!(find_cycle(&graph), None);
    assert_eq!(
        group_heads("config::{A, B}, leader::{self, X}, clock"),
        vec!["config", "leader", "clock"]
    );
}

/// The metrics registry sits below the domain (issue 18): it and the observations it applies
/// import nothing but the clock (tests included), so the sink knows no gate, hook or source.
#[test]
fn the_metrics_registry_sits_below_the_domain() {
    let graph = graph();
    let imports = |module: &str| -> Vec<String> {
        graph
            .get(module)
            .map(|e| e.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(imports("observe"), Vec::<String>::new(), "{graph:?}");
    assert_eq!(
        imports("metrics"),
        vec!["clock".to_owned(), "observe".to_owned()],
        "{:?}",
        graph.get("metrics")
    );
}
