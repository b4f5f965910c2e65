//! The CLI contract end to end on tiny synthetic data, and its errors on bad input.

use crate::common;

use common::{advtrain, stderr};

use std::path::Path;

fn setup(dir: &Path) -> String {
    let file = common::tiny_recipe_file(dir, "recipe.toml", 160, 50, 2);
    file.display().to_string()
}

#[test]
fn train_then_eval_writes_the_contracted_json() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path());
    let run = tmp.path().join("run");
    let run_s = run.display().to_string();
    let o = advtrain(&[
        "train",
        "--recipe",
        &recipe,
        "--out",
        &run_s,
        "--epochs",
        "1",
        "--set",
        "train.attack.steps=1",
        "--seed",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let saved = std::fs::read_to_string(run.join("recipe.toml")).unwrap();
    assert!(
        saved.contains("seed = 3") && saved.contains("epochs = 1") && saved.contains("steps = 1"),
        "{saved}"
    );
    assert!(
        saved.contains("attack_bn_mode = \"eval\""),
        "BN mode is stored: {saved}"
    );
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(csv.starts_with(
        "epoch,lr,train_loss,train_clean_acc,train_adv_acc,val_clean_acc,val_pgd_acc,images_per_s"
    ));

    let json = tmp.path().join("eval.json");
    let o = advtrain(&[
        "eval",
        "--run",
        &run_s,
        "--attack",
        "pgd",
        "--eps",
        "0.1",
        "--steps",
        "3",
        "--restarts",
        "2",
        "--test-limit",
        "30",
        "--json",
        &json.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for k in [
        "clean_accuracy",
        "robust_accuracy",
        "attack",
        "eps",
        "norm",
        "n",
        "seed",
        "route",
        "bn_mode",
        "elapsed_s",
    ] {
        assert!(v.get(k).is_some(), "{k} missing in {v}");
    }
    assert_eq!(v["n"], 30);
    assert_eq!(v["bn_mode"], "eval");
    let (c, r) = (
        v["clean_accuracy"].as_f64().unwrap(),
        v["robust_accuracy"].as_f64().unwrap(),
    );
    assert!((0.0..=1.0).contains(&c) && r <= c, "clean {c} robust {r}");

    // The other attacks run through the same contract.
    for (attack, extra) in [
        ("apgd-ce", "--steps=5"),
        ("apgd-t", "--steps=3"),
        ("square", "--queries=20"),
        ("fgsm", "--steps=1"),
    ] {
        let j = tmp.path().join(format!("{attack}.json"));
        let o = advtrain(&[
            "eval",
            "--run",
            &run_s,
            "--attack",
            attack,
            "--eps",
            "0.1",
            extra,
            "--test-limit",
            "20",
            "--json",
            &j.display().to_string(),
        ]);
        assert!(o.status.success(), "{attack}: {}", stderr(&o));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
        let (c, r) = (
            v["clean_accuracy"].as_f64().unwrap(),
            v["robust_accuracy"].as_f64().unwrap(),
        );
        assert!(r <= c && v["attack_config"].is_object(), "{attack}: {v}");
    }

    // The new attacks, through the same contract; per_attack and flags are always present.
    for (attack, extra) in [
        ("pgd-t", "--steps=3"),
        ("pgd-kl", "--steps=3"),
        ("fab-t", "--steps=5"),
    ] {
        let j = tmp.path().join(format!("{attack}.json"));
        let o = advtrain(&[
            "eval",
            "--run",
            &run_s,
            "--attack",
            attack,
            "--eps",
            "0.1",
            extra,
            "--test-limit",
            "20",
            "--json",
            &j.display().to_string(),
        ]);
        assert!(o.status.success(), "{attack}: {}", stderr(&o));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
        assert_eq!(
            v["per_attack"].as_array().unwrap().len(),
            1,
            "{attack}: {v}"
        );
        assert!(v["flags"].is_array(), "{attack}: {v}");
        assert!(v["robust_accuracy"].as_f64().unwrap() <= v["clean_accuracy"].as_f64().unwrap());
    }

    // AutoAttack (fast preset, to keep the test short): per-attack table, non-standard flag,
    // preset printed at start, and a state file that a second call continues from.
    let j = tmp.path().join("aa.json");
    let aa_args = [
        "eval",
        "--run",
        &run_s,
        "--attack",
        "autoattack",
        "--preset",
        "fast",
        "--eps",
        "0.1",
        "--test-limit",
        "20",
        "--batch-size",
        "8",
        "--json",
        &j.display().to_string(),
    ];
    let mut first = aa_args.to_vec();
    first.extend(["--max-batches", "1"]);
    let o = advtrain(&first);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("NOT standard"), "{}", stderr(&o));
    assert!(tmp.path().join("aa.state.json").exists());
    let o = advtrain(&aa_args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("continuing autoattack-fast"),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    let per = v["per_attack"].as_array().unwrap();
    assert_eq!(per.len(), 2, "{v}");
    assert_eq!(per[0]["attack"], "apgd-ce");
    assert_eq!(per[1]["attack"], "apgd-t");
    assert_eq!(v["attack"], "autoattack-fast");
    assert_eq!(v["robust_accuracy"], per[1]["robust_accuracy"]);
    let codes: Vec<&str> = v["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"non-standard-autoattack"), "{codes:?}");

    // A curve over eps: JSON with one point per eps, and a PNG plot.
    let j = tmp.path().join("curve.json");
    let o = advtrain(&[
        "eval",
        "--run",
        &run_s,
        "--attack",
        "pgd",
        "--steps",
        "3",
        "--eps",
        "0.1",
        "--curve",
        "0,0.05,0.2",
        "--test-limit",
        "20",
        "--json",
        &j.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    let pts = v["points"].as_array().unwrap();
    assert_eq!(pts.len(), 3, "{v}");
    assert_eq!(pts[2]["eps"], 0.2);
    let png = std::fs::read(tmp.path().join("curve.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // Bad input on a real run: empty test set, unknown preset, a checkpoint whose sidecar
    // names another architecture.
    for (args, needle) in [
        (
            vec![
                "eval",
                "--run",
                &run_s,
                "--attack",
                "pgd",
                "--eps",
                "0.1",
                "--test-limit",
                "0",
            ],
            "empty",
        ),
        (
            vec![
                "eval",
                "--run",
                &run_s,
                "--attack",
                "autoattack",
                "--preset",
                "plus",
                "--eps",
                "0.1",
            ],
            "unknown AutoAttack preset",
        ),
        (
            vec![
                "eval", "--run", &run_s, "--attack", "pgd", "--eps", "0.1", "--curve", "0.1,-1",
            ],
            "eps",
        ),
    ] {
        let o = advtrain(&args);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    }
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(
        run.join("checkpoints/last.safetensors"),
        bad.join("m.safetensors"),
    )
    .unwrap();
    let side = std::fs::read_to_string(run.join("checkpoints/last.json")).unwrap();
    let mut sv: serde_json::Value = serde_json::from_str(&side).unwrap();
    sv["architecture"]["num_classes"] = 7.into();
    std::fs::write(bad.join("m.json"), sv.to_string()).unwrap();
    let o = advtrain(&[
        "eval",
        "--checkpoint",
        &bad.join("m.safetensors").display().to_string(),
        "--attack",
        "pgd",
        "--eps",
        "0.1",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("m.safetensors") && !stderr(&o).contains("panicked"),
        "{}",
        stderr(&o)
    );

    // Resuming with a changed recipe is refused, naming the difference.
    let o = advtrain(&[
        "train",
        "--recipe",
        &recipe,
        "--out",
        &run_s,
        "--resume",
        "--epochs",
        "2",
        "--set",
        "train.lr=0.5",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("lr = 0.5"), "{}", stderr(&o));
    // Resuming with only more epochs continues.
    let o = advtrain(&["train", "--out", &run_s, "--resume", "--epochs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.csv"))
            .unwrap()
            .lines()
            .count(),
        3
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path());
    // An existing run directory without a checkpoint (a failed start leaves none behind: the
    // data is loaded before anything is written).
    std::fs::create_dir_all(tmp.path().join("run")).unwrap();
    let run = tmp.path().join("run").display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "train",
                "--recipe",
                &recipe,
                "--out",
                &run,
                "--set",
                "train.batch_size=0",
            ],
            "train.batch_size",
        ),
        (
            vec![
                "train",
                "--recipe",
                &recipe,
                "--out",
                &run,
                "--set",
                "train.bogus=1",
            ],
            "bogus",
        ),
        (
            vec![
                "train",
                "--recipe",
                &recipe,
                "--out",
                &run,
                "--set",
                "train.attack.eps=-1",
            ],
            "train.attack.eps",
        ),
        (
            vec![
                "train",
                "--recipe",
                &recipe,
                "--out",
                &run,
                "--set",
                "model.num_classes=7",
            ],
            "num_classes",
        ),
        (
            vec![
                "train",
                "--recipe",
                &recipe,
                "--out",
                &run,
                "--set",
                "data.dir=\"/nonexistent/fmnist\"",
            ],
            "/nonexistent/fmnist",
        ),
        (
            vec![
                "train", "--recipe", &recipe, "--out", &run, "--device", "tpu",
            ],
            "unknown device",
        ),
        (
            vec!["train", "--recipe", "/nonexistent.toml"],
            "/nonexistent.toml",
        ),
        (
            vec!["eval", "--run", &run, "--attack", "pgd", "--eps", "-0.1"],
            "--eps",
        ),
        (
            vec![
                "eval", "--run", &run, "--attack", "deepfool", "--eps", "0.1",
            ],
            "unknown attack",
        ),
        (
            vec!["eval", "--run", &run, "--attack", "pgd", "--eps", "0.1"],
            "sidecar",
        ),
    ];
    for (args, needle) in cases {
        let o = advtrain(&args);
        assert!(!o.status.success(), "{args:?} should fail");
        let e = stderr(&o);
        assert!(e.contains(needle), "{args:?}: expected '{needle}' in: {e}");
        assert!(!e.contains("panicked"), "{args:?} panicked: {e}");
    }
}
