//! SGD with momentum (PyTorch semantics, dampening 0) and learning-rate schedules.
//!
//! g = grad + wd * w;  b = mu * b + g;  step = nesterov ? g + mu * b : b;  w -= lr * step.
//! Momentum buffers start at zero, which equals PyTorch's first-step `b = g` when dampening is 0.

use super::recipe::{Schedule, TrainSpec};
use tch::Tensor;

/// SGD over named parameters; the buffers are named like the parameters for checkpoints.
pub struct Sgd {
    pub params: Vec<(String, Tensor)>,
    pub buffers: Vec<Tensor>,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

impl Sgd {
    /// SGD over every trainable variable of `vs`, sorted by name.
    pub fn new(vs: &tch::nn::VarStore, momentum: f64, weight_decay: f64, nesterov: bool) -> Sgd {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let buffers = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Sgd {
            params,
            buffers,
            momentum,
            weight_decay,
            nesterov,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for ((_, p), b) in self.params.iter_mut().zip(self.buffers.iter_mut()) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = if self.weight_decay != 0.0 {
                    &g + &*p * self.weight_decay
                } else {
                    g
                };
                let update = if self.momentum != 0.0 {
                    let _ = b.g_mul_scalar_(self.momentum).g_add_(&g);
                    if self.nesterov {
                        g + &*b * self.momentum
                    } else {
                        b.shallow_clone()
                    }
                } else {
                    g
                };
                let _ = p.g_add_(&(update * (-lr)));
            }
        });
    }

    /// Momentum buffers as named tensors (`momentum.<param name>`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.buffers)
            .map(|((n, _), b)| (format!("momentum.{n}"), b.shallow_clone()))
            .collect()
    }

    /// Restore buffers saved by [`Sgd::state`]; every buffer must be present with its shape.
    pub fn load_state(&mut self, named: &[(String, Tensor)], file: &str) -> anyhow::Result<()> {
        let map: std::collections::HashMap<&str, &Tensor> =
            named.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for ((name, _), b) in self.params.iter().zip(self.buffers.iter_mut()) {
            let key = format!("momentum.{name}");
            let src = map
                .get(key.as_str())
                .ok_or_else(|| anyhow::anyhow!("{file}: optimizer state has no '{key}'"))?;
            anyhow::ensure!(
                src.size() == b.size(),
                "{file}: '{key}' has shape {:?}, expected {:?}",
                src.size(),
                b.size()
            );
            tch::no_grad(|| b.copy_(src));
        }
        Ok(())
    }
}

/// Learning rate at fractional epoch `t` (epoch index + fraction of the epoch done).
pub fn learning_rate(spec: &TrainSpec, t: f64) -> f64 {
    let base = match spec.schedule {
        Schedule::Constant => spec.lr,
        Schedule::Piecewise => {
            let passed = spec.milestones.iter().filter(|&&m| t >= m as f64).count();
            spec.lr * spec.lr_gamma.powi(passed as i32)
        }
        Schedule::Cosine => {
            spec.lr * 0.5 * (1.0 + (std::f64::consts::PI * t / spec.epochs as f64).cos())
        }
    };
    if spec.warmup_epochs > 0 && t < spec.warmup_epochs as f64 {
        base * t / spec.warmup_epochs as f64
    } else {
        base
    }
}
