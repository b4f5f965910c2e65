//! Domain gap (Zhang et al.): per BN layer, how far the batch statistics of one batch of PGD
//! adversarial images and of one batch of uniform-noise images of the same eps lie from the clean
//! running statistics, next to the same distance for the clean batch itself.
//!
//! Distances are 1-D Wasserstein-1 between the channel vectors: for mu the batch mean against
//! `running_mean`, for sigma `sqrt(batch var)` (biased) against `sqrt(running_var)`, both of the
//! statistics set `route.ns` resolves to. Every forward runs in eval mode, so the running
//! statistics do not move and each layer's input is what the deployed model computes.

use super::plan::{check_n, check_threat, AnalysisSetup, Provenance, Subject, TestImages};
use super::{bn_layers, finite_mean, to_vec, wasserstein1};
use crate::attack::{correct, Attack, Classifier, Pgd, PgdConfig, ThreatNorm};
use crate::compute::Compute;
use crate::device::device_name;
use crate::eval::controls::probe_batch_stats;
use crate::eval::{Progress, Threat};
use crate::nn::{Ctx, Mode, Model, Route};
use crate::report::plot::{LinePlot, Series};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Settings of one domain-gap measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GapConfig {
    /// L-inf budget of the PGD and the noise.
    pub eps: f64,
    /// Route of the forward passes and the attack; `route.ns` names the running statistics.
    pub route: Route,
    /// Seed of torch's generator (noise, then the PGD start).
    pub seed: u64,
    /// PGD iterations (step eps/4, uniform start).
    pub steps: usize,
    /// Compute settings of the attack ([`Classifier::with_compute`]).
    pub compute: Compute,
}

impl GapConfig {
    /// PGD-10 (step eps/4) through `route`.
    pub fn new(eps: f64, route: Route, seed: u64) -> GapConfig {
        GapConfig {
            eps,
            route,
            seed,
            steps: 10,
            compute: Compute::default(),
        }
    }
}

/// Distances of one batch's statistics from the running statistics, per BN layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatDistance {
    pub layer: String,
    pub channels: i64,
    /// W1(batch mean, running_mean).
    pub mu: f64,
    /// W1(sqrt(batch var), sqrt(running_var)).
    pub sigma: f64,
}

/// One BN layer of the domain-gap result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerGap {
    pub layer: String,
    pub channels: i64,
    pub adv_mu: f64,
    pub adv_sigma: f64,
    pub noise_mu: f64,
    pub noise_sigma: f64,
    pub clean_mu: f64,
    pub clean_sigma: f64,
}

/// Means over the layers of each distance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GapSummary {
    pub adv_mu: f64,
    pub adv_sigma: f64,
    pub noise_mu: f64,
    pub noise_sigma: f64,
    pub clean_mu: f64,
    pub clean_sigma: f64,
    /// mean |adv_mu - noise_mu| over layers (small = the two curves nearly coincide).
    pub adv_noise_mu_gap: f64,
    /// mean |adv_sigma - noise_sigma| over layers.
    pub adv_noise_sigma_gap: f64,
}

/// The domain-gap result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainGap {
    pub layers: Vec<LayerGap>,
    pub summary: GapSummary,
    /// Accuracy of the model (through the route, eval mode) on the clean, adversarial and noise batch.
    pub clean_batch_accuracy: f64,
    pub adv_batch_accuracy: f64,
    pub noise_batch_accuracy: f64,
}

/// Per BN layer, the W1 distances of the batch statistics of `x` (one forward through `route` in
/// eval mode) from the running statistics of `route.ns`. Error when the model has no BN layer.
pub fn stat_distances(model: &dyn Model, route: Route, x: &Tensor) -> Result<Vec<StatDistance>> {
    let bns = bn_layers(model);
    anyhow::ensure!(
        !bns.is_empty(),
        "the model has no BatchNorm layer, so there are no running statistics to compare with"
    );
    let probed = probe_batch_stats(model, x, &Ctx::new(route, Mode::Eval));
    let mut out = Vec::with_capacity(bns.len());
    for (name, norm) in &bns {
        let (_, mean, var) = probed
            .iter()
            .find(|(n, _, _)| n == name)
            .ok_or_else(|| anyhow::anyhow!("layer {name} recorded no batch statistics"))?;
        let s = norm.stats_for(route.ns);
        let (rm, rv) = tch::no_grad(|| (to_vec(&s.running_mean), to_vec(&s.running_var.sqrt())));
        let bm = to_vec(mean);
        let bs = to_vec(&var.clamp_min(0.0).sqrt());
        out.push(StatDistance {
            layer: name.clone(),
            channels: norm.channels,
            mu: wasserstein1(&bm, &rm),
            sigma: wasserstein1(&bs, &rv),
        });
    }
    Ok(out)
}

fn accuracy(model: &dyn Model, ctx: &Ctx, x: &Tensor, y: &Tensor) -> f64 {
    tch::no_grad(|| {
        correct(&model.forward(x, ctx), y)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[])
    })
}

/// The domain gap of `model` on the batch `(x, y)` (images in [0,1]): the noise batch
/// `clip(x + U(-eps, eps), 0, 1)` is drawn first after `tch::manual_seed(seed)`, then PGD
/// (L-inf, `steps` steps of eps/4, uniform start) attacks through `route` in eval mode.
pub fn domain_gap(model: &dyn Model, x: &Tensor, y: &Tensor, cfg: &GapConfig) -> Result<DomainGap> {
    anyhow::ensure!(
        cfg.eps >= 0.0 && cfg.eps.is_finite(),
        "--eps must be a finite number >= 0, got {}",
        cfg.eps
    );
    anyhow::ensure!(cfg.steps >= 1, "PGD steps must be >= 1");
    anyhow::ensure!(x.size()[0] >= 1, "the batch is empty");
    let ctx = Ctx::new(cfg.route, Mode::Eval);
    tch::manual_seed(cfg.seed as i64);
    let x_noise = tch::no_grad(|| (x + (x.rand_like() * 2.0 - 1.0) * cfg.eps).clamp(0.0, 1.0));
    let pgd = Pgd::new(PgdConfig::new(
        ThreatNorm::Linf,
        cfg.eps,
        cfg.eps / 4.0,
        cfg.steps,
    ));
    let f = Classifier::new(model, ctx).with_compute(&cfg.compute);
    let x_adv = pgd.perturb(&f, x, y).detach();
    let adv = stat_distances(model, cfg.route, &x_adv)?;
    let noise = stat_distances(model, cfg.route, &x_noise)?;
    let clean = stat_distances(model, cfg.route, x)?;
    let layers: Vec<LayerGap> = adv
        .iter()
        .zip(&noise)
        .zip(&clean)
        .map(|((a, n), c)| LayerGap {
            layer: c.layer.clone(),
            channels: c.channels,
            adv_mu: a.mu,
            adv_sigma: a.sigma,
            noise_mu: n.mu,
            noise_sigma: n.sigma,
            clean_mu: c.mu,
            clean_sigma: c.sigma,
        })
        .collect();
    let m = |f: fn(&LayerGap) -> f64| finite_mean(layers.iter().map(f));
    let summary = GapSummary {
        adv_mu: m(|l| l.adv_mu),
        adv_sigma: m(|l| l.adv_sigma),
        noise_mu: m(|l| l.noise_mu),
        noise_sigma: m(|l| l.noise_sigma),
        clean_mu: m(|l| l.clean_mu),
        clean_sigma: m(|l| l.clean_sigma),
        adv_noise_mu_gap: m(|l| (l.adv_mu - l.noise_mu).abs()),
        adv_noise_sigma_gap: m(|l| (l.adv_sigma - l.noise_sigma).abs()),
    };
    Ok(DomainGap {
        summary,
        clean_batch_accuracy: accuracy(model, &ctx, x, y),
        adv_batch_accuracy: accuracy(model, &ctx, &x_adv, y),
        noise_batch_accuracy: accuracy(model, &ctx, &x_noise, y),
        layers,
    })
}

impl DomainGap {
    /// Distances against BN layer index (1 = first in forward order): adv/noise/clean, mu/sigma.
    pub fn plot(&self, title: impl Into<String>) -> LinePlot {
        let series = |name: &str, f: fn(&LayerGap) -> f64| {
            Series::new(
                name,
                self.layers
                    .iter()
                    .enumerate()
                    .map(|(i, l)| ((i + 1) as f64, f(l))),
            )
        };
        LinePlot {
            title: title.into(),
            x_label: "BN layer (forward order)".into(),
            y_label: "W1 to clean running statistics".into(),
            series: vec![
                series("adv-mu", |l| l.adv_mu),
                series("noise-mu", |l| l.noise_mu),
                series("adv-sigma", |l| l.adv_sigma),
                series("noise-sigma", |l| l.noise_sigma),
                series("clean-mu (baseline)", |l| l.clean_mu),
                series("clean-sigma (baseline)", |l| l.clean_sigma),
            ],
            y_range: None,
        }
    }
}

/// `advtrain analyze domain-gap` as a plan: one batch of the first `data.n` test images, its
/// PGD-10 (step eps/4) and uniform-noise versions at `threat.eps`, through `route` in eval mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub setup: AnalysisSetup,
    pub data: TestImages,
    /// L-inf only ([`check_threat`]).
    pub threat: Threat,
    /// Route of the forward passes and the attack; its NS names the running statistics compared.
    pub route: Route,
}

/// The JSON written by `analyze domain-gap` (tests/it/analysis_contract.rs guards it).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub eps: f64,
    pub n: usize,
    pub route: String,
    pub seed: u64,
    pub attack: serde_json::Value,
    pub noise: String,
    pub statistic: &'static str,
    pub clean_batch_accuracy: f64,
    pub adv_batch_accuracy: f64,
    pub noise_batch_accuracy: f64,
    pub layers: Vec<LayerGap>,
    pub summary: GapSummary,
    pub device: String,
    pub elapsed_s: f64,
    pub plot: String,
    /// Precision, BN folding and micro-batching of the attacks.
    pub compute: Compute,
}

/// Run `plan` on its checkpoint ([`Subject::load`]).
pub fn run(plan: &Plan, out: &mut dyn Progress) -> Result<Report> {
    check_threat(&plan.threat)?;
    check_n(plan.data.n)?;
    run_on(plan, Subject::load(&plan.setup)?, out)
}

/// [`run`] on the plan's checkpoint, already loaded.
pub fn run_on(plan: &Plan, s: Subject, out: &mut dyn Progress) -> Result<Report> {
    let (eps, route, seed) = (plan.threat.eps, plan.route, plan.setup.seed);
    check_threat(&plan.threat)?;
    check_n(plan.data.n)?;
    let start = Instant::now();
    s.check_has_bn("domain-gap")?;
    s.net().check_route(route, "--route")?;
    let (test, x, y) = s.test_batch(&plan.data, out)?;
    let mut cfg = GapConfig::new(eps, route, seed);
    cfg.compute = plan.setup.compute;
    out.info(&format!(
        "domain-gap {} | eps {eps} | n {} | route {route} | seed {seed} | device {}",
        s.file.display(),
        test.len(),
        device_name(s.device())
    ));
    s.say_compute(&plan.setup.compute, out);
    let g = domain_gap(s.net().model.as_ref(), &x, &y, &cfg)?;
    let pgd = PgdConfig::new(ThreatNorm::Linf, eps, eps / 4.0, cfg.steps);
    Ok(Report {
        provenance: s.provenance("domain-gap"),
        eps,
        n: test.len(),
        route: route.to_string(),
        seed,
        attack: serde_json::to_value(&pgd)?,
        noise: "clip(x + U(-eps, eps), 0, 1)".into(),
        statistic: "W1 over channels: batch mean vs running_mean (mu), sqrt(batch var) vs \
                    sqrt(running_var) (sigma); running statistics of route.ns, eval mode",
        clean_batch_accuracy: g.clean_batch_accuracy,
        adv_batch_accuracy: g.adv_batch_accuracy,
        noise_batch_accuracy: g.noise_batch_accuracy,
        layers: g.layers,
        summary: g.summary,
        device: device_name(s.device()),
        elapsed_s: start.elapsed().as_secs_f64(),
        compute: plan.setup.compute,
        plot: plan.setup.paths("domain-gap").1.display().to_string(),
    })
}

impl Report {
    /// The result the report holds.
    pub fn result(&self) -> DomainGap {
        DomainGap {
            layers: self.layers.clone(),
            summary: self.summary.clone(),
            clean_batch_accuracy: self.clean_batch_accuracy,
            adv_batch_accuracy: self.adv_batch_accuracy,
            noise_batch_accuracy: self.noise_batch_accuracy,
        }
    }

    /// The PNG the report names ([`DomainGap::plot`]) written to `path`.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let title = format!(
            "Domain gap, eps {} (n={}, route {}): {}",
            self.eps, self.n, self.route, self.provenance.architecture
        );
        self.result().plot(title).write(path)
    }
}

/// The per-layer table.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "layer", "adv-mu", "noise-mu", "clean-mu", "adv-sig", "noise-sig", "clean-sig"
        )?;
        for r in &self.layers {
            writeln!(
                f,
                "{:<24} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4}",
                r.layer,
                r.adv_mu,
                r.noise_mu,
                r.clean_mu,
                r.adv_sigma,
                r.noise_sigma,
                r.clean_sigma
            )?;
        }
        Ok(())
    }
}
