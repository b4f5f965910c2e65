//! Compute settings (issue 7): BN folding, attack micro-batches, the fused PGD step, bf16
//! autocast, and that attacks leave parameter gradients alone. Each check compares against an
//! independent computation (the unfolded model, whole-batch autograd, the textbook PGD formula).
//! The settings are a value given to each [`Classifier`] (`with_compute`): no process-wide state,
//! no lock between these tests.

use crate::common;

use advtrain::attack::{
    Apgd, ApgdConfig, Attack, Classifier, Fab, FabConfig, Fgsm, Pgd, PgdConfig, Square,
    SquareConfig, ThreatNorm,
};
use advtrain::compute::{self, Compute, Precision};
use advtrain::nn::{Ctx, Mode, Network, NormKind, Route, Segment};
use common::{advtrain, close, confident_small_cnn, small_cnn_arch, stderr};
use tch::{Device, Kind, Tensor};

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Dual-BN small-cnn with distinct, non-trivial running statistics and affine parameters per
/// domain, so that every route computes a different function.
fn dual_bn_net() -> Network {
    tch::manual_seed(11);
    let net = Network::new(&small_cnn_arch(2, 2), Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (name, v) in net.variables() {
            let mut v = v.shallow_clone();
            if name.ends_with("running_mean") {
                let _ = v.copy_(&(v.rand_like() * 0.4 - 0.2));
            } else if name.ends_with("running_var") {
                let _ = v.copy_(&(v.rand_like() + 0.5));
            } else if name.contains("bn") && name.ends_with("weight") {
                let _ = v.copy_(&(v.rand_like() + 0.5));
            } else if name.contains("bn") && name.ends_with("bias") {
                let _ = v.copy_(&(v.rand_like() * 0.2 - 0.1));
            }
        }
    });
    net
}

#[test]
fn folded_forward_equals_the_unfolded_one_on_every_route_and_soup() {
    let _rng = common::rng_shared();
    let net = dual_bn_net();
    let x = Tensor::rand([6, 1, 28, 28], (Kind::Float, Device::Cpu));
    let routes: [Route; 4] = [
        "clean".parse().unwrap(),
        "adv".parse().unwrap(),
        "ns=clean,ap=adv".parse().unwrap(),
        "ns=adv,ap=clean".parse().unwrap(),
    ];
    let mut outputs = vec![];
    for route in routes {
        for soup in [None, Some(0.3)] {
            let ctx = Ctx::new(route, Mode::Eval).with_soup(soup);
            let plain = tch::no_grad(|| net.model.forward(&x, &ctx));
            let folded = tch::no_grad(|| net.model.forward_folded(&x, &ctx))
                .unwrap_or_else(|| panic!("route {route} soup {soup:?}: no folded forward"));
            let scale = plain.abs().max().double_value(&[]);
            let d = max_abs(&plain, &folded);
            assert!(
                d <= 1e-5 * (1.0 + scale),
                "route {route} soup {soup:?}: folded differs by {d}"
            );
            outputs.push(plain);
        }
    }
    // The routes really are different functions (the check above is not vacuous).
    assert!(max_abs(&outputs[0], &outputs[2]) > 1e-3);
}

#[test]
fn folding_declines_where_it_would_not_be_exact() {
    let _rng = common::rng_shared();
    let net = dual_bn_net();
    let x = Tensor::rand([4, 1, 28, 28], (Kind::Float, Device::Cpu));
    let m = net.model.as_ref();
    assert!(m.forward_folded(&x, &Ctx::eval()).is_some());
    for mode in [Mode::Train, Mode::TrainFrozen] {
        let ctx = Ctx::new(Route::default(), mode);
        assert!(m.forward_folded(&x, &ctx).is_none(), "{mode} folded");
    }
    let mixed = Ctx::mixed(
        Mode::Eval,
        &[
            Segment::new(2, "clean".parse().unwrap()),
            Segment::new(2, "adv".parse().unwrap()),
        ],
    );
    assert!(m.forward_folded(&x, &mixed).is_none(), "mixed batch folded");
    let (_, bn2) = m.norms().into_iter().nth(1).unwrap();
    bn2.set_tap(true);
    assert!(
        m.forward_folded(&x, &Ctx::eval()).is_none(),
        "tapped layer folded"
    );
    bn2.set_tap(false);
    let mut arch = small_cnn_arch(1, 1);
    arch.norm.kind = NormKind::Group;
    arch.norm.groups = 4;
    let gn = Network::new(&arch, Device::Cpu).unwrap();
    assert!(gn.model.forward_folded(&x, &Ctx::eval()).is_none());
}

/// Whole-batch, unfolded, fp32 reference: logits, per-row CE and input gradient by autograd.
fn reference_ce_grad(net: &Network, ctx: &Ctx, x: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
    let xr = x.detach().set_requires_grad(true);
    let z = net.model.forward(&xr, ctx);
    let loss =
        z.log_softmax(-1, Kind::Float)
            .g_nll_loss::<Tensor>(y, None, tch::Reduction::Sum, -100);
    let g = Tensor::run_backward(&[&loss], &[&xr], false, false).remove(0);
    (z.detach(), g)
}

/// The micro-batched (chunks of 7 rows), folded-BN loss gradient equals whole-batch autograd
/// on 50 random batches: every element within 1e-5 of the largest gradient entry, except where a
/// kink intervenes: a ReLU or max-pool unit whose inputs tie within float rounding takes the
/// other branch in one of the two computations, which moves that image's gradient inside the
/// unit's receptive field (seen: 6-81 elements of one image, in ~5% of batches; on other CPUs
/// the kernels round differently, so which batches is not fixed). So a batch may differ in at
/// most two images, and at least 80% of the batches must match everywhere: a systematic error
/// (a wrong chunk, a wrong fold) moves the gradient of every image it touches in every batch.
#[test]
fn micro_batched_folded_loss_grad_matches_whole_batch_autograd() {
    // Exclusive: the model and the points are fixed by their seeds.
    let _rng = common::rng_lock();
    let net = dual_bn_net();
    let mut exact = 0;
    for seed in 0..50 {
        tch::manual_seed(100 + seed);
        let (bad, bad_rows) = micro_batched_case(&net);
        assert!(
            bad_rows <= 2,
            "seed {seed}: {bad} gradient elements in {bad_rows} images differ by more than 1e-5 \
             of the largest (more than two kinks)"
        );
        exact += (bad == 0) as usize;
    }
    assert!(exact >= 40, "only {exact} of 50 batches match everywhere");
}

/// One random batch: the micro-batched, folded loss gradient, logits and losses against the
/// whole-batch autograd reference; returns (elements of the gradient off by more than 1e-5 of
/// max |g_ref|, images holding them).
fn micro_batched_case(net: &Network) -> (i64, i64) {
    let c = Compute {
        attack_chunk: 7,
        ..Compute::default()
    };
    let x = Tensor::rand([20, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [20], (Kind::Int64, Device::Cpu));
    let ctx = Ctx::new("adv".parse().unwrap(), Mode::Eval);
    let (z_ref, g_ref) = reference_ce_grad(&net, &ctx, &x, &y);
    let f = Classifier::new(net.model.as_ref(), ctx).with_compute(&c);
    let (z, loss, g) = f.loss_grad(&x, |z, start, len| {
        advtrain::attack::cross_entropy(
            z,
            &advtrain::attack::rows(&y, start, len),
            tch::Reduction::None,
        )
    });
    assert_eq!(g.size(), x.size());
    assert_eq!(loss.size(), vec![20]);
    let gs = g_ref.abs().max().double_value(&[]);
    let off = (&g - &g_ref).abs().gt(1e-5 * gs);
    let bad = off.sum(Kind::Int64).int64_value(&[]);
    let bad_rows = off
        .flatten(1, -1)
        .any_dim(1, false)
        .sum(Kind::Int64)
        .int64_value(&[]);
    assert!(max_abs(&z, &z_ref) <= 1e-4, "logits differ");
    let ce_ref = z_ref.log_softmax(-1, Kind::Float).g_nll_loss::<Tensor>(
        &y,
        None,
        tch::Reduction::None,
        -100,
    );
    assert!(max_abs(&loss, &ce_ref) <= 1e-4, "per-row losses differ");
    // Without autograd, logits are micro-batched too.
    let z2 = tch::no_grad(|| f.logits(&x));
    assert!(max_abs(&z2, &z_ref) <= 1e-4);
    (bad, bad_rows)
}

#[test]
fn micro_batches_split_the_rows_in_order() {
    let _rng = common::rng_shared();
    let c = Compute {
        attack_chunk: 8,
        ..Compute::default()
    };
    let net = dual_bn_net();
    let x = Tensor::rand([20, 1, 28, 28], (Kind::Float, Device::Cpu));
    let f = Classifier::new(net.model.as_ref(), Ctx::eval()).with_compute(&c);
    let seen = std::cell::RefCell::new(vec![]);
    let _ = f.loss_grad(&x, |z, start, len| {
        seen.borrow_mut().push((start, len, z.size()[0]));
        z.sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
    });
    assert_eq!(*seen.borrow(), vec![(0, 8, 8), (8, 8, 8), (16, 4, 4)]);
    // A train-mode classifier (batch statistics) is never split.
    let f = Classifier::new(net.model.as_ref(), Ctx::train()).with_compute(&c);
    seen.borrow_mut().clear();
    let _ = f.loss_grad(&x, |z, start, len| {
        seen.borrow_mut().push((start, len, z.size()[0]));
        z.sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
    });
    assert_eq!(*seen.borrow(), vec![(0, 20, 20)]);
}

#[test]
fn fused_pgd_step_equals_the_textbook_projection() {
    let c = Compute {
        attack_chunk: 5,
        ..Compute::default()
    };
    let _rng = common::rng_lock();
    let net = confident_small_cnn();
    let x = Tensor::rand([12, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [12], (Kind::Int64, Device::Cpu));
    let (eps, alpha) = (0.1, 0.07);
    let mut cfg = PgdConfig::new(ThreatNorm::Linf, eps, alpha, 1);
    cfg.init = advtrain::attack::pgd::Init::Zero;
    let x_before = x.copy();
    let f = Classifier::new(net.model.as_ref(), Ctx::eval()).with_compute(&c);
    let adv = Pgd::new(cfg.clone()).perturb(&f, &x, &y);
    assert_eq!(
        max_abs(&x, &x_before),
        0.0,
        "the zero start must not alias the input"
    );
    // x' = clip_[0,1](x + clip_[-eps,eps](alpha sign g)), g from whole-batch autograd.
    let (_, g) = reference_ce_grad(&net, &Ctx::eval(), &x, &y);
    let expect = (&x + (g.sign() * alpha).clamp(-eps, eps)).clamp(0.0, 1.0);
    assert!(max_abs(&adv, &expect) <= 1e-6, "one fused step differs");
    // Several steps keep every property of the threat model.
    cfg.steps = 5;
    cfg.init = advtrain::attack::pgd::Init::Uniform;
    let adv = Pgd::new(cfg).perturb(&f, &x, &y);
    assert!((&adv - &x).abs().max().double_value(&[]) <= eps + 1e-6);
    assert!(adv.min().double_value(&[]) >= 0.0 && adv.max().double_value(&[]) <= 1.0);
}

#[test]
fn attacks_leave_parameter_gradients_untouched() {
    let c = Compute::default();
    let _rng = common::rng_lock();
    let net = confident_small_cnn();
    let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [8], (Kind::Int64, Device::Cpu));
    let f = Classifier::new(net.model.as_ref(), Ctx::eval()).with_compute(&c);
    let attacks: Vec<Box<dyn Attack>> = vec![
        Box::new(Pgd::new(PgdConfig::new(ThreatNorm::Linf, 0.1, 0.03, 3))),
        Box::new(Pgd::new(PgdConfig::new(ThreatNorm::L2, 1.0, 0.3, 3))),
        Box::new(Fgsm { eps: 0.1 }),
        Box::new(Apgd::new(ApgdConfig {
            n_iter: 5,
            ..ApgdConfig::ce(ThreatNorm::Linf, 0.1)
        })),
        Box::new(Fab::new(FabConfig {
            n_iter: 3,
            n_target_classes: 2,
            ..FabConfig::targeted(ThreatNorm::Linf, 0.1)
        })),
        Box::new(Square::new(SquareConfig {
            n_queries: 20,
            ..SquareConfig::new(ThreatNorm::Linf, 0.1)
        })),
    ];
    for a in &attacks {
        let adv = a.perturb(&f, &x, &y);
        assert_eq!(adv.size(), x.size(), "{}", a.name());
        for (name, v) in net.variables() {
            let g = v.grad();
            assert!(
                !g.defined() || g.abs().max().double_value(&[]) == 0.0,
                "{}: parameter {name} received a gradient",
                a.name()
            );
        }
    }
}

#[test]
fn bf16_autocast_runs_the_model_in_bf16_and_restores_the_state() {
    let _rng = common::rng_shared();
    let w = Tensor::rand([4, 1, 3, 3], (Kind::Float, Device::Cpu));
    let x = Tensor::rand([2, 1, 8, 8], (Kind::Float, Device::Cpu));
    let conv = |x: &Tensor| x.conv2d(&w, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1);
    assert_eq!(conv(&x).kind(), Kind::Float);
    let (inner, nested) = compute::with_precision(Precision::Bf16, Device::Cpu, || {
        let nested = compute::with_precision(Precision::Fp32, Device::Cpu, || conv(&x).kind());
        (conv(&x).kind(), nested)
    });
    assert_eq!(
        inner,
        Kind::BFloat16,
        "bf16 autocast did not run the conv in bf16"
    );
    assert_eq!(
        nested,
        Kind::Float,
        "an fp32 region inside bf16 must run in fp32"
    );
    assert!(!compute::autocast_enabled(Device::Cpu), "autocast left on");
    assert_eq!(conv(&x).kind(), Kind::Float);
}

#[test]
fn bf16_attack_precision_gives_float32_logits_close_to_fp32() {
    let (net, x, y) = {
        let _rng = common::rng_lock();
        (
            confident_small_cnn(),
            Tensor::rand([16, 1, 28, 28], (Kind::Float, Device::Cpu)),
            Tensor::randint(10, [16], (Kind::Int64, Device::Cpu)),
        )
    };
    let grads = |p: Precision| {
        let c = Compute {
            precision_attack: p,
            ..Compute::default()
        };
        let f = Classifier::new(net.model.as_ref(), Ctx::eval()).with_compute(&c);
        f.loss_grad(&x, |z, s, n| {
            advtrain::attack::cross_entropy(
                z,
                &advtrain::attack::rows(&y, s, n),
                tch::Reduction::None,
            )
        })
    };
    let (z32, _, g32) = grads(Precision::Fp32);
    let (z16, _, g16) = grads(Precision::Bf16);
    // Verdicts are judged in fp32 whatever the attack precision.
    {
        let c = Compute {
            precision_attack: Precision::Bf16,
            ..Compute::default()
        };
        let f = Classifier::new(net.model.as_ref(), Ctx::eval()).with_compute(&c);
        let verdict = tch::no_grad(|| f.predict(&x));
        assert!(max_abs(&verdict, &z32) <= 1e-5, "predict() is not fp32");
        assert!(
            max_abs(&tch::no_grad(|| f.logits(&x)), &z32) > 0.0,
            "logits() is not bf16"
        );
    }
    assert_eq!(z16.kind(), Kind::Float);
    assert_eq!(g16.kind(), Kind::Float);
    let zs = z32.abs().max().double_value(&[]);
    let dz = max_abs(&z16, &z32);
    assert!(
        dz > 0.0,
        "bf16 logits are bit-identical to fp32: autocast did nothing"
    );
    assert!(
        dz <= 0.05 * zs,
        "bf16 logits too far from fp32: {dz} vs scale {zs}"
    );
    // The attack direction mostly agrees: sign(g) matches on most pixels with a clear gradient.
    let strong = g32.abs().gt(1e-3 * g32.abs().max().double_value(&[]));
    let agree = g16.sign().eq_tensor(&g32.sign()).logical_and(&strong);
    let frac = agree
        .to_kind(Kind::Float)
        .sum(Kind::Float)
        .double_value(&[])
        / strong
            .to_kind(Kind::Float)
            .sum(Kind::Float)
            .double_value(&[]);
    assert!(frac > 0.9, "bf16 gradient signs agree on only {frac:.3}");
}

#[test]
fn compute_settings_are_validated_printed_and_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::write_tiny_mnist(&data, 120, 40);
    let recipe = tmp.path().join("r.toml");
    let bad = tmp.path().join("bad.toml");
    let toml = common::tiny_recipe_toml(&data, 1);
    std::fs::write(&recipe, &toml).unwrap();
    std::fs::write(
        &bad,
        format!("{toml}\n[compute]\nprecision_attack = \"fp16\"\n"),
    )
    .unwrap();
    let o = advtrain(&[
        "train",
        "--recipe",
        &bad.display().to_string(),
        "--out",
        &tmp.path().join("bad").display().to_string(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("fp16") && e.contains("precision_attack"),
        "error must name the field and value: {e}"
    );
    let run = tmp.path().join("run");
    let o = advtrain(&[
        "--precision-attack",
        "bf16",
        "--attack-chunk",
        "16",
        "train",
        "--recipe",
        &recipe.display().to_string(),
        "--out",
        &run.display().to_string(),
        "--set",
        "train.attack.steps=1",
        "--train-limit",
        "64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "compute: precision attack bf16 / train fp32, fold_bn true, attack_chunk 16 (CPU only)"
        ),
        "{}",
        stderr(&o)
    );
    // bf16 autocast on this CPU warns (once) exactly when the CPU has no native bf16 (read here
    // from /proc/cpuinfo on its own).
    let native = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| {
            l.split_whitespace()
                .any(|f| f == "avx512_bf16" || f == "amx_bf16")
        });
    let warnings = stderr(&o).matches("has no native bf16").count();
    assert_eq!(warnings, usize::from(!native), "{}", stderr(&o));
    let saved = std::fs::read_to_string(run.join("recipe.toml")).unwrap();
    assert!(
        saved.contains("precision_attack = \"bf16\"") && saved.contains("attack_chunk = 16"),
        "{saved}"
    );
    let json = tmp.path().join("eval.json");
    let o = advtrain(&[
        "--no-fold-bn",
        "eval",
        "--run",
        &run.display().to_string(),
        "--attack",
        "pgd",
        "--eps",
        "0.1",
        "--steps",
        "2",
        "--test-limit",
        "20",
        "--json",
        &json.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = common::read_json(&json);
    assert_eq!(v["compute"]["fold_bn"], false);
    assert_eq!(v["compute"]["precision_attack"], "fp32");
    assert!(close(
        v["compute"]["attack_chunk"].as_f64().unwrap(),
        128.0,
        0.0
    ));
    assert_eq!(v["compute"]["tf32"], "pytorch");
    assert_eq!(v["compute"]["deterministic"], false);

    // tf32 / deterministic: recorded in the JSON, and libtorch's switches read back as set.
    let o = advtrain(&[
        "--tf32",
        "off",
        "--deterministic",
        "eval",
        "--run",
        &run.display().to_string(),
        "--attack",
        "fgsm",
        "--eps",
        "0.1",
        "--test-limit",
        "20",
        "--json",
        &json.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = common::read_json(&json);
    assert_eq!(v["compute"]["tf32"], "off");
    assert_eq!(v["compute"]["deterministic"], true);
    let err = stderr(&o);
    for part in [
        "tf32_cudnn: false",
        "tf32_cublas: false",
        "deterministic_algorithms: true",
        "deterministic_cudnn: true",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    // The training side: `[compute]` keys, with the flag as an override, saved with the run.
    let run2 = tmp.path().join("run-tf32");
    let o = advtrain(&[
        "--tf32",
        "on",
        "train",
        "--recipe",
        &recipe.display().to_string(),
        "--out",
        &run2.display().to_string(),
        "--set",
        "train.attack.steps=1",
        "--train-limit",
        "64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("tf32_cudnn: true, tf32_cublas: true"),
        "{}",
        stderr(&o)
    );
    let saved = std::fs::read_to_string(run2.join("recipe.toml")).unwrap();
    assert!(saved.contains("tf32 = \"on\""), "{saved}");
    let o = advtrain(&[
        "--tf32",
        "tf16",
        "eval",
        "--run",
        &run.display().to_string(),
        "--attack",
        "fgsm",
        "--eps",
        "0.1",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("tf32"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn auto_on_a_gpu_machine_without_usable_cuda_warns_with_the_cause() {
    use advtrain::device::gpu_unused_warning;
    assert_eq!(gpu_unused_warning(&[], Some("NVRM version: 535.54")), None);
    let devs = vec!["/dev/nvidia0".to_string(), "/dev/nvidia1".to_string()];
    let w = gpu_unused_warning(
        &devs,
        Some("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.54.03"),
    )
    .unwrap();
    for part in [
        "/dev/nvidia0, /dev/nvidia1",
        "535.54.03",
        "driver >= 580",
        "ADVTRAIN_TORCH_INDEX",
        "--device cpu",
    ] {
        assert!(w.contains(part), "{part}: {w}");
    }
    let w = gpu_unused_warning(&devs[..1], None).unwrap();
    assert!(w.contains("driver is not loaded"), "{w}");
}

#[test]
fn cudnn_benchmark_only_while_shapes_are_stable() {
    use advtrain::device::{cudnn_benchmark_for, Phase};
    assert!(cudnn_benchmark_for(Phase::Training));
    assert!(cudnn_benchmark_for(Phase::FixedShapes));
    assert!(!cudnn_benchmark_for(Phase::Evaluation));
}
