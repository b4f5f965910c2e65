//! PGD/FGSM properties (projection, clamping, loss increase) and the input gradient against
//! central finite differences in float64.

mod common;

use advtrain::attack::pgd::{cw_margin, Init, PgdLoss};
use advtrain::attack::{
    cross_entropy, input_grad, per_sample_l2, project, Attack, Classifier, Fgsm, Pgd, PgdConfig,
    ThreatNorm,
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
