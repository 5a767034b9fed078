//! No import circle inside `dust-proxies`: between its rooms (`intake`,
//! `egress`, `access`, `item`, `status`, `onion`, `tor`) and between its
//! files; nor between the files of `dust-mixer`, `dust-storage` and the
//! `dustmote` binary. Run: `cargo test -p dust-proxies --test module_graph -- --nocapture`
//! (it prints the graph of the rooms).
//!
//! The graph is read from the source: an edge A → B for every path that
//! names module B in A's code (`use crate::…`, `super::…`, `self::…`, a
//! child module by name), comments left out. A module's files may name
//! their ancestors (a folder module is one module in several files: its
//! children see its private items, and `impl Api` may live in
//! `http/content.rs`); every other edge counts.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module path, as segments (`["intake", "http", "peer"]`); `[]` is the
/// crate root.
type Module = Vec<String>;

/// The module a source file is, from its path under `src/`.
fn module_of(rel: &Path) -> Module {
    let mut segs: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = segs.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !["mod", "lib", "main"].contains(&stem) {
        segs.push(stem.to_string());
    }
    segs
}

/// `text` without comments (line comments and doc comments; the crate
/// writes no block comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // (`//` inside a string such as "http://" is kept: it is not
            // preceded by whitespace or the line start.)
            Some(i) if l[..i].trim().is_empty() || l[..i].ends_with(' ') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every path `code` names that starts at `start` (`crate`, `super`,
/// `self` or a child module's name), as the segments after it (one level
/// of `{…}` groups expanded).
fn paths_from(code: &str, start: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let pat = format!("{start}::");
    let mut at = 0;
    while let Some(i) = code[at..].find(&pat) {
        let i = at + i;
        at = i + pat.len();
        // A whole word: not the tail of another identifier or path.
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut segs = Vec::new();
        let mut rest = &code[at..];
        loop {
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let first = ident(item.trim());
                    if !first.is_empty() && first != "self" {
                        let mut p = segs.clone();
                        p.push(first.to_string());
                        out.push(p);
                    }
                }
                segs.clear();
                break;
            }
            let id = ident(rest);
            if id.is_empty() {
                break;
            }
            segs.push(id.to_string());
            rest = &rest[id.len()..];
            match rest.strip_prefix("::") {
                Some(r) => rest = r,
                None => break,
            }
        }
        if !segs.is_empty() {
            out.push(segs);
        }
    }
    out
}

/// The longest prefix of `path` that is a module (the module it names).
fn resolve(modules: &BTreeSet<Module>, path: &[String]) -> Option<Module> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| modules.contains(m))
}

/// The edges between modules of `files` (module, source), ancestors left
/// out (see the file's doc).
fn edges(files: &[(Module, String)]) -> BTreeMap<Module, BTreeSet<Module>> {
    let modules: BTreeSet<Module> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut graph = BTreeMap::new();
    for (m, text) in files {
        let code = code(text);
        let mut to = BTreeSet::new();
        let parent = &m[..m.len().saturating_sub(1)];
        let mut named: Vec<Module> = Vec::new();
        named.extend(paths_from(&code, "crate"));
        for p in paths_from(&code, "super") {
            let mut full = parent.to_vec();
            full.extend(p);
            named.push(full);
        }
        for p in paths_from(&code, "self") {
            let mut full = m.clone();
            full.extend(p);
            named.push(full);
        }
        // Children by their bare name (`peer::receive`).
        for child in modules
            .iter()
            .filter(|c| c.len() == m.len() + 1 && c.starts_with(m))
        {
            for p in paths_from(&code, child.last().unwrap()) {
                let mut full = child.clone();
                full.extend(p);
                named.push(full);
            }
        }
        for p in named {
            if let Some(target) = resolve(&modules, &p) {
                let ancestor = m.starts_with(&target);
                if !ancestor {
                    to.insert(target);
                }
            }
        }
        graph.insert(m.clone(), to);
    }
    graph
}

/// A circle in `graph`, if there is one (depth-first search).
fn circle<N: Ord + Clone>(graph: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    fn visit<N: Ord + Clone>(
        n: &N,
        graph: &BTreeMap<N, BTreeSet<N>>,
        done: &mut BTreeSet<N>,
        stack: &mut Vec<N>,
    ) -> Option<Vec<N>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.clone());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.clone());
        for next in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, graph, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.clone());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}

/// The files of this crate's `src/`, each as its module and its source.
fn crate_files() -> Vec<(Module, String)> {
    files_of("proxies/src")
}

/// The files under `dir` (from the workspace's root), each as its module
/// and its source.
fn files_of(dir: &str) -> Vec<(Module, String)> {
    // `MODULE_GRAPH_ROOT`: another checkout's root (to look at an older
    // tree: `git worktree add /tmp/old COMMIT`).
    let root = std::env::var_os("MODULE_GRAPH_ROOT").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        std::path::PathBuf::from,
    );
    let src = root.join(dir);
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                files.push((module_of(p.strip_prefix(&src).unwrap()), text));
            }
        }
    }
    files.sort();
    files
}

fn show(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn no_two_files_of_the_crate_import_each_other_even_through_others() {
    let files = crate_files();
    assert!(files.len() > 20, "the crate's files were found");
    let graph = edges(&files);
    if let Some(c) = circle(&graph) {
        let c: Vec<String> = c.iter().map(show).collect();
        panic!("an import circle: {}", c.join(" → "));
    }
}

/// The same holds in the workspace's other crates and the binary.
#[test]
fn no_circle_in_the_mixer_the_store_or_the_binary_either() {
    for dir in ["mixer/src", "storage/src", "src"] {
        let files = files_of(dir);
        assert!(files.len() > 5, "{dir}'s files were found");
        if let Some(c) = circle(&edges(&files)) {
            let c: Vec<String> = c.iter().map(show).collect();
            panic!("an import circle in {dir}: {}", c.join(" → "));
        }
    }
}

#[test]
fn the_rooms_import_each_other_in_one_direction() {
    let graph = edges(&crate_files());
    let room = |m: &Module| m.first().cloned().unwrap_or_else(|| "crate".into());
    let mut rooms: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in &graph {
        let entry = rooms.entry(room(from)).or_default();
        for t in to {
            if room(t) != room(from) {
                entry.insert(room(t));
            }
        }
    }
    for (r, to) in &rooms {
        println!(
            "{r:>7} → {}",
            to.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    assert_eq!(
        rooms.len(),
        8,
        "the crate root and its seven rooms: {rooms:?}"
    );
    if let Some(c) = circle(&rooms) {
        panic!("the rooms import each other: {}", c.join(" → "));
    }
}

/// The check finds what it looks for: a circle made on purpose, through a
/// third file and a `use` group, is reported; the same files without the
/// edge back are not; a child's use of its parent does not count.
#[test]
fn the_check_finds_a_circle_made_on_purpose() {
    let m = |s: &str| -> Module {
        s.split('/')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    };
    let a = (m("a"), "use crate::b::Thing;\n".to_string());
    let b = (m("b"), "use crate::{c::Other, d};\n".to_string());
    let d = (m("d"), String::new());
    let c_back = (m("c"), "fn f() { crate::a::g() }\n".to_string());
    let c_alone = (m("c"), "// crate::a::g() in a comment only\n".to_string());
    let c = circle(&edges(&[a.clone(), b.clone(), c_back, d.clone()])).expect("a → b → c → a");
    assert_eq!(c.len(), 4, "{c:?}");
    assert_eq!(circle(&edges(&[a, b, c_alone, d])), None);
    // x names y through `super`; y names x: a circle.
    let a_to_b = (m("x"), "fn f() { super::y::g() }\n".to_string());
    let b_to_a = (m("y"), "use crate::x;\n".to_string());
    assert!(circle(&edges(&[(m(""), String::new()), a_to_b, b_to_a])).is_some());
    // A child naming its parent is not a circle; its parent naming it is
    // one edge.
    let parent = (m("p"), "mod k;\nfn f() { k::g() }\n".to_string());
    let child = (m("p/k"), "use super::Api;\n".to_string());
    let g = edges(&[parent, child]);
    assert_eq!(g[&m("p")], BTreeSet::from([m("p/k")]));
    assert!(g[&m("p/k")].is_empty());
    assert_eq!(circle(&g), None);
}
