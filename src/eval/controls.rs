//! Test-time controls of multi-domain models (Zhang et al.): re-estimating running statistics
//! on clean, adversarial or uniform-noise data, swapping affine parameters, and exporting one
//! branch (or a soup of two) as a plain single-BN model.

use crate::attack::{Attack, Classifier, Pgd, PgdConfig, ThreatNorm};
use crate::data::{Augment, Dataset};
use crate::nn::norm::{lerp, parse_domain};
use crate::nn::{ArchSpec, Ctx, Domain, Mode, Model, Network, Route, ADV, CLEAN};
use anyhow::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Data the running statistics are re-estimated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StatsSource {
    /// Training images as they are.
    Clean,
    /// PGD-10 ([`PgdConfig::probe`]: the re-estimation's norm, step eps/4, uniform start)
    /// adversarial examples of the training images, generated through the route with the
    /// statistics held *before* re-estimation.
    Adv,
    /// `clip(x + U(-eps, eps), 0, 1)`.
    Noise,
}

crate::choice::value_enum_text!(StatsSource => "re-estimation data");

fn linf() -> ThreatNorm {
    ThreatNorm::Linf
}

/// How running statistics are re-estimated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reestimate {
    pub source: StatsSource,
    /// Batches averaged (cumulative average: momentum 1/(k+1) at batch k).
    pub batches: usize,
    pub batch_size: usize,
    /// Threat norm of the adversarial data (the recipe's or the evaluation's; L-inf in files
    /// written before this field existed).
    #[serde(default = "linf")]
    pub norm: ThreatNorm,
    /// eps of the adversarial / noise data (noise is uniform in [-eps, eps] per pixel).
    pub eps: f64,
    /// Seed of the batch order, the noise and the PGD start.
    pub seed: u64,
}

/// Reset the running statistics of the statistics set `ns` resolves to in every BN layer
/// (mean 0, var 1, num_batches_tracked 0).
pub fn reset_running_stats(model: &dyn Model, ns: Domain) {
    tch::no_grad(|| {
        for (_, n) in model.norms() {
            if n.stats.is_empty() {
                continue;
            }
            let s = &n.stats[n.ns_index(ns)];
            let _ = s.running_mean.shallow_clone().fill_(0.0);
            let _ = s.running_var.shallow_clone().fill_(1.0);
            let _ = s.num_batches_tracked.shallow_clone().fill_(0);
        }
    });
}

/// Replace the running statistics of `route.ns` by their cumulative average over `r.batches`
/// batches of `r.source` data drawn from `data`: `running = mean_k batch_stat_k` (variance
/// unbiased per batch, as PyTorch's `momentum=None`). Returns the number of images used.
pub fn reestimate(
    model: &dyn Model,
    route: Route,
    r: &Reestimate,
    data: &Dataset,
    device: Device,
) -> Result<usize> {
    anyhow::ensure!(r.batches >= 1, "--reestimate-batches must be >= 1");
    anyhow::ensure!(
        !data.is_empty(),
        "no training images to re-estimate statistics on"
    );
    anyhow::ensure!(
        r.eps >= 0.0 && r.eps.is_finite(),
        "re-estimation eps must be >= 0, got {}",
        r.eps
    );
    let rng = ChaCha8Rng::seed_from_u64(r.seed);
    tch::manual_seed(r.seed as i64);
    let inputs: Vec<Tensor> = data
        .batches(r.batch_size, Some(rng), Augment::default(), device)
        .take(r.batches)
        .map(|(x, y)| match r.source {
            StatsSource::Clean => x,
            StatsSource::Noise => {
                tch::no_grad(|| (&x + (x.rand_like() * 2.0 - 1.0) * r.eps).clamp(0.0, 1.0))
            }
            StatsSource::Adv => {
                let pgd = Pgd::new(PgdConfig::probe(r.norm, r.eps, 10));
                pgd.perturb(&Classifier::new(model, Ctx::new(route, Mode::Eval)), &x, &y)
            }
        })
        .collect();
    reset_running_stats(model, route.ns);
    let mut seen = 0;
    tch::no_grad(|| {
        for (k, x) in inputs.iter().enumerate() {
            let ctx = Ctx {
                momentum: Some(1.0 / (k as f64 + 1.0)),
                ..Ctx::new(route, Mode::Train)
            };
            let _ = model.forward(x, &ctx);
            seen += x.size()[0] as usize;
        }
    });
    Ok(seen)
}

/// The route with the affine/head domain swapped between clean and adversarial.
pub fn swap_ap(route: Route) -> Route {
    Route {
        ap: if route.ap == CLEAN { ADV } else { CLEAN },
        ..route
    }
}

/// Parse `--soup w` (w in [0,1]).
pub fn check_soup(w: f64) -> Result<f64> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&w),
        "--soup must be in [0,1] (weight of the adversarial parameters), got {w}"
    );
    Ok(w)
}

/// Which stored tensor name feeds the plain name `name` (e.g. `bn1.weight` <- `bn1.1.weight`).
fn branch_source(
    src: &HashMap<String, Tensor>,
    name: &str,
    route: Route,
    soup: Option<f64>,
) -> Result<Tensor> {
    if let Some(t) = src.get(name) {
        return Ok(t.shallow_clone());
    }
    let (prefix, leaf) = name
        .rsplit_once('.')
        .ok_or_else(|| anyhow::anyhow!("variable {name} has no counterpart"))?;
    let is_stat = matches!(leaf, "running_mean" | "running_var" | "num_batches_tracked");
    let at = |d: Domain| src.get(&format!("{prefix}.{d}.{leaf}"));
    let missing =
        || anyhow::anyhow!("no '{prefix}.<domain>.{leaf}' for '{name}' in the source model");
    if !is_stat {
        if let Some(w) = soup {
            let (c, a) = (at(CLEAN).ok_or_else(missing)?, at(ADV).ok_or_else(missing)?);
            return Ok(lerp(a, c, w));
        }
    }
    let d = if is_stat { route.ns } else { route.ap };
    at(d).map(|t| t.shallow_clone()).ok_or_else(missing)
}

/// The plain architecture (one statistics set, one affine set, one head) and its tensors, taking
/// statistics from `route.ns`, affine parameters and head from `route.ap` (or the soup
/// `w * adv + (1-w) * clean`). The result loads as an ordinary single-BN model whose eval-mode
/// logits equal the source's through `route`.
pub fn export_branch(
    net: &Network,
    route: Route,
    soup: Option<f64>,
) -> Result<(ArchSpec, Vec<(String, Tensor)>)> {
    let mut arch = net.arch.clone();
    arch.norm.ns_domains = 1;
    arch.norm.ap_domains = 1;
    arch.heads = 1;
    let plain = Network::new(&arch, Device::Cpu)?;
    let src = net.variables();
    let mut out = vec![];
    for (name, t) in plain.named_tensors() {
        let v = tch::no_grad(|| branch_source(&src, &name, route, soup))?;
        anyhow::ensure!(
            v.size() == t.size(),
            "variable {name}: source shape {:?}, plain model expects {:?}",
            v.size(),
            t.size()
        );
        out.push((
            name,
            v.to_device(Device::Cpu).to_kind(t.kind()).contiguous(),
        ));
    }
    Ok((arch, out))
}

/// `"clean"` / `"adv"` / an index (re-export for CLI parsing).
pub fn domain(s: &str) -> Result<Domain> {
    parse_domain(s).map_err(anyhow::Error::msg)
}

/// Batch statistics of every BN layer input for one forward of `x` through `ctx` (no grad;
/// `ctx.mode` decides whether running statistics move: use `Mode::Eval` to leave them).
pub fn probe_batch_stats(
    model: &dyn Model,
    x: &Tensor,
    ctx: &Ctx,
) -> Vec<(String, Tensor, Tensor)> {
    let norms = model.norms();
    for (_, n) in &norms {
        n.set_probe(true);
    }
    let _ = tch::no_grad(|| model.forward(x, ctx));
    let mut out = vec![];
    for (name, n) in &norms {
        if let Some(s) = n.take_probe().into_iter().next() {
            out.push((
                name.clone(),
                s.mean.to_kind(Kind::Float),
                s.var.to_kind(Kind::Float),
            ));
        }
        n.set_probe(false);
    }
    out
}
