//! What every objective's step shares: [`StepOutput`] (a batch's loss and what it saw) and the
//! clean/adversarial forward pair of the objectives with `[train.hybrid]` routes and passes.
//! Each objective's own loss is in its file under [`crate::train::objectives`]; the loss pieces
//! other modules use are re-exported here.

use super::objectives::HybridSpec;
use super::objectives::Passes;
use crate::attack::correct;
use crate::nn::hook::hooked;
use crate::nn::models::Forward;
use crate::nn::{Ctx, Hook, Mode, Model, Route, Segment, ADV, CLEAN};
use tch::{Kind, Tensor};

pub use super::objectives::arat::{invariance_term, negative_cosine, pooled_feature};
pub use super::objectives::fgsm_rs::fgsm_rs_example;
pub use super::objectives::hybrid::{adv_rows, clean_rows};
pub use super::objectives::mart::mart_loss;
pub use super::objectives::trades::kl_rows;

/// The loss of one batch and what it saw.
pub struct StepOutput {
    pub loss: Tensor,
    /// (correct, rows) on clean inputs, when measured.
    pub clean: Option<(Tensor, i64)>,
    /// (correct, rows) on adversarial inputs, when any.
    pub adv: Option<(Tensor, i64)>,
}

/// Correct predictions of `logits` against `y`, summed (no gradient).
pub fn hits(logits: &Tensor, y: &Tensor) -> Tensor {
    tch::no_grad(|| correct(logits, y).sum(Kind::Float))
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
