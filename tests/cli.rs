//! The CLI contract end to end on tiny synthetic data, and its errors on bad input.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn advtrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_advtrain"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn setup(dir: &Path) -> String {
    common::write_tiny_mnist(&dir.join("data"), 160, 50);
    let file = dir.join("recipe.toml");
    std::fs::write(&file, common::tiny_recipe_toml(&dir.join("data"), 2)).unwrap();
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
