//! Robust training objectives against independent hand computations: TRADES (batch-mean of the
//! per-sample KL sum), MART, FGSM-RS.

use crate::common;

use advtrain::attack::{cross_entropy, Attack, Classifier, Pgd};
use advtrain::nn::{Ctx, Mode, Network};
use advtrain::train::objectives::{arat, fgsm_rs, mart, trades, Objective, StepCx, TrainObjective};
use advtrain::train::recipe::Recipe;
use std::process::Command;
use tch::{Device, Kind, Reduction, Tensor};

#[test]
fn kl_rows_matches_a_hand_computed_case() {
    // p = softmax([0, ln 3]) = [1/4, 3/4], q = [1/2, 1/2]:
    // KL = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.1308120...
    let p = Tensor::from_slice(&[0.0f32, 3f32.ln(), 0.0, 0.0]).view([2, 2]);
    let q = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.0]).view([2, 2]);
    let kl = trades::kl_rows(&p, &q);
    let want = 0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln();
    assert!((kl.double_value(&[0]) - want).abs() < 1e-6);
    assert!(kl.double_value(&[1]).abs() < 1e-7);
}

#[test]
fn mart_loss_matches_a_float64_hand_computation() {
    let la = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]];
    let lc = [[1.0, 0.0, 0.0], [-0.5, 1.5, 0.2]];
    let y = [0i64, 2];
    let lambda = 6.0;
    let softmax = |z: &[f64; 3]| {
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect::<Vec<f64>>()
    };
    let mut want = 0.0;
    for i in 0..2 {
        let pa = softmax(&la[i]);
        let pc = softmax(&lc[i]);
        let yi = y[i] as usize;
        let top_other = (0..3)
            .filter(|&k| k != yi)
            .map(|k| pa[k])
            .fold(0.0, f64::max);
        let bce = -pa[yi].ln() - (1.0001 - top_other).ln();
        let kl: f64 = (0..3)
            .map(|k| pc[k] * ((pc[k] + 1e-12).ln() - (pa[k] + 1e-12).ln()))
            .sum();
        want += (bce + lambda * kl * (1.0 - pc[yi])) / 2.0;
    }
    let t = |a: [[f64; 3]; 2]| {
        Tensor::from_slice(&a.concat())
            .view([2, 3])
            .to_kind(Kind::Float)
    };
    let got = mart::mart_loss(&t(la), &t(lc), &Tensor::from_slice(&y), lambda).double_value(&[]);
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
}

fn recipe(extra: &str) -> (tempfile::TempDir, Recipe) {
    common::small_recipe(extra)
}

const TRADES: &str = r#"
[model.norm]
ns_domains = 2
ap_domains = 2
[train]
objective = "trades"
trades_beta = 6.0
epochs = 1
batch_size = 8
lr = 0.1
[train.hybrid]
passes = "separate"
[train.attack]
eps = 0.1
step_size = 0.05
steps = 2
init = "normal"
loss = "kl"
"#;

#[test]
fn trades_is_ce_plus_beta_times_the_batch_mean_of_per_sample_kl_sums() {
    let _g = common::rng_lock();
    let (_d, r) = recipe(TRADES);
    let build = || {
        tch::manual_seed(21);
        Network::new(&r.model, Device::Cpu).unwrap()
    };
    let (a, b) = (build(), build());
    tch::manual_seed(4);
    let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::arange(8, (Kind::Int64, Device::Cpu)).remainder(10);
    let Objective::Trades(o) = &r.train.objective else {
        panic!("a trades recipe")
    };
    let pgd = Pgd::new(o.attack.clone());
    tch::manual_seed(99);
    let cx = StepCx::new(&r, a.model.as_ref());
    let xa = o.generate(&cx, &x, &y);
    let got = o
        .loss(&cx, &(), &x, &y, xa.as_ref(), Mode::Train)
        .unwrap()
        .loss
        .double_value(&[]);
    // Reference in float64 from the same logits: CE through BN_clean, KL(clean || adv branch).
    tch::manual_seed(99);
    let h = &o.hybrid;
    let f = Classifier::new(
        b.model.as_ref(),
        Ctx::new(h.adv_route, r.train.attack_bn_mode),
    );
    let xa = pgd.perturb(&f, &x, &y);
    let la = b
        .model
        .forward(&xa, &Ctx::new(h.adv_route, Mode::Train))
        .to_kind(Kind::Double);
    let lc = b
        .model
        .forward(&x, &Ctx::new(h.clean_route, Mode::Train))
        .to_kind(Kind::Double);
    let (lp, lq) = (
        lc.log_softmax(-1, Kind::Double),
        la.log_softmax(-1, Kind::Double),
    );
    let kl_sum = (lp.exp() * (&lp - &lq)).sum(Kind::Double).double_value(&[]);
    let ce = cross_entropy(&lc, &y, Reduction::Mean).double_value(&[]);
    let want = ce + 6.0 * kl_sum / 8.0;
    assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    // The framework-default reduction (mean over classes too) would be off by a factor of K.
    let wrong = ce + 6.0 * kl_sum / 80.0;
    assert!((got - wrong).abs() > 1e-3);
}

#[test]
fn trades_requires_the_kl_attack() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(dir.path(), 20, 10);
    let f = dir.path().join("r.toml");
    std::fs::write(&f, common::tiny_recipe_toml(dir.path(), 1)).unwrap();
    let e = Recipe::load(&f, &["train.objective=\"trades\"".into()]).unwrap_err();
    assert!(format!("{e:#}").contains("train.attack.loss"), "{e:#}");
    let trades = [
        "train.objective=\"trades\"".to_string(),
        "train.attack.loss=\"kl\"".into(),
    ];
    let e = Recipe::load(
        &f,
        &[&trades[..], &["train.trades_beta=-1".into()]].concat(),
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("train.trades_beta must be >= 0"),
        "{e:#}"
    );
    // With another objective the key has no effect: it is dropped with a note naming it.
    let (r, notes) = Recipe::load_noting(&f, &["train.trades_beta=-1".into()]).unwrap();
    assert_eq!(r.train.objective.name(), "pgd-at");
    assert!(
        notes.len() == 1 && notes[0].contains("train.trades_beta = -1"),
        "{notes:?}"
    );
}

#[test]
fn fgsm_rs_example_is_one_clipped_signed_step_from_a_uniform_start() {
    let _g = common::rng_lock();
    let net = common::confident_small_cnn();
    let f = Classifier::new(net.model.as_ref(), Ctx::eval());
    tch::manual_seed(2);
    let x = Tensor::rand([6, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::arange(6, (Kind::Int64, Device::Cpu));
    let (eps, alpha) = (0.1, 0.125);
    tch::manual_seed(77);
    let got = fgsm_rs::fgsm_rs_example(&f, &x, &y, eps, alpha);
    // Reference: the same uniform draw, the gradient at the start, the clipped step.
    tch::manual_seed(77);
    let start = (&x + (x.rand_like() * 2.0 - 1.0) * eps)
        .clamp(0.0, 1.0)
        .set_requires_grad(true);
    let loss = cross_entropy(&f.logits(&start), &y, Reduction::Sum);
    let g = Tensor::run_backward(&[&loss], &[&start], false, false).remove(0);
    let want = (&x + (&start.detach() - &x + g.sign() * alpha).clamp(-eps, eps)).clamp(0.0, 1.0);
    assert!((&got - &want).abs().max().double_value(&[]) < 1e-6);
    let linf = (&got - &x).abs().max().double_value(&[]);
    assert!(linf <= eps + 1e-6 && linf > 0.5 * eps);
    assert!(got.min().double_value(&[]) >= 0.0 && got.max().double_value(&[]) <= 1.0);
}

#[test]
fn cli_trains_trades_mart_and_fgsm_rs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_tiny_mnist(&data, 64, 20);
    let rf = tmp.path().join("r.toml");
    std::fs::write(&rf, common::tiny_recipe_toml(&data, 1)).unwrap();
    for (obj, extra) in [
        (
            "trades",
            vec!["train.attack.loss=\"kl\"", "train.attack.init=\"normal\""],
        ),
        ("mart", vec![]),
        ("fgsm-rs", vec!["train.attack.step_size=0.125"]),
    ] {
        let run = tmp.path().join(obj);
        let mut args = vec![
            "train".to_string(),
            "--recipe".into(),
            rf.display().to_string(),
            "--out".into(),
            run.display().to_string(),
            "--set".into(),
            format!("train.objective=\"{obj}\""),
            "--set".into(),
            "validation.pgd_limit=10".into(),
        ];
        for e in extra {
            args.push("--set".into());
            args.push(e.into());
        }
        let o = Command::new(env!("CARGO_BIN_EXE_advtrain"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{obj}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
        let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
        let loss: f64 = row[2].parse().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{obj}: {csv}");
        assert!(
            !row[4].is_empty(),
            "{obj}: adversarial training accuracy recorded: {csv}"
        );
    }
}

#[test]
fn collapse_rule_is_an_absolute_drop_below_the_best_earlier_epoch() {
    use advtrain::train::run::is_collapse;
    assert!(
        !is_collapse(None, 0.0, 0.2),
        "the first epoch cannot collapse"
    );
    assert!(!is_collapse(Some(0.5), 0.31, 0.2));
    assert!(is_collapse(Some(0.5), 0.29, 0.2));
    assert!(!is_collapse(Some(0.5), 0.7, 0.2));
}

#[test]
fn cli_fgsm_rs_writes_the_overfitting_check() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_tiny_mnist(&data, 64, 20);
    let rf = tmp.path().join("r.toml");
    std::fs::write(&rf, common::tiny_recipe_toml(&data, 2)).unwrap();
    let run = tmp.path().join("run");
    let o = Command::new(env!("CARGO_BIN_EXE_advtrain"))
        .args([
            "train",
            "--recipe",
            &rf.display().to_string(),
            "--out",
            &run.display().to_string(),
            "--set",
            "train.objective=\"fgsm-rs\"",
            "--set",
            "train.attack.step_size=0.125",
            "--set",
            "train.overfit_check={ n = 16, steps = 2 }",
            "--set",
            "validation.pgd_limit=0",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(run.join("overfit_check.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "epoch,train_pgd_acc,best_before,collapsed");
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[1].starts_with("1,") && lines[1].ends_with(",,0"),
        "{csv}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert!(summary.get("overfitting").is_some());
    let bad = Command::new(env!("CARGO_BIN_EXE_advtrain"))
        .args([
            "train",
            "--recipe",
            &rf.display().to_string(),
            "--out",
            &tmp.path().join("b").display().to_string(),
            "--set",
            "train.overfit_check={ drop = 0.0 }",
        ])
        .output()
        .unwrap();
    assert!(
        !bad.status.success()
            && String::from_utf8_lossy(&bad.stderr).contains("train.overfit_check.drop")
    );
}

#[test]
fn awp_adds_gamma_times_weight_norm_along_the_gradient_and_restores_exactly() {
    use advtrain::train::awp;
    let _g = common::rng_lock();
    let net = common::confident_small_cnn();
    tch::manual_seed(6);
    let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::arange(8, (Kind::Int64, Device::Cpu)).remainder(10);
    let before: Vec<(String, Tensor)> = awp::perturbed_weights(&net)
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect();
    let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"]
    );
    // Independent gradient: the same loss, backward into .grad.
    let ctx = Ctx::new(Default::default(), Mode::TrainFrozen);
    let loss = cross_entropy(&net.model.forward(&x, &ctx), &y, Reduction::Mean);
    let grads: Vec<Tensor> = {
        for (_, t) in awp::perturbed_weights(&net) {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        loss.backward();
        awp::perturbed_weights(&net)
            .iter()
            .map(|(_, t)| t.grad().copy())
            .collect()
    };
    let gamma = 0.01;
    let loss = cross_entropy(&net.model.forward(&x, &ctx), &y, Reduction::Mean);
    let added = awp::perturb(&net, gamma, &loss);
    for (((name, w0), (_, w1)), g) in before.iter().zip(awp::perturbed_weights(&net)).zip(&grads) {
        let v = (&w1 - w0).to_kind(Kind::Double);
        let rel = v.norm().double_value(&[]) / w0.to_kind(Kind::Double).norm().double_value(&[]);
        assert!(
            (rel - gamma).abs() < 1e-4 * gamma,
            "{name}: ||v||/||w|| = {rel}"
        );
        let g = g.to_kind(Kind::Double);
        let cos = (&v * &g).sum(Kind::Double).double_value(&[])
            / (v.norm().double_value(&[]) * g.norm().double_value(&[]));
        assert!(cos > 0.9999, "{name}: v along the gradient, cos {cos}");
    }
    awp::restore(added);
    for ((name, w0), (_, w1)) in before.iter().zip(awp::perturbed_weights(&net)) {
        assert!(
            (&w1 - w0).abs().max().double_value(&[]) < 1e-6,
            "{name} restored"
        );
    }
}

#[test]
fn cli_pgd_at_with_awp_trains_and_bad_gamma_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_tiny_mnist(&data, 64, 20);
    let rf = tmp.path().join("r.toml");
    std::fs::write(&rf, common::tiny_recipe_toml(&data, 2)).unwrap();
    let run = |out: &str, set: &str| {
        Command::new(env!("CARGO_BIN_EXE_advtrain"))
            .args([
                "train",
                "--recipe",
                &rf.display().to_string(),
                "--out",
                &tmp.path().join(out).display().to_string(),
                "--set",
                set,
                "--set",
                "validation.pgd_limit=10",
            ])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let o = run("awp", "train.awp={ gamma = 0.01, warmup_epochs = 1 }");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(tmp.path().join("awp/metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let o = run("bad", "train.awp={ gamma = 0.0 }");
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("train.awp.gamma"));
}

const ARAT: &str = r#"
predictors = [2]
[model.norm]
ns_domains = 2
ap_domains = 2
[train]
objective = "arat"
epochs = 1
batch_size = 8
lr = 0.1
attack_bn_mode = "train"
[train.hybrid]
clean_weight = 0.0
[train.arat]
lambda = 2.0
hooks = [2]
auto_balance = false
[train.attack]
eps = 0.1
step_size = 0.05
steps = 1
"#;

#[test]
fn negative_cosine_matches_hand_values() {
    let t = |v: &[f32]| Tensor::from_slice(v).view([1, 2]);
    assert!(
        (arat::negative_cosine(&t(&[1.0, 0.0]), &t(&[0.0, 1.0])).double_value(&[]) - 1.0).abs()
            < 1e-6
    );
    assert!(
        arat::negative_cosine(&t(&[1.0, 1.0]), &t(&[2.0, 2.0]))
            .double_value(&[])
            .abs()
            < 1e-6
    );
    assert!(
        (arat::negative_cosine(&t(&[1.0, 0.0]), &t(&[-3.0, 0.0])).double_value(&[]) - 2.0).abs()
            < 1e-6
    );
}

/// ARAT's loss on a Dual-BN model: value against an independent recomputation, and the
/// stop-gradient: with the clean CE weighted 0, BN_clean's affine parameters get gradient only
/// through the invariance term, which the stop-gradient cuts.
#[test]
fn arat_loss_value_and_stop_gradient() {
    use advtrain::nn::Route;
    let _g = common::rng_lock();
    for stop in [true, false] {
        let extra = if stop {
            ARAT.to_string()
        } else {
            ARAT.replace(
                "auto_balance = false",
                "auto_balance = false\nstop_gradient = false",
            )
        };
        let (_d, r) = recipe(&extra);
        tch::manual_seed(31);
        let net = Network::new(&r.model, Device::Cpu).unwrap();
        assert_eq!(net.predictors.len(), 1);
        let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = Tensor::arange(8, (Kind::Int64, Device::Cpu)).remainder(10);
        let x_adv = (&x + 0.05).clamp(0.0, 1.0);
        let Objective::Arat(o) = &r.train.objective else {
            panic!("an arat recipe")
        };
        // No previous epoch: auto-balance would use w_a = 0.5 (off here).
        let cx = StepCx::new(&r, net.model.as_ref()).with_predictors(&net.predictors);
        let out = arat::arat_loss(o, &cx, &x, &y, &x_adv, Mode::TrainFrozen).unwrap();
        // Independent value: separate forwards (per-domain statistics make joint == separate).
        let fa = net
            .model
            .forward_stages(&x_adv, &Ctx::new(Route::domain(1), Mode::TrainFrozen));
        let fc = net
            .model
            .forward_stages(&x, &Ctx::new(Route::domain(0), Mode::TrainFrozen));
        let za = fa.stages[2]
            .relu()
            .mean_dim(&[2i64, 3][..], false, Kind::Float);
        let zc = fc.stages[2]
            .relu()
            .mean_dim(&[2i64, 3][..], false, Kind::Float);
        let p = net.predictors[0]
            .forward(&za, Mode::TrainFrozen)
            .to_kind(Kind::Double);
        let zc = zc.to_kind(Kind::Double);
        let cos = (&p * &zc).sum_dim_intlist([1i64].as_slice(), false, Kind::Double)
            / (p.norm_scalaropt_dim(2, [1i64].as_slice(), false)
                * zc.norm_scalaropt_dim(2, [1i64].as_slice(), false));
        let want = cross_entropy(&fa.logits, &y, Reduction::Mean).double_value(&[])
            + 2.0 * (1.0 - cos.mean(Kind::Double).double_value(&[]));
        let got = out.loss.double_value(&[]);
        assert!((got - want).abs() < 1e-4, "stop {stop}: {got} vs {want}");
        // Gradient reaching BN_clean's affine parameters.
        let v = net.variables();
        let clean_affine: Vec<Tensor> = ["bn1.0.weight", "bn2.0.weight", "bn3.0.bias"]
            .iter()
            .map(|k| v[*k].shallow_clone())
            .collect();
        let refs: Vec<&Tensor> = clean_affine.iter().collect();
        let g = Tensor::run_backward(&[&out.loss], &refs, false, true);
        let norm: f64 = g
            .iter()
            .map(|t| {
                if t.defined() {
                    t.abs().sum(Kind::Double).double_value(&[])
                } else {
                    0.0
                }
            })
            .sum();
        if stop {
            assert_eq!(
                norm, 0.0,
                "no gradient reaches the clean branch through the invariance term"
            );
        } else {
            assert!(
                norm > 0.0,
                "without stop-gradient the clean branch gets gradient"
            );
        }
    }
}

#[test]
fn cli_trains_arat_and_checks_its_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_tiny_mnist(&data, 64, 20);
    let rf = tmp.path().join("r.toml");
    std::fs::write(&rf, common::tiny_recipe_toml(&data, 1)).unwrap();
    let run = |out: &str, sets: &[&str]| {
        let mut args = vec![
            "train".to_string(),
            "--recipe".into(),
            rf.display().to_string(),
            "--out".into(),
            tmp.path().join(out).display().to_string(),
            "--set".into(),
            "validation.pgd_limit=10".into(),
        ];
        for s in sets {
            args.push("--set".into());
            args.push(s.to_string());
        }
        Command::new(env!("CARGO_BIN_EXE_advtrain"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let arat = [
        "train.objective=\"arat\"",
        "model.norm.ns_domains=2",
        "model.norm.ap_domains=2",
        "model.predictors=[1, 2]",
        "train.arat={ lambda = 30.0, hooks = [1, 2] }",
        "train.attack_bn_mode=\"train\"",
    ];
    let o = run("arat", &arat);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let side = std::fs::read_to_string(tmp.path().join("arat/checkpoints/last.json")).unwrap();
    assert!(
        side.contains("predictors"),
        "the architecture records the predictors"
    );
    // The checkpoint (with predictor weights) evaluates.
    let o = Command::new(env!("CARGO_BIN_EXE_advtrain"))
        .args([
            "eval",
            "--run",
            &tmp.path().join("arat").display().to_string(),
            "--route",
            "adv",
            "--attack",
            "fgsm",
            "--eps",
            "0.1",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut bad = arat.to_vec();
    bad[3] = "model.predictors=[2]";
    let o = run("bad", &bad);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("model.predictors"));
}

/// A norm-layer hook reads that layer's output: on small-cnn, ReLU of `bn3`'s output is stage 2,
/// so ARAT's invariance term (no predictor) is the same with `hooks = ["bn3"]` as with `[2]`;
/// predictors keyed by a norm name get that layer's width; unknown names are refused.
#[test]
fn arat_norm_layer_hooks_match_stage_hooks() {
    use advtrain::nn::hook::hooked;
    use advtrain::nn::{Hook, Route};
    let _g = common::rng_lock();
    let no_pred = ARAT.replace(
        "auto_balance = false",
        "auto_balance = false\npredictor = false",
    );
    let (_d1, r_stage) = recipe(&no_pred);
    let (_d2, r_norm) = recipe(&no_pred.replace("hooks = [2]", "hooks = [\"bn3\"]"));
    assert_eq!(
        match &r_norm.train.objective {
            Objective::Arat(o) => o.arat.hooks.clone(),
            o => panic!("{}", o.name()),
        },
        vec![Hook::Norm("bn3".into())]
    );
    tch::manual_seed(5);
    let net = Network::new(&r_stage.model, Device::Cpu).unwrap();
    let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::arange(8, (Kind::Int64, Device::Cpu)).remainder(10);
    let x_adv = (&x - 0.05).clamp(0.0, 1.0);
    // The tap: ReLU(bn3 output) == stage 2, same forward.
    let ctx = Ctx::new(Route::domain(1), Mode::Eval);
    let (f, feats) = hooked(net.model.as_ref(), &[Hook::Norm("bn3".into())], || {
        net.model.forward_stages(&x, &ctx)
    });
    assert!(feats[0].relu().allclose(&f.stages[2], 0.0, 0.0, false));
    assert!(
        feats[0].min().double_value(&[]) < 0.0,
        "pre-activation output has negatives"
    );
    let loss = |r: &Recipe| {
        let Objective::Arat(o) = &r.train.objective else {
            panic!("an arat recipe")
        };
        let cx = StepCx::new(r, net.model.as_ref()).with_predictors(&net.predictors);
        arat::arat_loss(o, &cx, &x, &y, &x_adv, Mode::TrainFrozen)
            .unwrap()
            .loss
            .double_value(&[])
    };
    let (a, b) = (loss(&r_stage), loss(&r_norm));
    assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    // Predictors keyed by norm-layer names.
    let (_d3, r) = recipe(
        &ARAT
            .replace("predictors = [2]", "predictors = [\"bn2\", \"bn3\"]")
            .replace("hooks = [2]", "hooks = [\"bn2\", \"bn3\"]"),
    );
    let net = Network::new(&r.model, Device::Cpu).unwrap();
    let v = net.variables();
    let widths = (
        net.model.norms()[1].1.channels,
        net.model.norms()[2].1.channels,
    );
    assert_eq!(v["predictor.bn2.fc2.weight"].size()[0], widths.0);
    assert_eq!(v["predictor.bn3.fc2.weight"].size()[0], widths.1);
    let mut bad = r.model.clone();
    bad.predictors = vec![Hook::Norm("layer4.0.bn1".into())];
    let e = Network::new(&bad, Device::Cpu)
        .err()
        .expect("unknown layer refused");
    assert!(
        format!("{e:#}").contains("layer4.0.bn1") && format!("{e:#}").contains("model.predictors")
    );
}

/// TRADES and MART default to separate clean and adversarial passes (the reference codes call
/// the model twice); hybrid objectives to joint; an explicit setting wins and is kept.
#[test]
fn passes_default_per_objective_and_are_recorded() {
    use advtrain::train::recipe::Passes;
    let obj = |o: &str, extra: &str| {
        recipe(&format!(
            "[train]\nobjective = \"{o}\"\nepochs = 1\nbatch_size = 8\nlr = 0.1\n{extra}[train.attack]\neps = 0.1\nstep_size = 0.05\nsteps = 1\nloss = \"{}\"\n",
            if o == "trades" { "kl" } else { "ce" }
        ))
        .1
    };
    assert_eq!(
        obj("trades", "").train.objective.hybrid().unwrap().passes,
        Some(Passes::Separate)
    );
    assert_eq!(
        obj("mart", "").train.objective.hybrid().unwrap().passes,
        Some(Passes::Separate)
    );
    assert_eq!(
        obj("hybrid", "").train.objective.hybrid().unwrap().passes,
        Some(Passes::Joint)
    );
    let mixed = obj("trades", "[train.hybrid]\npasses = \"joint\"\n");
    assert_eq!(
        mixed.train.objective.hybrid().unwrap().passes,
        Some(Passes::Joint)
    );
    assert!(mixed.to_toml().contains("passes = \"joint\""));
    assert!(obj("mart", "").to_toml().contains("passes = \"separate\""));
}
