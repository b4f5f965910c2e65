//! Square Attack: the p schedule and square sizes against hand-computed values (AutoAttack's
//! `autoattack/square.py` formulas), the L2 pattern by hand, and properties of the L-inf and L2
//! attacks on a small confident CNN (ball, box, the stripes start, one shared window per
//! iteration, margin never increasing, fooled points misclassified, reproducibility).

use crate::common;

use advtrain::attack::square::{l2_square_pattern, margin_loss};
use advtrain::attack::{
    correct, p_selection, per_sample_l2, square_size, Attack, Classifier, Square, SquareConfig,
    ThreatNorm,
};
use advtrain::nn::{Ctx, Network};
use tch::{Device, Kind, Tensor};

/// Every test holds the crate's torch RNG lock (tests/common: one generator per process).
fn lock() -> std::sync::RwLockWriteGuard<'static, ()> {
    common::rng_lock()
}

fn small_cnn() -> Network {
    common::confident_small_cnn()
}

/// `n` random 1x28x28 images labelled with the model's own prediction (all correctly
/// classified, positive margins).
fn batch(f: &Classifier, n: i64) -> (Tensor, Tensor) {
    tch::manual_seed(4);
    let x = Tensor::rand([n, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| f.logits(&x).argmax(-1, false));
    (x, y)
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

fn bools(t: &Tensor) -> Vec<bool> {
    Vec::<bool>::try_from(t.flatten(0, -1)).unwrap()
}

fn margins(f: &Classifier, x: &Tensor, y: &Tensor) -> Vec<f32> {
    floats(&tch::no_grad(|| margin_loss(&f.logits(x), y)))
}

fn cfg(norm: ThreatNorm, eps: f64, n_queries: usize) -> SquareConfig {
    SquareConfig {
        n_queries,
        ..SquareConfig::new(norm, eps)
    }
}

#[test]
fn p_selection_hand_values() {
    let _g = lock();
    // it' = int(it / n_queries * 10000) in float64, then p_init / 2^j with j the number of
    // thresholds 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 that it' exceeds strictly.
    // n_queries = 5000 (it' ~ 2 it):
    //   it 0    -> it' 0                         -> 0.8
    //   it 5    -> 5/5000*1e4 = 10 (not > 10)    -> 0.8
    //   it 6    -> 0.0012*1e4 = 11.999.. -> 11   -> 0.8/2   = 0.4
    //   it 25   -> 50 (not > 50)                 -> 0.4
    //   it 26   -> 52                            -> 0.8/4   = 0.2
    //   it 100  -> 200                           -> 0.2
    //   it 101  -> 202                           -> 0.8/8   = 0.1
    //   it 251  -> 502                           -> 0.8/16  = 0.05
    //   it 501  -> 1002                          -> 0.8/32  = 0.025
    //   it 1001 -> 2002                          -> 0.8/64  = 0.0125
    //   it 2001 -> 4002                          -> 0.8/128 = 0.00625
    //   it 3000 -> 6000 (not > 6000)             -> 0.00625
    //   it 3001 -> 6002                          -> 0.8/256 = 0.003125
    //   it 4000 -> 8000 (not > 8000)             -> 0.003125
    //   it 4001 -> 8002                          -> 0.8/512 = 0.0015625
    //   it 4999 -> 9998                          -> 0.0015625
    let nq5000 = [
        (0, 0.8),
        (5, 0.8),
        (6, 0.4),
        (25, 0.4),
        (26, 0.2),
        (100, 0.2),
        (101, 0.1),
        (251, 0.05),
        (501, 0.025),
        (1001, 0.0125),
        (2001, 0.00625),
        (3000, 0.00625),
        (3001, 0.003125),
        (4000, 0.003125),
        (4001, 0.0015625),
        (4999, 0.0015625),
    ];
    for (it, p) in nq5000 {
        assert_eq!(p_selection(0.8, it, 5000), p, "n_queries 5000, it {it}");
    }
    // n_queries = 1000 (it' ~ 10 it):
    //   it 1   -> 10                                -> 0.8
    //   it 2   -> 20                                -> 0.4
    //   it 5   -> 50                                -> 0.4
    //   it 6   -> 60                                -> 0.2
    //   it 20  -> 200                               -> 0.2
    //   it 21  -> 210                               -> 0.1
    //   it 50  -> 500                               -> 0.1
    //   it 51  -> 0.051*1e4 = 509.99.. -> 509       -> 0.05
    //   it 101 -> 1010                              -> 0.025
    //   it 201 -> 2010                              -> 0.0125
    //   it 401 -> 4010                              -> 0.00625
    //   it 601 -> 6010                              -> 0.003125
    //   it 800 -> 8000                              -> 0.003125
    //   it 801 -> 8010                              -> 0.0015625
    let nq1000 = [
        (1, 0.8),
        (2, 0.4),
        (5, 0.4),
        (6, 0.2),
        (20, 0.2),
        (21, 0.1),
        (50, 0.1),
        (51, 0.05),
        (101, 0.025),
        (201, 0.0125),
        (401, 0.00625),
        (601, 0.003125),
        (800, 0.003125),
        (801, 0.0015625),
    ];
    for (it, p) in nq1000 {
        assert_eq!(p_selection(0.8, it, 1000), p, "n_queries 1000, it {it}");
    }
    // Another p_init: 0.05 / 4 at it' = 60.
    assert_eq!(p_selection(0.05, 6, 1000), 0.0125);
}

#[test]
fn square_size_hand_values() {
    let _g = lock();
    use ThreatNorm::{Linf, L2};
    // s = round(sqrt(p * c*h*w / c)) (halves to even), >= 1 (L-inf), >= 3 and odd (L2),
    // <= min(h, w).
    // 28x28x1 (h*w = 784):
    //   p 0.8       : sqrt(627.2)  = 25.04 -> 25;           L2 25
    //   p 0.4       : sqrt(313.6)  = 17.71 -> 18;           L2 18 -> 19
    //   p 0.05      : sqrt(39.2)   = 6.26  -> 6;            L2 7
    //   p 0.0015625 : sqrt(1.225)  = 1.11  -> 1;            L2 3
    //   p 1.0       : sqrt(784)    = 28    -> 28;           L2 28 -> 29 -> min(h,w) 28
    let c28 = [
        (0.8, 25, 25),
        (0.4, 18, 19),
        (0.05, 6, 7),
        (0.0015625, 1, 3),
        (1.0, 28, 28),
    ];
    for (p, linf, l2) in c28 {
        assert_eq!(square_size(Linf, p, 1, 28, 28), linf, "28x28x1 linf p {p}");
        assert_eq!(square_size(L2, p, 1, 28, 28), l2, "28x28x1 l2 p {p}");
    }
    // 32x32x3 (c*h*w = 3072, / 3 = 1024):
    //   p 0.8            : sqrt(819.2) = 28.62 -> 29;       L2 29
    //   p 0.4            : sqrt(409.6) = 20.24 -> 20;       L2 21
    //   p 0.05           : sqrt(51.2)  = 7.16  -> 7;        L2 7
    //   p 25/4096        : sqrt(6.25)  = 2.5   -> 2 (even); L2 3
    //   p 81/4096        : sqrt(20.25) = 4.5   -> 4 (even); L2 4 -> 5
    //   p 1.0            : 32;                              L2 33 -> 32
    let c32 = [
        (0.8, 29, 29),
        (0.4, 20, 21),
        (0.05, 7, 7),
        (25.0 / 4096.0, 2, 3),
        (81.0 / 4096.0, 4, 5),
        (1.0, 32, 32),
    ];
    for (p, linf, l2) in c32 {
        assert_eq!(square_size(Linf, p, 3, 32, 32), linf, "32x32x3 linf p {p}");
        assert_eq!(square_size(L2, p, 3, 32, 32), l2, "32x32x3 l2 p {p}");
    }
}

#[test]
fn l2_pattern_hand_case() {
    let _g = lock();
    // s = 3: top rectangle 1x3 = [1/4, 1 + 1/4, 1/4] (centre gets 1, the 3x3 ring 1/4), norm
    // sqrt(1.6875); bottom rectangle 2x3 = [[1/4, 1/4, 1/4], [1/4, 5/4, 1/4]], norm
    // sqrt(1.875); pattern = [top / |top|; -bottom / |bottom|] / sqrt(2).
    let (a, b) = (
        1.6875f64.sqrt() * 2f64.sqrt(),
        1.875f64.sqrt() * 2f64.sqrt(),
    );
    let expect = [
        0.25 / a,
        1.25 / a,
        0.25 / a,
        -0.25 / b,
        -0.25 / b,
        -0.25 / b,
        -0.25 / b,
        -1.25 / b,
        -0.25 / b,
    ];
    let got = floats(&l2_square_pattern(3));
    for (g, e) in got.iter().zip(expect) {
        assert!((*g as f64 - e).abs() < 1e-6, "{got:?} vs {expect:?}");
    }
    for s in [5i64, 7, 12] {
        let e = l2_square_pattern(s as usize);
        assert_eq!(e.size(), vec![s, s]);
        let norm = e.pow_tensor_scalar(2).sum(Kind::Float).double_value(&[]);
        assert!((norm - 1.0).abs() < 1e-5, "s {s}: squared norm {norm}");
        assert!(e.narrow(0, 0, s / 2).min().double_value(&[]) > 0.0);
        assert!(e.narrow(0, s / 2, s - s / 2).max().double_value(&[]) < 0.0);
    }
}

#[test]
fn linf_stripes_start_and_one_shared_window() {
    let _g = lock();
    let net = small_cnn();
    let f = Classifier::new(net.model.as_ref(), Ctx::eval());
    // Mid-grey images: no clipping, so the start is exactly x +- eps.
    let x = Tensor::full([8, 1, 28, 28], 0.5, (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| f.logits(&x).argmax(-1, false));
    let eps = 0.1;
    let base = SquareConfig {
        p_init: 0.1,
        ..cfg(ThreatNorm::Linf, eps, 0)
    };
    tch::manual_seed(21);
    let start = Square::new(base.clone()).run_once(&f, &x, &y);
    assert_eq!(start.iterations, 0);
    let d0 = &start.x_adv - &x;
    // Every pixel moved by exactly eps, with one sign per (image, channel, column).
    assert!((d0.abs() - eps).abs().max().double_value(&[]) < 1e-6);
    let col = d0.narrow(2, 0, 1);
    assert!(max_abs(&(&d0 - &col)) == 0.0, "vertical stripes");
    let signs = floats(&col.sign());
    assert!(signs.iter().any(|&v| v > 0.0) && signs.iter().any(|&v| v < 0.0));

    // Same seed, one iteration: the same stripes, then one 9x9 window (p 0.1 on 28x28:
    // round(sqrt(78.4)) = 9) at the same place for every point that accepted it.
    tch::manual_seed(21);
    let one = Square::new(SquareConfig {
        n_queries: 1,
        ..base
    })
    .run_once(&f, &x, &y);
    assert_eq!(one.iterations, 1);
    let changed = (&one.x_adv - &start.x_adv).abs().gt(1e-7);
    let per_point = bools(&changed.any_dims([1i64, 2, 3].as_slice(), false));
    let accepted = bools(&one.margin.lt_tensor(&start.margin));
    assert_eq!(
        per_point, accepted,
        "a point changed iff its candidate was kept"
    );
    assert!(accepted.iter().any(|&a| a), "some candidate was kept");
    let rows = bools(&changed.any_dims([0i64, 1, 3].as_slice(), false));
    let cols = bools(&changed.any_dims([0i64, 1, 2].as_slice(), false));
    let span = |v: &[bool]| {
        let first = v.iter().position(|&b| b).unwrap();
        let last = v.iter().rposition(|&b| b).unwrap();
        last - first + 1
    };
    assert!(
        span(&rows) <= 9 && span(&cols) <= 9,
        "rows {rows:?} cols {cols:?}"
    );
    // Inside the window the new point is x +- eps with the window's single sign.
    let d1 = &one.x_adv - &x;
    assert!((d1.abs() - eps).abs().max().double_value(&[]) < 1e-6);
    let moved = d1.masked_select(&changed);
    let s = floats(&moved.sign());
    assert!(
        s.iter().all(|&v| v == s[0]),
        "one sign per channel for the whole batch"
    );
}

#[test]
fn linf_run_in_ball_and_box_and_margin_never_increases() {
    let _g = lock();
    let net = small_cnn();
    let f = Classifier::new(net.model.as_ref(), Ctx::eval());
    let (x, y) = batch(&f, 8);
    let eps = 0.03;
    tch::manual_seed(5);
    let run = Square::new(cfg(ThreatNorm::Linf, eps, 40)).run_once(&f, &x, &y);
    assert!(max_abs(&(&run.x_adv - &x)) <= eps + 1e-6);
    assert!(run.x_adv.min().double_value(&[]) >= 0.0 && run.x_adv.max().double_value(&[]) <= 1.0);
    check_margins(&f, &x, &y, &run);
}

/// The margins the run reports are those of its points, never above the start's, lower for
/// some points; a negative margin means misclassified; queries are counted.
fn check_margins(f: &Classifier, x: &Tensor, y: &Tensor, run: &advtrain::attack::SquareRun) {
    let (m, m0) = (floats(&run.margin), floats(&run.init_margin));
    let recomputed = margins(f, &run.x_adv, y);
    for i in 0..m.len() {
        assert!(
            (m[i] - recomputed[i]).abs() <= 1e-3 * (1.0 + m[i].abs()),
            "point {i}: {} vs {}",
            m[i],
            recomputed[i]
        );
        assert!(
            m[i] <= m0[i],
            "point {i}: margin rose from {} to {}",
            m0[i],
            m[i]
        );
    }
    assert!(
        m.iter().zip(&m0).any(|(a, b)| a < b),
        "the search improved some point: {m:?} vs {m0:?}"
    );
    let ok = bools(&tch::no_grad(|| correct(&f.logits(&run.x_adv), y)));
    for i in 0..m.len() {
        if m[i] < 0.0 {
            assert!(!ok[i], "point {i}: margin {} but still correct", m[i]);
        }
    }
    let q = floats(&run.n_queries);
    assert!(q
        .iter()
        .all(|&v| v >= 1.0 && v <= 1.0 + run.iterations as f32));
    assert!(run.iterations >= 1);
    let _ = x;
}

#[test]
fn linf_perturb_fools_some_points() {
    let _g = lock();
    let net = small_cnn();
    let f = Classifier::new(net.model.as_ref(), Ctx::eval());
    let (x, y) = batch(&f, 16);
    let eps = 0.3;
    tch::manual_seed(6);
    let atk = Square::new(SquareConfig {
        n_restarts: 2,
        ..cfg(ThreatNorm::Linf, eps, 300)
    });
    let xa = atk.perturb(&f, &x, &y);
    assert!(max_abs(&(&xa - &x)) <= eps + 1e-6);
    assert!(xa.min().double_value(&[]) >= 0.0 && xa.max().double_value(&[]) <= 1.0);
    let ok = bools(&tch::no_grad(|| correct(&f.logits(&xa), &y)));
    let moved = bools(
        &(&xa - &x)
            .abs()
            .gt(0.0)
            .any_dims([1i64, 2, 3].as_slice(), false),
    );
    let fooled = ok.iter().filter(|&&o| !o).count();
    assert!(fooled >= 1, "eps 0.3, 300 queries fooled nothing");
    for i in 0..ok.len() {
        // A returned example is either a misclassified point or the clean image.
        assert_eq!(moved[i], !ok[i], "point {i}");
    }
    // A misclassified clean point is left alone.
    let y_wrong = (&y + 1).remainder(10);
    let xw = atk.perturb(&f, &x, &y_wrong);
    assert!(max_abs(&(&xw - &x)) == 0.0);
}

#[test]
fn same_seed_same_result() {
    let _g = lock();
    let net = small_cnn();
    let f = Classifier::new(net.model.as_ref(), Ctx::eval());
    let (x, y) = batch(&f, 8);
    for (norm, eps) in [(ThreatNorm::Linf, 0.1), (ThreatNorm::L2, 1.5)] {
        let atk = Square::new(cfg(norm, eps, 20));
        let run = |seed: i64| {
            tch::manual_seed(seed);
            atk.run_once(&f, &x, &y).x_adv
        };
        let r1 = run(7);
        assert!(r1.equal(&run(7)), "{norm}: same seed, other result");
        assert!(!r1.equal(&run(8)), "{norm}: another seed gives another run");
    }
    // perturb: the same, through the restarts.
    let atk = Square::new(SquareConfig {
        n_restarts: 2,
        ..cfg(ThreatNorm::Linf, 0.3, 20)
    });
    tch::manual_seed(7);
    let a1 = atk.perturb(&f, &x, &y);
    tch::manual_seed(7);
    assert!(a1.equal(&atk.perturb(&f, &x, &y)));
    assert!(!a1.equal(&x), "something was fooled");
}

#[test]
fn l2_start_and_run_in_ball_and_box_and_margin_never_increases() {
    let _g = lock();
    let net = small_cnn();
    let f = Classifier::new(net.model.as_ref(), Ctx::eval());
    // The start on mid-grey images (no clipping): norm exactly eps, nonzero only on the 5x5
    // grid of 5x5 squares from row/column 1 (h/5 = 5, (28 - 25)/2 = 1).
    let xg = Tensor::full([2, 1, 28, 28], 0.5, (Kind::Float, Device::Cpu));
    let yg = tch::no_grad(|| f.logits(&xg).argmax(-1, false));
    tch::manual_seed(9);
    let start = Square::new(cfg(ThreatNorm::L2, 1.0, 0)).run_once(&f, &xg, &yg);
    let d0 = &start.x_adv - &xg;
    let n0 = floats(&per_sample_l2(&d0));
    assert!(n0.iter().all(|v| (v - 1.0).abs() < 1e-4), "{n0:?}");
    assert!(max_abs(&d0.narrow(2, 0, 1)) == 0.0 && max_abs(&d0.narrow(2, 26, 2)) == 0.0);
    assert!(max_abs(&d0.narrow(3, 0, 1)) == 0.0 && max_abs(&d0.narrow(3, 26, 2)) == 0.0);

    let (x, y) = batch(&f, 8);
    let eps = 0.5;
    tch::manual_seed(10);
    let run = Square::new(cfg(ThreatNorm::L2, eps, 40)).run_once(&f, &x, &y);
    let norms = per_sample_l2(&(&run.x_adv - &x));
    assert!(norms.max().double_value(&[]) <= eps + 1e-4, "{norms}");
    assert!(run.x_adv.min().double_value(&[]) >= 0.0 && run.x_adv.max().double_value(&[]) <= 1.0);
    check_margins(&f, &x, &y, &run);
}

#[test]
fn l2_perturb_fools_some_points() {
    let _g = lock();
    let net = small_cnn();
    let f = Classifier::new(net.model.as_ref(), Ctx::eval());
    let (x, y) = batch(&f, 8);
    let eps = 3.0;
    tch::manual_seed(12);
    let xa = Square::new(cfg(ThreatNorm::L2, eps, 100)).perturb(&f, &x, &y);
    let norms = per_sample_l2(&(&xa - &x));
    assert!(norms.max().double_value(&[]) <= eps + 1e-4);
    assert!(xa.min().double_value(&[]) >= 0.0 && xa.max().double_value(&[]) <= 1.0);
    let ok = bools(&tch::no_grad(|| correct(&f.logits(&xa), &y)));
    assert!(ok.iter().any(|&o| !o), "eps 3, 100 queries fooled nothing");
}

#[test]
fn config_name_and_defaults() {
    let _g = lock();
    let c = SquareConfig::new(ThreatNorm::Linf, 8.0 / 255.0);
    assert_eq!((c.n_queries, c.p_init, c.n_restarts), (5000, 0.8, 1));
    let atk = Square::new(c.clone());
    assert_eq!(atk.name(), "square-5000");
    let v = atk.config();
    for key in [
        "attack",
        "norm",
        "eps",
        "n_queries",
        "p_init",
        "n_restarts",
        "loss",
    ] {
        assert!(v.get(key).is_some(), "config lacks {key}: {v}");
    }
    assert_eq!(v["attack"], "square");
    assert_eq!(v["norm"], "linf");
    let parsed: SquareConfig = serde_json::from_str(r#"{"eps": 0.03137254901960784}"#).unwrap();
    assert_eq!(parsed, c);
    assert!(serde_json::from_str::<SquareConfig>(r#"{"eps": 0.1, "steps": 3}"#).is_err());
    let two = Square::new(SquareConfig {
        n_restarts: 2,
        n_queries: 100,
        ..SquareConfig::new(ThreatNorm::L2, 0.5)
    });
    assert_eq!(two.name(), "square-100x2");
    assert!(SquareConfig {
        p_init: 0.0,
        ..c.clone()
    }
    .validate("a")
    .is_err());
    assert!(SquareConfig {
        n_restarts: 0,
        ..c.clone()
    }
    .validate("a")
    .is_err());
    assert!(SquareConfig { eps: -1.0, ..c }.validate("a").is_err());
}
