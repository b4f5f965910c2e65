//! Evaluating models advtrain did not train (issue 15): TorchScript modules (`--torchscript`),
//! PyTorch state dicts of our architectures (`--checkpoint sd.safetensors --arch`), points
//! files (`--data FILE.safetensors`), `export --torchscript`, model cards, sharded evaluation
//! and `advtrain merge`, and their bad inputs. The TorchScript modules, state dicts and broken
//! files are made at test time by the venv's Python (`tests/data/own_models.py`).

mod common;

use common::{advtrain, read_json, stderr};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn python() -> PathBuf {
    let venv = std::env::var_os("ADVTRAIN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    venv.join("bin/python")
}

/// Run tests/data/own_models.py with `args`.
fn py(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/own_models.py");
    let o = std::process::Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
    assert!(
        o.status.success(),
        "own_models.py {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A tiny MNIST-like data set (60 test points), an advtrain run of the confident small-cnn on
/// it, its TorchScript export and its points file.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
    ckpt: PathBuf,
    script: PathBuf,
    points: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let data = dir.join("data");
    common::write_tiny_mnist(&data, 20, 60);
    let net = {
        let _g = common::rng_lock();
        common::confident_small_cnn()
    };
    let run = dir.join("run");
    common::save_run(&run, &data, &net);
    let ckpt = run.join("checkpoints/last.safetensors");
    let script = dir.join("model.pt");
    let o = advtrain(&[
        "export",
        "--checkpoint",
        s(&ckpt),
        "--torchscript",
        s(&script),
    ]);
    assert!(o.status.success(), "export: {}", stderr(&o));
    // The test split as a points file (uint8 x, int64 y).
    let test = advtrain::data::DataSpec {
        dataset: advtrain::data::DatasetName::Mnist,
        dir: Some(data.clone()),
        val_size: 0,
        split_seed: 0,
        train_limit: None,
        test_limit: None,
        crop_padding: 0,
        hflip: false,
    }
    .load_test()
    .unwrap();
    let points = dir.join("points.safetensors");
    Tensor::write_safetensors(
        &[("x", &test.images), ("y", &test.labels)],
        &points,
    )
    .unwrap();
    Fixture {
        _tmp: tmp,
        dir,
        data,
        ckpt,
        script,
        points,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `advtrain --threads 1 --no-fold-bn eval ARGS --json OUT` (asserting success); the report.
/// BN folding is off so that our forward is the same computation as the traced one.
fn eval(args: &[&str], out: &Path) -> Value {
    let mut full = vec!["--threads", "1", "--no-fold-bn", "eval"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--device", "cpu", "--json", s(out)]);
    let o = advtrain(&full);
    assert!(o.status.success(), "eval {args:?}: {}", stderr(&o));
    read_json(out)
}

/// `eval ARGS` expected to fail; its stderr.
fn eval_fails(args: &[&str]) -> String {
    let mut full = vec!["--threads", "1", "eval"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--device", "cpu"]);
    let o = advtrain(&full);
    assert!(!o.status.success(), "eval {args:?} succeeded");
    let e = stderr(&o);
    assert!(!e.contains("panicked"), "eval {args:?} panicked: {e}");
    e
}

/// The fields that must agree between two reports of the same evaluation of the same model
/// (not the model file, its format or its hash).
fn same_verdicts(a: &Value, b: &Value) {
    for k in [
        "clean_accuracy",
        "robust_accuracy",
        "clean_points",
        "robust_points",
        "n",
        "attack",
        "attack_config",
    ] {
        assert_eq!(a[k], b[k], "{k} differs");
    }
    let per = |v: &Value| -> Vec<(Value, Value)> {
        v["per_attack"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["attack"].clone(), p["robust_correct"].clone()))
            .collect()
    };
    assert_eq!(per(a), per(b), "per-attack rows differ");
}

#[test]
fn torchscript_export_and_state_dict_give_the_native_verdicts() {
    let f = fixture();
    // PyTorch loads the export and computes our logits.
    let logits = f.dir.join("logits.safetensors");
    py(&["check-export", s(&f.script), s(&f.points), s(&logits)]);
    let theirs = Tensor::read_safetensors(&logits).unwrap().remove(0).1;
    let net = advtrain::checkpoint::load(&f.ckpt, Device::Cpu).unwrap().net;
    let x = advtrain::data::points::load_points(&f.points, None).unwrap();
    let ours = tch::no_grad(|| {
        net.model.forward(
            &(x.images.to_kind(Kind::Float) / 255.0),
            &advtrain::nn::Ctx::eval(),
        )
    });
    let diff = (&ours - &theirs).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "torch.jit.load logits differ from ours by {diff}");
    assert!(ours.std(true).double_value(&[]) > 0.1, "degenerate logits");

    // Its PyTorch state dict under DataParallel/RobustBench names.
    let sd = f.dir.join("sd.safetensors");
    py(&["state-dict", s(&f.ckpt), s(&sd)]);

    let data_dir = s(&f.data);
    for attack in [
        vec!["--attack", "pgd", "--eps", "8/255"],
        vec!["--attack", "autoattack", "--eps", "0.1"],
    ] {
        let common = [attack.as_slice(), &["--batch-size", "25", "--seed", "1"]].concat();
        let native = eval(
            &[&["--checkpoint", s(&f.ckpt)], common.as_slice()].concat(),
            &f.dir.join("native.json"),
        );
        let ts = eval(
            &[
                &["--torchscript", s(&f.script), "--data", "mnist", "--data-dir", data_dir],
                common.as_slice(),
            ]
            .concat(),
            &f.dir.join("ts.json"),
        );
        let ts_points = eval(
            &[
                &["--torchscript", s(&f.script), "--data", s(&f.points)],
                common.as_slice(),
            ]
            .concat(),
            &f.dir.join("ts_points.json"),
        );
        let state_dict = eval(
            &[
                &["--checkpoint", s(&sd), "--arch", "small-cnn", "--data", s(&f.points)],
                common.as_slice(),
            ]
            .concat(),
            &f.dir.join("sd.json"),
        );
        // Not all robust, not all broken: the verdicts carry information.
        let robust = native["robust_points"].as_str().unwrap();
        let clean = native["clean_points"].as_str().unwrap();
        assert_eq!(robust.len(), 60);
        assert!(clean.contains('1'), "no clean point correct");
        same_verdicts(&native, &ts);
        same_verdicts(&native, &ts_points);
        same_verdicts(&native, &state_dict);
        assert_eq!(ts["model_format"], "torchscript");
        assert_eq!(state_dict["model_format"], "state-dict");
        assert_eq!(native["model_format"], "advtrain");
        assert_eq!(ts["data_sha256"], native["data_sha256"]);
        assert_eq!(ts["route"], "none");
        if attack[1] == "pgd" {
            assert_eq!(native["eps"].as_f64().unwrap(), 8.0 / 255.0);
        } else {
            let per: Vec<&str> = native["per_attack"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["attack"].as_str().unwrap())
                .collect();
            assert_eq!(per, ["apgd-ce", "apgd-t", "fab-t", "square"]);
        }
    }
}
