//! MixACM (Awais et al., NeurIPS 2021, "MixACM: Mixup-Based Robustness Transfer via
//! Distillation of Activated Channel Maps"; `train.objective = "mixacm"`): robustness transfer
//! from a frozen robust teacher T to the student S without attacks,
//!
//! `L = m CE(S(x~), y_i) + (1-m) CE(S(x~), y_j) + alpha_kd tau^2 KL(softmax(T(x~)/tau) ||
//!      softmax(S(x~)/tau)) + beta_acm sum_pairs D(ACM(F_S), ACM(F_T))`
//!
//! with `x~ = m x_i + (1-m) x_j`, one `m ~ Beta(mixup_alpha, mixup_alpha)` per batch
//! (`[train.mixacm]`; the terms and their switches in [`crate::train::mixacm`]). Its run state is
//! the teacher with the student-side 1x1 projections and their optimiser
//! ([`crate::train::teacher::Teacher`]): set up when the run starts (`teacher.json`), stepped
//! with the model, saved as `checkpoints/projections.*` in every checkpoint set and resumed.

use super::{hits, SetupCx, StepCx, StepOutput, TrainObjective};
use crate::attack::PgdConfig;
use crate::checkpoint::Sidecar;
use crate::nn::{Mode, Route};
use crate::train::mixacm::{mixacm_loss, MixAcmSpec};
use crate::train::settings::Settings;
use crate::train::teacher::Teacher;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::Tensor;

/// `train.objective = "mixacm"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixAcm {
    /// Not a training attack: the eps and norm of the default validation attack (MixACM
    /// recipes set `[validation.attack]` instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<PgdConfig>,
    /// The default validation route.
    #[serde(default)]
    pub route: Route,
    /// Teacher and the terms of the loss.
    pub mixacm: MixAcmSpec,
}

impl TrainObjective for MixAcm {
    const NAME: &'static str = "mixacm";
    type State = Teacher;

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
    fn validate(&self, settings: &Settings) -> Result<()> {
        self.mixacm.validate()?;
        anyhow::ensure!(
            !settings.awp,
            "train.awp does not combine with objective mixacm (it has no training attack)"
        );
        Ok(())
    }
    /// Load the teacher, build the projections and write (or check) `teacher.json`.
    fn setup(&self, cx: &SetupCx) -> Result<Teacher> {
        Teacher::setup(
            &cx.settings,
            &self.mixacm,
            cx.net,
            cx.data,
            cx.device,
            cx.out,
            cx.writer,
        )
    }
    fn generate(&self, _cx: &StepCx, _x: &Tensor, _y: &Tensor) -> Option<Tensor> {
        None
    }
    fn loss(
        &self,
        cx: &StepCx,
        teacher: &Teacher,
        x: &Tensor,
        y: &Tensor,
        _x_adv: Option<&Tensor>,
        mode: Mode,
    ) -> Result<StepOutput> {
        let n = y.size()[0];
        let (loss, parts) = mixacm_loss(
            &self.mixacm,
            cx.model,
            teacher.net.model.as_ref(),
            &teacher.projections,
            x,
            y,
            mode,
        )?;
        // With mixup the logits are of mixed images: accuracy against y is approximate.
        Ok(StepOutput {
            loss,
            clean: Some((hits(&parts.logits, y), n)),
            adv: None,
        })
    }
    fn zero_grad(&self, teacher: &mut Teacher) {
        teacher.proj_sgd.zero_grad();
    }
    fn parameters(&self, teacher: &Teacher) -> Vec<Tensor> {
        teacher
            .proj_sgd
            .params
            .iter()
            .map(|(_, p)| p.shallow_clone())
            .collect()
    }
    fn step(&self, teacher: &mut Teacher, lr: f64) {
        teacher.proj_sgd.step(lr);
    }
    fn save(&self, teacher: &Teacher, dir: &Path, sidecar: &dyn Fn(&str) -> Sidecar) -> Result<()> {
        teacher.save(dir, sidecar)
    }
    fn resume(&self, teacher: &mut Teacher, dir: &Path, epoch: usize) -> Result<()> {
        teacher.resume(dir, epoch)
    }
}
