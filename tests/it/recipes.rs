//! Every recipe shipped under recipes/ parses, validates, and builds its model (with ARAT
//! predictors on the named hooks), so a typo in a generated recipe fails CI.

use crate::common;

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
    let _rng = common::rng_shared();
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

/// `Recipe::to_toml()` of every shipped recipe, resolved, loads back to an equal recipe, and no
/// shipped recipe holds a key its objective ignores.
#[test]
fn every_shipped_recipe_round_trips_through_its_resolved_toml() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut files = vec![];
    recipes(&root, &mut files);
    files.sort();
    let tmp = tempfile::tempdir().unwrap();
    for f in &files {
        let (r, ignored) = Recipe::load_noting(f, &[]).unwrap();
        assert!(ignored.is_empty(), "{}: {ignored:?}", f.display());
        let back = tmp.path().join("resolved.toml");
        std::fs::write(&back, r.to_toml()).unwrap();
        let again = Recipe::load(&back, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", f.display()));
        assert_eq!(again, r, "{}: resolved:\n{}", f.display(), r.to_toml());
        // The sidecar form (JSON) too.
        let json = serde_json::to_value(&r).unwrap();
        let from_json: Recipe = serde_json::from_value(json).unwrap();
        assert_eq!(from_json, r, "{}", f.display());
    }
}

/// Resolved recipes of the earlier `[train]` layout (every objective's settings in every
/// recipe): `recipe.toml` and the checkpoint sidecar's `recipe` of runs trained before objectives
/// became data (tests/data/legacy_recipes, one per objective, with AWP and SWA). Each loads, to
/// the settings it holds: the new resolved form has the same values for every key it writes and
/// leaves out only keys of the earlier layout the objective never read (at their default
/// values, so nothing is noted); the sidecar gives the same recipe; and it equals the shipped
/// recipe resolved with the run's command-line settings (so `--resume` accepts it).
#[test]
fn earlier_layout_recipes_load_to_the_same_settings() {
    use advtrain::train::objectives::legacy;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/legacy_recipes");
    let limits = [
        "train.epochs=2",
        "data.train_limit=256",
        "data.test_limit=64",
    ];
    let teacher = "train.mixacm.teacher=\"runs/fmnist-teacher/checkpoints/best.safetensors\"";
    let cases: [(&str, &str, &[&str]); 11] = [
        ("pgd-at", "fmnist-small-cnn-pgd-at.toml", &[]),
        ("hybrid-r25", "fmnist/e1-single-r25.toml", &[]),
        ("advprop", "fmnist/advprop.toml", &[]),
        ("standard", "fmnist/e8-clean.toml", &[]),
        ("trades-dual-bn", "fmnist/trades-dual-bn.toml", &[]),
        ("mart", "fmnist/mart.toml", &[]),
        ("fgsm-rs", "fmnist/fgsm-rs.toml", &[]),
        ("arat", "fmnist/arat.toml", &[]),
        (
            "swa-arat",
            "fmnist/arat.toml",
            &["train.swa={start_epoch=0, bn_batches=2}"],
        ),
        ("awp-trades", "fmnist/awp-trades.toml", &[]),
        (
            "mixacm-proj",
            "fmnist/mixacm-mixup-kd-acm.toml",
            &[teacher, "train.mixacm.pairs=[[0,1],[1,2]]"],
        ),
    ];
    for (name, shipped, sets) in cases {
        let file = dir.join(format!("{name}.toml"));
        let (r, ignored) =
            Recipe::load_noting(&file, &[]).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(ignored.is_empty(), "{name}: {ignored:?}");
        let old: toml::Value = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let new = toml::Value::try_from(&r).unwrap();
        let (old, new) = (old.as_table().unwrap(), new.as_table().unwrap());
        for (k, v) in new {
            if k == "compute" {
                // Keys added since (with their defaults, which the earlier code had implicitly).
                let added = [("tf32", "\"pytorch\""), ("deterministic", "false")];
                let (o, n) = (old[k].as_table().unwrap(), v.as_table().unwrap());
                for (kk, vv) in n {
                    match added.iter().find(|(a, _)| a == kk) {
                        Some((_, d)) if !o.contains_key(kk) => {
                            assert_eq!(vv.to_string(), *d, "{name}: compute.{kk}")
                        }
                        _ => assert_eq!(Some(vv), o.get(kk), "{name}: compute.{kk}"),
                    }
                }
                assert!(o.keys().all(|kk| n.contains_key(kk)), "{name}: compute");
            } else if k != "train" {
                assert_eq!(Some(v), old.get(k), "{name}: {k}");
            }
        }
        assert_eq!(
            old.keys().collect::<Vec<_>>(),
            new.keys().collect::<Vec<_>>(),
            "{name}"
        );
        let (ot, nt) = (
            old["train"].as_table().unwrap(),
            new["train"].as_table().unwrap(),
        );
        for (k, v) in nt {
            assert_eq!(Some(v), ot.get(k), "{name}: train.{k}");
        }
        for k in ot.keys().filter(|k| !nt.contains_key(*k)) {
            assert!(
                legacy::KEYS.contains(&k.as_str()),
                "{name}: train.{k} dropped"
            );
            assert!(
                !r.train.objective.keys().contains(&k.as_str()),
                "{name}: train.{k} is read by {}",
                r.train.objective.name()
            );
        }
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.sidecar.json"))).unwrap(),
        )
        .unwrap();
        let from_json: Recipe = serde_json::from_value(json).unwrap();
        assert_eq!(from_json, r, "{name}: sidecar");
        let overrides: Vec<String> = limits.iter().chain(sets).map(|s| s.to_string()).collect();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
        let fresh = Recipe::load(&root.join(shipped), &overrides).unwrap();
        assert_eq!(fresh, r, "{name}: vs {shipped}");
    }
}

/// Errors name the field: an objective's missing, unknown or mistyped key, and `[train.mixacm]`
/// with another objective (as before objectives became data).
#[test]
fn objective_key_errors_name_the_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let f = root.join("fmnist-small-cnn-pgd-at.toml");
    let err = |sets: &[&str]| {
        let s: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        format!("{:#}", Recipe::load(&f, &s).unwrap_err())
    };
    let e = err(&["train.attack=\"none\""]);
    assert!(e.contains("train.attack: invalid type"), "{e}");
    let e = err(&["train.attack.stepz=3"]);
    assert!(e.contains("train.attack: unknown field `stepz`"), "{e}");
    let e = err(&["train.epochz=3"]);
    assert!(
        e.contains("train.epochz: unknown field for objective pgd-at") && e.contains("`epochs`"),
        "{e}"
    );
    let e = err(&["train.epochs=\"two\""]);
    assert!(
        e.contains("[train] epochs = \"two\"") && e.contains("expected usize"),
        "{e}"
    );
    let e = err(&["train.objective=\"arat\""]);
    assert!(
        e.contains("train.arat is required for objective arat"),
        "{e}"
    );
    let e = err(&["train.objective=\"pgd\""]);
    assert!(
        e.contains("unknown variant `pgd`") && e.contains("`pgd-at`"),
        "{e}"
    );
    let e = err(&["train.mixacm={ teacher = \"t.safetensors\" }"]);
    assert!(
        e.contains("[train.mixacm] is only used by objective mixacm"),
        "{e}"
    );
    let m = root.join("fmnist/mixacm-mixup-only.toml");
    let e = format!(
        "{:#}",
        Recipe::load(&m, &["train.objective=\"pgd-at\"".into()]).unwrap_err()
    );
    assert!(
        e.contains("train.attack is required for objective pgd-at"),
        "{e}"
    );
    // A key of the earlier layout the objective does not read: type-checked, then dropped.
    let e = err(&["train.trades_beta=\"six\""]);
    assert!(e.contains("train.trades_beta: invalid type"), "{e}");
}

/// The common-key list used in error messages matches `[train]`'s fields.
#[test]
fn common_train_keys_are_the_train_fields() {
    use advtrain::train::recipe::TrainSpec;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let r = Recipe::load(
        &root.join("fmnist/fgsm-rs.toml"),
        &[
            "train.awp={gamma=0.01}".into(),
            "train.swa={start_epoch=1}".into(),
        ],
    )
    .unwrap();
    let v = toml::Value::try_from(&r.train).unwrap();
    let mut keys: Vec<&str> = v
        .as_table()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "objective" && !r.train.objective.keys().contains(k))
        .collect();
    keys.sort();
    let mut want = TrainSpec::COMMON_KEYS.to_vec();
    want.sort();
    assert_eq!(keys, want);
}
