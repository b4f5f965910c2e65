//! The crate's layering (docs/ARCHITECTURE.md): a top-level module may use only modules below it
//! in [`LAYERS`], so no circle between modules can form and no lower layer imports a higher
//! one. The check reads every `crate::<module>` path in `src/`.

use std::collections::BTreeSet;
use std::path::Path;

/// Top-level modules from the lowest layer to the highest.
const LAYERS: &[&str] = &[
    "choice",
    "fsio",
    "interrupt",
    "compute",
    "device",
    "dist",
    "data",
    "nn",
    "checkpoint",
    "attack",
    "eval",
    "train",
    "bench",
    "report",
    "analysis",
    "study",
    "cli",
];

fn rank(m: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == m)
}

/// Top-level module of a file under `src/` (`src/train/run.rs` -> `train`, `src/fsio.rs` ->
/// `fsio`); None for lib.rs/main.rs.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let m = first.trim_end_matches(".rs").to_string();
    (m != "lib" && m != "main" && m != "shim").then_some(m)
}

/// Modules named by `crate::<m>` in `text` (comments included: a doc link up the layers is
/// as much a dependency as a call).
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        if i > 0 {
            let prev = text.as_bytes()[i - 1];
            if prev.is_ascii_alphanumeric() || prev == b'_' {
                continue; // e.g. `advtrain_crate::`
            }
        }
        let rest = &text[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    // `use crate::{a, b::c}` groups.
    for (i, _) in text.match_indices("crate::{") {
        let rest = &text[i + "crate::{".len()..];
        let group = &rest[..rest.find('}').unwrap_or(rest.len())];
        for part in group.split(',') {
            let name: String = part
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_module_uses_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut violations = Vec::new();
    let mut unknown = BTreeSet::new();
    for f in &all {
        let rel = f.strip_prefix(&src).unwrap();
        let Some(m) = module_of(rel) else { continue };
        let Some(r) = rank(&m) else {
            unknown.insert(m);
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for used in crate_paths(&text) {
            match rank(&used) {
                Some(u) if u > r => violations.push(format!(
                    "{}: {m} uses crate::{used}, a higher layer",
                    rel.display()
                )),
                None if LAYERS.contains(&used.as_str()) => {}
                None => {
                    unknown.insert(used);
                }
                _ => {}
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules missing from LAYERS: {unknown:?}"
    );
    assert!(
        violations.is_empty(),
        "layering broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scanner_finds_paths_and_groups() {
    let t =
        "use crate::nn::Net;\nuse crate::{train::Recipe, eval};\nlet x = crate::fsio::tmp_path(p);";
    let got: Vec<String> = crate_paths(t).into_iter().collect();
    assert_eq!(got, ["eval", "fsio", "nn", "train"]);
}

/// The files of `src/<module>/` (mod.rs aside, the parent of them all) that each one names,
/// by `super::<file>` or `crate::<module>::<file>` (doc links included).
fn sibling_graph(module: &str) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(module);
    let names: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let stem = n.strip_suffix(".rs")?.to_string();
            (stem != "mod").then_some(stem)
        })
        .collect();
    let word = |rest: &str| -> String {
        rest.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut graph = std::collections::BTreeMap::new();
    for n in &names {
        let text = std::fs::read_to_string(dir.join(format!("{n}.rs"))).unwrap();
        let mut used = BTreeSet::new();
        for prefix in ["super::".to_string(), format!("crate::{module}::")] {
            for (i, _) in text.match_indices(&prefix) {
                let w = word(&text[i + prefix.len()..]);
                if names.contains(&w) && &w != n {
                    used.insert(w);
                }
            }
        }
        graph.insert(n.clone(), used);
    }
    graph
}

/// A circle in `graph`, if any (as the files on it, the first one repeated at the end).
fn find_circle(
    graph: &std::collections::BTreeMap<String, BTreeSet<String>>,
) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &std::collections::BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in &graph[n] {
            if let Some(c) = visit(m, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut vec![], &mut done))
}

#[test]
fn the_files_of_bench_and_cli_form_no_circle() {
    for module in ["bench", "cli"] {
        let g = sibling_graph(module);
        assert!(g.len() >= 4, "{module}: expected its files, got {g:?}");
        if let Some(c) = find_circle(&g) {
            panic!(
                "src/{module}: the files {} use each other in a circle",
                c.join(" -> ")
            );
        }
    }
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let g = |edges: &[(&str, &str)]| {
        let mut m = std::collections::BTreeMap::<String, BTreeSet<String>>::new();
        for (a, b) in edges {
            m.entry(a.to_string()).or_default().insert(b.to_string());
            m.entry(b.to_string()).or_default();
        }
        m
    };
    assert_eq!(find_circle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    let c = find_circle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])).unwrap();
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4);
}
