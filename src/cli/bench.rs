//! `advtrain bench`: images/s of one PGD-10 adversarial-training step (10 L-inf PGD steps in
//! eval mode, then one SGD step in train mode) on random data, the twin of
//! `bench/pytorch_pgd_at.py` (same models, batch, threads, device).

use crate::attack::{cross_entropy, Attack, Classifier, Pgd, PgdConfig, ThreatNorm};
use crate::device::{device_name, parse_device};
use crate::nn::network::channels_last;
use crate::nn::{ArchSpec, Ctx, Network, NormSpec};
use crate::train::optim::Sgd;
use anyhow::Result;
use clap::Args;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Comma-separated architectures.
    #[arg(long, default_value = "small-cnn,preact-resnet18")]
    pub models: String,
    #[arg(long, default_value_t = 128)]
    pub batch_size: i64,
    /// Timed iterations (after warm-up).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// PGD steps of the training attack.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Lay out inputs and convolution weights channels-last.
    #[arg(long)]
    pub channels_last: bool,
}

fn train_step(net: &Network, sgd: &mut Sgd, pgd: &Pgd, x: &Tensor, y: &Tensor) {
    let model = net.model.as_ref();
    let x_adv = pgd.perturb(&Classifier::new(model, Ctx::eval()), x, y);
    let loss = cross_entropy(
        &model.forward(&x_adv, &Ctx::train()),
        y,
        tch::Reduction::Mean,
    );
    sgd.zero_grad();
    loss.backward();
    sgd.step(0.01);
}

fn sync(device: Device) {
    if let Device::Cuda(_) = device {
        tch::Cuda::synchronize(0);
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    tch::manual_seed(0);
    for name in a.models.split(',') {
        let (c, hw, eps) = if name == "small-cnn" {
            (1, 28, 0.1)
        } else {
            (3, 32, 8.0 / 255.0)
        };
        let arch = ArchSpec {
            predictors: vec![],
            heads: 1,
            name: name.into(),
            num_classes: 10,
            in_channels: c,
            depth: None,
            width: None,
            norm: NormSpec::default(),
        };
        let net = Network::new(&arch, device)?;
        if a.channels_last {
            net.set_channels_last();
        }
        let mut sgd = Sgd::new(&net.vs, 0.9, 5e-4, false);
        let pgd = Pgd::new(PgdConfig::new(ThreatNorm::Linf, eps, eps / 4.0, a.steps));
        let mut x = Tensor::rand([a.batch_size, c, hw, hw], (Kind::Float, device));
        if a.channels_last {
            x = channels_last(&x);
        }
        let y = Tensor::randint(10, [a.batch_size], (Kind::Int64, device));
        for _ in 0..a.warmup {
            train_step(&net, &mut sgd, &pgd, &x, &y);
        }
        sync(device);
        let t0 = Instant::now();
        for _ in 0..a.iters {
            train_step(&net, &mut sgd, &pgd, &x, &y);
        }
        sync(device);
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({
                "impl": "advtrain", "model": name, "channels_last": a.channels_last, "batch_size": a.batch_size, "threads": tch::get_num_threads(),
                "device": device_name(device), "iters": a.iters, "images_per_s": (a.batch_size as f64) * (a.iters as f64) / dt,
            })
        );
    }
    Ok(())
}
