//! PGD adversarial training (Madry et al. 2018, "Towards Deep Learning Models Resistant to
//! Adversarial Attacks"; `train.objective = "pgd-at"`):
//!
//! `L = CE(f(x'; route), y)`, `x' = PGD(x)` (`[train.attack]`) through `train.route` in
//! `train.attack_bn_mode`.

use super::{adversarial, hits, SetupCx, StepCx, StepOutput, TrainObjective};
use crate::attack::{cross_entropy, Attack, Pgd, PgdConfig};
use crate::nn::{Ctx, Mode, Route};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Reduction, Tensor};

/// `train.objective = "pgd-at"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgdAt {
    /// The training attack.
    pub attack: PgdConfig,
    /// Route of the training forward and attack (and the default validation route).
    #[serde(default)]
    pub route: Route,
    /// Measure clean training accuracy with an extra no-grad eval-mode forward.
    #[serde(default = "yes")]
    pub track_clean_accuracy: bool,
}

pub(super) fn yes() -> bool {
    true
}

/// CE on the adversarial inputs `x_adv` through `route` in `mode`, and the clean accuracy of
/// `x` (eval mode, no grad) when `track_clean_accuracy` in train mode (PGD-AT, FGSM-RS).
#[allow(clippy::too_many_arguments)]
pub(super) fn adversarial_ce(
    route: Route,
    track_clean_accuracy: bool,
    cx: &StepCx,
    x: &Tensor,
    y: &Tensor,
    x_adv: &Tensor,
    mode: Mode,
) -> StepOutput {
    let model = cx.model;
    let n = y.size()[0];
    let ce = |l: &Tensor, yy: &Tensor| cross_entropy(l, yy, Reduction::Mean);
    let clean = (track_clean_accuracy && mode == Mode::Train).then(|| {
        let logits = tch::no_grad(|| model.forward(x, &Ctx::new(route, Mode::Eval)));
        (hits(&logits, y), n)
    });
    let logits = model.forward(x_adv, &Ctx::new(route, mode));
    StepOutput {
        loss: ce(&logits, y),
        clean,
        adv: Some((hits(&logits, y), n)),
    }
}

impl TrainObjective for PgdAt {
    const NAME: &'static str = "pgd-at";
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
    fn setup(&self, _cx: &SetupCx) -> Result<()> {
        Ok(())
    }
    fn generate(&self, cx: &StepCx, x: &Tensor, y: &Tensor) -> Option<Tensor> {
        Some(Pgd::new(self.attack.clone()).perturb(&cx.attacked(self.route), x, y))
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
