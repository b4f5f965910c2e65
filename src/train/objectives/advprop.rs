//! AdvProp (Xie et al. 2020, "Adversarial Examples Improve Image Recognition";
//! `train.objective = "advprop"`):
//!
//! `L = CE(f(x; main), y) + CE(f(x'; aux), y)`
//!
//! with x' generated through the auxiliary BN (`[train.hybrid] adv_route`, "aux") and every image
//! used clean and adversarially (paired is implied); validated through main
//! (`[train.hybrid] clean_route`). Routes and passes come from `[train.hybrid]`; the batch logic
//! is Hybrid-AT's ([`super::hybrid`]) with both weights 1.

use super::hybrid::{generate_rows, loss_rows, HybridSpec, Passes};
use super::{adversarial, SetupCx, StepCx, StepOutput, TrainObjective};
use crate::attack::PgdConfig;
use crate::nn::{Mode, Route};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// `train.objective = "advprop"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Advprop {
    /// The training attack, through `hybrid.adv_route` (aux).
    pub attack: PgdConfig,
    /// Routes (main = `clean_route`, aux = `adv_route`) and passes.
    #[serde(default)]
    pub hybrid: HybridSpec,
}

impl TrainObjective for Advprop {
    const NAME: &'static str = "advprop";
    type State = ();

    fn attack(&self) -> Option<&PgdConfig> {
        Some(&self.attack)
    }
    fn hybrid(&self) -> Option<&HybridSpec> {
        Some(&self.hybrid)
    }
    fn resolve(&mut self) {
        self.hybrid.default_passes(Passes::Joint);
    }
    fn validation_route(&self) -> Route {
        self.hybrid.clean_route
    }
    fn validate(&self, _settings: &crate::train::settings::Settings) -> Result<()> {
        self.hybrid.validate()
    }
    fn setup(&self, _cx: &SetupCx) -> Result<()> {
        Ok(())
    }
    fn generate(&self, cx: &StepCx, x: &Tensor, y: &Tensor) -> Option<Tensor> {
        Some(generate_rows(&self.hybrid, true, &self.attack, cx, x, y))
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
        // Every image has a clean row, so the clean accuracy is always measured on the batch.
        Ok(loss_rows(&self.hybrid, true, false, cx, x, y, xa, mode))
    }
}
