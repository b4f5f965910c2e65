//! Standard training (`train.objective = "standard"`): `L = CE(f(x; route), y)` on clean
//! inputs, no attack in training. `[train.attack]`, when given, is only the budget of the
//! default validation attack, the overfitting check and SWA; `checkpoints/best` maximises clean
//! validation accuracy.

use super::{hits, SetupCx, StepCx, StepOutput, TrainObjective};
use crate::attack::{cross_entropy, PgdConfig};
use crate::nn::{Ctx, Mode, Route};
use crate::train::metrics::EpochMetrics;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Reduction, Tensor};

/// `train.objective = "standard"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standard {
    /// Not a training attack: the eps and norm of the default validation attack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<PgdConfig>,
    /// Route of the training forward (and the default validation route).
    #[serde(default)]
    pub route: Route,
}

impl TrainObjective for Standard {
    const NAME: &'static str = "standard";
    type State = ();

    fn attack(&self) -> Option<&PgdConfig> {
        self.attack.as_ref()
    }
    fn training_attack(&self) -> Option<&PgdConfig> {
        None
    }
    fn routes(&self) -> Vec<(&'static str, Route)> {
        vec![("train.route", self.route)]
    }
    fn validation_route(&self) -> Route {
        self.route
    }
    fn score(&self, m: &EpochMetrics) -> Option<f64> {
        m.val_clean_acc
    }
    fn setup(&self, _cx: &SetupCx) -> Result<()> {
        Ok(())
    }
    fn generate(&self, _cx: &StepCx, _x: &Tensor, _y: &Tensor) -> Option<Tensor> {
        None
    }
    fn loss(
        &self,
        cx: &StepCx,
        _state: &(),
        x: &Tensor,
        y: &Tensor,
        _x_adv: Option<&Tensor>,
        mode: Mode,
    ) -> Result<StepOutput> {
        let n = y.size()[0];
        let logits = cx.model.forward(x, &Ctx::new(self.route, mode));
        Ok(StepOutput {
            loss: cross_entropy(&logits, y, Reduction::Mean),
            clean: Some((hits(&logits, y), n)),
            adv: None,
        })
    }
}
