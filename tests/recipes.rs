//! Every recipe shipped under recipes/ parses, validates, and builds its model (with ARAT
//! predictors on the named hooks), so a typo in a generated recipe fails CI.

use advtrain::nn::Network;
use advtrain::train::objectives::Objective;
use advtrain::train::recipe::Recipe;
use std::path::Path;
use tch::Device;

fn recipes(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            recipes(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
}

#[test]
fn every_shipped_recipe_loads_and_builds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut files = vec![];
    recipes(&root, &mut files);
    files.sort();
    assert!(files.len() >= 40, "found only {} recipes", files.len());
    let mut built = std::collections::HashMap::new();
    for f in &files {
        let r = Recipe::load(f, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
        // Build each distinct architecture once (ResNet-18 is large), then check the hooks.
        let key = serde_json::to_string(&r.model).unwrap();
        let net = built.entry(key).or_insert_with(|| {
            Network::new(&r.model, Device::Cpu).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()))
        });
        if let Objective::Arat(o) = &r.train.objective {
            net.check_hooks(&o.arat.hooks, "train.arat.hooks")
                .unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
        }
    }
}
