//! The crate's layering (docs/ARCHITECTURE.md): a top-level module may use only modules below it
//! in [`LAYERS`], so no circle between modules can form and no lower layer imports a higher
//! one. The check reads every `crate::<module>` path in `src/`. Inside every module, its files
//! (child modules) form no circle either: the uses between them, through re-exports, are a
//! graph without cycles.

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

/// The files under one module that use each other: for `src/<module>/...`, each child module
/// (a file, or a folder with its files) and the children it names.
type Graph = std::collections::BTreeMap<String, BTreeSet<String>>;

/// A module path below `crate` (`["attack", "pgd"]`).
type ModPath = Vec<String>;

/// Every module of the crate with the text of its file (`src/attack/pgd.rs` ->
/// `["attack", "pgd"]`, `src/nn/models/mod.rs` -> `["nn", "models"]`; lib.rs and main.rs aside).
fn module_texts() -> std::collections::BTreeMap<ModPath, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut out = std::collections::BTreeMap::new();
    for f in all {
        let rel = f.strip_prefix(&src).unwrap();
        let mut m: ModPath = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let last = m.pop().unwrap();
        let stem = last.trim_end_matches(".rs").to_string();
        if m.is_empty() && (stem == "lib" || stem == "main") {
            continue;
        }
        if stem != "mod" {
            m.push(stem);
        }
        out.insert(m, std::fs::read_to_string(&f).unwrap());
    }
    out
}

/// The identifier starting at byte `i` of `text`, and where it ends.
fn ident_at(text: &str, i: usize) -> Option<(String, usize)> {
    let b = text.as_bytes();
    if i >= b.len() || !(b[i].is_ascii_alphabetic() || b[i] == b'_') {
        return None;
    }
    let mut e = i;
    while e < b.len() && (b[e].is_ascii_alphanumeric() || b[e] == b'_') {
        e += 1;
    }
    Some((text[i..e].to_string(), e))
}

/// The first byte from `i` on that is neither white space nor a comma (group separators).
fn skip_space(text: &str, mut i: usize) -> usize {
    let b = text.as_bytes();
    while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
        i += 1;
    }
    i
}

/// The paths written at byte `i` of `text` (just after `crate::`, `super::` or `self::`):
/// `a::b::C`, or a group `a::{b, c::{self, D as E}}`, each with its `as` name.
fn paths_at(text: &str, i: usize) -> Vec<(ModPath, Option<String>)> {
    fn rec(
        text: &str,
        mut i: usize,
        mut segs: ModPath,
        out: &mut Vec<(ModPath, Option<String>)>,
    ) -> usize {
        loop {
            if text[i..].starts_with('{') {
                i += 1;
                loop {
                    i = skip_space(text, i);
                    if i >= text.len() || text[i..].starts_with('}') {
                        return (i + 1).min(text.len());
                    }
                    let before = i;
                    i = rec(text, i, segs.clone(), out);
                    if i == before {
                        i += 1; // `*` and the like
                    }
                }
            }
            let Some((w, end)) = ident_at(text, i) else {
                out.push((segs, None));
                return i;
            };
            segs.push(w);
            i = end;
            if text[i..].starts_with("::") {
                i += 2;
                continue;
            }
            let j = skip_space(text, i);
            if j > i && text[j..].starts_with("as ") {
                if let Some((alias, e)) = ident_at(text, skip_space(text, j + 3)) {
                    out.push((segs, Some(alias)));
                    return e;
                }
            }
            out.push((segs, None));
            return i;
        }
    }
    let mut out = vec![];
    rec(text, i, vec![], &mut out);
    out
}

/// The paths that `text`, the file of module `m`, names by `crate::`, `super::` or `self::`
/// (doc links included), absolute, each with its `as` name and whether it is a `use`.
fn named_paths(m: &[String], text: &str) -> Vec<(ModPath, Option<String>, bool)> {
    let mut out = vec![];
    for kw in ["crate::", "super::", "self::"] {
        for (i, _) in text.match_indices(kw) {
            if i > 0 {
                let prev = text.as_bytes()[i - 1];
                if prev.is_ascii_alphanumeric() || prev == b'_' {
                    continue;
                }
            }
            let line_start = text[..i].rfind('\n').map_or(0, |n| n + 1);
            let head = text[line_start..i].trim();
            let is_use = ["use", "pub use", "pub(crate) use", "pub(super) use"].contains(&head);
            let mut base: ModPath = match kw {
                "crate::" => vec![],
                "self::" => m.to_vec(),
                _ => m[..m.len().saturating_sub(1)].to_vec(),
            };
            for (p, alias) in paths_at(text, i + kw.len()) {
                let mut p = &p[..];
                while p.first().is_some_and(|s| s == "super") {
                    base.pop();
                    p = &p[1..];
                }
                let mut full = base.clone();
                full.extend(p.iter().cloned());
                out.push((full, alias, is_use));
            }
        }
    }
    out
}

/// The children of each module that its files use, resolved through `use` re-exports (a
/// file naming `super::AttackSpec` uses the file that defines it, not the parent).
fn file_graphs(
    modules: &std::collections::BTreeMap<ModPath, String>,
) -> std::collections::BTreeMap<ModPath, Graph> {
    // What each module imports or re-exports, by the name it is known by there.
    let mut names: std::collections::BTreeMap<
        ModPath,
        std::collections::BTreeMap<String, ModPath>,
    > = Default::default();
    for (m, text) in modules {
        let entry = names.entry(m.clone()).or_default();
        for (full, alias, is_use) in named_paths(m, text) {
            if is_use && !full.is_empty() {
                let mut full = full;
                if full.last().is_some_and(|s| s == "self") {
                    full.pop();
                }
                if let Some(name) = alias.or_else(|| full.last().cloned()) {
                    entry.insert(name, full);
                }
            }
        }
        // `use child::X;` (relative to the module itself).
        for line in text.lines() {
            let l = line.trim_start();
            for head in ["use ", "pub use ", "pub(crate) use ", "pub(super) use "] {
                let Some(rest) = l.strip_prefix(head) else {
                    continue;
                };
                let Some((first, _)) = ident_at(rest, 0) else {
                    continue;
                };
                let mut child = m.clone();
                child.push(first.clone());
                if !modules.contains_key(&child) {
                    continue;
                }
                for (p, alias) in paths_at(rest, 0) {
                    let mut full = m.clone();
                    full.extend(p);
                    if full.last().is_some_and(|s| s == "self") {
                        full.pop();
                    }
                    if let Some(name) = alias.or_else(|| full.last().cloned()) {
                        entry.insert(name, full);
                    }
                }
            }
        }
    }
    fn resolve(
        r: ModPath,
        modules: &std::collections::BTreeMap<ModPath, String>,
        names: &std::collections::BTreeMap<ModPath, std::collections::BTreeMap<String, ModPath>>,
        depth: usize,
    ) -> ModPath {
        for k in (1..=r.len()).rev() {
            if modules.contains_key(&r[..k]) {
                if k < r.len() && depth < 8 {
                    if let Some(t) = names.get(&r[..k]).and_then(|n| n.get(&r[k])) {
                        if t[..] != r[..=k] {
                            let mut n = t.clone();
                            n.extend(r[k + 1..].iter().cloned());
                            return resolve(n, modules, names, depth + 1);
                        }
                    }
                }
                return r;
            }
        }
        r
    }
    let mut graphs: std::collections::BTreeMap<ModPath, Graph> = Default::default();
    for m in modules.keys().filter(|m| m.len() >= 2) {
        graphs
            .entry(m[..m.len() - 1].to_vec())
            .or_default()
            .entry(m[m.len() - 1].clone())
            .or_default();
    }
    for (m, text) in modules {
        for (r, _, _) in named_paths(m, text) {
            let r = resolve(r, modules, &names, 0);
            let k = m.iter().zip(&r).take_while(|(a, b)| a == b).count();
            // Within one module (k >= 1: the top level is [`LAYERS`]'), between two children.
            if k >= 1 && k < m.len() && k < r.len() && modules.contains_key(&r[..=k]) {
                graphs
                    .entry(m[..k].to_vec())
                    .or_default()
                    .entry(m[k].clone())
                    .or_default()
                    .insert(r[k].clone());
            }
        }
    }
    graphs
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
fn the_files_of_every_module_form_no_circle() {
    let graphs = file_graphs(&module_texts());
    // The scan sees the files and their uses (an empty graph would pass vacuously).
    for (module, from, to) in [
        ("attack", "spec", "pgd"),
        ("eval", "run", "autoattack"),
        ("study", "run", "plan"),
        ("bench", "parts", "subject"),
        ("cli/eval", "args", "attack"),
        ("nn", "hook", "models"),
        ("train", "run", "objectives"),
        ("train", "recipe", "objectives"),
        ("train", "objectives", "teacher"),
        ("train", "objectives", "step"),
        ("train/objectives", "mart", "trades"),
    ] {
        let key: ModPath = module.split('/').map(String::from).collect();
        let uses = graphs.get(&key).and_then(|g| g.get(from));
        assert!(
            uses.is_some_and(|u| u.contains(to)),
            "src/{module}: expected {from} to use {to}, got {uses:?}"
        );
    }
    let circles: Vec<String> = graphs
        .iter()
        .filter_map(|(m, g)| {
            find_circle(g).map(|c| format!("src/{}: {}", m.join("/"), c.join(" -> ")))
        })
        .collect();
    assert!(
        circles.is_empty(),
        "files that use each other in a circle (move what they share into the lower one):\n{}",
        circles.join("\n")
    );
}

#[test]
fn a_circle_through_a_re_export_or_a_doc_link_is_found() {
    let m = |p: &str, t: &str| {
        (
            p.split('/').map(String::from).collect::<ModPath>(),
            t.to_string(),
        )
    };
    let modules: std::collections::BTreeMap<ModPath, String> = [
        m(
            "top",
            "pub mod a;\npub mod b;\npub mod c;\npub use b::{Bee, Other as B2};\n",
        ),
        m("top/a", "use super::B2;\n"),
        m("top/b", "/// See [`crate::top::a::f`].\npub struct Bee;\n"),
        m(
            "top/c",
            "use super::{a::{self, X}, b::Y as Z};\nfn f() { super::super::top::a::g() }\n",
        ),
    ]
    .into_iter()
    .collect();
    let g = &file_graphs(&modules)[&vec!["top".to_string()]];
    assert_eq!(g["a"], BTreeSet::from(["b".to_string()]));
    assert_eq!(g["b"], BTreeSet::from(["a".to_string()]));
    assert_eq!(g["c"], BTreeSet::from(["a".to_string(), "b".to_string()]));
    let c = find_circle(g).expect("a -> b -> a");
    assert_eq!(c.len(), 3);
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
