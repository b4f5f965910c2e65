//! Bad input that used to be accepted silently (issue 20): each case is now a clear error naming
//! the file, flag or field and what was expected, or a warning where the input can be valid.

use crate::common;

use advtrain::attack::{check_attack_params, AttackParams, ParamNames, ThreatNorm};
use advtrain::data::DataSpec;
use advtrain::nn::Network;
use advtrain::train::Recipe;
use common::{advtrain, read_json, stderr};
use std::path::{Path, PathBuf};

/// Tiny 28x28 data, the same data at 14x14, a recipe, and two untrained runs: single BN and
/// Dual BN (two statistics sets, two affine sets).
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    recipe: PathBuf,
    single: String,
    dual: String,
    small: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let data = root.join("data");
    common::write_tiny_mnist(&data, 64, 30);
    let small = root.join("data14");
    std::fs::create_dir_all(&small).unwrap();
    for (prefix, n) in [("train", 64), ("t10k", 30)] {
        let px: Vec<u8> = (0..n * 14 * 14).map(|i| (i % 256) as u8).collect();
        common::write_idx_images(
            &small.join(format!("{prefix}-images-idx3-ubyte")),
            n,
            14,
            14,
            &px,
        );
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        common::write_idx_labels(&small.join(format!("{prefix}-labels-idx1-ubyte")), &labels);
    }
    let recipe = root.join("recipe.toml");
    std::fs::write(&recipe, common::tiny_recipe_toml(&data, 1)).unwrap();
    let mut runs = vec![];
    for (name, ns, ap) in [("single", 1, 1), ("dual", 2, 2)] {
        tch::manual_seed(1);
        let net = Network::new(&common::small_cnn_arch(ns, ap), tch::Device::Cpu).unwrap();
        let run = root.join(name);
        common::save_run(&run, &data, &net);
        runs.push(run.display().to_string());
    }
    Fixture {
        _tmp: tmp,
        recipe,
        single: runs[0].clone(),
        dual: runs[1].clone(),
        small,
        root,
    }
}

impl Fixture {
    fn json(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    fn recipe(&self) -> String {
        self.recipe.display().to_string()
    }
}

/// `advtrain --threads 1 ARGS` must fail, without a panic, with every needle in its stderr.
fn fails(args: &[&str], needles: &[&str]) -> String {
    let mut full = vec!["--threads", "1"];
    full.extend_from_slice(args);
    let o = advtrain(&full);
    let e = stderr(&o);
    assert!(!o.status.success(), "{args:?} should fail; stderr: {e}");
    assert!(!e.contains("panicked"), "{args:?} panicked: {e}");
    for n in needles {
        assert!(e.contains(n), "{args:?}: expected '{n}' in: {e}");
    }
    e
}

/// `advtrain --threads 1 ARGS` must succeed; returns its stderr.
fn succeeds(args: &[&str]) -> String {
    let mut full = vec!["--threads", "1"];
    full.extend_from_slice(args);
    let o = advtrain(&full);
    let e = stderr(&o);
    assert!(o.status.success(), "{args:?} failed: {e}");
    e
}

/// `eval --run RUN --attack fgsm --device cpu` plus `extra`, with `--eps 0.1` unless `extra`
/// has an `--eps`.
fn eval_args<'a>(run: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["eval", "--run", run, "--attack", "fgsm", "--device", "cpu"];
    if !extra.contains(&"--eps") {
        v.extend(["--eps", "0.1"]);
    }
    v.extend_from_slice(extra);
    v
}

fn load_err(recipe: &Path, sets: &[&str]) -> String {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    format!("{:#}", Recipe::load(recipe, &sets).unwrap_err())
}

fn load_ok(recipe: &Path, sets: &[&str]) -> Recipe {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    Recipe::load(recipe, &sets).unwrap()
}

// 1. Data whose image shape differs from the model's input.

#[test]
fn images_of_another_size_are_refused_in_eval_and_train() {
    let f = fixture();
    let small = f.small.display().to_string();
    let images = f.small.join("t10k-images-idx3-ubyte").display().to_string();
    let e = fails(
        &eval_args(&f.single, &["--data-dir", &small]),
        &[&images, "1x14x14", "1x28x28"],
    );
    eprintln!("eval: {e}");
    let train_images = f
        .small
        .join("train-images-idx3-ubyte")
        .display()
        .to_string();
    let out = f.json("run-small");
    let set = format!("data.dir=\"{small}\"");
    let e = fails(
        &[
            "train",
            "--recipe",
            &f.recipe(),
            "--out",
            &out,
            "--set",
            &set,
        ],
        &[&train_images, "1x14x14", "1x28x28"],
    );
    eprintln!("train: {e}");
    // The library call that train, eval, analyze and bench load data through.
    let spec = DataSpec {
        dataset: advtrain::data::DatasetName::Mnist,
        dir: Some(f.small.clone()),
        val_size: 0,
        split_seed: 0,
        train_limit: None,
        test_limit: None,
        crop_padding: 0,
        hflip: false,
    };
    let e = format!("{:#}", spec.load_test().err().unwrap());
    assert!(e.contains(&images) && e.contains("1x14x14"), "{e}");
}

// 2. L-inf eps above 1 in [0, 1] pixel space.

#[test]
fn linf_eps_above_one_needs_allow_large_eps() {
    let f = fixture();
    let e = fails(
        &eval_args(&f.single, &["--eps", "8"]),
        &["--eps", "8", "above 1", "--allow-large-eps"],
    );
    eprintln!("{e}");
    // The analyses (L-inf by protocol) refuse it too, with no override.
    for extra in [
        vec!["domain-gap"],
        vec!["bn-swap"],
        vec!["grad-conflict", "--terms", "clean-ce,adv-ce"],
    ] {
        let mut args = vec!["analyze"];
        args.extend(extra);
        args.extend(["--run", &f.single, "--eps", "8"]);
        fails(&args, &["--eps", "8", "above 1", "[0, 1]"]);
    }
    let j = f.json("large.json");
    succeeds(&eval_args(
        &f.single,
        &[
            "--eps",
            "8",
            "--allow-large-eps",
            "--test-limit",
            "5",
            "--json",
            &j,
        ],
    ));
    assert_eq!(read_json(Path::new(&j))["eps"], 8.0);
    // L2 budgets are not bounded by 1.
    let j = f.json("l2.json");
    succeeds(&[
        "eval",
        "--run",
        &f.single,
        "--attack",
        "pgd",
        "--norm",
        "l2",
        "--eps",
        "3",
        "--steps",
        "1",
        "--test-limit",
        "5",
        "--device",
        "cpu",
        "--json",
        &j,
    ]);
    fails(
        &eval_args(&f.single, &["--curve", "0.1,2"]),
        &["--curve eps value = 2 is above 1", "--allow-large-eps"],
    );
    fails(
        &eval_args(
            &f.single,
            &["--reestimate", "noise", "--reestimate-eps", "4"],
        ),
        &["--reestimate-eps", "4", "--allow-large-eps"],
    );
    // Recipes: train.attack.eps and validation.attack.eps, unless allow_large_eps = true.
    let e = load_err(&f.recipe, &["train.attack.eps=8"]);
    assert!(
        e.contains("train.attack.eps") && e.contains("allow_large_eps"),
        "{e}"
    );
    eprintln!("{e}");
    let r = load_ok(&f.recipe, &["train.attack.eps=8", "allow_large_eps=true"]);
    assert!(r.allow_large_eps);
    // A standard objective does not attack, but its train.attack eps is the validation budget.
    let e = load_err(
        &f.recipe,
        &["train.objective=\"standard\"", "train.attack.eps=8"],
    );
    assert!(e.contains("train.attack.eps"), "{e}");
    let e = load_err(
        &f.recipe,
        &["validation.attack={eps = 2.0, step_size = 0.5, steps = 2}"],
    );
    assert!(e.contains("validation.attack.eps"), "{e}");
    // Saved recipes without the key load as before (and serialise without it).
    assert!(!load_ok(&f.recipe, &[])
        .to_toml()
        .contains("allow_large_eps"));
    fails(
        &[
            "train",
            "--recipe",
            &f.recipe(),
            "--out",
            &f.json("run-eps"),
            "--set",
            "train.attack.eps=8",
        ],
        &["train.attack.eps", "allow_large_eps"],
    );
}

// 3. One validator for the attack settings of recipes and eval.

#[test]
fn recipe_and_eval_share_one_attack_validator() {
    let f = fixture();
    let p = |steps, step_size, restarts| AttackParams {
        norm: ThreatNorm::Linf,
        eps: 0.1,
        steps: Some(steps),
        step_size: Some(step_size),
        restarts: Some(restarts),
        allow_large_eps: false,
    };
    for (params, field, flag) in [
        (p(0, 0.01, 1), "train.attack.steps", "--steps"),
        (p(3, 0.0, 1), "train.attack.step_size", "--step-size"),
        (p(3, -1.0, 1), "train.attack.step_size", "--step-size"),
        (p(3, 0.01, 0), "train.attack.restarts", "--restarts"),
    ] {
        let a = check_attack_params(&ParamNames::recipe("train.attack"), &params).unwrap_err();
        let b = check_attack_params(&ParamNames::flags(), &params).unwrap_err();
        assert!(a.starts_with(field) && b.starts_with(flag), "{a} / {b}");
        // The same message, up to the names.
        let as_flags = a.replace(field, flag).replace("train.attack.eps", "--eps");
        assert_eq!(as_flags, b);
    }
    // eps 0 needs no step.
    let zero = AttackParams {
        eps: 0.0,
        ..p(3, 0.0, 1)
    };
    check_attack_params(&ParamNames::flags(), &zero).unwrap();

    let e = load_err(&f.recipe, &["train.attack.steps=0"]);
    assert!(e.contains("train.attack.steps must be >= 1, got 0"), "{e}");
    eprintln!("{e}");
    let e = load_err(&f.recipe, &["train.attack.step_size=0.0"]);
    assert!(e.contains("train.attack.step_size must be > 0"), "{e}");
    let e = load_err(&f.recipe, &["train.attack.restarts=0"]);
    assert!(e.contains("train.attack.restarts must be >= 1"), "{e}");
    let e = load_err(
        &f.recipe,
        &["validation.attack={eps = 0.1, step_size = 0.05, steps = 0}"],
    );
    assert!(e.contains("validation.attack.steps must be >= 1"), "{e}");
    fails(
        &[
            "train",
            "--recipe",
            &f.recipe(),
            "--out",
            &f.json("run-steps"),
            "--set",
            "train.attack.steps=0",
        ],
        &["train.attack.steps must be >= 1, got 0"],
    );
    let e = fails(
        &[
            "eval", "--run", &f.single, "--attack", "pgd", "--eps", "0.1", "--steps", "0",
        ],
        &["--steps must be >= 1, got 0"],
    );
    eprintln!("{e}");
    fails(
        &[
            "eval",
            "--run",
            &f.single,
            "--attack",
            "pgd",
            "--eps",
            "0.1",
            "--step-size",
            "0",
        ],
        &["--step-size must be > 0"],
    );
}

// 4. Routes the model does not have, and routes that are shared.

#[test]
fn routes_are_checked_against_the_model_and_shared_routes_are_labelled() {
    let f = fixture();
    // export: a missing domain is refused, a shared one warns.
    let ck = format!("{}/checkpoints/best.safetensors", f.single);
    let ck = if Path::new(&ck).exists() {
        ck
    } else {
        format!("{}/checkpoints/last.safetensors", f.single)
    };
    let out = f.json("export.safetensors");
    fails(
        &[
            "export",
            "--checkpoint",
            &ck,
            "--route",
            "ns=5,ap=clean",
            "--out",
            &out,
        ],
        &["--route", "NS domain 5 does not exist"],
    );
    let e = succeeds(&[
        "export",
        "--checkpoint",
        &ck,
        "--route",
        "adv",
        "--out",
        &out,
    ]);
    assert!(e.contains("shared by every domain"), "{e}");
    let e = fails(
        &eval_args(&f.single, &["--route", "ns=5,ap=0"]),
        &["--route ns=5,ap=clean", "1 statistics set"],
    );
    eprintln!("{e}");
    fails(
        &eval_args(&f.dual, &["--route", "ns=clean,ap=2"]),
        &["--route ns=clean,ap=2", "2 affine sets"],
    );
    // Single BN: adv is the shared set; a warning, and the output says so.
    let j = f.json("adv.json");
    let e = succeeds(&eval_args(
        &f.single,
        &["--route", "adv", "--test-limit", "5", "--json", &j],
    ));
    eprintln!("{e}");
    assert!(
        e.contains("shared") && e.contains("--route ns=adv,ap=adv"),
        "{e}"
    );
    assert!(
        e.contains("route shared"),
        "the log line names the route used: {e}"
    );
    let v = read_json(Path::new(&j));
    assert_eq!(v["route"], "shared");
    assert_eq!(v["route_requested"], "ns=adv,ap=adv");
    let j = f.json("swap.json");
    let e = succeeds(&eval_args(
        &f.single,
        &["--swap-ap", "--test-limit", "5", "--json", &j],
    ));
    assert!(e.contains("--swap-ap") && e.contains("shared"), "{e}");
    assert_eq!(read_json(Path::new(&j))["route"], "shared");
    // The default route on a single-BN model and real routes on Dual BN are unchanged.
    let j = f.json("clean.json");
    let e = succeeds(&eval_args(&f.single, &["--test-limit", "5", "--json", &j]));
    assert!(!e.contains("shared"), "{e}");
    assert_eq!(read_json(Path::new(&j))["route"], "ns=clean,ap=clean");
    let j = f.json("dual-adv.json");
    let e = succeeds(&eval_args(
        &f.dual,
        &["--route", "adv", "--test-limit", "5", "--json", &j],
    ));
    assert!(!e.contains("shared"), "{e}");
    let v = read_json(Path::new(&j));
    assert_eq!(v["route"], "ns=adv,ap=adv");
    assert_eq!(v["route_requested"], "ns=adv,ap=adv");

    // Recipes: a domain index the model lacks is refused; a shared route is a warning.
    let e = load_err(&f.recipe, &["train.route=\"ns=2,ap=0\""]);
    assert!(
        e.contains("train.route = 'ns=2,ap=clean'") && e.contains("1 statistics set"),
        "{e}"
    );
    eprintln!("{e}");
    let e = load_err(&f.recipe, &["validation.route=\"ns=0,ap=3\""]);
    assert!(
        e.contains("validation.route") && e.contains("1 affine"),
        "{e}"
    );
    let r = load_ok(&f.recipe, &["train.route=\"adv\""]);
    let w = r.warnings();
    assert!(
        w.iter()
            .any(|w| w.contains("train.route = 'ns=adv,ap=adv'") && w.contains("shared")),
        "{w:?}"
    );
    assert!(load_ok(&f.recipe, &[]).warnings().is_empty());
    let e = fails(
        &[
            "train",
            "--recipe",
            &f.recipe(),
            "--out",
            &f.json("run-route"),
            "--set",
            "train.route=\"ns=5,ap=0\"",
        ],
        &["train.route", "1 statistics set"],
    );
    eprintln!("{e}");
}

// 5. Sizes of 0 that used to run as something else.

#[test]
fn zero_sizes_are_refused() {
    let f = fixture();
    for (extra, needle) in [
        (
            vec!["--batch-size", "0"],
            "--batch-size must be >= 1, got 0",
        ),
        (
            vec!["--test-limit", "0"],
            "--test-limit must be >= 1, got 0",
        ),
        (
            vec!["--reestimate", "clean", "--reestimate-batches", "0"],
            "--reestimate-batches must be >= 1, got 0",
        ),
        (
            vec!["--reestimate", "clean", "--reestimate-batch-size", "0"],
            "--reestimate-batch-size must be >= 1, got 0",
        ),
    ] {
        let e = fails(&eval_args(&f.single, &extra), &[needle]);
        eprintln!("{e}");
    }
    fails(
        &[
            "eval",
            "--run",
            &f.single,
            "--attack",
            "autoattack",
            "--preset",
            "fast",
            "--eps",
            "0.1",
            "--max-batches",
            "0",
        ],
        &["--max-batches must be >= 1, got 0"],
    );
    fails(
        &[
            "eval",
            "--run",
            &f.single,
            "--attack",
            "square",
            "--eps",
            "0.1",
            "--queries",
            "0",
        ],
        &["--queries must be >= 1, got 0"],
    );
    fails(
        &[
            "eval",
            "--run",
            &f.single,
            "--attack",
            "pgd",
            "--eps",
            "0.1",
            "--curve-steps",
            "5,0",
        ],
        &["--curve-steps", "must be >= 1, got 0"],
    );
    let e = load_err(&f.recipe, &["data.test_limit=0"]);
    assert!(e.contains("data.test_limit must be >= 1"), "{e}");
    let e = load_err(&f.recipe, &["data.train_limit=0"]);
    assert!(e.contains("data.train_limit must be >= 1"), "{e}");
    // A negative crop padding used to mean no crop, silently.
    let e = load_err(&f.recipe, &["data.crop_padding=-2"]);
    assert!(e.contains("data.crop_padding must be >= 0"), "{e}");
    fails(
        &[
            "train",
            "--recipe",
            &f.recipe(),
            "--out",
            &f.json("run-limit"),
            "--test-limit",
            "0",
        ],
        &["data.test_limit must be >= 1"],
    );
}

// 6. Every --set is checked, even when a flag overrides its key.

#[test]
fn every_set_is_validated_before_flags_override_it() {
    let f = fixture();
    let e = fails(
        &[
            "train",
            "--recipe",
            &f.recipe(),
            "--out",
            &f.json("run-set"),
            "--set",
            "train.epochs=two",
            "--epochs",
            "1",
        ],
        &["--set train.epochs=two", "invalid type", "expected usize"],
    );
    eprintln!("{e}");
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let e = Recipe::load_with_flags(&f.recipe, &s(&["seed=\"x\""]), &s(&["seed=3"])).unwrap_err();
    assert!(format!("{e:#}").contains("--set seed=\"x\""), "{e:#}");
    let e = Recipe::load_with_flags(&f.recipe, &s(&["train.epochs=0"]), &s(&["train.epochs=2"]))
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("--set train.epochs=0")
            && format!("{e:#}").contains("train.epochs must be >= 1"),
        "{e:#}"
    );
    // Valid sets, and flags that override them, resolve as before.
    let r = Recipe::load_with_flags(
        &f.recipe,
        &s(&["train.epochs=5", "train.attack.eps=0.2"]),
        &s(&["train.epochs=2"]),
    )
    .unwrap();
    assert_eq!((r.train.epochs, r.train.attack().unwrap().eps), (2, 0.2));
}
