//! Multi-domain models end to end: route/mode plumbing through every architecture, the Hybrid-AT
//! and AdvProp losses against an independent recomputation, export of one branch, soup and
//! re-estimation, and the CLI of these controls.

use crate::common;

use common::advtrain;

use advtrain::attack::{cross_entropy, Attack, Classifier, Pgd};
use advtrain::eval::controls::{export_branch, reestimate, Reestimate, StatsSource};
use advtrain::nn::{ArchSpec, Ctx, Mode, Network, NormKind, NormSpec, Route, Segment, ADV, CLEAN};
use advtrain::train::objectives::{hybrid, Objective, StepCx, TrainObjective};
use advtrain::train::recipe::{Passes, Recipe};
use advtrain::train::step;
use tch::{Device, Kind, Reduction, Tensor};

fn arch(
    name: &str,
    c: i64,
    depth: Option<i64>,
    width: Option<i64>,
    ns: usize,
    ap: usize,
    heads: usize,
) -> ArchSpec {
    ArchSpec {
        norm: NormSpec {
            ns_domains: ns,
            ap_domains: ap,
            ..NormSpec::default()
        },
        heads,
        ..common::arch_spec(name, c, depth, width)
    }
}

/// Give every per-domain set distinct values: running stats from a train-mode pass per domain,
/// affine and heads perturbed per domain.
fn diversify(net: &Network, c: i64, hw: i64) {
    for d in [CLEAN, ADV] {
        let x = Tensor::rand([8, c, hw, hw], (Kind::Float, Device::Cpu)) * (1.0 + d as f64);
        let _ = tch::no_grad(|| {
            net.model
                .forward(&x, &Ctx::new(Route::domain(d), Mode::Train))
        });
    }
    tch::no_grad(|| {
        for (name, mut t) in net.variables() {
            let split =
                name.contains(".1.") || name.starts_with("fc.1") || name.starts_with("linear.1");
            if split && t.kind() == Kind::Float && !name.contains("running") {
                let noise = t.randn_like() * 0.3;
                let _ = t.g_add_(&noise);
            }
        }
    });
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn every_model_follows_route_segments_and_heads() {
    let _g = common::rng_lock();
    tch::manual_seed(11);
    let cases = [
        arch("small-cnn", 1, None, None, 2, 2, 2),
        arch("preact-resnet18", 3, None, None, 2, 2, 1),
        arch("resnet", 3, Some(10), None, 2, 1, 2),
        arch("wide-resnet", 3, Some(10), Some(1), 1, 2, 1),
    ];
    for a in cases {
        let (c, hw) = if a.in_channels == 1 { (1, 28) } else { (3, 32) };
        let net = Network::new(&a, Device::Cpu).unwrap();
        diversify(&net, c, hw);
        let x = Tensor::rand([6, c, hw, hw], (Kind::Float, Device::Cpu));
        let m = net.model.as_ref();
        let (rc, ra) = (Route::domain(CLEAN), Route::domain(ADV));
        let lc = tch::no_grad(|| m.forward(&x, &Ctx::new(rc, Mode::Eval)));
        let la = tch::no_grad(|| m.forward(&x, &Ctx::new(ra, Mode::Eval)));
        assert!(max_diff(&lc, &la) > 1e-3, "{}: routes must differ", a.name);
        // A mixed eval batch: first 2 rows adv, last 4 clean == per-route forwards.
        let ctx = Ctx::mixed(Mode::Eval, &[Segment::new(2, ra), Segment::new(4, rc)]);
        let mixed = tch::no_grad(|| m.forward(&x, &ctx));
        assert!(
            max_diff(&mixed.narrow(0, 0, 2), &la.narrow(0, 0, 2)) < 1e-5,
            "{}",
            a.name
        );
        assert!(
            max_diff(&mixed.narrow(0, 2, 4), &lc.narrow(0, 2, 4)) < 1e-5,
            "{}",
            a.name
        );
        // Train mode with per-domain NS: a joint forward == two separate forwards.
        if a.norm.ns_domains == 2 {
            let jt = tch::no_grad(|| {
                m.forward(
                    &x,
                    &Ctx::mixed(
                        Mode::TrainFrozen,
                        &[Segment::new(2, ra), Segment::new(4, rc)],
                    ),
                )
            });
            let sa =
                tch::no_grad(|| m.forward(&x.narrow(0, 0, 2), &Ctx::new(ra, Mode::TrainFrozen)));
            let sc =
                tch::no_grad(|| m.forward(&x.narrow(0, 2, 4), &Ctx::new(rc, Mode::TrainFrozen)));
            assert!(
                max_diff(&jt, &Tensor::cat(&[sa, sc], 0)) < 1e-4,
                "{}",
                a.name
            );
        }
        // Soup w = 0 / 1 reproduce the clean / adv branch affine and heads (NS fixed by route).
        let s0 = tch::no_grad(|| m.forward(&x, &Ctx::new(rc, Mode::Eval).with_soup(Some(0.0))));
        assert!(max_diff(&s0, &lc) < 1e-5, "{}", a.name);
        let r = Route { ns: ADV, ap: CLEAN };
        let s1 = tch::no_grad(|| m.forward(&x, &Ctx::new(r, Mode::Eval).with_soup(Some(1.0))));
        assert!(max_diff(&s1, &la) < 1e-5, "{}", a.name);
    }
}

#[test]
fn export_one_branch_gives_identical_logits() {
    let _g = common::rng_lock();
    tch::manual_seed(5);
    let a = arch("small-cnn", 1, None, None, 2, 2, 2);
    let net = Network::new(&a, Device::Cpu).unwrap();
    diversify(&net, 1, 28);
    let x = Tensor::rand([5, 1, 28, 28], (Kind::Float, Device::Cpu));
    for (route, soup) in [
        (Route::domain(ADV), None),
        (Route::domain(CLEAN), None),
        (Route { ns: CLEAN, ap: ADV }, None),
        (Route::domain(ADV), Some(0.3)),
    ] {
        let (plain_arch, tensors) = export_branch(&net, route, soup).unwrap();
        assert_eq!(
            (
                plain_arch.norm.ns_domains,
                plain_arch.norm.ap_domains,
                plain_arch.heads
            ),
            (1, 1, 1)
        );
        let plain = Network::new(&plain_arch, Device::Cpu).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("p.safetensors");
        Tensor::write_safetensors(&tensors, &f).unwrap();
        plain.load_weights(&f).unwrap();
        let want = tch::no_grad(|| {
            net.model
                .forward(&x, &Ctx::new(route, Mode::Eval).with_soup(soup))
        });
        let got = tch::no_grad(|| plain.model.forward(&x, &Ctx::eval()));
        assert!(
            max_diff(&want, &got) < 1e-5,
            "{route} soup {soup:?}: {}",
            max_diff(&want, &got)
        );
    }
}

#[test]
fn reestimation_is_the_cumulative_average_of_batch_statistics() {
    let _g = common::rng_lock();
    tch::manual_seed(9);
    let a = arch("small-cnn", 1, None, None, 2, 2, 1);
    let net = Network::new(&a, Device::Cpu).unwrap();
    diversify(&net, 1, 28);
    let images = Tensor::rand([24, 1, 28, 28], (Kind::Float, Device::Cpu));
    let labels = Tensor::arange(24, (Kind::Int64, Device::Cpu)).remainder(10);
    let data = advtrain::data::Dataset::from_float(&images, &labels, 10);
    let clean_before = net.variables()["bn2.0.running_mean"].copy();
    let r = Reestimate {
        source: StatsSource::Clean,
        batches: 3,
        batch_size: 8,
        norm: advtrain::attack::ThreatNorm::Linf,
        eps: 0.1,
        seed: 1,
    };
    let n = reestimate(
        net.model.as_ref(),
        Route::domain(ADV),
        &r,
        &data,
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(n, 24);
    // Untouched: the clean set.
    assert!(max_diff(&clean_before, &net.variables()["bn2.0.running_mean"]) == 0.0);
    // bn1's input does not depend on any BN: its re-estimated mean is the mean over the three
    // batches of each batch's conv1 output mean = the mean over all 24 images (equal batches).
    let conv = {
        let v = net.variables();
        images.conv2d(
            &v["conv1.weight"],
            None::<&Tensor>,
            [1, 1],
            [1, 1],
            [1, 1],
            1,
        )
    };
    let want = conv.mean_dim(&[0i64, 2, 3][..], false, Kind::Float);
    let got = net.variables()["bn1.1.running_mean"].shallow_clone();
    assert!(max_diff(&want, &got) < 1e-5, "{}", max_diff(&want, &got));
    assert_eq!(
        net.variables()["bn1.1.num_batches_tracked"].int64_value(&[]),
        3
    );
}

fn recipe(objective: &str, norm: &str, hybrid: &str) -> Recipe {
    let body = format!(
        r#"[model.norm]
{norm}
[train]
objective = "{objective}"
epochs = 1
batch_size = 8
lr = 0.1
track_clean_accuracy = false
[train.hybrid]
{hybrid}
[train.attack]
eps = 0.1
step_size = 0.05
steps = 2"#
    );
    common::small_recipe(&body).1
}

/// The step's loss against an independent recomputation on an identical second model.
fn check_hybrid(r: &Recipe, joint_equals_separate: bool) {
    let _g = common::rng_lock();
    let h = r.train.objective.hybrid().unwrap();
    let build = || {
        tch::manual_seed(21);
        Network::new(&r.model, Device::Cpu).unwrap()
    };
    let (a, b) = (build(), build());
    tch::manual_seed(4);
    let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::arange(8, (Kind::Int64, Device::Cpu)).remainder(10);
    let pgd = Pgd::new(r.train.attack().unwrap().clone());
    tch::manual_seed(99);
    let cx = StepCx::new(r, a.model.as_ref());
    // generate, then the loss in train mode (what the run loop does per step).
    fn one_step<O: TrainObjective<State = ()>>(
        o: &O,
        cx: &StepCx,
        x: &Tensor,
        y: &Tensor,
    ) -> step::StepOutput {
        let xa = o.generate(cx, x, y);
        o.loss(cx, &(), x, y, xa.as_ref(), Mode::Train).unwrap()
    }
    let (out, advprop) = match &r.train.objective {
        Objective::Hybrid(o) => (one_step(o, &cx, &x, &y), false),
        Objective::Advprop(o) => (one_step(o, &cx, &x, &y), true),
        o => panic!("not a hybrid objective: {}", o.name()),
    };
    // Reference on b.
    let n = 8;
    let na = hybrid::adv_rows(h, advprop, n);
    let nc = hybrid::clean_rows(h, advprop, n);
    tch::manual_seed(99);
    let f = Classifier::new(
        b.model.as_ref(),
        Ctx::new(h.adv_route, r.train.attack_bn_mode),
    );
    let xa = pgd.perturb(&f, &x.narrow(0, 0, na), &y.narrow(0, 0, na));
    let (xc, yc, ya) = (
        x.narrow(0, n - nc, nc),
        y.narrow(0, n - nc, nc),
        y.narrow(0, 0, na),
    );
    let (la, lc) = if joint_equals_separate {
        (
            b.model.forward(&xa, &Ctx::new(h.adv_route, Mode::Train)),
            b.model.forward(&xc, &Ctx::new(h.clean_route, Mode::Train)),
        )
    } else {
        // One shared statistics set: the joint batch is normalised as one.
        let l = b.model.forward(
            &Tensor::cat(&[&xa, &xc], 0),
            &Ctx::new(h.clean_route, Mode::Train),
        );
        (l.narrow(0, 0, na), l.narrow(0, na, nc))
    };
    let ce = |l: &Tensor, yy: &Tensor| cross_entropy(l, yy, Reduction::Mean).double_value(&[]);
    let want = match advprop {
        true => ce(&la, &ya) + ce(&lc, &yc),
        false => (1.0 - h.clean_weight) * ce(&la, &ya) + h.clean_weight * ce(&lc, &yc),
    };
    let got = out.loss.double_value(&[]);
    assert!((got - want).abs() < 1e-5, "loss {got} vs reference {want}");
    assert_eq!(out.adv.as_ref().unwrap().1, na);
    assert_eq!(out.clean.as_ref().unwrap().1, nc);
    // Running statistics: the same updates on both models.
    for (k, v) in a.variables() {
        if k.contains("running") {
            assert!(max_diff(&v, &b.variables()[&k]) < 1e-5, "{k}");
        }
    }
}

#[test]
fn hybrid_dual_bn_paired_loss_and_statistics() {
    let r = recipe(
        "hybrid",
        "ns_domains = 2\nap_domains = 2",
        "paired = true\nclean_weight = 0.3\nadv_route = \"adv\"",
    );
    assert_eq!(r.train.objective.hybrid().unwrap().passes(), Passes::Joint);
    check_hybrid(&r, true);
}

#[test]
fn hybrid_single_bn_cat_with_clean_fraction() {
    let r = recipe(
        "hybrid",
        "kind = \"batch\"",
        "clean_fraction = 0.25\nclean_weight = 0.25\nadv_route = \"clean\"",
    );
    assert_eq!(
        (
            hybrid::adv_rows(r.train.objective.hybrid().unwrap(), false, 8),
            hybrid::clean_rows(r.train.objective.hybrid().unwrap(), false, 8)
        ),
        (6, 2)
    );
    check_hybrid(&r, false);
}

#[test]
fn hybrid_single_bn_separate_passes() {
    let r = recipe(
        "hybrid",
        "kind = \"batch\"",
        "paired = true\npasses = \"separate\"\nadv_route = \"clean\"",
    );
    check_hybrid(&r, true);
}

#[test]
fn advprop_sums_main_and_auxiliary_losses() {
    let r = recipe(
        "advprop",
        "ns_domains = 2\nap_domains = 2",
        "clean_route = \"main\"\nadv_route = \"aux\"",
    );
    assert_eq!(r.validation_route(), Route::domain(CLEAN));
    check_hybrid(&r, true);
}

#[test]
fn group_norm_hybrid_has_no_statistics() {
    let r = recipe(
        "hybrid",
        "kind = \"group\"\ngroups = 8",
        "clean_fraction = 0.5",
    );
    assert_eq!(r.model.norm.kind, NormKind::Group);
    check_hybrid(&r, true);
}

#[test]
fn cross_bn_adv_rows_use_clean_batch_statistics() {
    // Adversarial rows with route ns=clean: normalised with the clean rows' statistics, so their
    // output changes when only the clean rows change.
    let _g = common::rng_lock();
    tch::manual_seed(8);
    let net = Network::new(&arch("small-cnn", 1, None, None, 2, 2, 1), Device::Cpu).unwrap();
    let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    let cross = Segment {
        size: 4,
        source: ADV,
        route: Route { ns: CLEAN, ap: ADV },
    };
    let segs = [cross, Segment::new(4, Route::domain(CLEAN))];
    let ctx = Ctx::mixed(Mode::TrainFrozen, &segs);
    let y1 = tch::no_grad(|| net.model.forward(&x, &ctx));
    let x2 = Tensor::cat(&[x.narrow(0, 0, 4), x.narrow(0, 4, 4) * 2.0], 0);
    let y2 = tch::no_grad(|| net.model.forward(&x2, &ctx));
    assert!(max_diff(&y1.narrow(0, 0, 4), &y2.narrow(0, 0, 4)) > 1e-3);
    // Dual BN (route ns=adv) instead: adversarial rows independent of the clean rows.
    let segs = [
        Segment::new(4, Route::domain(ADV)),
        Segment::new(4, Route::domain(CLEAN)),
    ];
    let ctx = Ctx::mixed(Mode::TrainFrozen, &segs);
    let z1 = tch::no_grad(|| net.model.forward(&x, &ctx));
    let z2 = tch::no_grad(|| net.model.forward(&x2, &ctx));
    assert!(max_diff(&z1.narrow(0, 0, 4), &z2.narrow(0, 0, 4)) < 1e-6);
}

#[test]
fn recipe_routes_are_checked_against_the_model() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(dir.path(), 20, 10);
    let f = dir.path().join("r.toml");
    std::fs::write(&f, common::tiny_recipe_toml(dir.path(), 1)).unwrap();
    let bad = Recipe::load(
        &f,
        &[
            "train.objective=\"hybrid\"".into(),
            "model.norm.ns_domains=2".into(),
            "train.hybrid.adv_route=\"ns=3,ap=0\"".into(),
        ],
    );
    let msg = format!("{:#}", bad.unwrap_err());
    assert!(
        msg.contains("train.hybrid.adv_route") && msg.contains("statistics sets"),
        "{msg}"
    );
    let bad = Recipe::load(
        &f,
        &[
            "train.objective=\"hybrid\"".into(),
            "train.hybrid.clean_fraction=1.0".into(),
        ],
    );
    assert!(format!("{:#}", bad.unwrap_err()).contains("train.hybrid.clean_fraction"));
}

#[test]
fn cli_dual_bn_train_eval_branches_export_and_controls() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_tiny_mnist(&data, 64, 24);
    let rf = tmp.path().join("r.toml");
    std::fs::write(&rf, common::tiny_recipe_toml(&data, 1)).unwrap();
    let run = tmp.path().join("run");
    let run_s = run.display().to_string();
    let o = advtrain(&[
        "train",
        "--recipe",
        &rf.display().to_string(),
        "--out",
        &run_s,
        "--set",
        "train.objective=\"hybrid\"",
        "--set",
        "model.norm.ns_domains=2",
        "--set",
        "model.norm.ap_domains=2",
        "--set",
        "train.hybrid.paired=true",
        "--set",
        "train.attack.steps=1",
        "--set",
        "validation.pgd_limit=10",
        "--set",
        "validation.branches=[\"clean\", \"adv\"]",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let branches = std::fs::read_to_string(run.join("branches.csv")).unwrap();
    let lines: Vec<&str> = branches.lines().collect();
    assert_eq!(lines[0], "epoch,route,val_clean_acc,val_pgd_acc");
    assert!(
        lines[1].starts_with("1,\"ns=clean,ap=clean\",")
            && lines[2].starts_with("1,\"ns=adv,ap=adv\","),
        "{branches}"
    );
    assert_eq!(lines.len(), 3);
    let saved = std::fs::read_to_string(run.join("recipe.toml")).unwrap();
    assert!(
        saved.contains("adv_route = \"ns=adv,ap=adv\"") && saved.contains("paired = true"),
        "{saved}"
    );
    let eval = |extra: &[&str], json: &str| -> serde_json::Value {
        let mut args = vec![
            "eval", "--run", &run_s, "--attack", "fgsm", "--eps", "0.1", "--device", "cpu",
            "--json", json,
        ];
        args.extend_from_slice(extra);
        let o = advtrain(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
    };
    let j = |n: &str| tmp.path().join(n).display().to_string();
    let adv = eval(&["--route", "adv"], &j("adv.json"));
    assert_eq!(adv["route"], "ns=adv,ap=adv");
    let swapped = eval(&["--route", "clean", "--swap-ap"], &j("swap.json"));
    assert_eq!(swapped["route"], "ns=clean,ap=adv");
    let soup = eval(&["--route", "adv", "--soup", "0.5"], &j("soup.json"));
    assert_eq!(soup["soup"], 0.5);
    let re = eval(
        &[
            "--route",
            "adv",
            "--reestimate",
            "noise",
            "--reestimate-batches",
            "2",
        ],
        &j("re.json"),
    );
    assert_eq!(re["reestimate"]["source"], "noise");
    assert_eq!(re["reestimate"]["batches"], 2);
    let bs = eval(
        &["--route", "adv", "--bn-mode", "train-frozen"],
        &j("bs.json"),
    );
    assert_eq!(bs["bn_mode"], "train-frozen");
    // Export the adversarial branch; evaluating the plain model gives the same numbers.
    let ck = run
        .join("checkpoints/last.safetensors")
        .display()
        .to_string();
    let plain = j("plain.safetensors");
    let o = advtrain(&[
        "export",
        "--checkpoint",
        &ck,
        "--route",
        "adv",
        "--out",
        &plain,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = advtrain(&[
        "eval",
        "--checkpoint",
        &ck,
        "--route",
        "adv",
        "--attack",
        "fgsm",
        "--eps",
        "0.1",
        "--device",
        "cpu",
        "--json",
        &j("a.json"),
    ]);
    assert!(o.status.success());
    let o = advtrain(&[
        "eval",
        "--checkpoint",
        &plain,
        "--attack",
        "fgsm",
        "--eps",
        "0.1",
        "--device",
        "cpu",
        "--json",
        &j("p.json"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, p): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&std::fs::read_to_string(j("a.json")).unwrap()).unwrap(),
        serde_json::from_str(&std::fs::read_to_string(j("p.json")).unwrap()).unwrap(),
    );
    assert_eq!(a["clean_accuracy"], p["clean_accuracy"]);
    assert_eq!(a["robust_accuracy"], p["robust_accuracy"]);
    // Bad input: a route the model lacks, a soup weight outside [0,1], unknown re-estimation data.
    for (args, want) in [
        (vec!["--route", "ns=4,ap=0"], "--route"),
        (vec!["--soup", "1.5"], "--soup"),
        (vec!["--reestimate", "blur"], "blur"),
    ] {
        let mut all = vec![
            "eval", "--run", &run_s, "--attack", "fgsm", "--eps", "0.1", "--device", "cpu",
        ];
        all.extend(args);
        let o = advtrain(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{err}");
    }
    let o = advtrain(&[
        "export",
        "--checkpoint",
        &ck,
        "--route",
        "ns=5,ap=0",
        "--out",
        &j("x.safetensors"),
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--route"));
}
