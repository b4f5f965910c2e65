//! Stochastic weight averaging (`train.swa`): the running average, its resume, and the BN
//! re-estimation of the averaged model against independent computations.

use crate::common;

use advtrain::nn::Network;
use advtrain::train::recipe::Recipe;
use advtrain::train::swa::SwaAverage;
use advtrain::train::{train, RunOptions};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

fn trainable(net: &Network) -> Vec<(String, Tensor)> {
    net.trainable()
        .into_iter()
        .map(|(k, t)| (k, t.detach().copy()))
        .collect()
}

#[test]
fn the_average_is_the_mean_of_the_folded_parameters() {
    let _g = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let r = common::load_recipe(
        &dir.path().join("r.toml"),
        &common::tiny_recipe_toml(dir.path(), 1),
    );
    let net = Network::new(&r.model, Device::Cpu).unwrap();
    let p0 = trainable(&net);
    let mut avg = SwaAverage::empty();
    avg.update(&net);
    // Move every parameter by k (k = 1, 2): the mean of 0, 1, 2 offsets is 1.
    for k in [1.0, 2.0] {
        tch::no_grad(|| {
            for ((_, mut w), (_, w0)) in net.trainable().into_iter().zip(&p0) {
                w.copy_(&(w0 + k));
            }
        });
        avg.update(&net);
    }
    assert_eq!(avg.n, 3);
    avg.apply(&net);
    for ((name, w), (_, w0)) in trainable(&net).iter().zip(&p0) {
        let d = (w - w0 - 1.0).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{name}: average off by {d}");
    }
}

/// A 3-epoch run with SWA from epoch 1, killed after epoch 2 and resumed: `checkpoints/swa`
/// holds the mean of the parameters after epochs 2 and 3, and its BN running mean is the
/// mean of the first layer's pre-norm activations over the training images (one batch).
#[test]
fn swa_run_resumes_and_reestimates_bn() {
    let _g = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::write_tiny_mnist(&data, 64, 20); // 24 training images after 40 validation
    let f = dir.path().join("r.toml");
    std::fs::write(&f, common::tiny_recipe_toml(&data, 3)).unwrap();
    let r = Recipe::load(
        &f,
        &[
            "train.swa={ start_epoch = 1 }".into(),
            "validation.pgd_limit=10".into(),
        ],
    )
    .unwrap();
    let out = dir.path().join("run");
    let opts = |resume, stop_after| RunOptions {
        out: out.clone(),
        resume,
        stop_after,
    };
    train(&r, &opts(false, Some(2))).unwrap();
    let ck = out.join("checkpoints");
    let e2 = advtrain::checkpoint::read_tensors(&ck.join("last.safetensors")).unwrap();
    assert!(ck.join("swa_avg.safetensors").exists());
    assert!(
        !ck.join("swa.safetensors").exists(),
        "no SWA model before the end"
    );
    let summary = train(&r, &opts(true, None)).unwrap();
    let s = summary.swa.expect("summary has the SWA model");
    assert_eq!((s.averaged, s.first_epoch), (2, 2));
    let e3 = advtrain::checkpoint::read_tensors(&ck.join("last.safetensors")).unwrap();
    let swa = advtrain::checkpoint::read_tensors(&ck.join("swa.safetensors")).unwrap();
    let net = Network::new(&r.model, Device::Cpu).unwrap();
    let names: Vec<String> = trainable(&net).into_iter().map(|(k, _)| k).collect();
    for k in &names {
        let want = (&e2[k] + &e3[k]) / 2.0;
        let d = (&swa[k] - want).abs().max().double_value(&[]);
        assert!(d < 1e-6, "{k}: SWA parameter off by {d}");
    }
    // BN re-estimation: running_mean of bn1 = mean over the 24 training images of conv1(x).
    let splits = r.data.load().unwrap();
    let x = &(splits.train.images.to_kind(Kind::Float) / 255.0);
    assert_eq!(x.size()[0], 24);
    let h = x.conv2d(
        &swa["conv1.weight"],
        None::<Tensor>,
        [1, 1],
        [1, 1],
        [1, 1],
        1,
    );
    let want = h.mean_dim(&[0i64, 2, 3][..], false, Kind::Float);
    let d = (&swa["bn1.running_mean"] - want)
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        d < 1e-5,
        "bn1.running_mean is not the training-set mean: off by {d}"
    );
    let moved = (&swa["bn1.running_mean"] - &e3["bn1.running_mean"])
        .abs()
        .max();
    assert!(
        moved.double_value(&[]) > 1e-4,
        "statistics were re-estimated"
    );
    let side: HashMap<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(side["swa"]["averaged"], 2);
    // Bad settings name the field.
    let e = Recipe::load(&f, &["train.swa={ start_epoch = 3 }".into()]).unwrap_err();
    assert!(format!("{e:#}").contains("train.swa.start_epoch"), "{e:#}");
}

/// An L2 recipe with `[train.swa] bn_source = "adv"` re-estimates the statistics on L2 PGD
/// examples at the L2 eps (the recipe's threat model), not on L-inf examples at that eps: the
/// statistics equal an independent re-estimation with an L2 probe and differ from an L-inf one.
#[test]
fn swa_reestimates_adversarial_statistics_in_the_recipes_norm() {
    use advtrain::attack::ThreatNorm;
    use advtrain::eval::controls::{reestimate, Reestimate, StatsSource};
    let _g = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(dir.path(), 96, 20);
    let f = dir.path().join("r.toml");
    let text = common::tiny_recipe_toml(dir.path(), 2).replace(
        "eps = 0.1\nstep_size = 0.05",
        "norm = \"l2\"\neps = 1.5\nstep_size = 0.4",
    ) + "[train.swa]\nstart_epoch = 1\nbn_batches = 2\nbn_source = \"adv\"\n";
    std::fs::write(&f, &text).unwrap();
    let r = Recipe::load(&f, &[]).unwrap();
    assert_eq!(r.train.attack().unwrap().norm, ThreatNorm::L2);
    let data = r.data.load().unwrap();
    let spec = r.train.swa.clone().unwrap();
    assert_eq!(spec.bn_source, StatsSource::Adv);
    let fresh = || {
        tch::manual_seed(5);
        Network::new(&r.model, Device::Cpu).unwrap()
    };
    let stats = |net: &Network| net.variables()["bn1.running_mean"].copy();
    let net = fresh();
    advtrain::train::swa::reestimate_bn(&r, &spec, &net, &data.train, Device::Cpu).unwrap();
    let ours = stats(&net);
    let by_hand = |norm: ThreatNorm| {
        let net = fresh();
        let re = Reestimate {
            source: StatsSource::Adv,
            batches: 2,
            batch_size: r.train.batch_size,
            norm,
            eps: 1.5,
            seed: r.seed,
        };
        reestimate(
            net.model.as_ref(),
            r.validation_route(),
            &re,
            &data.train,
            Device::Cpu,
        )
        .unwrap();
        stats(&net)
    };
    let d = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    assert!(
        d(&ours, &by_hand(ThreatNorm::L2)) < 1e-6,
        "not the L2 re-estimation"
    );
    assert!(
        d(&ours, &by_hand(ThreatNorm::Linf)) > 1e-4,
        "L-inf gives the same statistics"
    );
}
