//! Our side of each part of the benchmark, timed in-process on a [`Subject`].

use super::flops::sync;
use super::plan::{BenchPlan, Part};
use super::subject::Subject;
use crate::attack::{cross_entropy, Attack, Classifier, Pgd, PgdConfig, ThreatNorm};
use crate::eval::autoattack::{AutoAttack, Preset, StateKey};
use crate::eval::robust_counts;
use crate::nn::network::channels_last;
use crate::nn::{Ctx, Network};
use crate::train::optim::Sgd;
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;
use tch::{Kind, Tensor};

/// One side's measurement of one part.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timing {
    /// Images processed in the timed region.
    pub images: usize,
    pub elapsed_s: f64,
    pub clean_accuracy: Option<f64>,
    pub robust_accuracy: Option<f64>,
    /// AutoAttack: per point `1` robust, `0` not (both sides, to compare verdicts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub robust_points: Option<String>,
}

impl Timing {
    pub fn images_per_s(&self) -> f64 {
        self.images as f64 / self.elapsed_s
    }
}

/// Time our side of `part`.
pub fn time_ours(part: Part, s: &Subject, o: &BenchPlan) -> Result<Timing> {
    tch::manual_seed(o.seed as i64);
    match part {
        Part::At if s.script.is_some() => anyhow::bail!(
            "--parts at: a TorchScript module cannot be trained here (its weights are frozen \
             constants); time pgd20 and autoattack"
        ),
        Part::At => time_at(s, o),
        Part::Pgd20 => time_pgd20(s, o),
        Part::Autoattack => time_autoattack(s, o),
    }
}

fn train_step(
    net: &Network,
    sgd: &mut Sgd,
    pgd: &Pgd,
    x: &Tensor,
    y: &Tensor,
    c: &crate::compute::Compute,
) {
    let model = net.model.as_ref();
    let x_adv = pgd.perturb(&Classifier::new(model, Ctx::eval()).with_compute(c), x, y);
    let logits = crate::compute::with_precision(c.precision_train, x.device(), || {
        model.forward(&x_adv, &Ctx::train())
    });
    let loss = cross_entropy(&logits, y, tch::Reduction::Mean);
    sgd.zero_grad();
    loss.backward();
    sgd.step(0.01);
}

/// `iters` AT steps on the first `batch_size` points after `warmup` untimed ones.
fn time_at(s: &Subject, o: &BenchPlan) -> Result<Timing> {
    let net = s.network(o)?;
    let mut sgd = Sgd::new(&net.vs, 0.9, 5e-4, false);
    let pgd = Pgd::new(PgdConfig::new(
        ThreatNorm::Linf,
        s.eps,
        s.at_step_size(),
        o.steps,
    ));
    let batch = s.data.take(o.batch_size);
    let mut x = (batch.images.to_device(o.device).to_kind(Kind::Float) / 255.0).contiguous();
    if o.channels_last {
        x = channels_last(&x);
    }
    let y = batch.labels.to_device(o.device);
    for _ in 0..o.warmup {
        train_step(&net, &mut sgd, &pgd, &x, &y, &o.compute);
    }
    sync(o.device);
    let t0 = Instant::now();
    for _ in 0..o.iters {
        train_step(&net, &mut sgd, &pgd, &x, &y, &o.compute);
    }
    sync(o.device);
    Ok(Timing {
        images: o.batch_size * o.iters,
        elapsed_s: t0.elapsed().as_secs_f64(),
        ..Default::default()
    })
}

/// One pass of `eval --attack pgd` (PGD-20) over the first `n` points, after one untimed batch
/// when `warmup` > 0.
fn time_pgd20(s: &Subject, o: &BenchPlan) -> Result<Timing> {
    let model = s.model(o)?;
    let f = model.classifier(o);
    let pgd = Pgd::new(s.pgd20());
    let points = s.data.take(o.n);
    if o.warmup > 0 {
        let first = points.take(o.eval_batch_size);
        robust_counts(&f, &pgd, &first, o.eval_batch_size, o.device);
        tch::manual_seed(o.seed as i64);
    }
    sync(o.device);
    let t0 = Instant::now();
    let counts = robust_counts(&f, &pgd, &points, o.eval_batch_size, o.device);
    sync(o.device);
    Ok(Timing {
        images: o.n,
        elapsed_s: t0.elapsed().as_secs_f64(),
        clean_accuracy: Some(counts.clean_accuracy()),
        robust_accuracy: Some(counts.robust_accuracy()),
        robust_points: None,
    })
}

/// One run of our AutoAttack-standard cascade (clean pass included) over the first `n` points.
fn time_autoattack(s: &Subject, o: &BenchPlan) -> Result<Timing> {
    let model = s.model(o)?;
    let f = model.classifier(o);
    let points = s.data.take(o.n);
    let p = Preset::Standard;
    let aa = AutoAttack::new(
        p,
        ThreatNorm::Linf,
        s.eps,
        o.seed,
        o.eval_batch_size,
        points.num_classes,
    )?;
    let key = StateKey {
        preset: p.to_string(),
        norm: ThreatNorm::Linf,
        eps: s.eps,
        seed: o.seed,
        batch_size: o.eval_batch_size,
        route: "clean".into(),
        bn_mode: "eval".into(),
        checkpoint_sha256: String::new(),
        data_sha256: String::new(),
        n: points.len(),
        batching: Default::default(),
    };
    sync(o.device);
    let t0 = Instant::now();
    let r = aa.run(&f, &points, o.device, key, None, |m| {
        log::info!("autoattack (advtrain): {m}")
    })?;
    sync(o.device);
    Ok(Timing {
        images: o.n,
        elapsed_s: t0.elapsed().as_secs_f64(),
        clean_accuracy: Some(r.clean_accuracy),
        robust_accuracy: Some(r.robust_accuracy),
        robust_points: Some(crate::eval::flag_string(&r.robust)),
    })
}
