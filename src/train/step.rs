//! One optimisation step's loss for each objective: which rows are attacked, which forward
//! (route, mode, batch split) they take, and how the loss terms are weighted.

use super::recipe::{HybridSpec, Objective, Passes, Recipe};
use crate::attack::{correct, cross_entropy, Attack, Classifier, Pgd};
use crate::nn::{Ctx, Mode, Model, Route, Segment, ADV, CLEAN};
use tch::{Kind, Reduction, Tensor};

/// The loss of one batch and what it saw.
pub struct StepOutput {
    pub loss: Tensor,
    /// (correct, rows) on clean inputs, when measured.
    pub clean: Option<(Tensor, i64)>,
    /// (correct, rows) on adversarial inputs, when any.
    pub adv: Option<(Tensor, i64)>,
}

/// Rows of `n` images kept clean for a hybrid batch (round(r * n), paired: all of them).
pub fn clean_rows(h: &HybridSpec, objective: Objective, n: i64) -> i64 {
    if h.paired || objective == Objective::Advprop {
        n
    } else {
        ((h.clean_fraction * n as f64).round() as i64).min(n)
    }
}

/// Rows of `n` images attacked for a hybrid batch.
pub fn adv_rows(h: &HybridSpec, objective: Objective, n: i64) -> i64 {
    if h.paired || objective == Objective::Advprop {
        n
    } else {
        n - clean_rows(h, objective, n)
    }
}

fn hits(logits: &Tensor, y: &Tensor) -> Tensor {
    tch::no_grad(|| correct(logits, y).sum(Kind::Float))
}

/// Loss of one training batch `(x, y)` under `recipe.train.objective`.
pub fn loss(recipe: &Recipe, model: &dyn Model, attack: Option<&Pgd>, x: &Tensor, y: &Tensor) -> StepOutput {
    let t = &recipe.train;
    let n = y.size()[0];
    match t.objective {
        Objective::Standard => {
            let logits = model.forward(x, &Ctx::new(t.route, Mode::Train));
            StepOutput {
                loss: cross_entropy(&logits, y, Reduction::Mean),
                clean: Some((hits(&logits, y), n)),
                adv: None,
            }
        }
        Objective::PgdAt => {
            let pgd = attack.expect("validated: pgd-at has an attack");
            let clean = t.track_clean_accuracy.then(|| {
                let logits =
                    tch::no_grad(|| model.forward(x, &Ctx::new(t.route, Mode::Eval)));
                (hits(&logits, y), n)
            });
            let x_adv = pgd.perturb(&Classifier::new(model, Ctx::new(t.route, t.attack_bn_mode)), x, y);
            let logits = model.forward(&x_adv, &Ctx::new(t.route, Mode::Train));
            StepOutput {
                loss: cross_entropy(&logits, y, Reduction::Mean),
                clean,
                adv: Some((hits(&logits, y), n)),
            }
        }
        Objective::Hybrid | Objective::Advprop => {
            hybrid(recipe, model, attack.expect("validated: hybrid has an attack"), x, y)
        }
    }
}

/// Hybrid-AT and AdvProp: attack the first `adv_rows` images through `adv_route`, keep the last
/// `clean_rows` clean, forward `[x'; x]` jointly (explicit segments) or in two passes.
fn hybrid(recipe: &Recipe, model: &dyn Model, pgd: &Pgd, x: &Tensor, y: &Tensor) -> StepOutput {
    let t = &recipe.train;
    let h = &t.hybrid;
    let n = y.size()[0];
    let (na, nc) = (adv_rows(h, t.objective, n), clean_rows(h, t.objective, n));
    let (xa, ya) = (x.narrow(0, 0, na), y.narrow(0, 0, na));
    let (xc, yc) = (x.narrow(0, n - nc, nc), y.narrow(0, n - nc, nc));
    let x_adv = if na > 0 {
        pgd.perturb(&Classifier::new(model, Ctx::new(h.adv_route, t.attack_bn_mode)), &xa, &ya)
    } else {
        xa.shallow_clone()
    };
    let (logits_a, logits_c) = match h.passes {
        Passes::Joint => {
            let segs = [
                Segment { size: na, source: ADV, route: h.adv_route },
                Segment { size: nc, source: CLEAN, route: h.clean_route },
            ];
            let input = Tensor::cat(&[&x_adv, &xc], 0);
            let logits = model.forward(&input, &Ctx::mixed(Mode::Train, &segs));
            (logits.narrow(0, 0, na), logits.narrow(0, na, nc))
        }
        Passes::Separate => {
            let pass = |xs: &Tensor, r: Route, rows: i64| {
                if rows > 0 {
                    Some(model.forward(xs, &Ctx::new(r, Mode::Train)))
                } else {
                    None
                }
            };
            let la = pass(&x_adv, h.adv_route, na);
            let lc = pass(&xc, h.clean_route, nc);
            let empty = || Tensor::zeros([0, 1], (Kind::Float, x.device()));
            (la.unwrap_or_else(empty), lc.unwrap_or_else(empty))
        }
    };
    let ce = |l: &Tensor, yy: &Tensor| cross_entropy(l, yy, Reduction::Mean);
    let (wa, wc) = match t.objective {
        Objective::Advprop => (1.0, 1.0),
        _ if nc == 0 => (1.0, 0.0),
        _ if na == 0 => (0.0, 1.0),
        _ => (1.0 - h.clean_weight, h.clean_weight),
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
    } else if t.track_clean_accuracy {
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
