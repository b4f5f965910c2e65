//! The eval JSON contract: the files `advtrain eval` writes keep every field of the stored
//! examples in `tests/data/eval_contract/` (recorded from the code before the library
//! refactor of issue 14), with the same types, the same strings and the same verdicts. Fields
//! may be added, never renamed or dropped. Times, paths and the version are not compared.
//!
//! Re-record (only when a field is added on purpose): `ADVTRAIN_RECORD_CONTRACT=1 cargo test
//! --release --test it eval_contract::`.

use crate::common;

use serde_json::Value;
use std::path::{Path, PathBuf};

/// The evaluations whose JSON is part of the contract: (name, arguments after the checkpoint).
const CASES: &[(&str, &[&str])] = &[
    ("pgd", &["--attack", "pgd", "--eps", "0.1", "--steps", "5"]),
    ("fgsm", &["--attack", "fgsm", "--eps", "0.1"]),
    (
        "pgd-l2",
        &[
            "--attack", "pgd", "--eps", "0.5", "--norm", "l2", "--steps", "3",
        ],
    ),
    (
        "apgd-ce",
        &["--attack", "apgd-ce", "--eps", "0.1", "--steps", "5"],
    ),
    (
        "square",
        &["--attack", "square", "--eps", "0.1", "--queries", "30"],
    ),
    (
        "curve",
        &[
            "--attack", "pgd", "--eps", "0.1", "--steps", "3", "--curve", "0.05,0.1",
        ],
    ),
    (
        "curve-steps",
        &["--attack", "pgd", "--eps", "0.1", "--curve-steps", "1,3"],
    ),
    (
        "autoattack-fast",
        &["--attack", "autoattack", "--preset", "fast", "--eps", "0.1"],
    ),
    (
        "bn-train-frozen",
        &[
            "--attack",
            "pgd",
            "--eps",
            "0.1",
            "--steps",
            "3",
            "--bn-mode",
            "train-frozen",
        ],
    ),
];

/// Keys whose values depend on the machine, the time or the temporary folder.
fn volatile(key: &str) -> bool {
    key.contains("time")
        || key.contains("sha256")
        || key.contains("elapsed")
        || key.ends_with("_s")
        || key.contains("per_s")
        || matches!(
            key,
            "checkpoint"
                | "json"
                | "state"
                | "state_file"
                | "advtrain_version"
                | "device"
                | "png"
                | "data_dir"
                | "dir"
                | "path"
                | "plot"
                | "threads"
                | "file"
        )
}

/// Every field of `want` is in `got` with the same type; strings and booleans equal; numbers
/// within `tol` (verdict counts and accuracies of this tiny fixture are stable to rounding).
fn contains(want: &Value, got: &Value, path: &str, errors: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let p = format!("{path}.{k}");
                match g.get(k) {
                    None => errors.push(format!("{p}: missing")),
                    Some(_) if volatile(k) => {}
                    Some(gv) => contains(wv, gv, &p, errors),
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                errors.push(format!(
                    "{path}: {} elements, expected {}",
                    g.len(),
                    w.len()
                ));
            }
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                contains(wv, gv, &format!("{path}[{i}]"), errors);
            }
        }
        (Value::Number(w), Value::Number(g)) => {
            let (w, g) = (w.as_f64().unwrap(), g.as_f64().unwrap());
            if (w - g).abs() > 1e-6 * (1.0 + w.abs()) {
                errors.push(format!("{path}: {g}, expected {w}"));
            }
        }
        (w, g) if std::mem::discriminant(w) != std::mem::discriminant(g) => {
            errors.push(format!("{path}: {g}, expected a value like {w}"))
        }
        (w, g) => {
            if w != g {
                errors.push(format!("{path}: {g}, expected {w}"));
            }
        }
    }
}

fn contract_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/eval_contract")
}

#[test]
fn eval_json_keeps_every_field_of_the_stored_examples() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_tiny_mnist(&data, 40, 60);
    let run = tmp.path().join("run");
    {
        let _g = common::rng_lock();
        let net = common::confident_small_cnn();
        common::save_run(&run, &data, &net);
    }
    let ck = run.join("checkpoints/last.safetensors");
    let record = std::env::var("ADVTRAIN_RECORD_CONTRACT").is_ok();
    let mut errors = Vec::new();
    for (name, args) in CASES {
        let out = tmp.path().join(format!("{name}.json"));
        let mut full = vec![
            "--threads",
            "1",
            "eval",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--test-limit",
            "30",
            "--batch-size",
            "16",
            "--json",
            out.to_str().unwrap(),
        ];
        full.extend_from_slice(args);
        let o = common::advtrain(&full);
        assert!(o.status.success(), "{name}: {}", common::stderr(&o));
        let got = common::read_json(&out);
        let stored = contract_dir().join(format!("{name}.json"));
        if record {
            std::fs::create_dir_all(contract_dir()).unwrap();
            std::fs::write(&stored, serde_json::to_string_pretty(&got).unwrap()).unwrap();
            continue;
        }
        let want = common::read_json(&stored);
        contains(&want, &got, name, &mut errors);
    }
    assert!(
        errors.is_empty(),
        "eval JSON contract broken:\n{}",
        errors.join("\n")
    );
}

/// The comparison itself can fail: a renamed field, a changed verdict and a changed type are
/// all reported.
#[test]
fn the_contract_check_detects_renames_and_changes() {
    let want = serde_json::json!({"a": 1.0, "b": {"c": "x", "n": [1, 2]}, "elapsed_s": 3.0});
    let mut errors = Vec::new();
    let got =
        serde_json::json!({"a": 1.0, "b": {"c": "x", "n": [1, 2], "new": 1}, "elapsed_s": 9.0});
    contains(&want, &got, "", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    for bad in [
        serde_json::json!({"a": 1.0, "b": {"c2": "x", "n": [1, 2]}, "elapsed_s": 3.0}),
        serde_json::json!({"a": 0.9, "b": {"c": "x", "n": [1, 2]}, "elapsed_s": 3.0}),
        serde_json::json!({"a": "1", "b": {"c": "x", "n": [1, 2]}, "elapsed_s": 3.0}),
        serde_json::json!({"a": 1.0, "b": {"c": "x", "n": [1]}, "elapsed_s": 3.0}),
    ] {
        let mut errors = Vec::new();
        contains(&want, &bad, "", &mut errors);
        assert!(!errors.is_empty(), "{bad} passed");
    }
}

/// Checkpoints written before the library refactor (recipe format version 1, sidecars without
/// `recipe_version`; files made by advtrain at commit 64a9e5d with `train --recipe
/// recipes/fmnist/{trades-dual-bn,arat}.toml --train-limit 128 --test-limit 32 --epochs 1`,
/// `checkpoints/best.*` copied) load with their typed recipe and evaluate.
#[test]
fn checkpoints_of_the_first_recipe_format_still_load() {
    use advtrain::train::saved::load_run;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/checkpoint-v1");
    let tmp = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(&tmp.path().join("data"), 20, 30);
    for (name, objective) in [("trades-dual-bn", "trades"), ("arat", "arat")] {
        let file = dir.join(format!("{name}.safetensors"));
        let text = std::fs::read_to_string(file.with_extension("json")).unwrap();
        assert!(
            !text.contains("recipe_version"),
            "{name}: not a first-format sidecar"
        );
        // Building the network draws its initial weights from torch's global generator.
        let run = {
            let _g = common::rng_lock();
            load_run(&file, tch::Device::Cpu).unwrap()
        };
        assert_eq!(run.checkpoint.sidecar.recipe_version, 1);
        let r = &run.recipe;
        assert_eq!(r.train.objective.name(), objective, "{name}");
        assert_eq!(r.model.norm.ns_domains, 2, "{name}: Dual BN");
        assert_eq!(r.data.train_limit, Some(128));
        use advtrain::train::objectives::Objective;
        match &r.train.objective {
            Objective::Arat(a) => assert_eq!(a.arat.hooks, r.model.predictors),
            Objective::Trades(t) => assert_eq!(t.trades_beta, 6.0),
            o => panic!("{name}: {}", o.name()),
        }
        let out = tmp.path().join(format!("{name}.json"));
        let o = common::advtrain(&[
            "--threads",
            "1",
            "eval",
            "--checkpoint",
            file.to_str().unwrap(),
            "--data-dir",
            tmp.path().join("data").to_str().unwrap(),
            "--test-limit",
            "30",
            "--attack",
            "pgd",
            "--eps",
            "0.1",
            "--steps",
            "3",
            "--route",
            "adv",
            "--json",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{name}: {}", common::stderr(&o));
        assert_eq!(common::read_json(&out)["route"], "ns=adv,ap=adv");
    }
}
