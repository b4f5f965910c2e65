//! Recipes: a TOML file, overridden by `--set key=value` and CLI flags, resolved and saved with
//! every run. Every setting that changes results is a field here.

use crate::attack::PgdConfig;
use crate::data::DataSpec;
use crate::nn::{ArchSpec, Mode, Route};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A complete, resolved training recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    /// auto | cpu | cuda | cuda:N
    #[serde(default = "default_device")]
    pub device: String,
    /// Lay out convolution weights and inputs channels-last (faster oneDNN convolutions on CPU).
    #[serde(default = "yes")]
    pub channels_last: bool,
    /// Accept L-inf attack budgets above 1 (`train.attack.eps`, `validation.attack.eps`); an
    /// eps above 1 in [0, 1] pixel space is almost always a budget in 0..255 units, so it is
    /// refused unless this is true. Written to the resolved recipe only when true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_large_eps: bool,
    /// Precision, BN folding and micro-batching of attacks ([`crate::compute`]).
    #[serde(default)]
    pub compute: crate::compute::Compute,
    pub data: DataSpec,
    pub model: ArchSpec,
    pub train: TrainSpec,
    #[serde(default)]
    pub validation: ValidationSpec,
    /// Data-parallel training ([`crate::dist::DistSpec`]): left out of the resolved recipe when
    /// all defaults (a single-process run), written with its `world_size` in a launched run.
    #[serde(default, skip_serializing_if = "crate::dist::DistSpec::is_default")]
    pub distributed: crate::dist::DistSpec,
}

pub use super::objectives::arat::AratSpec;
pub use super::objectives::{HybridSpec, Objective, Passes};
use super::settings::Settings;

/// AWP (Wu et al. 2020): per weight tensor with more than one dimension, `v_l = gamma *
/// ||w_l|| / ||d_l|| * d_l` with `d` the gradient of the objective's loss at the current weights
/// (the reference's one proxy SGD ascent step, up to its learning rate, which cancels); the
/// step's gradient is taken at `w + v`, then `v` is removed before the optimiser step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwpSpec {
    /// 0.01 for PGD-AT, 0.005 for TRADES in the paper.
    pub gamma: f64,
    /// Epochs of plain training before AWP starts.
    #[serde(default)]
    pub warmup_epochs: usize,
}

/// Stochastic weight averaging (Izmailov et al. 2018; ARAT's optional SWA): the trainable
/// parameters are averaged, `avg_n = avg_{n-1} + (w - avg_{n-1}) / n`, at the end of every epoch
/// after `start_epoch`; at the end of training the average's BN statistics are re-estimated
/// (cumulative average over `bn_batches` training batches; per domain for multi-domain models:
/// the clean route on clean images, the adversarial route on PGD-10 examples at the training
/// eps; single-statistics models on `bn_source`) and saved as `checkpoints/swa`, validated,
/// and reported in `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwaSpec {
    /// Epochs trained before averaging starts (ARAT: ~76% of training).
    pub start_epoch: usize,
    /// Training batches for the BN re-estimation (default: one pass over the training set).
    #[serde(default)]
    pub bn_batches: Option<usize>,
    /// Images whose statistics a single-statistics model gets: "clean" (PyTorch's update_bn),
    /// "adv" (PGD-10 in the recipe's norm at the training eps) or "noise".
    #[serde(default = "default_swa_source")]
    pub bn_source: crate::eval::controls::StatsSource,
}

fn default_swa_source() -> crate::eval::controls::StatsSource {
    crate::eval::controls::StatsSource::Clean
}

/// Catastrophic-overfitting detection (Wong et al. 2020): after every epoch, PGD accuracy on the
/// first `n` training images (PGD-`steps`, step eps/4, at the training eps, through the
/// validation route in eval mode). A fall of more than `drop` (absolute) below the best earlier
/// epoch is a collapse: reported in the log, `overfit_check.csv` and `summary.json`; with
/// `rollback`, training stops and the model returns to `checkpoints/best`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverfitCheck {
    #[serde(default = "default_check_n")]
    pub n: usize,
    #[serde(default = "default_check_steps")]
    pub steps: usize,
    #[serde(default = "default_check_drop")]
    pub drop: f64,
    #[serde(default = "yes")]
    pub rollback: bool,
}

fn default_check_n() -> usize {
    512
}
fn default_check_steps() -> usize {
    10
}
fn default_check_drop() -> f64 {
    0.2
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    /// lr * gamma^(number of milestones passed); milestones in epochs.
    Piecewise,
    /// lr * (1 + cos(pi * t / T)) / 2, updated every iteration.
    Cosine,
}

/// `[train]`: the objective with its own settings, and what every objective shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    /// `objective = "..."` and that objective's keys beside it (`attack`, `route`, `hybrid`,
    /// `trades_beta`, `mart_lambda`, `arat`, `mixacm`, `track_clean_accuracy`: see
    /// [`crate::train::objectives`]). Unknown keys are refused by the objective, naming them.
    #[serde(flatten)]
    pub objective: Objective,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    pub nesterov: bool,
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// Epochs at which a piecewise schedule multiplies the lr by `lr_gamma`.
    #[serde(default)]
    pub milestones: Vec<usize>,
    #[serde(default = "default_gamma")]
    pub lr_gamma: f64,
    /// Linear warm-up from 0 over this many epochs (0 = none).
    #[serde(default)]
    pub warmup_epochs: usize,
    /// BN mode while generating training attacks (eval, train or train-frozen).
    #[serde(default = "default_attack_mode")]
    pub attack_bn_mode: Mode,
    /// Adversarial weight perturbation around the objective (pgd-at, trades, mart, hybrid, ...).
    #[serde(default)]
    pub awp: Option<AwpSpec>,
    /// Catastrophic-overfitting check after every epoch (FGSM-RS; any adversarial objective).
    #[serde(default)]
    pub overfit_check: Option<OverfitCheck>,
    /// Stochastic weight averaging from a given epoch, BN statistics re-estimated at the end.
    #[serde(default)]
    pub swa: Option<SwaSpec>,
}

impl TrainSpec {
    /// The `[train]` keys of every objective (besides `objective` and the objective's own).
    pub const COMMON_KEYS: &'static [&'static str] = super::objectives::COMMON_KEYS;

    /// Learning rate at fractional epoch `t` (epoch index + fraction of the epoch done).
    pub fn learning_rate(&self, t: f64) -> f64 {
        let base = match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Piecewise => {
                let passed = self.milestones.iter().filter(|&&m| t >= m as f64).count();
                self.lr * self.lr_gamma.powi(passed as i32)
            }
            Schedule::Cosine => {
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t / self.epochs as f64).cos())
            }
        };
        if self.warmup_epochs > 0 && t < self.warmup_epochs as f64 {
            base * t / self.warmup_epochs as f64
        } else {
            base
        }
    }

    /// `[train.attack]` (see [`Objective::attack`]).
    pub fn attack(&self) -> Option<&PgdConfig> {
        self.objective.attack()
    }
}

/// Per-epoch validation on the held-out split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSpec {
    /// Validation images attacked with PGD each epoch (0 = clean accuracy only).
    #[serde(default = "default_val_pgd_limit")]
    pub pgd_limit: usize,
    /// PGD for validation; default: the training attack's eps, step eps/4, 10 steps.
    #[serde(default)]
    pub attack: Option<PgdConfig>,
    #[serde(default = "default_val_batch")]
    pub batch_size: usize,
    /// Route validated (and whose PGD accuracy picks the best checkpoint); default: `train.route`
    /// (standard, pgd-at), `hybrid.adv_route` (hybrid), `hybrid.clean_route` (advprop, "main").
    #[serde(default)]
    pub route: Option<Route>,
    /// Extra routes validated every epoch (e.g. both branches of a Dual-BN model), written to
    /// `branches.csv` (`epoch,route,val_clean_acc,val_pgd_acc`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<Route>,
}

impl Default for ValidationSpec {
    fn default() -> Self {
        ValidationSpec {
            pgd_limit: default_val_pgd_limit(),
            attack: None,
            batch_size: default_val_batch(),
            route: None,
            branches: vec![],
        }
    }
}

fn default_device() -> String {
    "auto".into()
}
fn default_momentum() -> f64 {
    0.9
}
fn default_schedule() -> Schedule {
    Schedule::Piecewise
}
fn default_gamma() -> f64 {
    0.1
}
fn default_attack_mode() -> Mode {
    Mode::Eval
}
fn yes() -> bool {
    true
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn default_val_pgd_limit() -> usize {
    1000
}
fn default_val_batch() -> usize {
    500
}

impl Recipe {
    /// Read a recipe file and apply `key=value` overrides (dotted keys, TOML values).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Recipe> {
        Ok(Recipe::load_noting(path, overrides)?.0)
    }

    /// [`Recipe::load`], and what it ignored: keys of the earlier `[train]` layout the
    /// objective does not use, when their value is not the one the earlier code wrote by
    /// default ([`crate::train::objectives::legacy`]).
    pub fn load_noting(path: &Path, overrides: &[String]) -> Result<(Recipe, Vec<String>)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read recipe {}", path.display()))?;
        let mut value: toml::Value = toml::from_str(&text)
            .with_context(|| format!("recipe {} is not valid TOML", path.display()))?;
        for o in overrides {
            apply_override(&mut value, o).with_context(|| format!("recipe {}", path.display()))?;
        }
        let recipe: Recipe = value.clone().try_into().map_err(|e: toml::de::Error| {
            // A value carries no positions: parse its text again to find the offending line
            // and name its table and key (overrides applied). An objective's settings are
            // read from a buffer, without positions: their errors name the key themselves.
            let place = toml::to_string(&value).ok().and_then(|t| {
                let span = toml::from_str::<Recipe>(&t).err()?.span()?;
                error_place(&t, span.start)
            });
            match place {
                Some(place) if !e.message().starts_with("train.") => {
                    anyhow::anyhow!("recipe {}: {place}: {}", path.display(), e.message())
                }
                _ => anyhow::anyhow!("recipe {}: {}", path.display(), e.message()),
            }
        })?;
        let ignored = value
            .get("train")
            .map(|t| {
                let o = &recipe.train.objective;
                crate::train::objectives::legacy::ignored(t, o.name(), o.keys())
            })
            .transpose()
            .with_context(|| format!("invalid recipe {}", path.display()))?
            .unwrap_or_default();
        recipe
            .validate()
            .with_context(|| format!("invalid recipe {}", path.display()))?;
        Ok((recipe, ignored))
    }

    /// [`Recipe::load`] for `train`: the `--set` overrides `sets`, then `flags` (the CLI flags
    /// written as overrides, e.g. `train.epochs=3` for `--epochs 3`), which win. Every `--set`
    /// is checked on its own as well, applied to the resolved recipe (its type and the value
    /// checks), so a bad value is an error naming it even when a flag replaces its key. Prints
    /// [`Recipe::warnings`] and the ignored keys of [`Recipe::load_noting`].
    pub fn load_with_flags(path: &Path, sets: &[String], flags: &[String]) -> Result<Recipe> {
        let all: Vec<String> = sets.iter().chain(flags).cloned().collect();
        let (recipe, ignored) = Recipe::load_noting(path, &all)?;
        let resolved = toml::Value::try_from(&recipe).context("the resolved recipe")?;
        for set in sets {
            let mut v = resolved.clone();
            apply_override(&mut v, set).with_context(|| format!("recipe {}", path.display()))?;
            let one: Recipe = v.try_into().map_err(|e: toml::de::Error| {
                anyhow::anyhow!(
                    "--set {set}: {} (recipe {}; every --set is checked, also when a flag \
                     overrides its key)",
                    e.message(),
                    path.display()
                )
            })?;
            one.validate().with_context(|| {
                format!(
                    "--set {set} (recipe {}; every --set is checked, also when a flag overrides \
                     its key)",
                    path.display()
                )
            })?;
        }
        for w in recipe.warnings().into_iter().chain(ignored) {
            log::warn!("recipe {}: {w}", path.display());
        }
        Ok(recipe)
    }

    /// Value checks that name the offending field.
    pub fn validate(&self) -> Result<()> {
        self.distributed.validate()?;
        let t = &self.train;
        anyhow::ensure!(t.epochs >= 1, "train.epochs must be >= 1");
        anyhow::ensure!(t.batch_size >= 1, "train.batch_size must be >= 1");
        anyhow::ensure!(
            t.lr > 0.0 && t.lr.is_finite(),
            "train.lr must be > 0, got {}",
            t.lr
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&t.momentum),
            "train.momentum must be in [0,1), got {}",
            t.momentum
        );
        anyhow::ensure!(
            t.weight_decay >= 0.0,
            "train.weight_decay must be >= 0, got {}",
            t.weight_decay
        );
        anyhow::ensure!(
            t.lr_gamma > 0.0,
            "train.lr_gamma must be > 0, got {}",
            t.lr_gamma
        );
        // Also when the objective does not attack: its eps is the default validation,
        // overfitting-check and SWA budget.
        if let Some(a) = t.attack() {
            a.validate("train.attack", self.allow_large_eps)
                .map_err(anyhow::Error::msg)?;
        }
        t.objective.validate(&self.settings())?;
        if let Some(w) = &t.swa {
            anyhow::ensure!(
                w.start_epoch < t.epochs,
                "train.swa.start_epoch must be below train.epochs = {} (averaging starts after it), got {}",
                t.epochs,
                w.start_epoch
            );
            anyhow::ensure!(
                w.bn_batches != Some(0),
                "train.swa.bn_batches must be >= 1 (or left out for one pass over the training set)"
            );
            anyhow::ensure!(
                w.bn_source == crate::eval::controls::StatsSource::Clean || t.attack().is_some(),
                "train.swa.bn_source = \"{}\" needs [train.attack] (its eps and norm)",
                w.bn_source
            );
        }
        if let Some(a) = &t.awp {
            anyhow::ensure!(
                a.gamma > 0.0 && a.gamma.is_finite(),
                "train.awp.gamma must be > 0, got {}",
                a.gamma
            );
            anyhow::ensure!(
                t.objective.is_adversarial(),
                "train.awp needs an adversarial objective (pgd-at, trades, mart, hybrid, ...)"
            );
        }
        if let Some(c) = &t.overfit_check {
            anyhow::ensure!(
                t.attack().is_some(),
                "train.overfit_check needs train.attack (its eps)"
            );
            anyhow::ensure!(c.n >= 1, "train.overfit_check.n must be >= 1");
            anyhow::ensure!(c.steps >= 1, "train.overfit_check.steps must be >= 1");
            anyhow::ensure!(
                c.drop > 0.0 && c.drop <= 1.0,
                "train.overfit_check.drop must be in (0,1], got {}",
                c.drop
            );
        }
        let (ns, ap) = self.route_sets();
        let check = |field: &str, r: Route| -> Result<()> {
            crate::nn::norm::check_route_sets(r, ns, ap).map_err(|e| {
                anyhow::anyhow!(
                    "{field} = '{r}': {e} (model.norm.ns_domains = {}, model.norm.ap_domains = {}, model.heads = {})",
                    self.model.norm.ns_domains,
                    self.model.norm.ap_domains,
                    self.model.heads
                )
            })
        };
        for (field, r) in self.routes() {
            check(field, r)?;
        }
        if let Some(a) = &self.validation.attack {
            a.validate("validation.attack", self.allow_large_eps)
                .map_err(anyhow::Error::msg)?;
        }
        anyhow::ensure!(
            self.validation.batch_size >= 1,
            "validation.batch_size must be >= 1"
        );
        anyhow::ensure!(
            self.data.crop_padding >= 0,
            "data.crop_padding must be >= 0 (0 = no random crop), got {}",
            self.data.crop_padding
        );
        for (field, v) in [
            ("data.train_limit", self.data.train_limit),
            ("data.test_limit", self.data.test_limit),
        ] {
            anyhow::ensure!(
                v != Some(0),
                "{field} must be >= 1 (or left out for the whole split), got 0"
            );
        }
        let classes = self.data.num_classes()?;
        anyhow::ensure!(
            self.model.num_classes as usize == classes,
            "model.num_classes = {} but data.dataset '{}' has {} classes",
            self.model.num_classes,
            self.data.dataset,
            classes
        );
        let (c, _, _) = self.data.image_shape()?;
        anyhow::ensure!(
            self.model.in_channels == c,
            "model.in_channels = {} but data.dataset '{}' has {} channels",
            self.model.in_channels,
            self.data.dataset,
            c
        );
        self.model.norm.validate().map_err(anyhow::Error::msg)?;
        crate::device::parse_device(&self.device)?;
        Ok(())
    }

    /// Statistics and affine/head sets of the model (each 1 when shared by every domain).
    fn route_sets(&self) -> (usize, usize) {
        let n = &self.model.norm;
        (n.ns_domains, n.ap_domains.max(self.model.heads))
    }

    /// Every route the recipe names, with its field.
    fn routes(&self) -> Vec<(&'static str, Route)> {
        let v = &self.validation;
        let mut out = self.train.objective.routes();
        out.extend(v.route.map(|r| ("validation.route", r)));
        out.extend(v.branches.iter().map(|&r| ("validation.branches", r)));
        out
    }

    /// Settings that are valid but probably not what was meant: a `train.route`,
    /// `validation.route` or `validation.branches` entry that names the adversarial (or another)
    /// domain of a model whose statistics or affine parameters are shared, so that it is the
    /// same as the clean route. (The hybrid routes are left out: their defaults name both
    /// domains for every model.)
    pub fn warnings(&self) -> Vec<String> {
        let (ns, ap) = self.route_sets();
        self.routes()
            .into_iter()
            .filter(|(f, _)| !f.starts_with("train.hybrid"))
            .filter_map(|(field, r)| {
                crate::nn::norm::shared_route(r, ns, ap).map(|(_, why)| {
                    format!("{field} = '{r}': {why} (the run's logs and files still name it '{r}')")
                })
            })
            .collect()
    }

    /// What an objective reads of the recipe besides its own settings.
    pub fn settings(&self) -> Settings<'_> {
        let t = &self.train;
        Settings {
            seed: self.seed,
            compute: &self.compute,
            model: &self.model,
            attack_bn_mode: t.attack_bn_mode,
            momentum: t.momentum,
            weight_decay: t.weight_decay,
            nesterov: t.nesterov,
            awp: t.awp.is_some(),
            validation_batch_size: self.validation.batch_size,
            validation_pgd_limit: self.validation.pgd_limit,
            validation_attack: self.validation_attack(),
        }
    }

    /// The validation attack: explicit, or PGD-10 with step eps/4 at the training eps.
    pub fn validation_attack(&self) -> Option<PgdConfig> {
        self.validation.attack.clone().or_else(|| {
            self.train
                .attack()
                .map(|a| PgdConfig::probe(a.norm, a.eps, 10))
        })
    }

    /// The route validated each epoch (see [`ValidationSpec::route`]).
    pub fn validation_route(&self) -> Route {
        self.validation
            .route
            .unwrap_or_else(|| self.train.objective.validation_route())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("recipe serialises")
    }
}

impl<'a> From<&'a Recipe> for Settings<'a> {
    fn from(r: &'a Recipe) -> Settings<'a> {
        r.settings()
    }
}

/// Set a dotted key (`train.attack.eps=0.2`) in a TOML tree. The value is parsed as TOML, and
/// taken as a string when that fails (so `device=cpu` works).
pub fn apply_override(root: &mut toml::Value, assignment: &str) -> Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--set expects key=value, got '{assignment}'"))?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        let table = node.as_table_mut().ok_or_else(|| {
            anyhow::anyhow!(
                "--set {assignment}: '{}' holds a value, not a table of settings",
                parts[..i].join(".")
            )
        })?;
        if i + 1 == parts.len() {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        node = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    unreachable!("split yields at least one part")
}

/// `[table] line` of the TOML text `t` at byte `pos`: the offending line with the table header
/// it sits under, to name a field in an error.
fn error_place(t: &str, pos: usize) -> Option<String> {
    let head = t.get(..pos)?;
    let line_start = head.rfind('\n').map_or(0, |i| i + 1);
    let line_end = t[pos..].find('\n').map_or(t.len(), |i| pos + i);
    let line = t[line_start..line_end].trim();
    let table = head[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['));
    Some(match table {
        Some(tb) if !line.starts_with('[') => format!("{tb} {line}"),
        _ => line.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::objectives::standard::Standard;

    fn spec(schedule: Schedule) -> TrainSpec {
        TrainSpec {
            objective: Objective::Standard(Standard {
                attack: None,
                route: Default::default(),
            }),
            epochs: 10,
            batch_size: 1,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
            schedule,
            milestones: vec![5, 8],
            lr_gamma: 0.1,
            warmup_epochs: 0,
            attack_bn_mode: crate::nn::Mode::Eval,
            overfit_check: None,
            swa: None,
            awp: None,
        }
    }

    #[test]
    fn schedules() {
        let s = spec(Schedule::Piecewise);
        assert_eq!(s.learning_rate(0.0), 0.1);
        assert!((s.learning_rate(4.99) - 0.1).abs() < 1e-12);
        assert!((s.learning_rate(5.0) - 0.01).abs() < 1e-12);
        assert!((s.learning_rate(8.5) - 0.001).abs() < 1e-12);
        let c = spec(Schedule::Cosine);
        assert!((c.learning_rate(5.0) - 0.05).abs() < 1e-12);
        assert!(c.learning_rate(10.0).abs() < 1e-12);
        let w = TrainSpec {
            warmup_epochs: 2,
            ..spec(Schedule::Constant)
        };
        assert!((w.learning_rate(1.0) - 0.05).abs() < 1e-12);
        assert!((w.learning_rate(3.0) - 0.1).abs() < 1e-12);
    }
}
