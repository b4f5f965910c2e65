//! TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
//! Accuracy"; `train.objective = "trades"`):
//!
//! `L = CE(f(x; clean_route), y) + beta * (1/B) sum_i KL(p(x_i) || p(x'_i))`
//!
//! with beta = `train.trades_beta` (6 on CIFAR-10, 1 on MNIST in the reference code), the
//! per-sample KL summed over classes (not averaged over them), gradients through both
//! distributions as the reference, and x' from the KL attack (`[train.attack] loss = "kl"`, start
//! `x + 0.001 N(0, I)`) through `[train.hybrid] adv_route`. With Dual BN the clean CE goes
//! through BN_clean and the KL compares the branches; joint passes with one statistics set are
//! the mixed-batch variant. Passes default to separate (the reference calls the model twice).

use super::hybrid::{forward_pair, HybridSpec, Passes};
use super::{adversarial, hits, SetupCx, StepCx, StepOutput, TrainObjective};
use crate::attack::pgd::PgdLoss;
use crate::attack::{cross_entropy, Attack, Pgd, PgdConfig};
use crate::nn::{Mode, Route};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

/// `train.objective = "trades"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trades {
    /// The KL attack, through `hybrid.adv_route`.
    pub attack: PgdConfig,
    /// Routes and passes (`clean_weight`, `clean_fraction` and `paired` unused).
    #[serde(default)]
    pub hybrid: HybridSpec,
    /// beta.
    #[serde(default = "six")]
    pub trades_beta: f64,
}

pub(super) fn six() -> f64 {
    6.0
}

/// Per-sample `KL(softmax(p_logits) || softmax(q_logits))`, summed over classes.
pub fn kl_rows(p_logits: &Tensor, q_logits: &Tensor) -> Tensor {
    let log_p = p_logits.log_softmax(-1, Kind::Float);
    let log_q = q_logits.log_softmax(-1, Kind::Float);
    (log_p.exp() * (log_p - log_q)).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
}

/// The attack of TRADES-like objectives: PGD through the adversarial route.
pub(super) fn generate_adv(
    h: &HybridSpec,
    attack: &PgdConfig,
    cx: &StepCx,
    x: &Tensor,
    y: &Tensor,
) -> Tensor {
    Pgd::new(attack.clone()).perturb(&cx.attacked(h.adv_route), x, y)
}

impl TrainObjective for Trades {
    const NAME: &'static str = "trades";
    type State = ();

    fn attack(&self) -> Option<&PgdConfig> {
        Some(&self.attack)
    }
    fn hybrid(&self) -> Option<&HybridSpec> {
        Some(&self.hybrid)
    }
    fn resolve(&mut self) {
        self.hybrid.default_passes(Passes::Separate);
    }
    fn validation_route(&self) -> Route {
        self.hybrid.adv_route
    }
    fn validate(&self, _settings: &crate::train::settings::Settings) -> Result<()> {
        let b = self.trades_beta;
        anyhow::ensure!(
            b >= 0.0 && b.is_finite(),
            "train.trades_beta must be >= 0, got {b}"
        );
        anyhow::ensure!(
            self.attack.loss == PgdLoss::Kl,
            "train.attack.loss must be \"kl\" for objective trades (TRADES maximises the KL to the clean prediction)"
        );
        self.hybrid.validate()
    }
    fn setup(&self, _cx: &SetupCx) -> Result<()> {
        Ok(())
    }
    fn generate(&self, cx: &StepCx, x: &Tensor, y: &Tensor) -> Option<Tensor> {
        Some(generate_adv(&self.hybrid, &self.attack, cx, x, y))
    }
    fn loss(
        &self,
        cx: &StepCx,
        _state: &(),
        x: &Tensor,
        y: &Tensor,
        x_adv: Option<&Tensor>,
        mode: Mode,
    ) -> Result<StepOutput> {
        let xa = adversarial(x_adv, Self::NAME)?;
        let n = y.size()[0];
        let ce = |l: &Tensor, yy: &Tensor| cross_entropy(l, yy, Reduction::Mean);
        let (la, lc) = forward_pair(cx.model, &self.hybrid, xa, x, mode);
        let loss = ce(&lc, y) + kl_rows(&lc, &la).mean(Kind::Float) * self.trades_beta;
        Ok(StepOutput {
            loss,
            clean: Some((hits(&lc, y), n)),
            adv: Some((hits(&la, y), n)),
        })
    }
}
