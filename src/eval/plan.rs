//! What an evaluation is asked to do, typed: [`EvalPlan`] (one attack or an AutoAttack
//! cascade at one budget) and [`CurvePlan`] (robust accuracy over a list of budgets or step
//! counts). `advtrain eval` parses its flags into these; `eval::evaluate` and
//! `eval::evaluate_curve` (run.rs, above this file) run them.

use super::controls::Reestimate;
use crate::attack::{check_eps, AttackName, AttackSettings, AttackSpec, ParamNames, ThreatNorm};
use crate::compute::Compute;
use crate::data::DataSpec;
use crate::device::DeviceChoice;
use crate::nn::{ArchSpec, Mode, Route};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The threat model: a ball of radius `eps` in `norm` around each image (pixels in [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Threat {
    pub norm: ThreatNorm,
    pub eps: f64,
}

impl Threat {
    /// The L-inf ball of radius `eps`.
    pub fn linf(eps: f64) -> Threat {
        Threat {
            norm: ThreatNorm::Linf,
            eps,
        }
    }
}

/// Where the evaluated points come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataSource {
    /// The test split of a built-in data set (for a checkpoint: the `[data]` of the recipe that
    /// trained it, read with `train::saved::load_run`); its training split feeds re-estimation.
    Dataset(DataSpec),
    /// A safetensors file of `x` and `y` ([`crate::data::points`]): test points only.
    Points(PathBuf),
}

/// How the points are grouped into attack batches (every batch is seeded with the seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Batching {
    /// As the AutoAttack reference: each attack of a cascade re-batches the points still robust
    /// over the whole set; a single attack seeds once before its first batch.
    #[default]
    Pooled,
    /// Each block of `batch_size` consecutive points on its own: a single attack is seeded
    /// before every batch, and every attack of a cascade runs on the block's points still
    /// robust. Points of different blocks never share a batch, so a sharded evaluation
    /// (`--shard`) is exactly the unsharded one; shards always use it.
    Blocked,
}

crate::choice::value_enum_text!(Batching => "batching");

/// One of `count` deterministic slices of the selected points (`--shard index/count`,
/// 0-based): the batches `[index * B / count, (index + 1) * B / count)` of the `B` batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Parse `i/n` (`0 <= i < n`), or `auto`: `RANK` / `WORLD_SIZE` from the environment
    /// (torchrun, Slurm wrappers).
    pub fn parse(text: &str) -> Result<Shard, String> {
        if text == "auto" {
            let var = |name: &str| -> Result<usize, String> {
                let v = std::env::var(name).map_err(|_| {
                    format!("--shard auto needs the environment variable {name} (set by torchrun)")
                })?;
                v.trim()
                    .parse()
                    .map_err(|_| format!("--shard auto: {name} = '{v}' is not a number >= 0"))
            };
            return Shard::new(var("RANK")?, var("WORLD_SIZE")?)
                .map_err(|e| format!("--shard auto (RANK/WORLD_SIZE): {e}"));
        }
        let (i, n) = text
            .split_once('/')
            .ok_or_else(|| format!("--shard '{text}': expected INDEX/COUNT (e.g. 0/4) or auto"))?;
        let num = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("--shard '{text}': '{v}' is not a number >= 0"))
        };
        Shard::new(num(i)?, num(n)?).map_err(|e| format!("--shard '{text}': {e}"))
    }

    /// Shard `index` of `count`, checked.
    pub fn new(index: usize, count: usize) -> Result<Shard, String> {
        if count == 0 || index >= count {
            return Err(format!(
                "shard index {index} of {count}: expected 0 <= index < count (shards are \
                 numbered from 0)"
            ));
        }
        Ok(Shard { index, count })
    }

    /// The points `start..end` of this shard among `n` points in batches of `batch_size`.
    pub fn range(&self, n: usize, batch_size: usize) -> Result<(usize, usize), String> {
        let bs = batch_size.max(1);
        let batches = n.div_ceil(bs);
        let (b0, b1) = (
            self.index * batches / self.count,
            (self.index + 1) * batches / self.count,
        );
        if b0 == b1 {
            return Err(format!(
                "shard {}/{} is empty: {n} points make only {batches} batches of {bs}; use at \
                 most {batches} shards (or a smaller --batch-size)",
                self.index, self.count
            ));
        }
        Ok((b0 * bs, (b1 * bs).min(n)))
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The test images evaluated and how they are batched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSelection {
    pub source: DataSource,
    /// Only the first N test images (`None`: all; replaces the spec's).
    pub test_limit: Option<usize>,
    /// Images per batch of the attacks and the checks.
    pub batch_size: usize,
    /// The data folder, instead of the spec's.
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub batching: Batching,
    /// Evaluate only this slice of the selected points (batching is then `blocked`).
    #[serde(default)]
    pub shard: Option<Shard>,
}

impl DataSelection {
    /// The built-in data set's spec with the test limit and the folder applied (`None` for a
    /// points file).
    pub fn resolved(&self) -> Option<DataSpec> {
        match &self.source {
            DataSource::Dataset(spec) => {
                let mut spec = spec.clone();
                if let Some(d) = &self.data_dir {
                    spec.dir = Some(d.clone());
                }
                spec.test_limit = self.test_limit;
                Some(spec)
            }
            DataSource::Points(_) => None,
        }
    }

    /// The batching used: `blocked` for shards.
    pub fn batching(&self) -> Batching {
        if self.shard.is_some() {
            Batching::Blocked
        } else {
            self.batching
        }
    }

    /// What the points are, for reports: the data set's name or the points file.
    pub fn describe(&self) -> String {
        match &self.source {
            DataSource::Dataset(spec) => format!("{} test split", spec.dataset),
            DataSource::Points(p) => p.display().to_string(),
        }
    }
}

/// The format of the evaluated model file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelFormat {
    /// An advtrain checkpoint (`.safetensors` with its `.json` sidecar).
    #[default]
    Advtrain,
    /// A TorchScript module ([`crate::checkpoint::torchscript`]).
    Torchscript,
    /// A PyTorch state dict (safetensors) of one of our architectures
    /// ([`crate::checkpoint::import`]).
    StateDict(ArchSpec),
}

impl ModelFormat {
    /// `advtrain`, `torchscript` or `state-dict` (the report's `model_format`).
    pub fn name(&self) -> &'static str {
        match self {
            ModelFormat::Advtrain => "advtrain",
            ModelFormat::Torchscript => "torchscript",
            ModelFormat::StateDict(_) => "state-dict",
        }
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
    /// The model file (the name reports give): for [`ModelFormat::Advtrain`] a checkpoint
    /// (`.safetensors` with its `.json` sidecar) loaded with [`crate::checkpoint::load`].
    pub checkpoint: PathBuf,
    /// What the file holds.
    #[serde(default)]
    pub format: ModelFormat,
    pub data: DataSelection,
    pub test_time: TestTime,
    /// Seeds torch's generator before the checks and the attack (AutoAttack: before every
    /// batch of every attack).
    pub seed: u64,
    pub device: DeviceChoice,
    /// Precision, BN folding and micro-batching of attack generation.
    pub compute: Compute,
}

/// The AutoAttack presets (`eval --preset`): named cascades, as data (their
/// attacks: `autoattack::preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// The reference protocol: APGD-CE -> APGD-T -> FAB-T -> Square.
    #[default]
    Standard,
    /// APGD-CE + APGD-T only: NOT standard AutoAttack (an upper bound; flagged).
    Fast,
}

crate::choice::value_enum_text!(Preset => "AutoAttack preset");

impl Preset {
    /// The preset's name (`standard`, `fast`).
    pub fn name(self) -> String {
        self.to_string()
    }

    /// Whether this is the reference protocol (numbers comparable to published AutoAttack ones).
    pub fn standard(self) -> bool {
        self == Preset::Standard
    }

    /// What the preset is, for printing and result files.
    pub fn description(self) -> &'static str {
        match self {
            Preset::Standard => "the reference AutoAttack protocol (version='standard')",
            Preset::Fast => {
                "NOT standard AutoAttack: APGD-CE + APGD-T only, an upper bound on the \
                 standard robust accuracy; do not report it as AutoAttack"
            }
        }
    }
}

/// An AutoAttack cascade (run by `autoattack::AutoAttack`).
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
