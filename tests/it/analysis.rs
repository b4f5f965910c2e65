//! The analyses (`advtrain::analysis`, `advtrain analyze`): the W1 distance against hand-computed
//! values, bn-divergence on a hand-set Dual-BN model, the domain gap's degenerate cases, the swap
//! matrix against `clean_counts`, and the CLI contract with its errors. Tiny models, n <= 64.

use crate::common;

use advtrain::analysis::{
    bn_divergence, bn_swap, domain_gap, mean_abs_diff, stat_distances, wasserstein1, GapConfig,
    SwapConfig,
};
use advtrain::attack::Classifier;
use advtrain::data::{Augment, Dataset};
use advtrain::eval::clean_counts;
use advtrain::eval::controls::{Reestimate, StatsSource};
use advtrain::nn::{ArchSpec, Ctx, Mode, Network, NormKind, NormSpec, Route, ADV, CLEAN};
use common::{
    analyze as advtrain, close, dual_bn_model, read_json, save_run, small_cnn_arch as arch, stderr,
};
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn set(t: &Tensor, v: &Tensor) {
    tch::no_grad(|| {
        let mut d = t.shallow_clone();
        d.copy_(v);
    });
}

// ---------------------------------------------------------------------------------------------
// W1
// ---------------------------------------------------------------------------------------------

#[test]
fn wasserstein1_matches_hand_computed_values() {
    // sorted a = [1,2,3], sorted b = [0,4,5]: |1-0| + |2-4| + |3-5| = 5, over 3.
    assert!(close(
        wasserstein1(&[3.0, 1.0, 2.0], &[0.0, 5.0, 4.0]),
        5.0 / 3.0,
        1e-12
    ));
    // A permutation has W1 0 but a channel-wise difference: |0-3|+|1-2|+|2-1|+|3-0| = 8, over 4.
    let (a, b) = ([0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]);
    assert_eq!(wasserstein1(&a, &b), 0.0);
    assert!(close(mean_abs_diff(&a, &b), 2.0, 1e-12));
    // A shift by c has W1 |c|; symmetric.
    assert!(close(wasserstein1(&[0.5, -1.0], &[-3.0, -1.5]), 2.0, 1e-12));
    assert!(close(wasserstein1(&[-3.0, -1.5], &[0.5, -1.0]), 2.0, 1e-12));
    // Unequal sizes: integral of |F_a - F_b|. {0} vs {0, 1}: |1 - 1/2| on [0, 1) = 0.5.
    assert!(close(wasserstein1(&[0.0], &[0.0, 1.0]), 0.5, 1e-12));
    assert!(close(wasserstein1(&[0.0, 0.0], &[1.0]), 1.0, 1e-12));
    assert!(wasserstein1(&[], &[1.0]).is_nan());
}

// ---------------------------------------------------------------------------------------------
// bn-divergence
// ---------------------------------------------------------------------------------------------

/// Per layer k (0-based) with C channels: mean_0 = 0.1 * (0..C), mean_1 = reversed (W1 0,
/// mean |d| = 0.05 C); var 4 vs 9 (sigma: 1, 1); gamma 1 vs 1 + 0.25 (k+1); beta 0 vs -0.5.
fn hand_set(net: &Network) {
    for (k, (_, n)) in net.model.norms().into_iter().enumerate() {
        let c = n.channels;
        let up = Tensor::arange(c, (Kind::Float, Device::Cpu)) * 0.1;
        if n.stats.len() == 2 {
            set(&n.stats[0].running_mean, &up);
            set(&n.stats[1].running_mean, &up.flip([0]));
            set(
                &n.stats[0].running_var,
                &Tensor::full([c], 4.0, (Kind::Float, Device::Cpu)),
            );
            set(
                &n.stats[1].running_var,
                &Tensor::full([c], 9.0, (Kind::Float, Device::Cpu)),
            );
        }
        if n.affine.len() == 2 {
            let g = 1.0 + 0.25 * (k as f64 + 1.0);
            set(
                &n.affine[1].weight,
                &Tensor::full([c], g, (Kind::Float, Device::Cpu)),
            );
            set(
                &n.affine[1].bias,
                &Tensor::full([c], -0.5, (Kind::Float, Device::Cpu)),
            );
        }
    }
}

#[test]
fn bn_divergence_gives_hand_computed_numbers_and_null_for_shared_parts() {
    let _rng = common::rng_shared();
    let dual = Network::new(&arch(2, 2), Device::Cpu).unwrap();
    hand_set(&dual);
    let d = bn_divergence(dual.model.as_ref()).unwrap();
    assert_eq!(d.branches, ["clean".to_string(), "adv".to_string()]);
    assert_eq!(d.layers.len(), 3);
    for (k, (l, c)) in d.layers.iter().zip([32i64, 64, 128]).enumerate() {
        assert_eq!(l.channels, c);
        assert!(l.ns_split && l.ap_split);
        let (mu, sigma) = (l.mu.unwrap(), l.sigma.unwrap());
        let (gamma, beta) = (l.gamma.unwrap(), l.beta.unwrap());
        assert!(mu.w1.abs() < 1e-6, "{}: mu W1 {}", l.layer, mu.w1);
        assert!(
            close(mu.mean_abs_diff, 0.05 * c as f64, 1e-5),
            "{}: {mu:?}",
            l.layer
        );
        assert!(close(sigma.w1, 1.0, 1e-6) && close(sigma.mean_abs_diff, 1.0, 1e-6));
        let g = 0.25 * (k as f64 + 1.0);
        assert!(
            close(gamma.w1, g, 1e-6) && close(gamma.mean_abs_diff, g, 1e-6),
            "{gamma:?}"
        );
        assert!(close(beta.w1, 0.5, 1e-6) && close(beta.mean_abs_diff, 0.5, 1e-6));
    }
    // Summary: means over layers.
    let s = &d.summary;
    assert!(close(s.gamma.unwrap().w1, 0.5, 1e-6), "{s:?}");
    assert!(close(
        s.mu.unwrap().mean_abs_diff,
        0.05 * (32.0 + 64.0 + 128.0) / 3.0,
        1e-5
    ));
    assert_eq!((s.ns_split_layers, s.ap_split_layers), (3, 3));

    // Dual-NS: AP shared -> gamma and beta are null in the JSON.
    let dual_ns = Network::new(&arch(2, 1), Device::Cpu).unwrap();
    hand_set(&dual_ns);
    let d = bn_divergence(dual_ns.model.as_ref()).unwrap();
    for l in &d.layers {
        assert!(l.ns_split && !l.ap_split);
        assert!(close(l.sigma.unwrap().w1, 1.0, 1e-6));
        let v = serde_json::to_value(l).unwrap();
        assert!(v["gamma"].is_null() && v["beta"].is_null(), "{v}");
        assert!(
            v["mu"]["w1"].is_number() && v["mu"]["mean_abs_diff"].is_number(),
            "{v}"
        );
    }
    assert!(d.summary.gamma.is_none() && d.summary.beta.is_none());

    // Dual-AP: NS shared -> mu and sigma null.
    let dual_ap = Network::new(&arch(1, 2), Device::Cpu).unwrap();
    hand_set(&dual_ap);
    let d = bn_divergence(dual_ap.model.as_ref()).unwrap();
    assert!(d.layers.iter().all(|l| l.mu.is_none() && l.sigma.is_none()));
    assert!(close(d.layers[2].gamma.unwrap().w1, 0.75, 1e-6));

    // A single-BN model has nothing to compare.
    let single = Network::new(&arch(1, 1), Device::Cpu).unwrap();
    let err = bn_divergence(single.model.as_ref())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no split norm layer"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// domain gap
// ---------------------------------------------------------------------------------------------

#[test]
fn domain_gap_at_eps_zero_equals_the_clean_batch_distances() {
    let _rng = common::rng_lock();
    let net = common::confident_small_cnn();
    tch::manual_seed(11);
    let x = Tensor::rand([32, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [32], (Kind::Int64, Device::Cpu));
    let g = domain_gap(
        net.model.as_ref(),
        &x,
        &y,
        &GapConfig::new(0.0, Route::default(), 0),
    )
    .unwrap();
    assert_eq!(g.layers.len(), 3);
    for l in &g.layers {
        assert_eq!(
            (l.adv_mu, l.adv_sigma),
            (l.clean_mu, l.clean_sigma),
            "{l:?}"
        );
        assert_eq!(
            (l.noise_mu, l.noise_sigma),
            (l.clean_mu, l.clean_sigma),
            "{l:?}"
        );
        // The running statistics come from other data: the distances are not trivially 0.
        assert!(l.clean_mu > 1e-3 && l.clean_sigma > 1e-3, "{l:?}");
    }
    assert_eq!(g.adv_batch_accuracy, g.clean_batch_accuracy);
    assert_eq!(g.summary.adv_noise_mu_gap, 0.0);

    // At eps > 0 the perturbed batches move away from the clean one.
    let g = domain_gap(
        net.model.as_ref(),
        &x,
        &y,
        &GapConfig::new(0.3, Route::default(), 0),
    )
    .unwrap();
    assert!(g
        .layers
        .iter()
        .any(|l| l.adv_mu != l.clean_mu && l.noise_mu != l.clean_mu));
    // Same seed, same numbers.
    let h = domain_gap(
        net.model.as_ref(),
        &x,
        &y,
        &GapConfig::new(0.3, Route::default(), 0),
    )
    .unwrap();
    assert_eq!(g, h);
}

#[test]
fn stat_distances_compare_with_the_routes_running_statistics() {
    let _rng = common::rng_lock();
    tch::manual_seed(5);
    let net = Network::new(&arch(2, 2), Device::Cpu).unwrap();
    let x = Tensor::rand([24, 1, 28, 28], (Kind::Float, Device::Cpu));
    let z = Tensor::rand([24, 1, 28, 28], (Kind::Float, Device::Cpu)) * 0.3;
    // Running statistics of the clean set := batch statistics of x (momentum 1); of the adv
    // set := those of other data z.
    for (route, data) in [(Route::domain(CLEAN), &x), (Route::domain(ADV), &z)] {
        let ctx = Ctx {
            momentum: Some(1.0),
            ..Ctx::new(route, Mode::Train)
        };
        let _ = tch::no_grad(|| net.model.forward(data, &ctx));
    }
    let clean = stat_distances(net.model.as_ref(), Route::domain(CLEAN), &x).unwrap();
    // Batch mean = running mean; sigma differs only by the biased/unbiased variance factor.
    for d in &clean {
        assert!(d.mu < 1e-4 && d.sigma < 1e-3, "{d:?}");
    }
    let adv = stat_distances(net.model.as_ref(), Route::domain(ADV), &x).unwrap();
    assert!(adv.iter().all(|d| d.mu > 1e-2), "{adv:?}");
    // A model without BN layers is refused.
    let gn = Network::new(
        &ArchSpec {
            predictors: vec![],
            norm: NormSpec {
                kind: NormKind::Group,
                groups: 4,
                ..NormSpec::default()
            },
            ..arch(1, 1)
        },
        Device::Cpu,
    )
    .unwrap();
    let err = stat_distances(gn.model.as_ref(), Route::default(), &x)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no BatchNorm layer"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// bn-swap
// ---------------------------------------------------------------------------------------------

/// `n` random images labelled by the clean route's prediction (first half) or at random.
fn labelled(net: &Network, n: i64, seed: i64) -> Dataset {
    tch::manual_seed(seed);
    let raw = Dataset::from_float(
        &Tensor::rand([n, 1, 28, 28], (Kind::Float, Device::Cpu)),
        &Tensor::zeros([n], (Kind::Int64, Device::Cpu)),
        10,
    );
    let (x, _) = raw
        .batches(n as usize, None, Augment::default(), Device::Cpu)
        .next()
        .unwrap();
    let pred = tch::no_grad(|| net.model.forward(&x, &Ctx::eval()).argmax(-1, false));
    let random = Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
    let half = n / 2;
    let y = Tensor::cat(
        &[pred.narrow(0, 0, half), random.narrow(0, half, n - half)],
        0,
    );
    Dataset::from_float(&x, &y, 10)
}

#[test]
fn bn_swap_cells_match_clean_counts_and_leave_the_model_untouched() {
    let _rng = common::rng_lock();
    let net = dual_bn_model();
    let test = labelled(&net, 40, 1);
    let train = labelled(&net, 64, 2);
    let before: Vec<(String, Tensor)> = net
        .named_tensors()
        .into_iter()
        .map(|(k, t)| (k, t.copy()))
        .collect();
    let cfg = SwapConfig {
        eps: 0.1,
        steps: 2,
        batch_size: 16,
        seed: 0,
        reestimate: Reestimate {
            source: StatsSource::Noise,
            batches: 2,
            batch_size: 16,
            norm: advtrain::attack::ThreatNorm::Linf,
            eps: 0.1,
            seed: 0,
        },
        compute: Default::default(),
    };
    let s = bn_swap(&net, &test, &train, &cfg).unwrap();
    assert_eq!(s.cells.len(), 6);
    assert_eq!(s.n, 40);
    assert_eq!(s.reestimated_images, 32);
    assert_eq!(s.attack, "pgd-2");
    for c in &s.cells {
        assert!(c.robust_accuracy <= c.clean_accuracy, "{c:?}");
    }
    let counts = |route: Route| {
        let f = Classifier::new(net.model.as_ref(), Ctx::new(route, Mode::Eval));
        clean_counts(&f, &test, 7, Device::Cpu).clean_accuracy()
    };
    let cc = s.cell("clean", "clean").unwrap();
    assert_eq!(cc.clean_accuracy, counts(Route::domain(CLEAN)), "{cc:?}");
    assert!(
        cc.clean_accuracy >= 0.5,
        "half the labels are the clean route's predictions"
    );
    for (ns, ap) in [("adv", "adv"), ("adv", "clean"), ("clean", "adv")] {
        let route: Route = format!("ns={ns},ap={ap}").parse().unwrap();
        let c = s.cell(ns, ap).unwrap();
        assert_eq!(c.clean_accuracy, counts(route), "{c:?}");
        assert_eq!(c.route, route.to_string());
    }
    assert!(s.cell("re-estimated", "adv").is_some() && s.cell("re-estimated", "clean").is_some());
    // Re-estimation worked on copies.
    for ((k, a), (_, b)) in before.iter().zip(net.named_tensors()) {
        assert!(a.equal(&b), "{k} changed");
    }
    // Same seed, same matrix.
    let again = bn_swap(&net, &test, &train, &cfg).unwrap();
    assert_eq!(again.cells, s.cells);
    // A single-BN model has nothing to swap.
    let single = Network::new(&arch(1, 1), Device::Cpu).unwrap();
    let err = bn_swap(&single, &test, &train, &cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("multi-domain"), "{err}");
    let bad = SwapConfig { eps: -0.1, ..cfg };
    let err = bn_swap(&net, &test, &train, &bad)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--eps"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

fn assert_png(p: &Path) {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(
        bytes.len() > 1000 && bytes.starts_with(b"\x89PNG"),
        "{}",
        p.display()
    );
}

#[test]
fn cli_analyze_writes_json_and_png_and_names_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_tiny_mnist(&data, 120, 40);
    let (single, dual, gn) = {
        let _rng = common::rng_lock();
        let gn = Network::new(
            &ArchSpec {
                predictors: vec![],
                norm: NormSpec {
                    kind: NormKind::Group,
                    groups: 4,
                    ..NormSpec::default()
                },
                ..arch(1, 1)
            },
            Device::Cpu,
        )
        .unwrap();
        (common::confident_small_cnn(), dual_bn_model(), gn)
    };
    let run = tmp.path().join("run");
    save_run(&run, &data, &single);
    let run_s = run.display().to_string();

    // domain-gap through --run: default out <run>/analysis.
    let o = advtrain(&[
        "domain-gap",
        "--run",
        &run_s,
        "--eps",
        "0.1",
        "--n",
        "32",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = run.join("analysis");
    let v = read_json(&out.join("domain-gap.json"));
    assert_png(&out.join("domain-gap.png"));
    for k in [
        "eps",
        "n",
        "route",
        "checkpoint",
        "sha256",
        "summary",
        "layers",
        "seed",
    ] {
        assert!(v.get(k).is_some(), "{k} missing in {v}");
    }
    assert_eq!(v["n"], 32);
    assert_eq!(v["eps"], 0.1);
    assert_eq!(v["route"], "ns=clean,ap=clean");
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for k in [
        "layer",
        "channels",
        "adv_mu",
        "adv_sigma",
        "noise_mu",
        "noise_sigma",
        "clean_mu",
        "clean_sigma",
    ] {
        assert!(layers[0].get(k).is_some(), "{k} missing in {}", layers[0]);
    }
    assert_eq!(layers[0]["layer"], "bn1");
    assert!(v["summary"]["adv_mu"].as_f64().unwrap() > 0.0, "{v}");

    // Bad input is named.
    let ck = run
        .join("checkpoints/last.safetensors")
        .display()
        .to_string();
    for (args, needle) in [
        (
            vec!["domain-gap", "--run", &run_s, "--eps", "-0.1"],
            "--eps",
        ),
        (
            vec!["domain-gap", "--run", &run_s, "--eps", "0.1", "--n", "0"],
            "--n",
        ),
        (
            vec![
                "domain-gap",
                "--checkpoint",
                "/nonexistent/x.safetensors",
                "--eps",
                "0.1",
            ],
            "--checkpoint",
        ),
        (
            vec!["bn-divergence", "--checkpoint", &ck],
            "no split norm layer",
        ),
    ] {
        let o = advtrain(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }

    // Dual BN: bn-divergence and bn-swap into --out; a route domain the model lacks is refused.
    let drun = tmp.path().join("dual");
    save_run(&drun, &data, &dual);
    let dck = drun
        .join("checkpoints/last.safetensors")
        .display()
        .to_string();
    let dout = tmp.path().join("dual-out").display().to_string();
    let o = advtrain(&["bn-divergence", "--checkpoint", &dck, "--out", &dout]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = read_json(&Path::new(&dout).join("bn-divergence.json"));
    assert_eq!(v["layers"].as_array().unwrap().len(), 3);
    assert!(v["layers"][0]["mu"]["w1"].as_f64().unwrap() > 0.0, "{v}");
    assert_png(&Path::new(&dout).join("bn-divergence.png"));
    let o = advtrain(&[
        "bn-swap",
        "--checkpoint",
        &dck,
        "--out",
        &dout,
        "--eps",
        "0.1",
        "--n",
        "16",
        "--steps",
        "1",
        "--reestimate-batches",
        "1",
        "--reestimate-batch-size",
        "8",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = read_json(&Path::new(&dout).join("bn-swap.json"));
    assert_eq!(v["cells"].as_array().unwrap().len(), 6, "{v}");
    assert_eq!(v["reestimate"]["source"], "clean");
    assert_eq!(v["reestimated_images"], 8);
    assert_png(&Path::new(&dout).join("bn-swap.png"));
    let o = advtrain(&[
        "domain-gap",
        "--checkpoint",
        &dck,
        "--eps",
        "0.1",
        "--route",
        "2",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("--route"),
        "{}",
        stderr(&o)
    );

    // A model without BN layers.
    let grun = tmp.path().join("gn");
    save_run(&grun, &data, &gn);
    let o = advtrain(&[
        "domain-gap",
        "--run",
        &grun.display().to_string(),
        "--eps",
        "0.1",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("no BatchNorm layer"),
        "{}",
        stderr(&o)
    );
}

/// An analysis through the library alone: a `bn_swap::Plan` run with `bn_swap::run` gives the
/// report `advtrain analyze bn-swap` writes for the same settings (the compute settings
/// included, and said on stderr when not the defaults); `domain_gap::run_on` takes a checkpoint
/// loaded once.
#[test]
fn analyses_run_as_library_plans_like_the_cli() {
    use advtrain::analysis::plan::{AnalysisSetup, Subject, TestImages};
    use advtrain::analysis::{bn_swap as swap, domain_gap as gap};
    use advtrain::eval::{Silent, Threat};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_tiny_mnist(&data, 60, 40);
    let run = tmp.path().join("dual");
    {
        let _rng = common::rng_lock();
        save_run(&run, &data, &dual_bn_model());
    }
    let ck = run.join("checkpoints/last.safetensors");
    let compute = advtrain::compute::Compute {
        fold_bn: false,
        ..Default::default()
    };
    let setup = AnalysisSetup {
        checkpoint: ck.clone(),
        seed: 1,
        device: advtrain::device::DeviceChoice::Cpu,
        compute,
        out: tmp.path().join("lib"),
    };
    let threat = Threat {
        norm: advtrain::attack::ThreatNorm::Linf,
        eps: 0.1,
    };
    let images = TestImages {
        spec: None,
        n: 12,
        data_dir: None,
    };
    let plan = swap::Plan {
        setup: setup.clone(),
        data: images.clone(),
        threat,
        steps: 2,
        batch_size: 5,
        reestimate: Reestimate {
            source: StatsSource::Noise,
            batches: 1,
            batch_size: 8,
            norm: advtrain::attack::ThreatNorm::Linf,
            eps: 0.1,
            seed: 1,
        },
    };
    // The library runs below are seeded and compared with the CLI's: hold the generator alone.
    let _rng = common::rng_lock();
    let mut l2 = plan.clone();
    l2.threat.norm = advtrain::attack::ThreatNorm::L2;
    let e = swap::run(&l2, &mut Silent).err().unwrap().to_string();
    assert!(e.contains("L-inf only"), "{e}");
    let report = swap::run(&plan, &mut Silent).unwrap();
    assert_eq!((report.cells.len(), report.n), (6, 12));
    assert_eq!(report.compute, compute);
    assert_eq!(report.provenance.kind, "bn-swap");
    let png = tmp.path().join("lib.png");
    report.write_png(&png).unwrap();
    assert_png(&png);
    let out = tmp.path().join("cli");
    let o = advtrain(&[
        "bn-swap",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--seed",
        "1",
        "--eps",
        "0.1",
        "--n",
        "12",
        "--steps",
        "2",
        "--batch-size",
        "5",
        "--reestimate-on",
        "noise",
        "--reestimate-batches",
        "1",
        "--reestimate-batch-size",
        "8",
        "--no-fold-bn",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("compute: "), "{}", stderr(&o));
    let mut cli = read_json(&out.join("bn-swap.json"));
    let mut lib = serde_json::to_value(&report).unwrap();
    for v in [&mut cli, &mut lib] {
        let m = v.as_object_mut().unwrap();
        m.remove("elapsed_s").unwrap();
        m.remove("plot").unwrap();
    }
    assert_eq!(lib, cli);
    assert_eq!(cli["compute"]["fold_bn"], false);

    // A checkpoint loaded once, analysed with run_on; the default compute settings give the
    // same numbers as the unfolded ones, to float rounding.
    let gap_plan = |compute| gap::Plan {
        setup: AnalysisSetup {
            compute,
            ..setup.clone()
        },
        data: images.clone(),
        threat,
        route: Route::domain(ADV),
    };
    let folded = gap::run_on(
        &gap_plan(Default::default()),
        Subject::load(&setup).unwrap(),
        &mut Silent,
    )
    .unwrap();
    let unfolded = gap::run(&gap_plan(compute), &mut Silent).unwrap();
    assert_eq!(folded.route, "ns=adv,ap=adv");
    assert_eq!(folded.layers.len(), 3);
    for (a, b) in folded.layers.iter().zip(&unfolded.layers) {
        assert!(close(a.adv_mu, b.adv_mu, 5e-2), "{a:?} vs {b:?}");
        assert!(close(a.noise_sigma, b.noise_sigma, 1e-6), "{a:?} vs {b:?}");
    }
}
