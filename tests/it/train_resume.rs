//! Runs on tiny synthetic data: a killed run resumed from its checkpoint ends identical to an
//! uninterrupted one; checkpoints round-trip and reject mismatches; the run directory is complete.

use crate::common;

use advtrain::nn::{ArchSpec, Ctx, Network};
use advtrain::train::{self, checkpoint, Recipe, RunOptions};
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn recipe(dir: &Path, epochs: usize) -> Recipe {
    let text = common::tiny_recipe_toml(&dir.join("data"), epochs);
    common::load_recipe(&dir.join("recipe.toml"), &text)
}

fn model_tensors(run: &Path) -> std::collections::HashMap<String, Tensor> {
    checkpoint::read_tensors(&run.join("checkpoints/last.safetensors")).unwrap()
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let _rng = common::rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(&tmp.path().join("data"), 200, 60);
    let r = recipe(tmp.path(), 3);
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let full = train::train(
        &r,
        &RunOptions {
            out: a.clone(),
            resume: false,
            stop_after: None,
        },
    )
    .unwrap();
    // "Kill" run b after one epoch, then resume it to the end.
    train::train(
        &r,
        &RunOptions {
            out: b.clone(),
            resume: false,
            stop_after: Some(1),
        },
    )
    .unwrap();
    assert_eq!(
        checkpoint::read_sidecar(&b.join("checkpoints/last.safetensors"))
            .unwrap()
            .epoch,
        1
    );
    let resumed = train::train(
        &r,
        &RunOptions {
            out: b.clone(),
            resume: true,
            stop_after: None,
        },
    )
    .unwrap();
    let untimed =
        |m: &advtrain::train::metrics::EpochMetrics| advtrain::train::metrics::EpochMetrics {
            images_per_s: 0.0,
            epoch_time_s: 0.0,
            ..m.clone()
        };
    assert_eq!(
        untimed(&full.last),
        untimed(&resumed.last),
        "final metrics differ"
    );
    let (ta, tb) = (model_tensors(&a), model_tensors(&b));
    assert_eq!(ta.len(), tb.len());
    for (k, v) in &ta {
        assert!(v.equal(&tb[k]), "tensor {k} differs after resume");
    }
    let csv_a = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    let csv_b = std::fs::read_to_string(b.join("metrics.csv")).unwrap();
    let strip = |s: &str| {
        s.lines()
            .map(|l| l.rsplitn(3, ',').nth(2).unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(&csv_a),
        strip(&csv_b),
        "metrics.csv differ (timings excluded)"
    );
    assert_eq!(csv_a.lines().count(), 4, "header + 3 epochs");
    // Starting again into an existing run without --resume is refused.
    let err = train::train(
        &r,
        &RunOptions {
            out: a.clone(),
            resume: false,
            stop_after: None,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    for f in [
        "recipe.toml",
        "summary.json",
        "checkpoints/best.safetensors",
        "checkpoints/best.json",
        "checkpoints/last.optim.safetensors",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
}

#[test]
fn training_learns_the_tiny_task() {
    let _rng = common::rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(&tmp.path().join("data"), 400, 100);
    let r = recipe(tmp.path(), 4);
    let s = train::train(
        &r,
        &RunOptions {
            out: tmp.path().join("run"),
            resume: false,
            stop_after: None,
        },
    )
    .unwrap();
    assert!(s.last.val_clean_acc.unwrap() > 0.5, "{:?}", s.last);
    assert!(s.last.train_loss.is_finite());
}

#[test]
fn checkpoint_round_trip_and_mismatch_errors() {
    let _rng = common::rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let arch = common::arch_spec("small-cnn", 1, None, None);
    tch::manual_seed(1);
    let net = Network::new(&arch, Device::Cpu).unwrap();
    let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    let _ = tch::no_grad(|| net.model.forward(&x, &Ctx::train())); // move running stats
    let file = tmp.path().join("ck/model.safetensors");
    let side = checkpoint::Sidecar {
        format: "advtrain-checkpoint-v1".into(),
        advtrain_version: "test".into(),
        architecture: arch.clone(),
        recipe: serde_json::Value::Null,
        recipe_version: 1,
        epoch: 1,
        metrics: serde_json::Value::Null,
        sha256: String::new(),
        optimizer_sha256: None,
        best_metric: None,
    };
    checkpoint::save(&file, &net.named_tensors(), None, side).unwrap();
    tch::manual_seed(2);
    let (loaded, sc) = Network::from_checkpoint(&file, Device::Cpu).unwrap();
    assert_eq!(sc.architecture, arch);
    let (a, b) = tch::no_grad(|| {
        (
            net.model.forward(&x, &Ctx::eval()),
            loaded.model.forward(&x, &Ctx::eval()),
        )
    });
    assert!(a.equal(&b), "logits differ after the round trip");
    // PyTorch names.
    let names: Vec<String> = checkpoint::read_tensors(&file)
        .unwrap()
        .into_keys()
        .collect();
    for n in [
        "conv1.weight",
        "bn1.running_mean",
        "bn1.num_batches_tracked",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(names.contains(&n.to_string()), "{n} not in {names:?}");
    }
    // A model of another shape refuses the file, naming what differs.
    let other = Network::new(
        &ArchSpec {
            predictors: vec![],
            heads: 1,
            num_classes: 7,
            ..arch.clone()
        },
        Device::Cpu,
    )
    .unwrap();
    let err = other.load_weights(&file).unwrap_err().to_string();
    assert!(
        err.contains("fc.weight") && err.contains("does not match"),
        "{err}"
    );
    // A modified file fails the sha256 check.
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&file, bytes).unwrap();
    let err = Network::from_checkpoint(&file, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("sha256"), "{err}");
}
