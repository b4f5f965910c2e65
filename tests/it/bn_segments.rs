//! Multi-domain BatchNorm in the train modes when every statistics set is one contiguous segment
//! (a dual-BN clean + adversarial batch): one native batch_norm per segment. Its outputs, its
//! gradients (input, gamma, beta) and the running statistics equal the hand-written path (the
//! same batch with a set split over two segments, which must take it) within float32 rounding,
//! and a float64 computation of the formula (to 1e-10 when the layer runs in float64).

use crate::common;
use advtrain::nn::{Ctx, Mode, Norm, NormSpec, Route, Segment};
use tch::{nn::VarStore, Device, Kind, Tensor};

const C: i64 = 4;

/// A dual-NS, dual-AP norm layer with distinct affine parameters and running statistics per
/// set (deterministic values, no generator).
fn layer(kind: Kind) -> (VarStore, Norm) {
    let mut vs = VarStore::new(Device::Cpu);
    let spec = NormSpec {
        ns_domains: 2,
        ap_domains: 2,
        ..NormSpec::default()
    };
    let norm = Norm::new(&vs.root().sub("bn"), C, spec);
    if kind == Kind::Double {
        vs.double();
    }
    let ramp = |a: f64, b: f64| Tensor::linspace(a, b, C, (kind, Device::Cpu));
    tch::no_grad(|| {
        for (k, a) in norm.affine.iter().enumerate() {
            let k = k as f64;
            a.weight
                .shallow_clone()
                .copy_(&ramp(0.5 + k, 1.5 - 0.3 * k));
            a.bias.shallow_clone().copy_(&ramp(-0.2 * k, 0.4));
        }
        for (k, s) in norm.stats.iter().enumerate() {
            let k = k as f64;
            s.running_mean.shallow_clone().copy_(&ramp(0.1 * k, -0.3));
            s.running_var.shallow_clone().copy_(&ramp(0.7, 1.2 + k));
        }
    });
    (vs, norm)
}

fn route(d: usize) -> Route {
    Route { ns: d, ap: d }
}

/// Output, gradients (x, every affine tensor) of `sum(y * r)`, and the running statistics and
/// batch counts after one forward of `x` split into `segs` in `mode`.
fn run(kind: Kind, x: &Tensor, segs: &[Segment], mode: Mode) -> Vec<(String, Tensor)> {
    let (_vs, norm) = layer(kind);
    let x = x.to_kind(kind).detach().set_requires_grad(true);
    let y = norm.forward(&x, &Ctx::mixed(mode, segs));
    let r = Tensor::linspace(-1.0, 2.0, y.numel() as i64, (kind, Device::Cpu))
        .view(y.size().as_slice());
    let mut params = vec![x.shallow_clone()];
    for a in &norm.affine {
        params.push(a.weight.shallow_clone());
        params.push(a.bias.shallow_clone());
    }
    let grads = Tensor::run_backward(&[(&y * &r).sum(kind)], &params, false, false);
    let mut out = vec![("y".to_string(), y.detach())];
    for (i, g) in grads.into_iter().enumerate() {
        out.push((format!("grad {i}"), g));
    }
    for (k, s) in norm.stats.iter().enumerate() {
        out.push((format!("running_mean {k}"), s.running_mean.copy()));
        out.push((format!("running_var {k}"), s.running_var.copy()));
        out.push((format!("num_batches {k}"), s.num_batches_tracked.copy()));
    }
    out
}

/// The formula in float64 by plain tensor ops: per segment its batch mean and biased variance,
/// `y = gamma (x - mu) / sqrt(var + eps) + beta`; `Train` moves the set's running statistics by
/// momentum 0.1 towards the mean and the unbiased variance.
fn formula(x: &Tensor, sizes: &[i64], mode: Mode) -> Vec<(String, Tensor)> {
    let (_vs, norm) = layer(Kind::Double);
    let x = x.to_kind(Kind::Double).detach().set_requires_grad(true);
    let dims: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
    let mut shape = vec![1, C];
    shape.resize(x.dim(), 1);
    let (mut start, mut parts) = (0, vec![]);
    for (k, &n) in sizes.iter().enumerate() {
        let xs = x.narrow(0, start, n);
        start += n;
        let mu = xs.mean_dim(dims.as_slice(), true, Kind::Double);
        let var = (&xs - &mu)
            .square()
            .mean_dim(dims.as_slice(), true, Kind::Double);
        let a = &norm.affine[k];
        let y = (&xs - &mu) / (&var + 1e-5).sqrt() * a.weight.view(shape.as_slice())
            + a.bias.view(shape.as_slice());
        if mode == Mode::Train {
            let m = (xs.numel() as i64 / C) as f64;
            let s = &norm.stats[k];
            tch::no_grad(|| {
                let rm = &s.running_mean * 0.9 + mu.detach().flatten(0, -1) * 0.1;
                let rv = &s.running_var * 0.9 + var.detach().flatten(0, -1) * (0.1 * m / (m - 1.0));
                s.running_mean.shallow_clone().copy_(&rm);
                s.running_var.shallow_clone().copy_(&rv);
                let _ = s.num_batches_tracked.shallow_clone().g_add_scalar_(1);
            });
        }
        parts.push(y);
    }
    let y = Tensor::cat(&parts, 0);
    let r = Tensor::linspace(-1.0, 2.0, y.numel() as i64, (Kind::Double, Device::Cpu))
        .view(y.size().as_slice());
    let mut params = vec![x.shallow_clone()];
    for a in &norm.affine {
        params.push(a.weight.shallow_clone());
        params.push(a.bias.shallow_clone());
    }
    let grads = Tensor::run_backward(&[(&y * &r).sum(Kind::Double)], &params, false, false);
    let mut out = vec![("y".to_string(), y.detach())];
    for (i, g) in grads.into_iter().enumerate() {
        out.push((format!("grad {i}"), g));
    }
    for (k, s) in norm.stats.iter().enumerate() {
        out.push((format!("running_mean {k}"), s.running_mean.copy()));
        out.push((format!("running_var {k}"), s.running_var.copy()));
        out.push((format!("num_batches {k}"), s.num_batches_tracked.copy()));
    }
    out
}

fn assert_close(a: &[(String, Tensor)], b: &[(String, Tensor)], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len());
    for ((n, x), (m, y)) in a.iter().zip(b) {
        assert_eq!(n, m);
        assert_eq!(x.size(), y.size(), "{what}: {n}");
        let (x, y) = (x.to_kind(Kind::Double), y.to_kind(Kind::Double));
        let err = (&x - &y).abs().max().double_value(&[]);
        let scale = 1.0 + y.abs().max().double_value(&[]);
        assert!(
            err <= tol * scale,
            "{what}: {n} differs by {err} (scale {scale})"
        );
    }
}

fn input(shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    // Deterministic, non-trivial values with different moments per segment.
    (Tensor::arange(n, (Kind::Double, Device::Cpu)) * 0.37)
        .sin()
        .view(shape)
        * 1.5
        + 0.2
}

#[test]
fn one_segment_per_set_equals_the_hand_written_path_and_the_formula() {
    let _rng = common::rng_shared();
    for shape in [vec![11, C, 3, 3], vec![11, C]] {
        let x = input(&shape);
        // Clean rows through set 0, adversarial rows through set 1: one segment per set.
        let native = [Segment::new(6, route(0)), Segment::new(5, route(1))];
        // The same function with set 0 split over two segments: the hand-written path.
        let hand = [
            Segment::new(2, route(0)),
            Segment::new(4, route(0)),
            Segment::new(5, route(1)),
        ];
        for mode in [Mode::Train, Mode::TrainFrozen] {
            let what = format!("{shape:?} {mode:?}");
            let a = run(Kind::Float, &x, &native, mode);
            let b = run(Kind::Float, &x, &hand, mode);
            assert_close(&a, &b, 2e-5, &format!("native vs hand-written, {what}"));
            let f = formula(&x, &[6, 5], mode);
            assert_close(&a, &f, 2e-5, &format!("native float32 vs formula, {what}"));
            let a64 = run(Kind::Double, &x, &native, mode);
            assert_close(
                &a64,
                &f,
                1e-10,
                &format!("native float64 vs formula, {what}"),
            );
            // The hand-written path takes its moments in float32 (`batch_moments`) whatever the
            // input kind: float32 agreement only.
            let b64 = run(Kind::Double, &x, &hand, mode);
            assert_close(
                &b64,
                &f,
                2e-6,
                &format!("hand-written float64 vs formula, {what}"),
            );
        }
        // The check can fail: another split is another function.
        let other = run(
            Kind::Double,
            &x,
            &[Segment::new(5, route(0)), Segment::new(6, route(1))],
            Mode::Train,
        );
        let f = formula(&x, &[6, 5], Mode::Train);
        let err = (&other[0].1 - &f[0].1).abs().max().double_value(&[]);
        assert!(err > 1e-3, "a 5/6 split gave the 6/5 output");
    }
}

#[test]
fn one_value_per_channel_keeps_the_hand_written_path() {
    let _rng = common::rng_shared();
    // A one-row segment of a 2-D input has one value per channel: native batch_norm refuses it
    // in training; the layer must not panic and gives zero-variance rows `beta`.
    let x = input(&[4, C]);
    let out = run(
        Kind::Float,
        &x,
        &[Segment::new(1, route(0)), Segment::new(3, route(1))],
        Mode::Train,
    );
    let (_vs, norm) = layer(Kind::Float);
    let y0 = out[0].1.get(0);
    let beta0 = &norm.affine[0].bias;
    assert!((&y0 - beta0).abs().max().double_value(&[]) < 1e-6, "{y0:?}");
}
