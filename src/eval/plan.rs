//! What an evaluation is asked to do, typed: [`EvalPlan`] (one attack or an AutoAttack
//! cascade at one budget) and [`CurvePlan`] (robust accuracy over a list of budgets or step
//! counts). `advtrain eval` parses its flags into these; [`super::evaluate`] and
//! [`super::evaluate_curve`] run them.

use super::autoattack::Preset;
use super::controls::Reestimate;
use crate::attack::{check_eps, AttackName, AttackSettings, AttackSpec, ParamNames, ThreatNorm};
use crate::compute::Compute;
use crate::data::DataSpec;
use crate::device::DeviceChoice;
use crate::nn::{Mode, Route};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The threat model: a ball of radius `eps` in `norm` around each image (pixels in [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Threat {
    pub norm: ThreatNorm,
    pub eps: f64,
}

/// The test images evaluated and how they are batched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSelection {
    /// The data set: the `[data]` of the recipe that trained the checkpoint (the CLI reads it
    /// with `train::saved::load_run`); its test split is evaluated, its training split feeds
    /// re-estimation.
    pub spec: DataSpec,
    /// Only the first N test images (`None`: the whole test split; replaces the spec's).
    pub test_limit: Option<usize>,
    /// Images per batch of the attacks and the checks.
    pub batch_size: usize,
    /// The data folder, instead of the spec's.
    pub data_dir: Option<PathBuf>,
}

impl DataSelection {
    /// The spec with the test limit and the folder applied.
    pub fn resolved(&self) -> DataSpec {
        let mut spec = self.spec.clone();
        if let Some(d) = &self.data_dir {
            spec.dir = Some(d.clone());
        }
        spec.test_limit = self.test_limit;
        spec
    }
}

/// The function attacked: the route through the normalisation layers, the BN mode, and the
/// test-time controls of multi-domain models ([`super::controls`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestTime {
    pub route: Route,
    /// Take the other branch's affine parameters and head (route ap clean <-> adv).
    pub swap_ap: bool,
    pub bn_mode: Mode,
    /// Model soup: every per-domain set used as `w * adv + (1 - w) * clean`.
    pub soup: Option<f64>,
    /// Re-estimate the route's running statistics on training data first.
    pub reestimate: Option<Reestimate>,
}

impl Default for TestTime {
    /// The clean route in eval mode, no control.
    fn default() -> Self {
        TestTime {
            route: Route::default(),
            swap_ap: false,
            bn_mode: Mode::Eval,
            soup: None,
            reestimate: None,
        }
    }
}

/// What every evaluation of a checkpoint shares: the model, the data, the attacked function,
/// the seed, the device and the compute settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSetup {
    /// The checkpoint file (`.safetensors` with its `.json` sidecar), loaded with
    /// [`crate::checkpoint::load`] (the name reports give).
    pub checkpoint: PathBuf,
    pub data: DataSelection,
    pub test_time: TestTime,
    /// Seeds torch's generator before the checks and the attack (AutoAttack: before every
    /// batch of every attack).
    pub seed: u64,
    pub device: DeviceChoice,
    /// Precision, BN folding and micro-batching of attack generation.
    pub compute: Compute,
}

/// An AutoAttack cascade ([`super::autoattack::AutoAttack`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoAttackPlan {
    pub preset: Preset,
    /// State file: written after every batch; a matching one is continued.
    pub state: Option<PathBuf>,
    /// Stop after this many attack batches (the state file keeps the progress).
    pub max_batches: Option<usize>,
}

/// The attack of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalAttack {
    /// One attack ([`crate::attack::AttackName::spec`]).
    Single(AttackSpec),
    /// The cascade of a preset at the plan's threat.
    AutoAttack(AutoAttackPlan),
}

impl EvalAttack {
    /// The attack `name` at `s`, checked as [`AttackName::spec`] does (the settings named as
    /// `names` says); `autoattack` is the cascade of `preset` at `s.eps` (checked), with no
    /// state file and no batch limit.
    pub fn from_settings(
        name: AttackName,
        preset: Preset,
        s: &AttackSettings,
        names: &ParamNames,
        allow_large_eps: bool,
    ) -> Result<EvalAttack, String> {
        if name != AttackName::Autoattack {
            return name.spec(s, names, allow_large_eps).map(EvalAttack::Single);
        }
        let allow = &names.allow_large_eps;
        check_eps(&names.eps, s.norm, s.eps, allow_large_eps, allow)?;
        Ok(EvalAttack::AutoAttack(AutoAttackPlan {
            preset,
            state: None,
            max_batches: None,
        }))
    }

    /// The name in reports and default file names: the attack's (`pgd-20`) or
    /// `autoattack-<preset>`.
    pub fn name(&self) -> String {
        match self {
            EvalAttack::Single(s) => s.name(),
            EvalAttack::AutoAttack(p) => format!("autoattack-{}", p.preset),
        }
    }
}

/// One evaluation: clean and robust accuracy of a checkpoint under one attack (or cascade).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPlan {
    pub setup: EvalSetup,
    pub threat: Threat,
    pub attack: EvalAttack,
}

/// What a curve varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CurveAxis {
    Eps,
    Steps,
}

impl CurveAxis {
    /// `eps` or `steps`.
    pub fn as_str(self) -> &'static str {
        match self {
            CurveAxis::Eps => "eps",
            CurveAxis::Steps => "steps",
        }
    }
}

/// One point of a curve: its budget, its iterations (`None` for AutoAttack) and its attack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePointPlan {
    pub eps: f64,
    pub steps: Option<usize>,
    /// A single attack, or AutoAttack without a state file.
    pub attack: EvalAttack,
}

/// Robust accuracy of one attack over a list of budgets or step counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePlan {
    pub setup: EvalSetup,
    pub norm: ThreatNorm,
    pub axis: CurveAxis,
    pub points: Vec<CurvePointPlan>,
    /// The PNG plot the report names (drawn by the caller from the report's points).
    pub plot: PathBuf,
}

impl CurvePlan {
    /// The curve's attack name: the first point's (e.g. `pgd-20`) when only eps varies, the
    /// registry name (`pgd`) when the steps do, `autoattack-<preset>` for AutoAttack.
    pub fn name(&self) -> String {
        match self.points.first().map(|p| &p.attack) {
            Some(EvalAttack::Single(s)) if self.axis == CurveAxis::Steps => s.kind().to_string(),
            Some(a) => a.name(),
            None => String::new(),
        }
    }
}
