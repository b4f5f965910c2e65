//! A model together with its variable store and architecture: what checkpoints save and load.

use super::hook::{check_hooks, Hook};
use super::models::{build_model, probe_stages, ArchSpec, Model};
use super::norm::Route;
use super::predictor::Predictor;
use anyhow::Result;
use std::collections::HashMap;
use tch::{nn::VarStore, Device, Tensor};

pub struct Network {
    pub vs: VarStore,
    pub model: Box<dyn Model>,
    pub arch: ArchSpec,
    /// ARAT predictor heads, one per stage in `arch.predictors`.
    pub predictors: Vec<Predictor>,
}

impl Network {
    /// A freshly initialised network on `device`.
    pub fn new(arch: &ArchSpec, device: Device) -> Result<Network> {
        let vs = VarStore::new(device);
        let model = build_model(&vs.root(), arch)?;
        let mut predictors = vec![];
        if !arch.predictors.is_empty() {
            // Stage widths from one eval-mode forward of a blank image; norm widths from the layer.
            let stages = probe_stages(model.as_ref(), arch.in_channels, [32, 32], device);
            check_hooks(
                model.as_ref(),
                stages.len(),
                &arch.predictors,
                "model.predictors",
            )?;
            let norms = model.norms();
            for h in &arch.predictors {
                let width = match h {
                    Hook::Stage(s) => stages[*s].size()[1],
                    Hook::Norm(n) => norms
                        .iter()
                        .find(|(name, _)| name == n)
                        .map(|(_, l)| l.channels)
                        .expect("checked"),
                };
                predictors.push(Predictor::new(&vs.root(), h.clone(), width));
            }
        }
        Ok(Network {
            vs,
            model,
            arch: arch.clone(),
            predictors,
        })
    }

    /// All variables (parameters and buffers) by name, sorted.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn variables(&self) -> HashMap<String, Tensor> {
        self.vs.variables()
    }

    /// Re-lay every 4-D variable (convolution weights) out as channels-last (NHWC strides),
    /// which oneDNN's CPU convolutions run faster on; values are unchanged.
    pub fn set_channels_last(&self) {
        tch::no_grad(|| {
            for (_, mut t) in self.vs.variables() {
                if t.dim() == 4 {
                    let cl = channels_last(&t);
                    t.set_data(&cl);
                }
            }
        });
    }

    /// Statistics sets and affine/head sets the model holds: the most any norm layer has
    /// (and the heads), each 1 when shared by every domain.
    pub fn route_sets(&self) -> (usize, usize) {
        let norms = self.model.norms();
        let ns = norms.iter().map(|(_, n)| n.stats.len()).max().unwrap_or(0);
        let ap = norms
            .iter()
            .map(|(_, n)| n.affine.len())
            .max()
            .unwrap_or(0)
            .max(self.arch.heads);
        (ns, ap)
    }

    /// Error unless every norm layer and the classifier head have the domains `route` names
    /// (`flag` names the option the route came from, e.g. `--route`).
    pub fn check_route(&self, route: Route, flag: &str) -> Result<()> {
        for (name, norm) in self.model.norms() {
            norm.check_route(route)
                .map_err(|e| anyhow::anyhow!("{flag} {route}: layer {name}: {e}"))?;
        }
        anyhow::ensure!(
            self.arch.heads <= 1 || route.ap < self.arch.heads,
            "{flag} {route}: the model has {} classifier heads",
            self.arch.heads
        );
        Ok(())
    }

    /// Error unless every hook exists in this model (`field` names where they came from).
    pub fn check_hooks(&self, hooks: &[Hook], field: &str) -> Result<()> {
        let stages = self.probe_stages([32, 32]);
        check_hooks(self.model.as_ref(), stages.len(), hooks, field)
    }

    /// [`probe_stages`] of this network's model at input size `hw`.
    pub fn probe_stages(&self, hw: [i64; 2]) -> Vec<Tensor> {
        probe_stages(
            self.model.as_ref(),
            self.arch.in_channels,
            hw,
            self.vs.device(),
        )
    }

    /// The trainable variables (those requiring a gradient) by name, sorted.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        self.named_tensors()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect()
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }
}

/// The same 4-D tensor with channels-last strides (values and logical NCHW shape unchanged).
pub fn channels_last(x: &Tensor) -> Tensor {
    if x.dim() != 4 {
        return x.shallow_clone();
    }
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}
