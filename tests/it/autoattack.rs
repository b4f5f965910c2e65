//! AutoAttack cascade on a small model trained here (tiny synthetic data): the cascade is at
//! least as strong as each of its components run alone, per-point worst case, interruption and
//! resumption from the state file give the uninterrupted result, and a state file written for
//! other settings is refused.

use crate::common;

use advtrain::attack::AttackName;
use advtrain::attack::{correct, Classifier, ThreatNorm};
use advtrain::data::Dataset;
use advtrain::eval::autoattack::{preset, AutoAttack, Preset, StateKey};
use advtrain::eval::robust_counts;
use advtrain::nn::{Ctx, Network};
use advtrain::train::{self, Recipe, RunOptions};
use std::path::Path;
use std::sync::OnceLock;
use tch::Device;

const EPS: f64 = 0.03;

/// A small-cnn trained for 8 epochs (standard training) on the tiny data, and 12 test points.
fn trained(dir: &Path) -> (Network, Dataset) {
    let file = common::tiny_recipe_file(dir, "recipe.toml", 200, 12, 8);
    let recipe = Recipe::load(&file, &["train.objective=\"standard\"".to_string()]).unwrap();
    let run = dir.join("run");
    train::train(
        &recipe,
        &RunOptions {
            out: run.clone(),
            resume: false,
            stop_after: None,
        },
    )
    .unwrap();
    let (net, _) =
        Network::from_checkpoint(&run.join("checkpoints/last.safetensors"), Device::Cpu).unwrap();
    let test = recipe.data.load_test().unwrap();
    (net, test)
}

fn key(preset: &str, eps: f64, n: usize, batch_size: usize) -> StateKey {
    StateKey {
        preset: preset.into(),
        norm: ThreatNorm::Linf,
        eps,
        seed: 0,
        batch_size,
        route: "clean".into(),
        bn_mode: "eval".into(),
        checkpoint_sha256: "test".into(),
        data_sha256: "test".into(),
        n,
        batching: Default::default(),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    net: Network,
    test: Dataset,
}

fn fixture() -> &'static std::sync::Mutex<Fixture> {
    static F: OnceLock<std::sync::Mutex<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let _rng = common::rng_lock();
        let dir = tempfile::tempdir().unwrap();
        let (net, test) = trained(dir.path());
        std::sync::Mutex::new(Fixture {
            _dir: dir,
            net,
            test,
        })
    })
}

#[test]
fn autoattack_is_at_most_each_of_its_components() {
    let fx = fixture().lock().unwrap_or_else(|e| e.into_inner());
    let _rng = common::rng_lock();
    let f = Classifier::new(fx.net.model.as_ref(), Ctx::eval());
    let n = fx.test.len();
    let std = Preset::Standard;
    let aa = AutoAttack::new(std, ThreatNorm::Linf, EPS, 0, 12, 10).unwrap();
    let full = aa
        .run(
            &f,
            &fx.test,
            Device::Cpu,
            key("standard", EPS, n, 12),
            None,
            |_| {},
        )
        .unwrap();
    assert!(full.complete && !full.resumed);
    let names: Vec<&str> = full.per_attack.iter().map(|r| r.attack.as_str()).collect();
    assert_eq!(names, ["apgd-ce", "apgd-t", "fab-t", "square"]);
    // The model is not trivially broken or trivially robust at this eps.
    eprintln!(
        "clean {} per attack {:?}",
        full.clean_accuracy, full.per_attack
    );
    assert!(full.clean_accuracy > 0.5, "clean {}", full.clean_accuracy);
    assert!(
        full.robust_accuracy < full.clean_accuracy,
        "AutoAttack fooled nothing: clean {} robust {}",
        full.clean_accuracy,
        full.robust_accuracy
    );
    // Robust accuracy after each attack never rises, and ends at the final number.
    let accs: Vec<f64> = full.per_attack.iter().map(|r| r.robust_accuracy).collect();
    assert!(accs.windows(2).all(|w| w[1] <= w[0]), "{accs:?}");
    assert_eq!(*accs.last().unwrap(), full.robust_accuracy);
    // Robust points are correctly classified on the clean input.
    let (xs, ys) = fx
        .test
        .batches(n, None, Default::default(), Device::Cpu)
        .next()
        .unwrap();
    let clean_ok = Vec::<bool>::try_from(&tch::no_grad(|| correct(&f.logits(&xs), &ys))).unwrap();
    for i in 0..n {
        assert!(
            !full.robust[i] || clean_ok[i],
            "point {i} robust but misclassified"
        );
    }
    // At most each component alone (same seed, same batch size).
    for spec in preset(std, ThreatNorm::Linf, EPS, 0, 10) {
        let (name, a) = (spec.kind(), spec.build());
        tch::manual_seed(0);
        let alone = robust_counts(&f, a.as_ref(), &fx.test, 12, Device::Cpu).robust_accuracy();
        assert!(
            full.robust_accuracy <= alone,
            "AutoAttack {} > {name} alone {alone}",
            full.robust_accuracy
        );
    }
}

#[test]
fn presets_are_data_and_fast_is_labelled_non_standard() {
    let names = advtrain::choice::names::<Preset>();
    assert_eq!(names, ["standard", "fast"]);
    let s: Preset = "standard".parse().unwrap();
    assert!(s.standard());
    let fast: Preset = "fast".parse().unwrap();
    assert!(!fast.standard() && fast.description().contains("NOT standard"));
    assert_eq!(fast.attacks(), [AttackName::ApgdCe, AttackName::ApgdT]);
    let std_names: Vec<String> = s.attacks().iter().map(|a| a.to_string()).collect();
    assert_eq!(std_names, ["apgd-ce", "apgd-t", "fab-t", "square"]);
    let err = "plus".parse::<Preset>().unwrap_err();
    assert!(
        err.contains("plus") && err.contains("standard, fast"),
        "{err}"
    );
    // The standard components carry the reference's hyperparameters.
    let aa = AutoAttack::new(s, ThreatNorm::Linf, 8.0 / 255.0, 0, 500, 10).unwrap();
    let c = aa.config();
    let comps = c["components"].as_array().unwrap();
    assert_eq!(comps[0]["config"]["n_iter"], 100);
    assert_eq!(comps[0]["config"]["n_restarts"], 1);
    assert_eq!(comps[1]["config"]["n_target_classes"], 9);
    assert_eq!(comps[2]["config"]["n_target_classes"], 9);
    assert_eq!(comps[2]["config"]["n_iter"], 100);
    assert_eq!(comps[3]["config"]["n_queries"], 5000);
    assert_eq!(comps[3]["config"]["p_init"], 0.8);
    assert!(AutoAttack::new(s, ThreatNorm::Linf, -0.1, 0, 500, 10).is_err());
}

#[test]
fn fast_preset_is_flagged_and_an_interrupted_run_resumes_exactly() {
    let fx = fixture().lock().unwrap_or_else(|e| e.into_inner());
    let _rng = common::rng_lock();
    let f = Classifier::new(fx.net.model.as_ref(), Ctx::eval());
    let n = fx.test.len();
    let fast = Preset::Fast;
    let aa = AutoAttack::new(fast, ThreatNorm::Linf, EPS, 0, 4, 10).unwrap();
    let full = aa
        .run(
            &f,
            &fx.test,
            Device::Cpu,
            key("fast", EPS, n, 4),
            None,
            |_| {},
        )
        .unwrap();
    assert_eq!(full.per_attack.len(), 2);
    assert!(full
        .flags
        .iter()
        .any(|f| f.code == "non-standard-autoattack"));
    let accs: Vec<f64> = full.per_attack.iter().map(|r| r.robust_accuracy).collect();

    // Interrupted inside the first attack (after 2 of its 3 batches), then continued from the
    // state file: the same flags and numbers as the uninterrupted run.
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("aa.state.json");
    let mut part = AutoAttack::new(fast, ThreatNorm::Linf, EPS, 0, 4, 10).unwrap();
    part.max_batches = Some(2);
    let first = part
        .run(
            &f,
            &fx.test,
            Device::Cpu,
            key("fast", EPS, n, 4),
            Some(&state),
            |_| {},
        )
        .unwrap();
    assert!(!first.complete && first.per_attack.is_empty());
    assert!(first.flags.iter().any(|f| f.code == "incomplete"));
    assert!(state.exists());
    let mut lines = Vec::new();
    let second = aa
        .run(
            &f,
            &fx.test,
            Device::Cpu,
            key("fast", EPS, n, 4),
            Some(&state),
            |m| lines.push(m.to_string()),
        )
        .unwrap();
    assert!(second.complete && second.resumed, "{lines:?}");
    assert_eq!(second.robust, full.robust);
    let a2: Vec<f64> = second
        .per_attack
        .iter()
        .map(|r| r.robust_accuracy)
        .collect();
    assert_eq!(a2, accs);

    // A state file written for another eps is refused, naming the field.
    let err = aa
        .run(
            &f,
            &fx.test,
            Device::Cpu,
            key("fast", 0.2, n, 4),
            Some(&state),
            |_| {},
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("eps") && err.contains("aa.state.json"),
        "{err}"
    );
    // A corrupt state file is refused with its name.
    std::fs::write(&state, "{not json").unwrap();
    let err = aa
        .run(
            &f,
            &fx.test,
            Device::Cpu,
            key("fast", EPS, n, 4),
            Some(&state),
            |_| {},
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("aa.state.json"), "{err}");
}
