//! Recipes: a TOML file, overridden by `--set key=value` and CLI flags, resolved and saved with
//! every run. Every setting that changes results is a field here.

use crate::attack::PgdConfig;
use crate::data::DataSpec;
use crate::nn::{ArchSpec, Mode, Route, ADV, CLEAN};
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
}

/// Training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// CE on clean inputs.
    Standard,
    /// Madry PGD-AT: CE on PGD examples.
    PgdAt,
    /// Hybrid-AT: `(1-a) * CE(f(x'; adv_route), y) + a * CE(f(x; clean_route), y)` with the
    /// clean/adversarial split of `train.hybrid` (clean fraction r, paired, joint/separate passes).
    Hybrid,
    /// AdvProp: `CE(f(x; main), y) + CE(f(x'; aux), y)`, x' generated through aux; validated
    /// through main. Routes and passes from `train.hybrid` (paired is implied).
    Advprop,
    /// TRADES: `CE(f(x), y) + beta * (1/B) sum_i KL(p(x_i) || p(x'_i))` (`train.trades_beta`);
    /// routes/passes from `train.hybrid` (Dual BN: clean CE through BN_clean).
    Trades,
    /// MART: `BCE(p(x'), y) + lambda * (1/B) sum_i KL(p(x_i) || p(x'_i)) (1 - p_y(x_i))`
    /// (`train.mart_lambda`).
    Mart,
    /// FGSM with a uniform random start ("fast is better than free"), step `train.attack.step_size`.
    FgsmRs,
    /// ARAT (Waseda et al.): `w_a * CE(f(x'; adv_route), y) + w_c * CE(f(x; clean_route), y) +
    /// (lambda / |S|) * sum_l (1 - cos(h_l(z'_l), stopgrad(z_l)))` (`train.arat`).
    Arat,
    /// MixACM: robustness transfer from a frozen robust teacher without attacks: mixup CE +
    /// `alpha_kd * tau^2 * KL(teacher || student)` + `beta_acm * sum D(ACM_s, ACM_t)`
    /// (`train.mixacm`).
    Mixacm,
}

impl Objective {
    /// Objectives that generate attacks during training.
    pub fn is_adversarial(self) -> bool {
        !matches!(self, Objective::Standard | Objective::Mixacm)
    }
}

/// ARAT settings and its ablation switches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AratSpec {
    /// Weight of the invariance term (30 for ResNet-18 in the paper, 100 for WRN-34-10).
    #[serde(default = "thirty")]
    pub lambda: f64,
    /// Features whose `z = GAP(ReLU(feature))` enter the invariance term: stage indices (`2`)
    /// or norm-layer names (`"layer4.0.bn1"`, the paper's BN outputs); with `predictor = true`
    /// they must equal `model.predictors`.
    pub hooks: Vec<crate::nn::Hook>,
    /// `w_a` = clean training accuracy of the previous epoch (0.5 in epoch 1), `w_c = 1 - w_a`;
    /// false: `w_c = train.hybrid.clean_weight`.
    #[serde(default = "yes")]
    pub auto_balance: bool,
    /// Stop-gradient on the clean side (ablation: false).
    #[serde(default = "yes")]
    pub stop_gradient: bool,
    /// Predictor head on the adversarial side (ablation: false compares z' with z directly).
    #[serde(default = "yes")]
    pub predictor: bool,
    /// Symmetric ablation: `(D(h(z'), sg z) + D(h(z), sg z')) / 2` instead of the asymmetric term.
    #[serde(default)]
    pub symmetric: bool,
}

fn thirty() -> f64 {
    30.0
}

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

/// How the clean and adversarial rows of a hybrid batch are normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Passes {
    /// One forward over `[x'; x]` split by explicit sizes: rows of one statistics set share
    /// batch statistics ("cat" for single BN, Dual-AP), per-domain sets get their own.
    #[default]
    Joint,
    /// One forward per domain: batch statistics per sub-batch, running statistics see both.
    Separate,
}

/// The clean/adversarial composition of a Hybrid-AT or AdvProp batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HybridSpec {
    /// a: weight of the clean loss, `(1-a) * CE_adv + a * CE_clean` (a term with no rows is
    /// dropped, the other then has weight 1).
    #[serde(default = "half")]
    pub clean_weight: f64,
    /// r: share of each batch's images kept clean, the rest attacked (Xie & Yuille); used
    /// when `paired = false`.
    #[serde(default = "half")]
    pub clean_fraction: f64,
    /// Every image is used twice, clean and adversarial (2B rows; Zhang et al., AdvProp).
    #[serde(default)]
    pub paired: bool,
    /// Default: `separate` for trades and mart (the reference codes run `model(x)` and
    /// `model(x')` as two calls; `joint` is the mixed-batch variant), `joint` otherwise; the
    /// resolved value is written into the run's recipe.
    #[serde(default)]
    pub passes: Option<Passes>,
    /// Route of the clean rows.
    #[serde(default = "route_clean")]
    pub clean_route: Route,
    /// Route of the adversarial rows and of the training attack. `ns=clean,ap=adv` with joint
    /// passes is Cross-BN: adversarial rows normalised with the clean rows' batch statistics.
    #[serde(default = "route_adv")]
    pub adv_route: Route,
}

impl HybridSpec {
    /// The resolved passes (joint when not resolved by [`Recipe::load`]).
    pub fn passes(&self) -> Passes {
        self.passes.unwrap_or_default()
    }
}

impl Default for HybridSpec {
    fn default() -> Self {
        HybridSpec {
            clean_weight: 0.5,
            clean_fraction: 0.5,
            paired: false,
            passes: None,
            clean_route: route_clean(),
            adv_route: route_adv(),
        }
    }
}

fn six() -> f64 {
    6.0
}
fn half() -> f64 {
    0.5
}
fn route_clean() -> Route {
    Route::domain(CLEAN)
}
fn route_adv() -> Route {
    Route::domain(ADV)
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
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
    /// The training attack (required for pgd-at).
    #[serde(default)]
    pub attack: Option<PgdConfig>,
    /// BN mode while generating training attacks (eval, train or train-frozen).
    #[serde(default = "default_attack_mode")]
    pub attack_bn_mode: Mode,
    /// Route of the training forward and attack (standard, pgd-at).
    #[serde(default)]
    pub route: Route,
    /// Batch composition for hybrid and advprop; routes and passes for trades and mart.
    #[serde(default)]
    pub hybrid: HybridSpec,
    /// TRADES' beta (6 on CIFAR-10, 1 on MNIST in the reference code).
    #[serde(default = "six")]
    pub trades_beta: f64,
    /// MART's lambda.
    #[serde(default = "six")]
    pub mart_lambda: f64,
    /// ARAT settings (objective arat).
    #[serde(default)]
    pub arat: Option<AratSpec>,
    /// Adversarial weight perturbation around the objective (pgd-at, trades, mart, hybrid, ...).
    #[serde(default)]
    pub awp: Option<AwpSpec>,
    /// Catastrophic-overfitting check after every epoch (FGSM-RS; any adversarial objective).
    #[serde(default)]
    pub overfit_check: Option<OverfitCheck>,
    /// Stochastic weight averaging from a given epoch, BN statistics re-estimated at the end.
    #[serde(default)]
    pub swa: Option<SwaSpec>,
    /// MixACM settings (objective mixacm).
    #[serde(default)]
    pub mixacm: Option<super::mixacm::MixAcmSpec>,
    /// Measure clean training accuracy with an extra no-grad eval-mode forward (pgd-at only).
    #[serde(default = "yes")]
    pub track_clean_accuracy: bool,
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
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read recipe {}", path.display()))?;
        let mut value: toml::Value = toml::from_str(&text)
            .with_context(|| format!("recipe {} is not valid TOML", path.display()))?;
        for o in overrides {
            apply_override(&mut value, o).with_context(|| format!("recipe {}", path.display()))?;
        }
        let mut recipe: Recipe = value.clone().try_into().map_err(|e: toml::de::Error| {
            // A value carries no positions: parse its text again to find the offending line
            // and name its table and key (overrides applied).
            let place = toml::to_string(&value).ok().and_then(|t| {
                let span = toml::from_str::<Recipe>(&t).err()?.span()?;
                error_place(&t, span.start)
            });
            match place {
                Some(place) => {
                    anyhow::anyhow!("recipe {}: {place}: {}", path.display(), e.message())
                }
                None => anyhow::anyhow!("recipe {}: {}", path.display(), e.message()),
            }
        })?;
        recipe.resolve_passes();
        recipe
            .validate()
            .with_context(|| format!("invalid recipe {}", path.display()))?;
        Ok(recipe)
    }

    /// The objective's default `train.hybrid.passes` when the recipe leaves it out.
    fn resolve_passes(&mut self) {
        let t = &mut self.train;
        t.hybrid.passes.get_or_insert(match t.objective {
            Objective::Trades | Objective::Mart => Passes::Separate,
            _ => Passes::Joint,
        });
    }

    /// [`Recipe::load`] for `train`: the `--set` overrides `sets`, then `flags` (the CLI flags
    /// written as overrides, e.g. `train.epochs=3` for `--epochs 3`), which win. Every `--set`
    /// is checked on its own as well, applied to the resolved recipe (its type and the value
    /// checks), so a bad value is an error naming it even when a flag replaces its key. Prints
    /// [`Recipe::warnings`].
    pub fn load_with_flags(path: &Path, sets: &[String], flags: &[String]) -> Result<Recipe> {
        let all: Vec<String> = sets.iter().chain(flags).cloned().collect();
        let recipe = Recipe::load(path, &all)?;
        let resolved = toml::Value::try_from(&recipe).context("the resolved recipe")?;
        for set in sets {
            let mut v = resolved.clone();
            apply_override(&mut v, set).with_context(|| format!("recipe {}", path.display()))?;
            let mut one: Recipe = v.try_into().map_err(|e: toml::de::Error| {
                anyhow::anyhow!(
                    "--set {set}: {} (recipe {}; every --set is checked, also when a flag \
                     overrides its key)",
                    e.message(),
                    path.display()
                )
            })?;
            one.resolve_passes();
            one.validate().with_context(|| {
                format!(
                    "--set {set} (recipe {}; every --set is checked, also when a flag overrides \
                     its key)",
                    path.display()
                )
            })?;
        }
        for w in recipe.warnings() {
            log::warn!("recipe {}: {w}", path.display());
        }
        Ok(recipe)
    }

    /// Value checks that name the offending field.
    pub fn validate(&self) -> Result<()> {
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
        if t.objective.is_adversarial() && t.attack.is_none() {
            anyhow::bail!("train.attack is required for objective {:?}", t.objective);
        }
        // Also when the objective does not attack: its eps is the default validation,
        // overfitting-check and SWA budget.
        if let Some(a) = &t.attack {
            a.validate("train.attack", self.allow_large_eps)
                .map_err(anyhow::Error::msg)?;
        }
        for (field, v) in [
            ("train.trades_beta", t.trades_beta),
            ("train.mart_lambda", t.mart_lambda),
        ] {
            anyhow::ensure!(v >= 0.0 && v.is_finite(), "{field} must be >= 0, got {v}");
        }
        if t.objective == Objective::Trades {
            let a = t.attack.as_ref().expect("checked above");
            anyhow::ensure!(
                a.loss == crate::attack::pgd::PgdLoss::Kl,
                "train.attack.loss must be \"kl\" for objective trades (TRADES maximises the KL to the clean prediction)"
            );
        }
        if t.objective == Objective::FgsmRs {
            let a = t.attack.as_ref().expect("checked above");
            anyhow::ensure!(
                a.norm == crate::attack::ThreatNorm::Linf,
                "train.attack.norm must be \"linf\" for objective fgsm-rs"
            );
        }
        if t.objective == Objective::Arat {
            let a = t.arat.as_ref().ok_or_else(|| {
                anyhow::anyhow!("[train.arat] (lambda, hooks) is required for objective arat")
            })?;
            anyhow::ensure!(
                !a.hooks.is_empty(),
                "train.arat.hooks must name at least one stage"
            );
            anyhow::ensure!(
                a.lambda >= 0.0 && a.lambda.is_finite(),
                "train.arat.lambda must be >= 0, got {}",
                a.lambda
            );
            if a.predictor || a.symmetric {
                anyhow::ensure!(
                    self.model.predictors == a.hooks,
                    "train.arat.hooks = {:?} needs model.predictors = {:?} (one predictor per hook), got {:?}",
                    a.hooks,
                    a.hooks,
                    self.model.predictors
                );
            }
        }
        match (&t.mixacm, t.objective) {
            (None, Objective::Mixacm) => anyhow::bail!(
                "[train.mixacm] (teacher, ...) is required for objective mixacm"
            ),
            (Some(_), o) if o != Objective::Mixacm => anyhow::bail!(
                "[train.mixacm] is only used by objective mixacm, not {o:?}: remove it or set train.objective = \"mixacm\""
            ),
            (Some(m), _) => {
                m.validate()?;
                anyhow::ensure!(
                    t.awp.is_none() && t.arat.is_none(),
                    "train.awp and train.arat do not combine with objective mixacm"
                );
            }
            _ => {}
        }
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
                w.bn_source == crate::eval::controls::StatsSource::Clean || t.attack.is_some(),
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
                t.attack.is_some(),
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
        let h = &t.hybrid;
        anyhow::ensure!(
            (0.0..=1.0).contains(&h.clean_weight),
            "train.hybrid.clean_weight must be in [0,1], got {}",
            h.clean_weight
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&h.clean_fraction),
            "train.hybrid.clean_fraction must be in [0,1), got {}",
            h.clean_fraction
        );
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
        let (t, v) = (&self.train, &self.validation);
        let mut out = vec![
            ("train.route", t.route),
            ("train.hybrid.clean_route", t.hybrid.clean_route),
            ("train.hybrid.adv_route", t.hybrid.adv_route),
        ];
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

    /// The validation attack: explicit, or PGD-10 with step eps/4 at the training eps.
    pub fn validation_attack(&self) -> Option<PgdConfig> {
        self.validation.attack.clone().or_else(|| {
            self.train
                .attack
                .as_ref()
                .map(|a| PgdConfig::probe(a.norm, a.eps, 10))
        })
    }

    /// The route validated each epoch (see [`ValidationSpec::route`]).
    pub fn validation_route(&self) -> Route {
        let t = &self.train;
        self.validation.route.unwrap_or(match t.objective {
            Objective::Standard | Objective::PgdAt | Objective::Mixacm => t.route,
            Objective::Hybrid => t.hybrid.adv_route,
            Objective::Advprop => t.hybrid.clean_route,
            Objective::Trades | Objective::Mart | Objective::Arat => t.hybrid.adv_route,
            Objective::FgsmRs => t.route,
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("recipe serialises")
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
