//! PGD/FGSM properties (projection, clamping, loss increase) and the input gradient against
//! central finite differences in float64.

use crate::common;

use advtrain::attack::pgd::{cw_margin, kl_to_clean, random_other_class, Init, PgdLoss, Target};
use advtrain::attack::{
    count, cross_entropy, input_grad, per_sample_l2, project, Attack, Classifier, Fgsm, Pgd,
    PgdConfig, ThreatNorm,
};
use advtrain::nn::{Ctx, Network};
use tch::{Device, Kind, Reduction, Tensor};

fn small_cnn() -> Network {
    common::confident_small_cnn()
}

fn batch() -> (Tensor, Tensor) {
    tch::manual_seed(4);
    (
        Tensor::rand([16, 1, 28, 28], (Kind::Float, Device::Cpu)),
        Tensor::randint(10, [16], (Kind::Int64, Device::Cpu)),
    )
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

#[test]
fn pgd_linf_stays_in_the_ball_and_the_box() {
    let _rng = common::rng_lock();
    let net = small_cnn();
    let f = Classifier::new(net.model.as_ref(), Ctx::eval());
    let (x, y) = batch();
    for init in [Init::Uniform, Init::Normal, Init::Zero] {
        let cfg = PgdConfig {
            init,
            restarts: 2,
            ..PgdConfig::new(ThreatNorm::Linf, 0.1, 0.03, 7)
        };
        let xa = Pgd::new(cfg).perturb(&f, &x, &y);
        assert!(
            max_abs(&(&xa - &x)) <= 0.1 + 1e-6,
            "{init:?}: linf {}",
            max_abs(&(&xa - &x))
        );
        assert!(xa.min().double_value(&[]) >= 0.0 && xa.max().double_value(&[]) <= 1.0);
        assert!(
            max_abs(&(&xa - &x)) > 0.05,
            "{init:?}: the attack moved the input"
        );
    }
}

#[test]
fn pgd_l2_stays_in_the_ball_and_the_box() {
    let _rng = common::rng_lock();
    let net = small_cnn();
    let f = Classifier::new(net.model.as_ref(), Ctx::eval());
    let (x, y) = batch();
    let xa = Pgd::new(PgdConfig::new(ThreatNorm::L2, 1.0, 0.25, 10)).perturb(&f, &x, &y);
    let norms = per_sample_l2(&(&xa - &x)).flatten(0, -1);
    assert!(
        norms.max().double_value(&[]) <= 1.0 + 1e-5,
        "l2 {}",
        norms.max().double_value(&[])
    );
    assert!(norms.min().double_value(&[]) > 0.5, "moved");
    assert!(xa.min().double_value(&[]) >= 0.0 && xa.max().double_value(&[]) <= 1.0);
}

#[test]
fn pgd_increases_the_loss_and_cw_margin_is_hand_checked() {
    let _rng = common::rng_lock();
    let net = small_cnn();
    let f = Classifier::new(net.model.as_ref(), Ctx::eval());
    let (x, y) = batch();
    let ce = |t: &Tensor| cross_entropy(&f.logits(t), &y, Reduction::Mean).double_value(&[]);
    let xa = Pgd::new(PgdConfig::new(ThreatNorm::Linf, 0.1, 0.02, 10)).perturb(&f, &x, &y);
    assert!(ce(&xa) > ce(&x) + 0.1, "clean {} adv {}", ce(&x), ce(&xa));
    let xf = Fgsm { eps: 0.1 }.perturb(&f, &x, &y);
    assert!((max_abs(&(&xf - &x)) - 0.1).abs() < 1e-6 && ce(&xf) > ce(&x));
    let cw = PgdConfig {
        loss: PgdLoss::Cw,
        ..PgdConfig::new(ThreatNorm::Linf, 0.1, 0.02, 10)
    };
    let xc = Pgd::new(cw).perturb(&f, &x, &y);
    assert!(max_abs(&(&xc - &x)) <= 0.1 + 1e-6);
    // margin of logits [1, 5, 2] with label 0: 5 - 1 = 4; label 1: 2 - 5 = -3.
    let z = Tensor::from_slice(&[1.0f32, 5.0, 2.0, 1.0, 5.0, 2.0]).view([2, 3]);
    let m = Vec::<f32>::try_from(cw_margin(&z, &Tensor::from_slice(&[0i64, 1]))).unwrap();
    assert_eq!(m, vec![4.0, -3.0]);
}

#[test]
fn projection_hand_case() {
    let _rng = common::rng_lock();
    let x = Tensor::from_slice(&[0.5f32, 0.95, 0.02, 0.5]).view([1, 1, 2, 2]);
    let xa = Tensor::from_slice(&[0.9f32, 1.2, -0.3, 0.52]).view([1, 1, 2, 2]);
    let p = Vec::<f32>::try_from(project(&xa, &x, 0.1, ThreatNorm::Linf).flatten(0, -1)).unwrap();
    let expect = [0.6f32, 1.0, 0.0, 0.52];
    for (a, b) in p.iter().zip(expect) {
        assert!((a - b).abs() < 1e-6, "{p:?}");
    }
    // L2: delta (0.3, 0.4) has norm 0.5 -> scaled to norm 0.25 = (0.15, 0.2).
    let x = Tensor::from_slice(&[0.5f32, 0.5]).view([1, 2]);
    let xa = Tensor::from_slice(&[0.8f32, 0.9]).view([1, 2]);
    let p = Vec::<f32>::try_from(project(&xa, &x, 0.25, ThreatNorm::L2).flatten(0, -1)).unwrap();
    assert!(
        (p[0] - 0.65).abs() < 1e-6 && (p[1] - 0.7).abs() < 1e-6,
        "{p:?}"
    );
}

#[test]
fn input_gradient_matches_finite_differences_in_float64() {
    let _rng = common::rng_lock();
    let mut net = small_cnn();
    net.vs.double();
    let f = Classifier::new(net.model.as_ref(), Ctx::eval());
    let (x, y) = batch();
    let x = x.to_kind(Kind::Double).narrow(0, 0, 4);
    let y = y.narrow(0, 0, 4);
    let loss = |t: &Tensor| cross_entropy(&f.logits(t), &y, Reduction::Mean);
    let xr = x.detach().set_requires_grad(true);
    let g = input_grad(&loss(&xr), &xr);
    let flat = x.flatten(0, -1);
    let gflat = g.flatten(0, -1);
    let h = 1e-6;
    for k in [0i64, 100, 785, 1500, 2000, 3135] {
        let e = Tensor::zeros_like(&flat)
            .index_fill(0, &Tensor::from_slice(&[k]), h)
            .view_as(&x);
        let fd = tch::no_grad(|| {
            (loss(&(&x + &e)).double_value(&[]) - loss(&(&x - &e)).double_value(&[])) / (2.0 * h)
        });
        let an = gflat.double_value(&[k]);
        assert!(
            (fd - an).abs() <= 1e-6 + 1e-4 * an.abs(),
            "pixel {k}: finite difference {fd} vs autograd {an}"
        );
    }
    // And parameters received no gradient from the attack's input gradient.
    for (name, p) in net.named_tensors() {
        assert!(
            !p.grad().defined() || p.grad().abs().sum(Kind::Double).double_value(&[]) == 0.0,
            "{name} got a gradient"
        );
    }
}

#[test]
fn same_seed_same_adversarial_examples() {
    let _rng = common::rng_lock();
    let net = small_cnn();
    let f = Classifier::new(net.model.as_ref(), Ctx::eval());
    let (x, y) = batch();
    let run = |seed| {
        tch::manual_seed(seed);
        Pgd::new(PgdConfig {
            restarts: 2,
            ..PgdConfig::new(ThreatNorm::Linf, 0.1, 0.02, 5)
        })
        .perturb(&f, &x, &y)
    };
    assert!(run(11).equal(&run(11)));
    assert!(!run(11).equal(&run(12)));
}

#[test]
fn kl_to_clean_matches_a_hand_computation() {
    // p = (0.25, 0.75, 0), q = softmax(0, ln 3, 0) = (0.2, 0.6, 0.2):
    // KL = 0.25 ln(0.25/0.2) + 0.75 ln(0.75/0.6) + 0 (0 log 0 = 0).
    let p = Tensor::from_slice(&[0.25f64, 0.75, 0.0]).view([1, 3]);
    let z = Tensor::from_slice(&[0.0f64, 3f64.ln(), 0.0]).view([1, 3]);
    let kl = kl_to_clean(&z, &p).double_value(&[0]);
    let expect = 0.25 * (0.25f64 / 0.2).ln() + 0.75 * (0.75f64 / 0.6).ln();
    assert!((kl - expect).abs() < 1e-12, "{kl} vs {expect}");
    // KL of a distribution to itself is 0.
    let q = z.softmax(-1, Kind::Double);
    assert!(kl_to_clean(&z, &q).double_value(&[0]).abs() < 1e-12);
}

#[test]
fn random_other_class_never_draws_the_label_and_covers_the_rest() {
    let _rng = common::rng_lock();
    tch::manual_seed(3);
    let y = Tensor::from_slice(&[0i64, 4, 9]).repeat([4000]);
    let t = random_other_class(&y, 10);
    assert_eq!(count(&t.eq_tensor(&y)), 0, "a target equals its label");
    assert!(t.min().int64_value(&[]) >= 0 && t.max().int64_value(&[]) <= 9);
    for (label, slot) in [(0i64, 0i64), (4, 1), (9, 2)] {
        let ts = t.view([4000, 3]).select(1, slot);
        let hist = ts.bincount::<Tensor>(None, 10);
        for k in 0..10 {
            let c = hist.int64_value(&[k]);
            if k == label {
                assert_eq!(c, 0);
            } else {
                // 4000 / 9 = 444 expected per class.
                assert!(
                    (300..600).contains(&c),
                    "label {label}: class {k} drawn {c} times"
                );
            }
        }
    }
}

#[test]
fn targeted_and_kl_pgd_stay_in_the_ball_and_move_their_losses() {
    let _rng = common::rng_lock();
    let net = small_cnn();
    let f = Classifier::new(net.model.as_ref(), Ctx::eval());
    let (x, y) = batch();
    for target in [Target::RunnerUp, Target::LeastLikely, Target::Random] {
        let pgd = Pgd::new(PgdConfig {
            loss: PgdLoss::TargetedCe,
            target,
            ..PgdConfig::new(ThreatNorm::Linf, 0.1, 0.02, 10)
        });
        tch::manual_seed(5);
        let t = pgd.targets(&f, &x, &y).expect("targeted");
        assert_eq!(
            count(&t.eq_tensor(&y)),
            0,
            "{target:?}: target equals label"
        );
        tch::manual_seed(5);
        let xa = pgd.perturb(&f, &x, &y);
        assert!(max_abs(&(&xa - &x)) <= 0.1 + 1e-6);
        assert!(xa.min().double_value(&[]) >= 0.0 && xa.max().double_value(&[]) <= 1.0);
        let ce_t = |u: &Tensor| tch::no_grad(|| cross_entropy(&f.logits(u), &t, Reduction::None));
        // Every point moved towards its target.
        let lower = count(&ce_t(&xa).lt_tensor(&ce_t(&x)));
        assert_eq!(
            lower, 16,
            "{target:?}: only {lower}/16 points got closer to the target"
        );
    }
    let trades = PgdConfig::trades(ThreatNorm::Linf, 0.1, 0.02, 10);
    assert_eq!((trades.init, trades.loss), (Init::Normal, PgdLoss::Kl));
    let xa = Pgd::new(trades).perturb(&f, &x, &y);
    assert!(max_abs(&(&xa - &x)) <= 0.1 + 1e-6);
    let p = tch::no_grad(|| f.logits(&x).softmax(-1, Kind::Float));
    let kl = tch::no_grad(|| kl_to_clean(&f.logits(&xa), &p));
    assert!(
        kl.min().double_value(&[]) > 1e-3,
        "KL-PGD left a point at KL {}",
        kl.min().double_value(&[])
    );
}

#[test]
fn model_checks_flag_saturated_gradients() {
    use advtrain::data::Dataset;
    use advtrain::eval::checks::{gradient_flags, model_checks};
    let _rng = common::rng_lock();
    let net = small_cnn();
    let f = Classifier::new(net.model.as_ref(), Ctx::eval());
    let (x, _) = batch();
    // Labels = the model's predictions, so every point is classified correctly.
    let y = tch::no_grad(|| f.logits(&x).argmax(-1, false));
    let data = Dataset::from_float(&x, &y, 10);
    let healthy = model_checks(&f, &data, 8, Device::Cpu);
    assert_eq!((healthy.zero, healthy.non_finite, healthy.n), (0, 0, 16));
    assert!(!healthy.randomized && !healthy.outputs_are_probabilities);
    assert!(gradient_flags(&healthy).is_empty());
    // Scale the logits by 1e6: softmax saturates, CE gradients underflow to exactly 0 in float32.
    tch::no_grad(|| {
        let mut w = net.variables()["fc.weight"].shallow_clone();
        let _ = w.g_mul_scalar_(1e6);
        let mut b = net.variables()["fc.bias"].shallow_clone();
        let _ = b.g_mul_scalar_(1e6);
    });
    let masked = model_checks(&f, &data, 8, Device::Cpu);
    assert!(
        masked.zero >= 8,
        "only {} of 16 points have zero gradients",
        masked.zero
    );
    let codes: Vec<String> = gradient_flags(&masked)
        .into_iter()
        .map(|f| f.code)
        .collect();
    assert!(codes.contains(&"zero-gradients".to_string()), "{codes:?}");
}
