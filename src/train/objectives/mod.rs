//! Training objectives as data: `train.objective = "..."` selects one variant of [`Objective`],
//! which carries that objective's own settings (the keys next to `objective` in `[train]`), and
//! every objective implements the one trait [`TrainObjective`]: its training attack, its loss for
//! a batch, its validation route, its default passes, what it sets up when a run starts (extra
//! parameters: MixACM's teacher and projections; checks against the built model: ARAT's hooks),
//! and what it saves into every checkpoint set and resumes from it (MixACM's projections).
//! The run loop (`train::run`, run.rs) sees an objective only through that trait (via
//! [`Objective::start`] and [`Active`]); wrappers that apply to any objective (AWP, SWA, the
//! overfitting check) stay recipe-level options of `TrainSpec` (`recipe.rs`, above this
//! module: the recipe holds the objective, and an objective sees the rest of the recipe as
//! [`Settings`]).
//!
//! # Adding an objective
//!
//! 1. Write `src/train/objectives/<name>.rs`: a settings struct (`Serialize`, `Deserialize`,
//!    `#[serde(deny_unknown_fields)]`; its fields are its `[train]` keys, e.g. `attack:
//!    PgdConfig` for one that attacks, so a recipe without it is refused by name) and `impl
//!    TrainObjective` for it (the rest of the recipe it sees as [`Settings`]: this module is
//!    below `recipe.rs`). Open the file with a doc comment that states the loss formula and
//!    cites its source.
//! 2. Add `pub mod <name>;` and one line `Variant(<name>::Struct) = "<name>",` to the
//!    `objectives!` list below. Everything else (the enum, its serde form, dispatch, the run
//!    loop, `--set train.objective=...`) follows from that line.
//!
//! Recipes keep the flat layout: `train.objective = "trades"` with `train.trades_beta`,
//! `[train.attack]` and `[train.hybrid]` beside it. Keys of the earlier layout (where every
//! objective's settings were fields of `[train]`) that an objective does not use are accepted and
//! dropped ([`legacy`]), so every recipe, run `recipe.toml` and checkpoint sidecar written before
//! still loads to the same settings.

pub mod advprop;
pub mod arat;
pub mod fgsm_rs;
pub mod hybrid;
mod keys;
pub mod legacy;
pub mod mart;
pub mod mixacm;
pub mod pgd_at;
pub mod standard;
pub mod trades;

pub use crate::train::step::StepOutput;
pub use hybrid::{HybridSpec, Passes};

use crate::attack::{Classifier, PgdConfig};
use crate::checkpoint::Sidecar;
use crate::data::Splits;
use crate::nn::predictor::Predictor;
use crate::nn::{Ctx, Mode, Model, Network, Route, ADV, CLEAN};
use crate::train::metrics::EpochMetrics;
use crate::train::settings::Settings;
use anyhow::Result;
use serde::{Deserialize, Deserializer, Serialize};
use std::path::Path;
use tch::{Device, Tensor};

/// What one batch's attack and loss see besides the batch and the objective's own settings.
#[derive(Clone)]
pub struct StepCx<'a> {
    /// The resolved recipe's settings (`train.attack_bn_mode`, `compute`).
    pub settings: Settings<'a>,
    pub model: &'a dyn Model,
    /// The network's ARAT predictor heads (`model.predictors`).
    pub predictors: &'a [Predictor],
    /// The previous epoch's clean training accuracy (None in epoch 1): ARAT's auto-balance.
    pub prev_clean_acc: Option<f64>,
}

impl<'a> StepCx<'a> {
    /// A context without predictors or a previous epoch, for the settings of a recipe
    /// (`&Recipe` converts).
    pub fn new(settings: impl Into<Settings<'a>>, model: &'a dyn Model) -> StepCx<'a> {
        StepCx {
            settings: settings.into(),
            model,
            predictors: &[],
            prev_clean_acc: None,
        }
    }

    /// `self` with the predictor heads `p`.
    pub fn with_predictors(self, p: &'a [Predictor]) -> StepCx<'a> {
        StepCx {
            predictors: p,
            ..self
        }
    }

    /// The model as the training attack sees it: through `route` in `train.attack_bn_mode`, with
    /// the recipe's compute settings.
    pub fn attacked(&self, route: Route) -> Classifier<'a> {
        Classifier::new(self.model, Ctx::new(route, self.settings.attack_bn_mode))
            .with_compute(self.settings.compute)
    }
}

/// What an objective's setup sees when a run starts (after the model is built or restored).
pub struct SetupCx<'a> {
    /// The resolved recipe's settings.
    pub settings: Settings<'a>,
    pub net: &'a Network,
    pub data: &'a Splits,
    pub device: Device,
    /// The run directory.
    pub out: &'a Path,
    /// Whether this process writes the run directory (rank 0 of data-parallel workers; the
    /// others read what it wrote: two writers never share a file).
    pub writer: bool,
}

/// One training objective: its settings (`self`) and what the run loop asks of it.
pub trait TrainObjective {
    /// The value of `train.objective`.
    const NAME: &'static str;
    /// What a run keeps for the objective beyond the model (`()` for most; MixACM: its teacher
    /// and the student's projections with their optimiser).
    type State;

    /// `[train.attack]`: the training attack, or, for an objective that does not attack, the
    /// optional budget of the default validation attack, the overfitting check and SWA.
    fn attack(&self) -> Option<&PgdConfig>;

    /// The attack training generates examples with (None: no attack in training).
    fn training_attack(&self) -> Option<&PgdConfig> {
        self.attack()
    }

    /// `[train.hybrid]` (routes, passes, clean share) of the objectives that have one.
    fn hybrid(&self) -> Option<&HybridSpec> {
        None
    }

    /// Defaults that depend on the objective, filled in whenever a recipe is read (and then
    /// written into the run's resolved recipe): the default `[train.hybrid] passes`.
    fn resolve(&mut self) {}

    /// The routes the objective's settings name, with their fields (checked against the
    /// model's statistics and affine sets); by default those of its [`HybridSpec`].
    fn routes(&self) -> Vec<(&'static str, Route)> {
        self.hybrid().map_or_else(Vec::new, HybridSpec::routes)
    }

    /// The route validated each epoch (and whose PGD accuracy picks `checkpoints/best`) when
    /// `validation.route` is not set.
    fn validation_route(&self) -> Route;

    /// Value checks the types do not express, naming the field (also against the rest of the
    /// recipe, `settings`).
    fn validate(&self, _settings: &Settings) -> Result<()> {
        Ok(())
    }

    /// The validation score `checkpoints/best` maximises: PGD accuracy (clean accuracy when no
    /// PGD validation runs).
    fn score(&self, m: &EpochMetrics) -> Option<f64> {
        m.val_pgd_acc.or(m.val_clean_acc)
    }

    /// Set up a run: build the objective's extra parameters, check it against the built model.
    /// Called once per start (also on resume, before [`TrainObjective::resume`]).
    fn setup(&self, cx: &SetupCx) -> Result<Self::State>;

    /// The adversarial inputs of one batch (None for objectives that do not attack).
    fn generate(&self, cx: &StepCx, x: &Tensor, y: &Tensor) -> Option<Tensor>;

    /// The loss of batch `(x, y)` with the adversarial inputs of [`TrainObjective::generate`],
    /// forwards in `mode` (`Train`; AWP's proxy pass uses `TrainFrozen`, batch statistics
    /// without moving the running ones, as the reference's separate proxy model).
    fn loss(
        &self,
        cx: &StepCx,
        state: &Self::State,
        x: &Tensor,
        y: &Tensor,
        x_adv: Option<&Tensor>,
        mode: Mode,
    ) -> Result<StepOutput>;

    /// Before each backward pass: clear the gradients of the objective's own parameters.
    fn zero_grad(&self, _state: &mut Self::State) {}

    /// The objective's own trainable parameters (stepped by [`TrainObjective::step`]): what
    /// data-parallel training all-reduces beside the model's (MixACM's projections).
    fn parameters(&self, _state: &Self::State) -> Vec<Tensor> {
        vec![]
    }

    /// After each backward pass, with the model's step at learning rate `lr`.
    fn step(&self, _state: &mut Self::State, _lr: f64) {}

    /// Write the objective's files into the checkpoint set being staged in `dir`, each with
    /// the sidecar `sidecar(format)` (a file of the run after this epoch, in that format).
    fn save(
        &self,
        _state: &Self::State,
        _dir: &Path,
        _sidecar: &dyn Fn(&str) -> Sidecar,
    ) -> Result<()> {
        Ok(())
    }

    /// Restore what [`TrainObjective::save`] wrote after `epoch` from the checkpoint set `dir`.
    fn resume(&self, _state: &mut Self::State, _dir: &Path, _epoch: usize) -> Result<()> {
        Ok(())
    }
}

/// An objective set up for a run ([`Objective::start`]): its settings with its run state, as one
/// object the run loop drives.
pub trait Active {
    fn generate(&self, cx: &StepCx, x: &Tensor, y: &Tensor) -> Option<Tensor>;
    fn loss(
        &self,
        cx: &StepCx,
        x: &Tensor,
        y: &Tensor,
        x_adv: Option<&Tensor>,
        mode: Mode,
    ) -> Result<StepOutput>;
    fn zero_grad(&mut self);
    fn parameters(&self) -> Vec<Tensor>;
    fn step(&mut self, lr: f64);
    fn save(&self, dir: &Path, sidecar: &dyn Fn(&str) -> Sidecar) -> Result<()>;
    fn resume(&mut self, dir: &Path, epoch: usize) -> Result<()>;
}

struct Running<'a, O: TrainObjective> {
    spec: &'a O,
    state: O::State,
}

impl<O: TrainObjective> Active for Running<'_, O> {
    fn generate(&self, cx: &StepCx, x: &Tensor, y: &Tensor) -> Option<Tensor> {
        self.spec.generate(cx, x, y)
    }
    fn loss(
        &self,
        cx: &StepCx,
        x: &Tensor,
        y: &Tensor,
        x_adv: Option<&Tensor>,
        mode: Mode,
    ) -> Result<StepOutput> {
        self.spec.loss(cx, &self.state, x, y, x_adv, mode)
    }
    fn zero_grad(&mut self) {
        self.spec.zero_grad(&mut self.state)
    }
    fn parameters(&self) -> Vec<Tensor> {
        self.spec.parameters(&self.state)
    }
    fn step(&mut self, lr: f64) {
        self.spec.step(&mut self.state, lr)
    }
    fn save(&self, dir: &Path, sidecar: &dyn Fn(&str) -> Sidecar) -> Result<()> {
        self.spec.save(&self.state, dir, sidecar)
    }
    fn resume(&mut self, dir: &Path, epoch: usize) -> Result<()> {
        self.spec.resume(&mut self.state, dir, epoch)
    }
}

/// `Objective`, its serde form (internally tagged by `objective`, flattened into `[train]`) and
/// the dispatch of [`TrainObjective`] over its variants, from one list.
macro_rules! objectives {
    ($($(#[$doc:meta])* $variant:ident($ty:ty) = $name:literal,)*) => {
        /// `train.objective` with that objective's settings.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(tag = "objective")]
        pub enum Objective {
            $($(#[$doc])* #[serde(rename = $name)] $variant($ty),)*
        }

        /// The deserialising twin of [`Objective`]: each variant's keys are read by
        /// [`keys::Keyed`] (errors name `train.<key>`, keys of the earlier layout are dropped).
        #[derive(Deserialize)]
        #[serde(tag = "objective")]
        enum Tagged {
            $(#[serde(rename = $name)] $variant(keys::Keyed<$ty>),)*
        }

        impl<'de> Deserialize<'de> for Objective {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok(match Tagged::deserialize(d)? {
                    $(Tagged::$variant(k) => Objective::$variant(k.0),)*
                })
            }
        }

        /// Every value of `train.objective`.
        pub const NAMES: &[&str] = &[$($name),*];

        impl Objective {
            /// The value of `train.objective`.
            pub fn name(&self) -> &'static str {
                match self { $(Objective::$variant(_) => <$ty as TrainObjective>::NAME,)* }
            }
            /// See [`TrainObjective::attack`].
            pub fn attack(&self) -> Option<&PgdConfig> {
                match self { $(Objective::$variant(o) => o.attack(),)* }
            }
            /// See [`TrainObjective::training_attack`].
            pub fn training_attack(&self) -> Option<&PgdConfig> {
                match self { $(Objective::$variant(o) => o.training_attack(),)* }
            }
            /// See [`TrainObjective::hybrid`].
            pub fn hybrid(&self) -> Option<&HybridSpec> {
                match self { $(Objective::$variant(o) => o.hybrid(),)* }
            }
            /// See [`TrainObjective::resolve`].
            pub fn resolve(&mut self) {
                match self { $(Objective::$variant(o) => o.resolve(),)* }
            }
            /// See [`TrainObjective::routes`].
            pub fn routes(&self) -> Vec<(&'static str, Route)> {
                match self { $(Objective::$variant(o) => o.routes(),)* }
            }
            /// See [`TrainObjective::validation_route`].
            pub fn validation_route(&self) -> Route {
                match self { $(Objective::$variant(o) => o.validation_route(),)* }
            }
            /// See [`TrainObjective::validate`].
            pub fn validate(&self, settings: &Settings) -> Result<()> {
                match self { $(Objective::$variant(o) => o.validate(settings),)* }
            }
            /// See [`TrainObjective::score`].
            pub fn score(&self, m: &EpochMetrics) -> Option<f64> {
                match self { $(Objective::$variant(o) => o.score(m),)* }
            }
            /// See [`TrainObjective::generate`].
            pub fn generate(&self, cx: &StepCx, x: &Tensor, y: &Tensor) -> Option<Tensor> {
                match self { $(Objective::$variant(o) => o.generate(cx, x, y),)* }
            }
            /// Set the objective up for a run ([`TrainObjective::setup`]).
            pub fn start<'a>(&'a self, cx: &SetupCx) -> Result<Box<dyn Active + 'a>> {
                Ok(match self {
                    $(Objective::$variant(o) => Box::new(Running { spec: o, state: o.setup(cx)? }),)*
                })
            }
            /// The `[train]` keys the objective reads besides `objective`.
            pub fn keys(&self) -> &'static [&'static str] {
                match self { $(Objective::$variant(_) => keys::fields_of::<$ty>(),)* }
            }
        }
    };
}

objectives! {
    /// CE on clean inputs.
    Standard(standard::Standard) = "standard",
    /// Madry PGD-AT: CE on PGD examples.
    PgdAt(pgd_at::PgdAt) = "pgd-at",
    /// Hybrid-AT: `(1-a) CE(f(x'; adv_route), y) + a CE(f(x; clean_route), y)`.
    Hybrid(hybrid::Hybrid) = "hybrid",
    /// AdvProp: `CE(f(x; main), y) + CE(f(x'; aux), y)`.
    Advprop(advprop::Advprop) = "advprop",
    /// TRADES: `CE(f(x), y) + beta (1/B) sum_i KL(p(x_i) || p(x'_i))`.
    Trades(trades::Trades) = "trades",
    /// MART: `BCE(p(x'), y) + lambda (1/B) sum_i KL(p(x_i) || p(x'_i)) (1 - p_y(x_i))`.
    Mart(mart::Mart) = "mart",
    /// FGSM with a uniform random start ("fast is better than free").
    FgsmRs(fgsm_rs::FgsmRs) = "fgsm-rs",
    /// ARAT: split-BN CE + asymmetric invariance with stop-gradient and predictor.
    Arat(arat::Arat) = "arat",
    /// MixACM: robustness transfer from a frozen teacher without attacks.
    Mixacm(mixacm::MixAcm) = "mixacm",
}

impl Objective {
    /// Whether training generates adversarial examples.
    pub fn is_adversarial(&self) -> bool {
        self.training_attack().is_some()
    }

    /// The routes of the clean and the adversarial domain (`[train.hybrid]`, else clean and
    /// adv): the statistics sets SWA re-estimates on clean and on adversarial images.
    pub fn domain_routes(&self) -> (Route, Route) {
        self.hybrid()
            .map_or((Route::domain(CLEAN), Route::domain(ADV)), |h| {
                (h.clean_route, h.adv_route)
            })
    }
}

/// Clean-input accuracy hits of `logits` against `y` (no gradient).
pub(crate) use crate::train::step::hits;

/// The `[train]` keys of every objective (besides `objective` and the objective's own): the
/// fields of `TrainSpec` beside its objective (`TrainSpec::COMMON_KEYS`).
pub const COMMON_KEYS: &[&str] = &[
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "nesterov",
    "schedule",
    "milestones",
    "lr_gamma",
    "warmup_epochs",
    "attack_bn_mode",
    "awp",
    "overfit_check",
    "swa",
];

/// `x_adv` or an error: the adversarial inputs an attacking objective's loss needs.
pub(crate) fn adversarial<'t>(x_adv: Option<&'t Tensor>, name: &str) -> Result<&'t Tensor> {
    x_adv.ok_or_else(|| {
        anyhow::anyhow!(
            "objective {name}: the loss needs the batch's adversarial inputs (generate)"
        )
    })
}
