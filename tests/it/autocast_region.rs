//! One autocast region per attack (issue 18): what autocast's cast cache holds inside a region,
//! that an fp32 verdict nested in it keeps the cache and the outermost exit drops it, and that a
//! bf16 PGD run in one region gives bit for bit the result of the same steps with one region per
//! forward (the code before the change: autocast switched, and its cache cleared, per forward).

use crate::common;
use advtrain::attack::{cross_entropy, rows, Attack, Classifier, Pgd, PgdConfig, ThreatNorm};
use advtrain::compute::{self, autocast_cast, Compute, Precision};
use advtrain::nn::{ArchSpec, Ctx, Network, NormSpec};
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// torch's global generator is shared by the tests of this binary.
static RNG: Mutex<()> = Mutex::new(());

fn small_cnn() -> Network {
    let arch = ArchSpec {
        predictors: vec![],
        heads: 1,
        name: "small-cnn".into(),
        num_classes: 10,
        in_channels: 1,
        depth: None,
        width: None,
        norm: NormSpec::default(),
    };
    tch::manual_seed(5);
    let net = Network::new(&arch, Device::Cpu).unwrap();
    // Non-trivial running statistics (a few train-mode forwards), so folding does something.
    for _ in 0..3 {
        let x = Tensor::rand([32, 1, 28, 28], (Kind::Float, Device::Cpu));
        let _ = tch::no_grad(|| net.model.forward(&x, &Ctx::train()));
    }
    net
}

fn same_storage(a: &Tensor, b: &Tensor) -> bool {
    a.data_ptr() == b.data_ptr()
}

#[test]
fn the_cache_holds_trainable_leaf_weights_only_until_the_outermost_region_exits() {
    let _rng = common::rng_lock();
    let dev = Device::Cpu;
    let w = Tensor::rand([8, 1, 3, 3], (Kind::Float, dev)).set_requires_grad(true);
    let frozen = w.detach();
    let (first, kept_across_fp32, frozen_cached, derived_cached) =
        compute::with_precision(Precision::Bf16, dev, || {
            let a = autocast_cast(&w, dev);
            assert_eq!(a.kind(), Kind::BFloat16);
            // An fp32 verdict inside the attack's region (Classifier::predict).
            compute::with_precision(Precision::Fp32, dev, || {
                assert!(!compute::autocast_enabled(dev));
            });
            assert!(
                compute::autocast_enabled(dev),
                "bf16 restored after the fp32 verdict"
            );
            let b = autocast_cast(&w, dev);
            // Frozen weights (a TorchScript module's, a teacher's) and weights computed in the
            // forward (BN folded into the conv) are cast anew every time.
            let fz = same_storage(&autocast_cast(&frozen, dev), &autocast_cast(&frozen, dev));
            let folded = &w * 2.0;
            let dv = same_storage(&autocast_cast(&folded, dev), &autocast_cast(&folded, dev));
            let kept = same_storage(&a, &b);
            (a, kept, fz, dv)
        });
    assert!(
        kept_across_fp32,
        "the cast of a trainable leaf weight is cached in the region"
    );
    assert!(!frozen_cached, "a frozen weight's cast is not cached");
    assert!(
        !derived_cached,
        "a non-leaf (folded) weight's cast is not cached"
    );
    assert!(!compute::autocast_enabled(dev), "autocast left on");
    // `first` is still alive, so a new cast cannot reuse its memory: a different storage means
    // the outermost exit dropped the cache.
    let again = compute::with_precision(Precision::Bf16, dev, || autocast_cast(&w, dev));
    assert!(
        !same_storage(&first, &again),
        "the cache outlived its region"
    );
    // Two separate regions (the old per-forward switching) never share a cast.
    let a = compute::with_precision(Precision::Bf16, dev, || autocast_cast(&w, dev));
    assert!(!same_storage(&a, &again));
}

/// PGD-L-inf with uniform start, as `Pgd::run_once` computes it, but every forward/backward in
/// its own autocast region (`Classifier::loss_grad` called outside any region).
fn pgd_one_region_per_forward(f: &Classifier, cfg: &PgdConfig, x: &Tensor, y: &Tensor) -> Tensor {
    let (eps, alpha) = (cfg.eps, cfg.step_size);
    let mut x_adv = (x + x.rand_like() * (2.0 * eps) - eps)
        .clamp(0.0, 1.0)
        .detach();
    let lo = (x - eps).clamp_min(0.0);
    let hi = (x + eps).clamp_max(1.0);
    for _ in 0..cfg.steps {
        let (_, _, mut g) = f.loss_grad(&x_adv, |z, s, n| {
            cross_entropy(z, &rows(y, s, n), tch::Reduction::None)
        });
        let _ = g.sign_().g_mul_scalar_(alpha);
        let _ = x_adv.g_add_(&g).clamp_tensor_(Some(&lo), Some(&hi));
    }
    x_adv
}

#[test]
fn bf16_pgd_in_one_region_equals_one_region_per_forward() {
    let _rng = common::rng_lock();
    let _g = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let net = small_cnn();
    let x = Tensor::rand([12, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [12], (Kind::Int64, Device::Cpu));
    let cfg = PgdConfig::new(ThreatNorm::Linf, 0.1, 0.02, 5);
    let run = |p: Precision, fold: bool, chunk: usize, per_forward: bool| {
        let c = Compute {
            precision_attack: p,
            fold_bn: fold,
            attack_chunk: chunk,
            ..Compute::default()
        };
        let f = Classifier::new(net.model.as_ref(), Ctx::eval()).with_compute(&c);
        tch::manual_seed(77);
        if per_forward {
            pgd_one_region_per_forward(&f, &cfg, &x, &y)
        } else {
            Pgd::new(cfg.clone()).perturb(&f, &x, &y)
        }
    };
    // Folded (conv casts not cacheable), unfolded (every weight cached), micro-batched.
    for (fold, chunk) in [(true, 0), (false, 0), (false, 5)] {
        let one = run(Precision::Bf16, fold, chunk, false);
        let per = run(Precision::Bf16, fold, chunk, true);
        assert!(
            one.equal(&per),
            "bf16 PGD changed (fold {fold}, chunk {chunk}): max diff {}",
            (&one - &per).abs().max().double_value(&[])
        );
        let fp32 = run(Precision::Fp32, fold, chunk, false);
        assert!(!one.equal(&fp32), "bf16 did nothing (fold {fold})");
        assert!(run(Precision::Fp32, fold, chunk, true).equal(&fp32));
    }
    assert!(!compute::autocast_enabled(Device::Cpu), "autocast left on");
}
