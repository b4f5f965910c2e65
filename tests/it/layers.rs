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
