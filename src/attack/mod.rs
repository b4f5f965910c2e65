//! Attacks. Every attack sees the model only as a fixed function `x -> logits` (a
//! [`Classifier`]), built from one model, one route and one mode, so it cannot switch
//! normalisation branches.

pub mod apgd;
pub mod fab;
pub mod fgsm;
pub mod pgd;
pub mod square;

pub use apgd::{checkpoints, dlr_loss, dlr_targeted_loss, Apgd, ApgdConfig, ApgdLoss};
pub use fab::{Fab, FabConfig};
pub use fgsm::Fgsm;
pub use pgd::{Pgd, PgdConfig};
pub use square::{p_selection, square_size, Square, SquareConfig, SquareRun};

use crate::nn::{Ctx, Model};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The attacked function: a model frozen to one route and mode.
pub struct Classifier<'a> {
    pub model: &'a dyn Model,
    pub ctx: Ctx,
}

impl<'a> Classifier<'a> {
    pub fn new(model: &'a dyn Model, ctx: Ctx) -> Self {
        Classifier { model, ctx }
    }
    pub fn logits(&self, x: &Tensor) -> Tensor {
        self.model.forward(x, &self.ctx)
    }
}

/// Threat model norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThreatNorm {
    Linf,
    L2,
}

impl std::str::FromStr for ThreatNorm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "linf" | "l-inf" | "inf" => Ok(ThreatNorm::Linf),
            "l2" => Ok(ThreatNorm::L2),
            _ => Err(format!("unknown norm '{s}': expected linf or l2")),
        }
    }
}

impl std::fmt::Display for ThreatNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ThreatNorm::Linf => "linf",
            ThreatNorm::L2 => "l2",
        })
    }
}

/// An attack: maps clean images and labels to adversarial images in B_eps(x) ∩ [0,1]^d.
pub trait Attack {
    /// Short name, e.g. `pgd-20`.
    fn name(&self) -> String;
    /// Every hyperparameter, for printing and for result files.
    fn config(&self) -> serde_json::Value;
    /// Adversarial examples for `(x, y)` against `f`. Parameters receive no gradient.
    fn perturb(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> Tensor;
}

/// Gradient of `loss` with respect to `x` only (parameters accumulate nothing).
pub fn input_grad(loss: &Tensor, x: &Tensor) -> Tensor {
    Tensor::run_backward(&[loss], &[x], false, false)
        .pop()
        .expect("one gradient")
}

/// Per-sample L2 norm over all but the first dimension, shaped `[N,1,1,1]`-broadcastable.
pub fn per_sample_l2(t: &Tensor) -> Tensor {
    let n = t.size()[0];
    let flat = t.view([n, -1]);
    let mut shape = vec![n];
    shape.extend(std::iter::repeat(1).take(t.dim() - 1));
    flat.norm_scalaropt_dim(2.0, [1i64].as_slice(), false)
        .view(shape.as_slice())
}

/// Project `x_adv` onto B_eps(x) in `norm`, then clamp to [0,1].
pub fn project(x_adv: &Tensor, x: &Tensor, eps: f64, norm: ThreatNorm) -> Tensor {
    let delta = x_adv - x;
    let delta = match norm {
        ThreatNorm::Linf => delta.clamp(-eps, eps),
        ThreatNorm::L2 => {
            let scale = (eps / (per_sample_l2(&delta) + 1e-12)).clamp_max(1.0);
            delta * scale
        }
    };
    (x + delta).clamp(0.0, 1.0)
}

/// Boolean mask of correctly classified points.
pub fn correct(logits: &Tensor, y: &Tensor) -> Tensor {
    logits.argmax(-1, false).eq_tensor(y)
}

/// Count of `true` in a boolean tensor (one host sync).
pub fn count(mask: &Tensor) -> i64 {
    mask.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[])
}

/// Cross-entropy `-log softmax(z)_y`, computed in the logits' own precision (tch's
/// `cross_entropy_for_logits` casts to float32), reduced by `reduction`.
pub fn cross_entropy(logits: &Tensor, y: &Tensor, reduction: tch::Reduction) -> Tensor {
    logits
        .log_softmax(-1, logits.kind())
        .g_nll_loss::<Tensor>(y, None, reduction, -100)
}
