//! ARAT (Waseda et al. 2025; `train.objective = "arat"`): split-BN adversarial training with an
//! asymmetric invariance term,
//!
//! `L = w_a * CE(f(x'; adv_route), y) + w_c * CE(f(x; clean_route), y)
//!      + (lambda / |S|) * sum_{l in S} (1 - cos(h_l(z'_l), stopgrad(z_l)))`
//!
//! with `z = GAP(ReLU(feature))` at the `[train.arat] hooks` S (stage indices or norm-layer
//! names), predictor heads `h_l` (`model.predictors`: Linear(C, C/4) -> BN1d -> ReLU ->
//! Linear(C/4, C)), `w_a` = the previous epoch's clean training accuracy (0.5 in epoch 1) and
//! `w_c = 1 - w_a` with `auto_balance`, else `w_c = [train.hybrid] clean_weight`; ablation
//! switches `stop_gradient`, `predictor`, `symmetric`. Routes and passes from `[train.hybrid]`.

use super::hybrid::{forward_pair_hooked, HybridSpec, Passes};
use super::trades::generate_adv;
use super::{adversarial, hits, SetupCx, StepCx, StepOutput, TrainObjective};
use crate::attack::{cross_entropy, PgdConfig};
use crate::nn::predictor::Predictor;
use crate::nn::{Hook, Mode, Route};
use crate::train::settings::Settings;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

/// ARAT settings and its ablation switches (`[train.arat]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AratSpec {
    /// Weight of the invariance term (30 for ResNet-18 in the paper, 100 for WRN-34-10).
    #[serde(default = "thirty")]
    pub lambda: f64,
    /// Features whose `z = GAP(ReLU(feature))` enter the invariance term: stage indices (`2`)
    /// or norm-layer names (`"layer4.0.bn1"`, the paper's BN outputs); with `predictor = true`
    /// they must equal `model.predictors`.
    pub hooks: Vec<Hook>,
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
fn yes() -> bool {
    true
}

/// `train.objective = "arat"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arat {
    /// The training attack, through `hybrid.adv_route`.
    pub attack: PgdConfig,
    /// Routes, passes, and `clean_weight` (without auto-balance).
    #[serde(default)]
    pub hybrid: HybridSpec,
    pub arat: AratSpec,
}

/// `1 - cos(a, b)` per row, averaged over the batch.
pub fn negative_cosine(a: &Tensor, b: &Tensor) -> Tensor {
    let cos = Tensor::cosine_similarity(a, b, 1, 1e-8);
    (cos.neg() + 1.0).mean(Kind::Float)
}

/// `z = GAP(ReLU(feature))` of a hooked feature [N, C, H, W] (or [N, C]).
pub fn pooled_feature(f: &Tensor) -> Tensor {
    let r = f.relu();
    if r.dim() == 4 {
        r.mean_dim(&[-1i64, -2][..], false, Kind::Float)
    } else {
        r
    }
}

/// The predictor of each hook of `a` among `predictors` (None per hook when neither
/// `predictor` nor `symmetric` is on); an error names a hook without one.
pub fn hook_predictors<'p>(
    a: &AratSpec,
    predictors: &'p [Predictor],
) -> Result<Vec<Option<&'p Predictor>>> {
    a.hooks
        .iter()
        .map(|hook| {
            if !(a.predictor || a.symmetric) {
                return Ok(None);
            }
            predictors
                .iter()
                .find(|p| p.hook == *hook)
                .map(Some)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "train.arat.hooks: no predictor for hook {hook:?} (model.predictors must equal the hooks)"
                    )
                })
        })
        .collect()
}

/// ARAT's invariance sum `sum_l D_l` (before the `lambda / |S|` factor) from the hooked
/// adversarial features `ha` and clean features `hc`, with the switches of `a` and the
/// per-hook predictors `pred` ([`hook_predictors`]):
/// `D_l = 1 - cos(h_l(z'_l), sg(z_l))`; without predictor `h_l` is the identity, without
/// stop-gradient `sg` is; symmetric: `(D(h(z'), sg z) + D(h(z), sg z')) / 2`.
pub fn invariance_term(
    a: &AratSpec,
    pred: &[Option<&Predictor>],
    ha: &[Tensor],
    hc: &[Tensor],
    mode: Mode,
) -> Tensor {
    let mut inv = Tensor::zeros([], (Kind::Float, ha[0].device()));
    for ((p, fa), fc) in pred.iter().zip(ha).zip(hc) {
        let (za, zc) = (pooled_feature(fa), pooled_feature(fc));
        let pred = |z: &Tensor| -> Tensor {
            match p {
                Some(p) => p.forward(z, mode),
                None => z.shallow_clone(),
            }
        };
        let sg = |z: &Tensor| {
            if a.stop_gradient {
                z.detach()
            } else {
                z.shallow_clone()
            }
        };
        let term = if a.symmetric {
            (negative_cosine(&pred(&za), &sg(&zc)) + negative_cosine(&pred(&zc), &sg(&za))) * 0.5
        } else {
            negative_cosine(&pred(&za), &sg(&zc))
        };
        inv = inv + term;
    }
    inv
}

/// ARAT's loss (see the module) with the ablation switches of `train.arat`, forwards in `mode`.
pub fn arat_loss(
    o: &Arat,
    cx: &StepCx,
    x: &Tensor,
    y: &Tensor,
    x_adv: &Tensor,
    mode: Mode,
) -> Result<StepOutput> {
    let (h, a) = (&o.hybrid, &o.arat);
    let n = y.size()[0];
    let pred = hook_predictors(a, cx.predictors)?;
    let (fa, fc, ha, hc) = forward_pair_hooked(cx.model, h, x_adv, x, mode, &a.hooks);
    let adv_weight = cx.prev_clean_acc.unwrap_or(0.5);
    let (wa, wc) = if a.auto_balance {
        (adv_weight, 1.0 - adv_weight)
    } else {
        (1.0 - h.clean_weight, h.clean_weight)
    };
    let ce = |l: &Tensor| cross_entropy(l, y, Reduction::Mean);
    let mut loss = ce(&fa.logits) * wa + ce(&fc.logits) * wc;
    let inv = invariance_term(a, &pred, &ha, &hc, mode);
    loss = loss + inv * (a.lambda / a.hooks.len() as f64);
    Ok(StepOutput {
        loss,
        clean: Some((hits(&fc.logits, y), n)),
        adv: Some((hits(&fa.logits, y), n)),
    })
}

impl TrainObjective for Arat {
    const NAME: &'static str = "arat";
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
    fn validate(&self, settings: &Settings) -> Result<()> {
        let a = &self.arat;
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
                settings.model.predictors == a.hooks,
                "train.arat.hooks = {:?} needs model.predictors = {:?} (one predictor per hook), got {:?}",
                a.hooks,
                a.hooks,
                settings.model.predictors
            );
        }
        self.hybrid.validate()
    }
    /// The hooks must exist in the built model (their predictors are part of the network,
    /// `model.predictors`, saved with it).
    fn setup(&self, cx: &SetupCx) -> Result<()> {
        cx.net.check_hooks(&self.arat.hooks, "train.arat.hooks")?;
        hook_predictors(&self.arat, &cx.net.predictors).map(drop)
    }
    fn generate(&self, cx: &StepCx, x: &Tensor, y: &Tensor) -> Option<Tensor> {
        Some(generate_adv(&self.hybrid, &self.attack, cx, x, y))
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
        arat_loss(self, cx, x, y, xa, mode)
    }
}
