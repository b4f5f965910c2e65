//! MART (Wang et al. 2020, "Improving Adversarial Robustness Requires Revisiting Misclassified
//! Examples"; `train.objective = "mart"`):
//!
//! `L = BCE(p(x'), y) + lambda * (1/B) sum_i KL(p(x_i) || p(x'_i)) * (1 - p_y(x_i))`
//!
//! with `BCE = -log p_y(x') - log(1.0001 - max_{k != y} p_k(x'))` (the reference's 1.0001 and
//! 1e-12 guards), lambda = `train.mart_lambda`, x' = PGD (`[train.attack]`) through
//! `[train.hybrid] adv_route`; routes and passes from `[train.hybrid]` (default separate, as the
//! reference).

use super::hybrid::{forward_pair, HybridSpec, Passes};
use super::trades::{generate_adv, six};
use super::{adversarial, hits, SetupCx, StepCx, StepOutput, TrainObjective};
use crate::attack::{cross_entropy, PgdConfig};
use crate::nn::{Mode, Route};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

/// `train.objective = "mart"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mart {
    /// The training attack, through `hybrid.adv_route`.
    pub attack: PgdConfig,
    /// Routes and passes (`clean_weight`, `clean_fraction` and `paired` unused).
    #[serde(default)]
    pub hybrid: HybridSpec,
    /// lambda.
    #[serde(default = "six")]
    pub mart_lambda: f64,
}

/// MART: `BCE(p(x'), y) + lambda * (1/B) sum_i KL(p(x_i) || p(x'_i)) * (1 - p_y(x_i))` with
/// `BCE = -log p_y(x') - log(1.0001 - max_{k != y} p_k(x'))` (the reference's 1.0001 and 1e-12
/// guards), from adversarial logits `la`, clean logits `lc` and labels `y`.
pub fn mart_loss(la: &Tensor, lc: &Tensor, y: &Tensor, lambda: f64) -> Tensor {
    let adv_probs = la.softmax(-1, Kind::Float);
    let yy = y.unsqueeze(1);
    let others = adv_probs.scatter_value(1, &yy, f64::NEG_INFINITY);
    let top_other = others.amax([1i64].as_slice(), false);
    let bce = cross_entropy(la, y, Reduction::Mean)
        + (-(top_other.neg() + 1.0001).log()).mean(Kind::Float);
    let nat_probs = lc.softmax(-1, Kind::Float);
    let true_probs = nat_probs.gather(1, &yy, false).squeeze_dim(1);
    let kl = (&nat_probs * ((&nat_probs + 1e-12).log() - (adv_probs + 1e-12).log()))
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    bce + (kl * (true_probs.neg() + 1.0)).mean(Kind::Float) * lambda
}

impl TrainObjective for Mart {
    const NAME: &'static str = "mart";
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
        let l = self.mart_lambda;
        anyhow::ensure!(
            l >= 0.0 && l.is_finite(),
            "train.mart_lambda must be >= 0, got {l}"
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
        let (la, lc) = forward_pair(cx.model, &self.hybrid, xa, x, mode);
        Ok(StepOutput {
            loss: mart_loss(&la, &lc, y, self.mart_lambda),
            clean: Some((hits(&lc, y), n)),
            adv: Some((hits(&la, y), n)),
        })
    }
}
