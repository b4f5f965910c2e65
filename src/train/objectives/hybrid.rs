//! Hybrid-AT (`train.objective = "hybrid"`): clean and adversarial rows in one step,
//!
//! `L = (1-a) * CE(f(x'; adv_route), y) + a * CE(f(x; clean_route), y)`
//!
//! with a = `[train.hybrid] clean_weight` (Goodfellow et al. 2015, "Explaining and Harnessing
//! Adversarial Examples": a = 0.5), the first `adv_rows` images of the batch attacked and the
//! last `clean_rows` kept clean: a share `clean_fraction` r of them (Xie & Yuille 2020,
//! "Intriguing Properties of Adversarial Training at Scale"), or every image both clean and
//! adversarially with `paired` (2B rows, Zhang et al.). A term with no rows is dropped (the other
//! then has weight 1). `passes` chooses one forward over `[x'; x]` split by sizes (joint) or one
//! forward per domain (separate); routes pick the statistics and affine sets (Dual BN, Dual-AP,
//! Cross-BN, ...). Also the batch composition of AdvProp (`advprop.rs`) and the routes and
//! passes of TRADES, MART and ARAT, with their clean/adversarial forward pair
//! ([`forward_pair_hooked`]).

use super::{adversarial, hits, SetupCx, StepCx, StepOutput, TrainObjective};
use crate::attack::{cross_entropy, Attack, Pgd, PgdConfig};
use crate::nn::hook::hooked;
use crate::nn::models::Forward;
use crate::nn::{Ctx, Hook, Mode, Model, Route, Segment, ADV, CLEAN};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

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

/// The clean/adversarial composition of a Hybrid-AT or AdvProp batch (`[train.hybrid]`).
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
    /// The resolved passes (joint when not resolved).
    pub fn passes(&self) -> Passes {
        self.passes.unwrap_or_default()
    }

    /// Fill in the objective's default passes when the recipe leaves them out.
    pub fn default_passes(&mut self, p: Passes) {
        self.passes.get_or_insert(p);
    }

    /// Value checks (every objective with a `[train.hybrid]`).
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.clean_weight),
            "train.hybrid.clean_weight must be in [0,1], got {}",
            self.clean_weight
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.clean_fraction),
            "train.hybrid.clean_fraction must be in [0,1), got {}",
            self.clean_fraction
        );
        Ok(())
    }

    /// Its routes, with their fields.
    pub fn routes(&self) -> Vec<(&'static str, Route)> {
        vec![
            ("train.hybrid.clean_route", self.clean_route),
            ("train.hybrid.adv_route", self.adv_route),
        ]
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

fn half() -> f64 {
    0.5
}
fn route_clean() -> Route {
    Route::domain(CLEAN)
}
fn route_adv() -> Route {
    Route::domain(ADV)
}
fn yes() -> bool {
    true
}

/// `train.objective = "hybrid"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hybrid {
    /// The training attack, through `hybrid.adv_route`.
    pub attack: PgdConfig,
    /// Batch composition, routes and passes.
    #[serde(default)]
    pub hybrid: HybridSpec,
    /// Without clean rows (r = 0): measure clean training accuracy with an extra no-grad
    /// eval-mode forward through `hybrid.clean_route`.
    #[serde(default = "yes")]
    pub track_clean_accuracy: bool,
}

/// Rows of `n` images kept clean for a hybrid batch (round(r * n); paired: all of them).
pub fn clean_rows(h: &HybridSpec, paired: bool, n: i64) -> i64 {
    if h.paired || paired {
        n
    } else {
        ((h.clean_fraction * n as f64).round() as i64).min(n)
    }
}

/// Rows of `n` images attacked for a hybrid batch.
pub fn adv_rows(h: &HybridSpec, paired: bool, n: i64) -> i64 {
    if h.paired || paired {
        n
    } else {
        n - clean_rows(h, paired, n)
    }
}

/// The logits of [`forward_pair_stages`].
pub fn forward_pair(
    model: &dyn Model,
    h: &HybridSpec,
    xa: &Tensor,
    xc: &Tensor,
    mode: Mode,
) -> (Tensor, Tensor) {
    let (fa, fc) = forward_pair_stages(model, h, xa, xc, mode);
    (fa.logits, fc.logits)
}

/// Logits and stage outputs (in `mode`, normally train) of adversarial rows `xa` (through
/// `h.adv_route`) and clean rows `xc` (through `h.clean_route`): one forward over `[xa; xc]` split
/// by explicit sizes (joint) or one forward each (separate). An empty part gives empty [0, 1]
/// logits and no stages.
pub fn forward_pair_stages(
    model: &dyn Model,
    h: &HybridSpec,
    xa: &Tensor,
    xc: &Tensor,
    mode: Mode,
) -> (Forward, Forward) {
    let (fa, fc, _, _) = forward_pair_hooked(model, h, xa, xc, mode, &[]);
    (fa, fc)
}

/// [`forward_pair_stages`] plus, per hook, the adversarial rows' and the clean rows' features.
pub fn forward_pair_hooked(
    model: &dyn Model,
    h: &HybridSpec,
    xa: &Tensor,
    xc: &Tensor,
    mode: Mode,
    hooks: &[Hook],
) -> (Forward, Forward, Vec<Tensor>, Vec<Tensor>) {
    let (na, nc) = (xa.size()[0], xc.size()[0]);
    let rows = |f: &Forward, start: i64, len: i64| Forward {
        logits: f.logits.narrow(0, start, len),
        stages: f.stages.iter().map(|s| s.narrow(0, start, len)).collect(),
    };
    let narrow = |v: &[Tensor], start: i64, len: i64| -> Vec<Tensor> {
        v.iter().map(|t| t.narrow(0, start, len)).collect()
    };
    match h.passes() {
        Passes::Joint => {
            let segs = [
                Segment {
                    size: na,
                    source: ADV,
                    route: h.adv_route,
                },
                Segment {
                    size: nc,
                    source: CLEAN,
                    route: h.clean_route,
                },
            ];
            let input = Tensor::cat(&[xa, xc], 0);
            let (f, feats) = hooked(model, hooks, || {
                model.forward_stages(&input, &Ctx::mixed(mode, &segs))
            });
            (
                rows(&f, 0, na),
                rows(&f, na, nc),
                narrow(&feats, 0, na),
                narrow(&feats, na, nc),
            )
        }
        Passes::Separate => {
            let pass = |xs: &Tensor, r: Route| {
                if xs.size()[0] > 0 {
                    hooked(model, hooks, || {
                        model.forward_stages(xs, &Ctx::new(r, mode))
                    })
                } else {
                    let f = Forward {
                        logits: Tensor::zeros([0, 1], (Kind::Float, xs.device())),
                        stages: vec![],
                    };
                    (f, vec![])
                }
            };
            let (fa, ha) = pass(xa, h.adv_route);
            let (fc, hc) = pass(xc, h.clean_route);
            (fa, fc, ha, hc)
        }
    }
}

/// The adversarial inputs of a hybrid (or, `paired`, AdvProp) batch: PGD through
/// `h.adv_route` on the first `adv_rows` images only.
pub(super) fn generate_rows(
    h: &HybridSpec,
    paired: bool,
    attack: &PgdConfig,
    cx: &StepCx,
    x: &Tensor,
    y: &Tensor,
) -> Tensor {
    let n = y.size()[0];
    let na = adv_rows(h, paired, n);
    let (xa, ya) = (x.narrow(0, 0, na), y.narrow(0, 0, na));
    if na > 0 {
        Pgd::new(attack.clone()).perturb(&cx.attacked(h.adv_route), &xa, &ya)
    } else {
        xa.shallow_clone()
    }
}

/// Hybrid-AT: (1-a) CE(x'; adv_route) + a CE(x; clean_route) on the attacked first
/// `adv_rows` and the clean last `clean_rows` images; AdvProp (`advprop`): CE_main + CE_aux.
#[allow(clippy::too_many_arguments)]
pub(super) fn loss_rows(
    h: &HybridSpec,
    advprop: bool,
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
    let (na, nc) = (adv_rows(h, advprop, n), clean_rows(h, advprop, n));
    let ya = y.narrow(0, 0, na);
    let (xc, yc) = (x.narrow(0, n - nc, nc), y.narrow(0, n - nc, nc));
    let (logits_a, logits_c) = forward_pair(model, h, x_adv, &xc, mode);
    let (wa, wc) = if advprop {
        (1.0, 1.0)
    } else if nc == 0 {
        (1.0, 0.0)
    } else if na == 0 {
        (0.0, 1.0)
    } else {
        (1.0 - h.clean_weight, h.clean_weight)
    };
    let mut loss = Tensor::zeros([], (Kind::Float, x.device()));
    if na > 0 && wa > 0.0 {
        loss = loss + ce(&logits_a, &ya) * wa;
    }
    if nc > 0 && wc > 0.0 {
        loss = loss + ce(&logits_c, &yc) * wc;
    }
    let clean = if nc > 0 {
        Some((hits(&logits_c, &yc), nc))
    } else if track_clean_accuracy && mode == Mode::Train {
        let l = tch::no_grad(|| model.forward(x, &Ctx::new(h.clean_route, Mode::Eval)));
        Some((hits(&l, y), n))
    } else {
        None
    };
    StepOutput {
        loss,
        clean,
        adv: (na > 0).then(|| (hits(&logits_a, &ya), na)),
    }
}

impl Hybrid {
    /// (attacked, clean) rows of a batch of `n` images.
    pub fn rows(&self, n: i64) -> (i64, i64) {
        (
            adv_rows(&self.hybrid, false, n),
            clean_rows(&self.hybrid, false, n),
        )
    }
}

impl TrainObjective for Hybrid {
    const NAME: &'static str = "hybrid";
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
        self.hybrid.adv_route
    }
    fn validate(&self, _settings: &crate::train::settings::Settings) -> Result<()> {
        self.hybrid.validate()
    }
    fn setup(&self, _cx: &SetupCx) -> Result<()> {
        Ok(())
    }
    fn generate(&self, cx: &StepCx, x: &Tensor, y: &Tensor) -> Option<Tensor> {
        Some(generate_rows(&self.hybrid, false, &self.attack, cx, x, y))
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
        Ok(loss_rows(
            &self.hybrid,
            false,
            self.track_clean_accuracy,
            cx,
            x,
            y,
            xa,
            mode,
        ))
    }
}
