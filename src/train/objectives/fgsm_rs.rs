//! FGSM with a random start (Wong et al. 2020, "Fast is Better than Free: Revisiting
//! Adversarial Training"; `train.objective = "fgsm-rs"`):
//!
//! `L = CE(f(x'; route), y)`, `x' = clip(x + clip(delta + alpha sign(grad_delta CE), -eps, eps))`
//! with `delta ~ U(-eps, eps)` and alpha = `[train.attack] step_size` (1.25 eps in the paper),
//! L-inf only. Pair it with `[train.overfit_check]` (catastrophic overfitting).

use super::pgd_at::{adversarial_ce, yes};
use super::{adversarial, SetupCx, StepCx, StepOutput, TrainObjective};
use crate::attack::{cross_entropy, Classifier, PgdConfig, ThreatNorm};
use crate::nn::{Mode, Route};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Reduction, Tensor};

/// `train.objective = "fgsm-rs"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FgsmRs {
    /// The attack's eps and step size (norm L-inf; steps, restarts, init and loss unused).
    pub attack: PgdConfig,
    /// Route of the training forward and attack (and the default validation route).
    #[serde(default)]
    pub route: Route,
    /// Measure clean training accuracy with an extra no-grad eval-mode forward.
    #[serde(default = "yes")]
    pub track_clean_accuracy: bool,
}

/// FGSM-RS (Wong et al. 2020) example of `x` (L-inf): `delta ~ U(-eps, eps)`, one step
/// `delta += alpha * sign(grad)` (alpha = 1.25 eps in the paper), `delta` clipped to
/// `[-eps, eps]` and `x + delta` to [0, 1].
pub fn fgsm_rs_example(f: &Classifier, x: &Tensor, y: &Tensor, eps: f64, alpha: f64) -> Tensor {
    let delta = (crate::attack::draw::rand_like(x) * 2.0 - 1.0) * eps;
    let start = (x + &delta)
        .clamp(0.0, 1.0)
        .detach()
        .set_requires_grad(true);
    // Data-parallel sync BatchNorm: a summed loss weighs every worker's rows alike.
    let _summed = crate::dist::sync_bn_summed_losses();
    let loss = cross_entropy(&f.logits(&start), y, Reduction::Sum);
    let g = Tensor::run_backward(&[&loss], &[&start], false, false).remove(0);
    tch::no_grad(|| {
        let d = (&start - x + g.sign() * alpha).clamp(-eps, eps);
        (x + d).clamp(0.0, 1.0)
    })
}

impl TrainObjective for FgsmRs {
    const NAME: &'static str = "fgsm-rs";
    type State = ();

    fn attack(&self) -> Option<&PgdConfig> {
        Some(&self.attack)
    }
    fn routes(&self) -> Vec<(&'static str, Route)> {
        vec![("train.route", self.route)]
    }
    fn validation_route(&self) -> Route {
        self.route
    }
    fn validate(&self, _settings: &crate::train::settings::Settings) -> Result<()> {
        anyhow::ensure!(
            self.attack.norm == ThreatNorm::Linf,
            "train.attack.norm must be \"linf\" for objective fgsm-rs"
        );
        Ok(())
    }
    fn setup(&self, _cx: &SetupCx) -> Result<()> {
        Ok(())
    }
    fn generate(&self, cx: &StepCx, x: &Tensor, y: &Tensor) -> Option<Tensor> {
        let a = &self.attack;
        Some(fgsm_rs_example(
            &cx.attacked(self.route),
            x,
            y,
            a.eps,
            a.step_size,
        ))
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
        Ok(adversarial_ce(
            self.route,
            self.track_clean_accuracy,
            cx,
            x,
            y,
            xa,
            mode,
        ))
    }
}
