//! The runtime's modules form layers, with no import cycle between them
//! (ARCHITECTURE.md, "The runtime"): `backend/` (the interface, live mode,
//! task identity) depends on no other module; the three other backends
//! (`record/`, `replay/`, `sim/`) on `backend/` and leaves; the public API
//! (`net/`, `time`, `rand`, `task`, `signal`, ...) and the interposers
//! (`intercept/`) on `backend/` alone, never on a mode; `runtime.rs`, which
//! builds the modes, on all of them.
//!
//! Read from the source: every `crate::module` path outside comments is an
//! edge from the file's top-level module to that module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a line of code names through `crate::`.
fn crate_paths(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::b, c::{d, e}}`: the first name of each item.
            let mut depth = 1;
            let mut item_start = true;
            let mut name = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if depth == 1 && item_start && (c.is_alphanumeric() || c == '_') => {
                        name.push(c)
                    }
                    _ if depth == 1 && item_start && !name.is_empty() => {
                        found.push(std::mem::take(&mut name));
                        item_start = false;
                    }
                    _ => {}
                }
            }
            if !name.is_empty() {
                found.push(name);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found the runtime's source files");
    let mut units = BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a component");
        let name = first.as_os_str().to_string_lossy();
        units.insert(name.trim_end_matches(".rs").to_string());
    }
    let mut graph = Graph::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a component");
        let unit = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        // The crate root re-exports the API: it is above everything.
        if unit == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read a source file");
        let edges = graph.entry(unit.clone()).or_default();
        for line in text.lines() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for target in crate_paths(line) {
                // `crate::__tokio` and other names of the root's re-exports
                // are not modules.
                if target != unit && units.contains(&target) {
                    edges.insert(target);
                }
            }
        }
    }
    graph
}

/// A cycle through the graph, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn the_parser_reads_paths_and_groups() {
    assert_eq!(
        crate_paths("use crate::backend::{self, Clock};"),
        ["backend"]
    );
    assert_eq!(
        crate_paths("use crate::{backend::{self, X}, redact::Direction};"),
        ["backend", "redact"]
    );
    assert_eq!(
        crate_paths("let x = crate::replay::poll(cx) + crate::sim::now();"),
        ["replay", "sim"]
    );
}

#[test]
fn the_modules_have_no_import_cycle() {
    let graph = graph();
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "runtime/src has an import cycle: {}. Each mode's code belongs in its backend \
             (record/, replay/, sim/, backend/live.rs) behind crate::backend::Backend",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_interface_depends_on_no_mode_and_the_api_on_no_mode() {
    let graph = graph();
    let modes = ["record", "replay", "sim", "runtime"];
    let backend = graph.get("backend").cloned().unwrap_or_default();
    let leaves: BTreeSet<String> = backend
        .iter()
        .filter(|unit| modes.contains(&unit.as_str()))
        .cloned()
        .collect();
    assert!(
        leaves.is_empty(),
        "backend/ imports {leaves:?}: the interface must not know its implementations"
    );
    for api in [
        "net",
        "time",
        "rand",
        "task",
        "signal",
        "intercept",
        "select",
    ] {
        let uses: Vec<&String> = graph
            .get(api)
            .into_iter()
            .flatten()
            .filter(|unit| modes.contains(&unit.as_str()))
            .collect();
        assert!(
            uses.is_empty(),
            "{api} imports {uses:?}: it must call the thread's backend, not a mode"
        );
    }
}
