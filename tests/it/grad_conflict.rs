//! Gradient conflict (`advtrain::analysis::grad_conflict`, `advtrain analyze grad-conflict`):
//! `conflict` on hand-made vectors, the term gradients against `backward()`, the KL term at
//! x' == x, and the CLI contract. Tiny models, n <= 32.

use crate::common;

use advtrain::analysis::grad_conflict::{
    conflict, grad_conflict, layer_of, parse_terms, term_gradients, term_loss, ConflictConfig, Term,
};
use advtrain::attack::cross_entropy;
use advtrain::nn::{Ctx, Mode, Network, Route, ADV, CLEAN};
use common::{analyze as advtrain, close, save_run, small_cnn_arch as arch, stderr};
use tch::{Device, Kind, Reduction, Tensor};

fn v(x: &[f64]) -> Tensor {
    Tensor::from_slice(x)
}

fn batch(n: i64, seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    (
        Tensor::rand([n, 1, 28, 28], (Kind::Float, Device::Cpu)),
        Tensor::randint(10, [n], (Kind::Int64, Device::Cpu)),
    )
}

#[test]
fn conflict_of_hand_made_vectors() {
    // a = [1,2,-1], b = [1,-1,-1]: <a,b> = 1 - 2 + 1 = 0; one of three components disagrees.
    let c = conflict(&[v(&[1.0, 2.0, -1.0])], &[v(&[1.0, -1.0, -1.0])]);
    assert_eq!(c.parameters, 3);
    assert!(c.cosine.abs() < 1e-12, "{c:?}");
    assert!(close(c.opposite_sign_fraction, 1.0 / 3.0, 1e-12), "{c:?}");
    assert!(close(c.norm_a, 6f64.sqrt(), 1e-12) && close(c.norm_b, 3f64.sqrt(), 1e-12));
    assert_eq!(c.both_nonzero_fraction, 1.0);

    // Split over several tensors: the same as one concatenated vector.
    let s = conflict(
        &[v(&[1.0]), v(&[2.0, -1.0])],
        &[v(&[1.0]), v(&[-1.0, -1.0])],
    );
    assert_eq!(
        (s.parameters, s.opposite_sign_fraction),
        (3, c.opposite_sign_fraction)
    );
    assert!(s.cosine.abs() < 1e-12 && close(s.norm_a, c.norm_a, 1e-12));

    // Identical -> cosine 1, fraction 0; negated -> cosine -1, fraction 1.
    let a = v(&[0.5, -2.0, 3.0, 1e-3]);
    let same = conflict(&[a.shallow_clone()], &[a.copy()]);
    assert!(close(same.cosine, 1.0, 1e-12) && same.opposite_sign_fraction == 0.0);
    let neg = conflict(&[a.shallow_clone()], &[-&a]);
    assert!(close(neg.cosine, -1.0, 1e-12) && neg.opposite_sign_fraction == 1.0);

    // Zeros: a component that is zero on either side never counts as opposite (the fraction
    // stays over all scalars); a zero vector has cosine NaN.
    let z = conflict(&[v(&[0.0, 1.0, -1.0, 2.0])], &[v(&[-1.0, 0.0, 1.0, 2.0])]);
    assert!(close(z.opposite_sign_fraction, 0.25, 1e-12), "{z:?}");
    assert!(close(z.both_nonzero_fraction, 0.5, 1e-12), "{z:?}");
    assert!(close(z.cosine, (-1.0 + 4.0) / 6.0, 1e-12), "{z:?}");
    let zero = conflict(&[v(&[0.0, 0.0])], &[v(&[1.0, -1.0])]);
    assert!(zero.cosine.is_nan(), "{zero:?}");
    assert_eq!((zero.opposite_sign_fraction, zero.norm_a), (0.0, 0.0));
    let empty = conflict(&[], &[]);
    assert_eq!(empty.parameters, 0);
    assert!(empty.cosine.is_nan() && empty.opposite_sign_fraction.is_nan());

    // Float tensors are compared in double precision.
    let f = conflict(
        &[v(&[1.0, 2.0]).to_kind(Kind::Float)],
        &[v(&[2.0, 4.0]).to_kind(Kind::Float)],
    );
    assert!(close(f.cosine, 1.0, 1e-12));
}

#[test]
fn terms_parse_and_layers_group_by_prefix() {
    assert_eq!(
        parse_terms("clean-ce,adv-ce").unwrap(),
        [Term::CleanCe, Term::AdvCe]
    );
    assert_eq!(parse_terms(" kl , kl-sg ").unwrap(), [Term::Kl, Term::KlSg]);
    for bad in ["foo,adv-ce", "kl", "kl,kl,kl", "kl,"] {
        let e = parse_terms(bad).err().unwrap().to_string();
        assert!(e.contains("--terms"), "{bad}: {e}");
    }
    assert!(parse_terms("foo,adv-ce")
        .err()
        .unwrap()
        .to_string()
        .contains("foo"));
    // The names are written once (clap's ValueEnum): the command line, Display, FromStr and
    // serde agree, and are the names the JSON has always held.
    use clap::ValueEnum;
    let names: Vec<String> = Term::value_variants()
        .iter()
        .map(|t| t.to_possible_value().unwrap().get_name().to_string())
        .collect();
    let want = [
        "clean-ce",
        "adv-ce",
        "kl",
        "kl-sg",
        "inv",
        "dist-sg",
        "arat-asym",
    ];
    assert_eq!(names, want);
    for (t, name) in Term::value_variants().iter().zip(want) {
        assert_eq!(
            (t.to_string(), serde_json::json!(t)),
            (name.into(), serde_json::json!(name))
        );
        assert_eq!(name.parse::<Term>().unwrap(), *t);
    }
    assert_eq!(layer_of("bn1.weight"), "bn1");
    assert_eq!(layer_of("bn1.0.bias"), "bn1.0");
    assert_eq!(layer_of("conv1"), "conv1");
}

#[test]
fn clean_ce_gradient_equals_backward_and_leaves_no_grad() {
    let _rng = common::rng_lock();
    tch::manual_seed(5);
    let net = Network::new(&arch(1, 1), Device::Cpu).unwrap();
    let (x, y) = batch(16, 6);
    let named = net.trainable();
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(names.contains(&"bn1.weight") && names.contains(&"fc.bias"));
    assert!(!names.iter().any(|n| n.contains("running")), "{names:?}");
    let vars: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
    let route = Route::domain(CLEAN);
    let before: Vec<Tensor> = net
        .named_tensors()
        .into_iter()
        .map(|(_, t)| t.copy())
        .collect();
    let g = term_gradients(net.model.as_ref(), &vars, Term::CleanCe, &x, &x, &y, route);
    // Nothing accumulated into .grad(), running statistics untouched (train-frozen).
    assert!(vars.iter().all(|t| !t.grad().defined()));
    for (a, (k, b)) in before.iter().zip(net.named_tensors()) {
        assert!(a.equal(&b), "{k} changed");
    }

    // Independently: batch-statistics forward, backward(), .grad().
    let logits = net
        .model
        .forward(&x, &Ctx::new(Route::domain(CLEAN), Mode::TrainFrozen));
    let loss = cross_entropy(&logits, &y, Reduction::Mean);
    loss.backward();
    for ((name, t), gi) in named.iter().zip(&g) {
        let r = t.grad();
        assert!(r.defined(), "{name}");
        let diff = (&r - gi).abs().max().double_value(&[]);
        let scale = r.abs().max().double_value(&[]);
        assert!(diff <= 1e-5 * (1.0 + scale), "{name}: {diff} vs {scale}");
    }
    let c = conflict(&g, &vars.iter().map(|t| t.grad()).collect::<Vec<_>>());
    assert!(
        close(c.cosine, 1.0, 1e-6) && c.opposite_sign_fraction == 0.0,
        "{c:?}"
    );
    // The loss itself matches.
    let l = term_loss(net.model.as_ref(), Term::CleanCe, &x, &x, &y, route).double_value(&[]);
    assert!(close(l, loss.double_value(&[]), 1e-6));
}

#[test]
fn kl_at_eps_zero_has_zero_gradient_and_unreached_parameters_get_zeros() {
    let _rng = common::rng_lock();
    tch::manual_seed(7);
    let net = Network::new(&arch(1, 1), Device::Cpu).unwrap();
    let (x, y) = batch(16, 8);
    let route = Route::domain(CLEAN);
    let cfg = ConflictConfig::new([Term::Kl, Term::CleanCe], 0.0, 0, route);
    let g = grad_conflict(&net, &x, &y, &cfg).unwrap();
    assert!(g.loss_a.abs() < 1e-7, "{}", g.loss_a);
    assert!(g.overall.norm_b > 1e-3, "{:?}", g.overall);
    assert!(
        g.overall.norm_a <= 1e-5 * g.overall.norm_b,
        "{:?}",
        g.overall
    );
    // Layers and tensors are sorted, every trainable tensor appears once.
    let tn: Vec<&str> = g.tensors.iter().map(|t| t.tensor.as_str()).collect();
    assert_eq!(tn.len(), net.trainable().len());
    assert!(tn.windows(2).all(|w| w[0] < w[1]));
    let ln: Vec<&str> = g.layers.iter().map(|l| l.layer.as_str()).collect();
    assert!(ln.windows(2).all(|w| w[0] < w[1]) && ln.contains(&"bn1"));
    let total: usize = g.layers.iter().map(|l| l.conflict.parameters).sum();
    assert_eq!(total, g.overall.parameters);
    let bn1 = g.layers.iter().find(|l| l.layer == "bn1").unwrap();
    assert_eq!(bn1.tensors, ["bn1.bias", "bn1.weight"]);

    // kl-sg at eps 0 is zero too; kl-sg and kl differ once x' != x (the clean side's gradient).
    let sg = grad_conflict(
        &net,
        &x,
        &y,
        &ConflictConfig::new([Term::KlSg, Term::AdvCe], 0.0, 0, route),
    )
    .unwrap();
    assert!(sg.overall.norm_a <= 1e-5 * sg.overall.norm_b);
    let k = grad_conflict(
        &net,
        &x,
        &y,
        &ConflictConfig::new([Term::Kl, Term::KlSg], 0.1, 0, route),
    )
    .unwrap();
    assert!(k.overall.norm_a > 0.0 && k.overall.norm_b > 0.0);
    assert!(k.overall.cosine < 1.0 - 1e-6, "{:?}", k.overall);

    // Dual BN: clean-ce never reaches the adv affine set (zeros there, cosine NaN), adv-ce
    // never reaches the clean one.
    tch::manual_seed(9);
    let dual = Network::new(&arch(2, 2), Device::Cpu).unwrap();
    let d = grad_conflict(
        &dual,
        &x,
        &y,
        &ConflictConfig::new([Term::CleanCe, Term::AdvCe], 0.1, 0, Route::domain(ADV)),
    )
    .unwrap();
    let adv_bn = d.layers.iter().find(|l| l.layer == "bn1.1").unwrap();
    assert_eq!(adv_bn.conflict.norm_a, 0.0);
    assert!(adv_bn.conflict.norm_b > 0.0 && adv_bn.conflict.cosine.is_nan());
    let clean_bn = d.layers.iter().find(|l| l.layer == "bn1.0").unwrap();
    assert_eq!(clean_bn.conflict.norm_b, 0.0);
    // Single BN: the shared sets serve the adv route too (same numbers as the clean route).
    let e = grad_conflict(
        &net,
        &x,
        &y,
        &ConflictConfig::new([Term::Kl, Term::CleanCe], 0.0, 0, Route::domain(ADV)),
    )
    .unwrap();
    assert!(close(e.overall.norm_b, g.overall.norm_b, 1e-9));
}

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

#[test]
fn cli_grad_conflict_writes_json_and_png_and_names_bad_terms() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_tiny_mnist(&data, 40, 40);
    let (single, dual) = {
        let _rng = common::rng_lock();
        let single = common::confident_small_cnn();
        tch::manual_seed(11);
        (single, Network::new(&arch(2, 2), Device::Cpu).unwrap())
    };
    let run = tmp.path().join("run");
    save_run(&run, &data, &single);
    let run_s = run.display().to_string();
    let o = advtrain(&[
        "grad-conflict",
        "--run",
        &run_s,
        "--terms",
        "clean-ce,adv-ce",
        "--eps",
        "0.1",
        "--n",
        "24",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = run.join("analysis");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("grad-conflict.json")).unwrap())
            .unwrap();
    for k in [
        "terms",
        "eps",
        "n",
        "seed",
        "adv_route",
        "clean_route",
        "checkpoint",
        "sha256",
        "overall",
        "layers",
        "tensors",
        "plot",
    ] {
        assert!(v.get(k).is_some(), "{k} missing in {v}");
    }
    assert_eq!(v["terms"], serde_json::json!(["clean-ce", "adv-ce"]));
    assert_eq!((v["n"].as_u64(), v["eps"].as_f64()), (Some(24), Some(0.1)));
    assert_eq!(v["adv_route"], "ns=clean,ap=clean");
    assert!(!v["sha256"].as_str().unwrap().is_empty());
    for k in [
        "cosine",
        "opposite_sign_fraction",
        "norm_a",
        "norm_b",
        "parameters",
    ] {
        assert!(v["overall"][k].is_number(), "{k}: {}", v["overall"]);
        assert!(v["layers"][0][k].is_number(), "{k}: {}", v["layers"][0]);
        assert!(v["tensors"][0][k].is_number(), "{k}: {}", v["tensors"][0]);
    }
    let cos = v["overall"]["cosine"].as_f64().unwrap();
    assert!((-1.0..=1.0).contains(&cos));
    assert!(v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["layer"] == "bn1"));
    assert!(v["tensors"][0]["tensor"].is_string());
    // An invariance term: hooks default to the last stage and are recorded.
    let o = advtrain(&[
        "grad-conflict",
        "--run",
        &run_s,
        "--terms",
        "adv-ce,dist-sg",
        "--eps",
        "0.1",
        "--n",
        "16",
        "--device",
        "cpu",
        "--hooks",
        "bn3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let w: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("grad-conflict.json")).unwrap())
            .unwrap();
    assert_eq!(w["hooks"], serde_json::json!(["bn3"]));
    assert_eq!(w["terms"], serde_json::json!(["adv-ce", "dist-sg"]));
    let png = std::fs::read(out.join("grad-conflict.png")).unwrap();
    assert!(png.len() > 1000 && png.starts_with(b"\x89PNG"));

    // Dual BN through --checkpoint into --out: the default adversarial route is adv.
    let drun = tmp.path().join("dual");
    save_run(&drun, &data, &dual);
    let dck = drun
        .join("checkpoints/last.safetensors")
        .display()
        .to_string();
    let dout = tmp.path().join("dual-out");
    let o = advtrain(&[
        "grad-conflict",
        "--checkpoint",
        &dck,
        "--out",
        &dout.display().to_string(),
        "--terms",
        "kl,kl-sg",
        "--eps",
        "0.1",
        "--n",
        "16",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dout.join("grad-conflict.json")).unwrap())
            .unwrap();
    assert_eq!(v["adv_route"], "ns=adv,ap=adv");
    assert!(dout.join("grad-conflict.png").is_file());

    // Bad input is named.
    for (args, needle) in [
        (vec!["--terms", "foo,adv-ce", "--eps", "0.1"], "--terms"),
        (vec!["--eps", "0.1"], "--terms"),
        (vec!["--terms", "kl", "--eps", "0.1"], "--terms"),
        (vec!["--terms", "kl,adv-ce", "--eps", "-1"], "--eps"),
        (
            vec![
                "--terms",
                "kl,adv-ce",
                "--eps",
                "0.1",
                "--route",
                "foo",
                "--n",
                "8",
            ],
            "--route",
        ),
    ] {
        let mut full = vec!["grad-conflict", "--run", run_s.as_str()];
        full.extend_from_slice(&args);
        let o = advtrain(&full);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    assert!(stderr(&advtrain(&[
        "grad-conflict",
        "--run",
        &run_s,
        "--terms",
        "foo,adv-ce",
        "--eps",
        "0.1"
    ]))
    .contains("foo"));
}

/// The invariance terms over a hook on a Dual-BN model: the three have the same value without a
/// predictor (1 - cos(z', z)), but `dist-sg` sends gradient only to the clean branch's BN
/// parameters, `arat-asym` only to the adversarial branch's (and its predictor), `inv` to both;
/// with a predictor, `arat-asym` = 1 - cos(h(z'), z) recomputed by hand.
#[test]
fn invariance_terms_route_their_gradient_to_one_side() {
    use advtrain::analysis::grad_conflict::{term_gradients_with, term_loss_with, Features};
    use advtrain::nn::Hook;
    let _g = common::rng_lock();
    let mut a = arch(2, 2);
    a.predictors = vec![Hook::Norm("bn3".into())];
    tch::manual_seed(3);
    let net = Network::new(&a, Device::Cpu).unwrap();
    let (x, y) = batch(12, 4);
    let x_adv = (&x + (x.rand_like() - 0.5) * 0.1).clamp(0.0, 1.0);
    let hooks = [Hook::Norm("bn3".into())];
    let bare = Features {
        hooks: &hooks,
        predictors: &[],
    };
    let with_pred = Features {
        hooks: &hooks,
        predictors: &net.predictors,
    };
    let m = net.model.as_ref();
    let route = Route::domain(ADV);
    let val = |t, f| term_loss_with(m, t, &x, &x_adv, &y, route, f).double_value(&[]);
    let inv = val(Term::Inv, bare);
    assert!(inv > 1e-6);
    assert!(close(val(Term::DistSg, bare), inv, 1e-6));
    assert!(close(val(Term::AratAsym, bare), inv, 1e-6));
    // Hand computation with the predictor.
    let pooled = |xs: &Tensor, r: Route| {
        let (_, f) = advtrain::nn::hook::hooked(m, &hooks, || {
            m.forward_stages(xs, &Ctx::new(r, Mode::TrainFrozen))
        });
        f[0].relu().mean_dim(&[2i64, 3][..], false, Kind::Float)
    };
    let p = net.predictors[0]
        .forward(&pooled(&x_adv, route), Mode::TrainFrozen)
        .to_kind(Kind::Double);
    let zc = pooled(&x, Route::domain(CLEAN)).to_kind(Kind::Double);
    let cos = (&p * &zc).sum_dim_intlist([1i64].as_slice(), false, Kind::Double)
        / (p.norm_scalaropt_dim(2, [1i64].as_slice(), false)
            * zc.norm_scalaropt_dim(2, [1i64].as_slice(), false));
    let want = 1.0 - cos.mean(Kind::Double).double_value(&[]);
    assert!(close(val(Term::AratAsym, with_pred), want, 1e-5));
    // Gradient routing.
    let named = net.trainable();
    let vars: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
    let mass = |t, f, name: &str| {
        let g = term_gradients_with(m, &vars, t, &x, &x_adv, &y, route, f);
        let i = named.iter().position(|(n, _)| n == name).unwrap();
        g[i].abs().sum(Kind::Double).double_value(&[])
    };
    let (clean_w, adv_w, pred_w) = ("bn2.0.weight", "bn2.1.weight", "predictor.bn3.fc1.weight");
    assert!(mass(Term::DistSg, with_pred, clean_w) > 0.0);
    assert_eq!(mass(Term::DistSg, with_pred, adv_w), 0.0);
    assert_eq!(mass(Term::DistSg, with_pred, pred_w), 0.0);
    assert_eq!(mass(Term::AratAsym, with_pred, clean_w), 0.0);
    assert!(mass(Term::AratAsym, with_pred, adv_w) > 0.0);
    assert!(mass(Term::AratAsym, with_pred, pred_w) > 0.0);
    assert!(mass(Term::Inv, bare, clean_w) > 0.0 && mass(Term::Inv, bare, adv_w) > 0.0);
    // Through the CLI-facing entry point: hooks are required and checked.
    let mut cfg = ConflictConfig::new([Term::CleanCe, Term::DistSg], 0.1, 0, route);
    let e = grad_conflict(&net, &x, &y, &cfg).unwrap_err();
    assert!(format!("{e:#}").contains("--hooks"), "{e:#}");
    cfg.hooks = vec![Hook::Norm("nope".into())];
    let e = grad_conflict(&net, &x, &y, &cfg).unwrap_err();
    assert!(format!("{e:#}").contains("nope"), "{e:#}");
    cfg.hooks = hooks.to_vec();
    let g = grad_conflict(&net, &x, &y, &cfg).unwrap();
    assert!(g.overall.cosine.is_finite());
}
