//! SGD with momentum (PyTorch semantics, dampening 0), and its restore from a checkpoint.
//! (The learning-rate schedule is `TrainSpec::learning_rate` in `recipe.rs`: this file sits
//! below the objectives, whose own parameters it steps, and so below the recipe.)
//!
//! g = grad + wd * w;  b = mu * b + g;  step = nesterov ? g + mu * b : b;  w -= lr * step.
//! Momentum buffers start at zero, which equals PyTorch's first-step `b = g` when dampening is 0.

use crate::checkpoint::{self, read_sidecar, read_tensors, verify, Sidecar};
use anyhow::Result;
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

extern "C" {
    fn advtrain_sgd_foreach(
        params: *const *const torch_sys::C_tensor,
        grads: *const *const torch_sys::C_tensor,
        bufs: *const *const torch_sys::C_tensor,
        n: i32,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        nesterov: i32,
    ) -> i32;
}

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

    /// One update with learning rate `lr`, over every parameter that has a gradient at once
    /// with ATen's foreach ops (`src/shim/optim.cpp`): on CUDA one multi-tensor kernel per
    /// operation instead of about six kernels per parameter; on the CPU the same per-tensor
    /// kernels and the same bits as the per-parameter update (`tests/sgd_foreach.rs`).
    pub fn step(&mut self, lr: f64) {
        let mut grads = Vec::with_capacity(self.params.len());
        let (mut ps, mut bs) = (vec![], vec![]);
        for ((_, p), b) in self.params.iter().zip(&self.buffers) {
            let g = p.grad();
            if g.defined() {
                ps.push(p.as_ptr());
                bs.push(b.as_ptr());
                grads.push(g);
            }
        }
        let gs: Vec<_> = grads.iter().map(|g| g.as_ptr()).collect();
        let r = unsafe {
            advtrain_sgd_foreach(
                ps.as_ptr(),
                gs.as_ptr(),
                bs.as_ptr(),
                ps.len() as i32,
                lr,
                self.momentum,
                self.weight_decay,
                self.nesterov as i32,
            )
        };
        assert_eq!(r, 0, "the SGD update failed (libtorch foreach ops)");
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

/// Load a checkpoint written with optimiser state (`save(.., Some(state), ..)`) into `vars`
/// and `sgd`, both files verified against the sidecar's sha256; returns the sidecar (resume).
pub fn restore(file: &Path, vars: &HashMap<String, Tensor>, sgd: &mut Sgd) -> Result<Sidecar> {
    let side = read_sidecar(file)?;
    let (mpath, opath, _) = checkpoint::paths(file);
    verify(&mpath, &side.sha256)?;
    checkpoint::load_into(vars, &read_tensors(&mpath)?, &mpath)?;
    let osha = side
        .optimizer_sha256
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{}: sidecar has no optimizer state", file.display()))?;
    verify(&opath, osha)?;
    let state: Vec<(String, Tensor)> = read_tensors(&opath)?.into_iter().collect();
    sgd.load_state(&state, &opath.display().to_string())?;
    Ok(side)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device, Kind};

    /// Two steps by hand with PyTorch's rule (dampening 0):
    /// w0 = 1, wd = 0.1, mu = 0.9, lr = 0.5, loss = 3 w (grad 3).
    /// step 1: g = 3 + 0.1*1 = 3.1; b = 3.1; w = 1 - 0.5*3.1 = -0.55
    /// step 2: g = 3 + 0.1*(-0.55) = 2.945; b = 0.9*3.1 + 2.945 = 5.735; w = -0.55 - 0.5*5.735 = -3.4175
    #[test]
    fn sgd_matches_pytorch_rule_by_hand() {
        let vs = VarStore::new(Device::Cpu);
        let w = vs
            .root()
            .var("w", &[1], tch::nn::Init::Const(1.0))
            .to_kind(Kind::Double);
        let vs = {
            let vs2 = VarStore::new(Device::Cpu);
            let _ = vs2.root().var_copy("w", &w);
            vs2
        };
        let mut sgd = Sgd::new(&vs, 0.9, 0.1, false);
        let p = sgd.params[0].1.shallow_clone();
        for expect in [-0.55, -3.4175] {
            sgd.zero_grad();
            (&p * 3.0).sum(Kind::Double).backward();
            sgd.step(0.5);
            assert!(
                (p.double_value(&[0]) - expect).abs() < 1e-6,
                "{} vs {expect}",
                p.double_value(&[0])
            );
        }
        // Nesterov: step = g + mu * b. One step from w = 1: g = 3.1, b = 3.1, w = 1 - 0.5 * (3.1 + 2.79).
        let vs = VarStore::new(Device::Cpu);
        let _ = vs.root().var("w", &[1], tch::nn::Init::Const(1.0));
        let mut sgd = Sgd::new(&vs, 0.9, 0.1, true);
        let p = sgd.params[0].1.shallow_clone();
        sgd.zero_grad();
        (&p * 3.0).sum(Kind::Float).backward();
        sgd.step(0.5);
        assert!((p.double_value(&[0]) - (1.0 - 0.5 * (3.1 + 0.9 * 3.1))).abs() < 1e-5);
    }
}
