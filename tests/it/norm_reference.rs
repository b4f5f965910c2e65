//! The norm layer's modes against an independent float64 reference computed with plain loops.

use crate::common;

use advtrain::nn::{Ctx, Mode, Norm, NormKind, NormSpec, Route};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// Per-channel mean and biased / unbiased variance of an [N,C,H,W] tensor, by loops.
fn channel_stats(x: &[f64], n: usize, c: usize, hw: usize) -> Vec<(f64, f64, f64)> {
    (0..c)
        .map(|ch| {
            let vals: Vec<f64> = (0..n)
                .flat_map(|i| (0..hw).map(move |j| (i, j)))
                .map(|(i, j)| x[(i * c + ch) * hw + j])
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let ss = vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>();
            (m, ss / vals.len() as f64, ss / (vals.len() - 1) as f64)
        })
        .collect()
}

fn setup(spec: NormSpec) -> (VarStore, Norm, Tensor) {
    let mut vs = VarStore::new(Device::Cpu);
    let norm = Norm::new(&vs.root().sub("bn"), 3, spec);
    vs.double();
    tch::manual_seed(1);
    tch::no_grad(|| {
        for a in &norm.affine {
            a.weight
                .shallow_clone()
                .copy_(&(Tensor::rand([3], (Kind::Double, Device::Cpu)) + 0.5));
            a.bias
                .shallow_clone()
                .copy_(&Tensor::randn([3], (Kind::Double, Device::Cpu)));
        }
    });
    let x = Tensor::randn([4, 3, 5, 5], (Kind::Double, Device::Cpu)) * 2.0 + 0.7;
    (vs, norm, x)
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "{what}[{i}]: {x} vs {y}");
    }
}

/// y = gamma (x - mu) / sqrt(var + eps) + beta with the given per-channel mu, var.
fn reference(
    x: &[f64],
    mu: &[f64],
    var: &[f64],
    g: &[f64],
    b: &[f64],
    c: usize,
    hw: usize,
) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(k, v)| {
            let ch = (k / hw) % c;
            g[ch] * (v - mu[ch]) / (var[ch] + 1e-5).sqrt() + b[ch]
        })
        .collect()
}

#[test]
fn train_mode_uses_batch_stats_and_updates_running_stats() {
    let _rng = common::rng_shared();
    let (_vs, norm, x) = setup(NormSpec::default());
    let xv = to_vec(&x);
    let st = channel_stats(&xv, 4, 3, 25);
    let mu: Vec<f64> = st.iter().map(|s| s.0).collect();
    let var_b: Vec<f64> = st.iter().map(|s| s.1).collect();
    let (g, b) = (to_vec(&norm.affine[0].weight), to_vec(&norm.affine[0].bias));
    let y = norm.forward(&x, &Ctx::new(Route::default(), Mode::Train));
    assert_close(
        &to_vec(&y),
        &reference(&xv, &mu, &var_b, &g, &b, 3, 25),
        1e-10,
        "train output",
    );
    // running = 0.9 * init + 0.1 * batch (unbiased variance), PyTorch convention.
    let rm: Vec<f64> = mu.iter().map(|m| 0.1 * m).collect();
    let rv: Vec<f64> = st.iter().map(|s| 0.9 + 0.1 * s.2).collect();
    assert_close(
        &to_vec(&norm.stats[0].running_mean),
        &rm,
        1e-12,
        "running_mean",
    );
    assert_close(
        &to_vec(&norm.stats[0].running_var),
        &rv,
        1e-12,
        "running_var",
    );
    assert_eq!(norm.stats[0].num_batches_tracked.int64_value(&[]), 1);
}

#[test]
fn eval_mode_uses_running_stats_and_changes_nothing() {
    let _rng = common::rng_shared();
    let (_vs, norm, x) = setup(NormSpec::default());
    tch::no_grad(|| {
        norm.stats[0]
            .running_mean
            .shallow_clone()
            .copy_(&Tensor::from_slice(&[0.5f64, -1.0, 2.0]));
        norm.stats[0]
            .running_var
            .shallow_clone()
            .copy_(&Tensor::from_slice(&[2.0f64, 0.25, 4.0]));
    });
    let xv = to_vec(&x);
    let (g, b) = (to_vec(&norm.affine[0].weight), to_vec(&norm.affine[0].bias));
    let y = norm.forward(&x, &Ctx::new(Route::default(), Mode::Eval));
    let expect = reference(&xv, &[0.5, -1.0, 2.0], &[2.0, 0.25, 4.0], &g, &b, 3, 25);
    assert_close(&to_vec(&y), &expect, 1e-10, "eval output");
    assert_close(
        &to_vec(&norm.stats[0].running_mean),
        &[0.5, -1.0, 2.0],
        0.0,
        "running_mean untouched",
    );
    assert_eq!(norm.stats[0].num_batches_tracked.int64_value(&[]), 0);
}

#[test]
fn train_frozen_uses_batch_stats_without_updating() {
    let _rng = common::rng_shared();
    let (_vs, norm, x) = setup(NormSpec::default());
    let xv = to_vec(&x);
    let st = channel_stats(&xv, 4, 3, 25);
    let mu: Vec<f64> = st.iter().map(|s| s.0).collect();
    let var_b: Vec<f64> = st.iter().map(|s| s.1).collect();
    let (g, b) = (to_vec(&norm.affine[0].weight), to_vec(&norm.affine[0].bias));
    let y = norm.forward(&x, &Ctx::new(Route::default(), Mode::TrainFrozen));
    assert_close(
        &to_vec(&y),
        &reference(&xv, &mu, &var_b, &g, &b, 3, 25),
        1e-10,
        "frozen output",
    );
    assert_close(
        &to_vec(&norm.stats[0].running_mean),
        &[0.0; 3],
        0.0,
        "running_mean untouched",
    );
    assert_close(
        &to_vec(&norm.stats[0].running_var),
        &[1.0; 3],
        0.0,
        "running_var untouched",
    );
    assert_eq!(norm.stats[0].num_batches_tracked.int64_value(&[]), 0);
}

#[test]
fn gamma_starts_at_one_and_beta_at_zero() {
    let vs = VarStore::new(Device::Cpu);
    let norm = Norm::new(&vs.root().sub("bn"), 7, NormSpec::default());
    assert_close(&to_vec(&norm.affine[0].weight), &[1.0; 7], 0.0, "gamma");
    assert_close(&to_vec(&norm.affine[0].bias), &[0.0; 7], 0.0, "beta");
    let mut names: Vec<String> = vs.variables().into_keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bn.bias",
            "bn.num_batches_tracked",
            "bn.running_mean",
            "bn.running_var",
            "bn.weight"
        ]
    );
}

#[test]
fn group_layer_instance_norm_match_reference() {
    let _rng = common::rng_shared();
    for (kind, groups) in [
        (NormKind::Group, 3i64),
        (NormKind::Layer, 1),
        (NormKind::Instance, 3),
    ] {
        let spec = NormSpec {
            kind,
            groups: 3,
            ..NormSpec::default()
        };
        let (_vs, norm, x) = setup(spec);
        assert!(norm.stats.is_empty(), "{kind:?} has no statistics");
        let xv = to_vec(&x);
        let (g, b) = (to_vec(&norm.affine[0].weight), to_vec(&norm.affine[0].bias));
        let (n, c, hw) = (4usize, 3usize, 25usize);
        let per_group = c / groups as usize;
        let mut expect = vec![0.0; xv.len()];
        for i in 0..n {
            for grp in 0..groups as usize {
                let idx: Vec<usize> = (grp * per_group..(grp + 1) * per_group)
                    .flat_map(|ch| (0..hw).map(move |j| (i * c + ch) * hw + j))
                    .collect();
                let m = idx.iter().map(|&k| xv[k]).sum::<f64>() / idx.len() as f64;
                let v = idx.iter().map(|&k| (xv[k] - m).powi(2)).sum::<f64>() / idx.len() as f64;
                for &k in &idx {
                    let ch = (k / hw) % c;
                    expect[k] = g[ch] * (xv[k] - m) / (v + 1e-5).sqrt() + b[ch];
                }
            }
        }
        // Mode does not matter for statistics-free norms.
        for mode in [Mode::Train, Mode::Eval] {
            let y = norm.forward(&x, &Ctx::new(Route::default(), mode));
            assert_close(&to_vec(&y), &expect, 1e-10, &format!("{kind:?} {mode}"));
        }
    }
}

#[test]
fn two_stat_sets_are_updated_only_through_their_route() {
    let _rng = common::rng_shared();
    let spec = NormSpec {
        ns_domains: 2,
        ap_domains: 2,
        ..NormSpec::default()
    };
    let (vs, norm, x) = setup(spec);
    let names: Vec<String> = vs
        .variables()
        .into_keys()
        .filter(|k| k.ends_with("running_mean"))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let _ = norm.forward(&x, &Ctx::new(Route::domain(1), Mode::Train));
    assert_close(
        &to_vec(&norm.stats[0].running_mean),
        &[0.0; 3],
        0.0,
        "clean set untouched",
    );
    assert!(
        to_vec(&norm.stats[1].running_mean)
            .iter()
            .any(|v| v.abs() > 1e-3),
        "adv set moved"
    );
    assert!(norm.check_route(Route::domain(2)).is_err());
}
