//! Stochastic weight averaging (`train.swa`): a running average of the trainable parameters,
//! kept on disk next to the checkpoints (`checkpoints/swa_avg.*`) so a killed run resumes with
//! it, and turned into a model at the end by re-estimating its BN statistics.

use super::recipe::{Recipe, SwaSpec};
use crate::attack::ThreatNorm;
use crate::checkpoint::{self, Sidecar};
use crate::data::Dataset;
use crate::eval::controls::{reestimate, Reestimate, StatsSource};
use crate::nn::{Network, Route};
use anyhow::{Context, Result};
use std::path::Path;
use tch::{Device, Tensor};

/// The average of the trainable parameters over `n` epochs, by name.
pub struct SwaAverage {
    pub n: usize,
    pub avg: Vec<(String, Tensor)>,
}

impl SwaAverage {
    pub fn empty() -> SwaAverage {
        SwaAverage { n: 0, avg: vec![] }
    }

    /// Fold the current parameters in: `avg <- avg + (w - avg) / (n + 1)`, `n <- n + 1`.
    pub fn update(&mut self, net: &Network) {
        let now = net.trainable();
        tch::no_grad(|| {
            if self.n == 0 {
                self.avg = now
                    .iter()
                    .map(|(k, t)| (k.clone(), t.detach().copy()))
                    .collect();
            } else {
                let f = 1.0 / (self.n as f64 + 1.0);
                for ((_, a), (_, w)) in self.avg.iter_mut().zip(&now) {
                    let d = (w - &*a) * f;
                    let _ = a.g_add_(&d);
                }
            }
        });
        self.n += 1;
    }

    /// Copy the average into `net`'s parameters.
    pub fn apply(&self, net: &Network) {
        tch::no_grad(|| {
            for ((_, a), (_, mut w)) in self.avg.iter().zip(net.trainable()) {
                w.copy_(a);
            }
        });
    }

    /// Write the average after `epoch` (1-based) to `file` (a checkpoint with sidecar).
    pub fn save(&self, file: &Path, recipe: &Recipe, epoch: usize) -> Result<()> {
        let metrics = serde_json::json!({ "n_averaged": self.n });
        let side = Sidecar::for_run("advtrain-swa-average-v1", recipe, epoch, metrics, None);
        checkpoint::save(file, &self.avg, None, side)
    }

    /// Read the average a run saved after epoch `epoch`; error if it belongs to another epoch.
    pub fn load(file: &Path, net: &Network, epoch: usize) -> Result<SwaAverage> {
        let side = checkpoint::read_sidecar(file)?;
        anyhow::ensure!(
            side.epoch == epoch,
            "{}: the SWA average is from epoch {} but the run resumes after epoch {epoch}; \
             delete it to restart averaging",
            file.display(),
            side.epoch
        );
        let n = side.metrics["n_averaged"]
            .as_u64()
            .with_context(|| format!("{}: sidecar has no metrics.n_averaged", file.display()))?
            as usize;
        checkpoint::verify(file, &side.sha256)?;
        let mut stored = checkpoint::read_tensors(file)?;
        let device = net.vs.device();
        let avg = net
            .trainable()
            .into_iter()
            .map(|(k, t)| {
                let v = stored.remove(&k).with_context(|| {
                    format!("{}: no tensor {k} in the SWA average", file.display())
                })?;
                anyhow::ensure!(
                    v.size() == t.size(),
                    "{}: {k} has shape {:?}, the model expects {:?}",
                    file.display(),
                    v.size(),
                    t.size()
                );
                Ok((k, v.to_device(device)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SwaAverage { n, avg })
    }
}

/// Whether the average takes the parameters after epoch `epoch` (1-based).
pub fn averages_after(spec: &SwaSpec, epoch: usize) -> bool {
    epoch > spec.start_epoch
}

/// Re-estimate the running statistics of every statistics set of the SWA model (see
/// [`SwaSpec`]); returns `(route, source, images)` per re-estimated set.
pub fn reestimate_bn(
    recipe: &Recipe,
    spec: &SwaSpec,
    net: &Network,
    train: &Dataset,
    device: Device,
) -> Result<Vec<(Route, StatsSource, usize)>> {
    let t = &recipe.train;
    let eps = t.attack().map_or(0.0, |a| a.eps);
    // Adversarial data in the recipe's threat model (an L2 recipe re-estimates on L2 examples).
    let norm = t.attack().map_or(ThreatNorm::Linf, |a| a.norm);
    let batches = spec
        .bn_batches
        .unwrap_or_else(|| train.len().div_ceil(t.batch_size));
    let multi = recipe.model.norm.ns_domains > 1;
    let sets: Vec<(Route, StatsSource)> = if multi {
        let (clean, adv) = t.objective.domain_routes();
        vec![(clean, StatsSource::Clean), (adv, StatsSource::Adv)]
    } else {
        vec![(recipe.validation_route(), spec.bn_source)]
    };
    let mut done = vec![];
    for (route, source) in sets {
        let r = Reestimate {
            source,
            batches,
            batch_size: t.batch_size,
            norm,
            eps,
            seed: recipe.seed,
        };
        let seen = reestimate(net.model.as_ref(), route, &r, train, device)?;
        done.push((route, source, seen));
    }
    Ok(done)
}
