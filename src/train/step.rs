//! One optimisation step's loss for each objective: which rows are attacked, which forward
//! (route, mode, batch split) they take, and how the loss terms are weighted.

use super::mixacm::{mixacm_loss, MixAcmSpec, Projections};
use super::recipe::{AratSpec, HybridSpec, Objective, Passes, Recipe};
use crate::attack::{correct, cross_entropy, Attack, Classifier, Pgd};
use crate::nn::hook::hooked;
use crate::nn::models::Forward;
use crate::nn::predictor::Predictor;
use crate::nn::{Ctx, Hook, Mode, Model, Route, Segment, ADV, CLEAN};
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

/// The adversarial inputs of one batch for `recipe.train.objective` (None for standard
/// training): PGD through the objective's attack route in `train.attack_bn_mode` (hybrid and
/// AdvProp: the first `adv_rows` images only), FGSM-RS for fgsm-rs.
pub fn generate(
    recipe: &Recipe,
    model: &dyn Model,
    attack: Option<&Pgd>,
    x: &Tensor,
    y: &Tensor,
) -> Option<Tensor> {
    let t = &recipe.train;
    let h = &t.hybrid;
    let n = y.size()[0];
    let pgd = || attack.expect("validated: the objective has a training attack");
    let through = |route: Route| {
        Classifier::new(model, Ctx::new(route, t.attack_bn_mode)).with_compute(&recipe.compute)
    };
    match t.objective {
        Objective::Standard | Objective::Mixacm => None,
        Objective::PgdAt => Some(pgd().perturb(&through(t.route), x, y)),
        Objective::Trades | Objective::Mart | Objective::Arat => {
            Some(pgd().perturb(&through(h.adv_route), x, y))
        }
        Objective::Hybrid | Objective::Advprop => {
            let na = adv_rows(h, t.objective, n);
            let (xa, ya) = (x.narrow(0, 0, na), y.narrow(0, 0, na));
            Some(if na > 0 {
                pgd().perturb(&through(h.adv_route), &xa, &ya)
            } else {
                xa.shallow_clone()
            })
        }
        Objective::FgsmRs => {
            let a = t.attack.as_ref().expect("validated: fgsm-rs has an attack");
            Some(fgsm_rs_example(&through(t.route), x, y, a.eps, a.step_size))
        }
    }
}

/// Loss of one training batch `(x, y)` under `recipe.train.objective`: [`generate`] then
/// [`loss_with`] in train mode.
pub fn loss(
    recipe: &Recipe,
    model: &dyn Model,
    attack: Option<&Pgd>,
    x: &Tensor,
    y: &Tensor,
) -> StepOutput {
    let x_adv = generate(recipe, model, attack, x, y);
    loss_with(recipe, model, x, y, x_adv.as_ref(), Mode::Train)
}

/// What some objectives need besides the model: ARAT's predictor heads and auto-balance weight
/// `w_a` (the previous epoch's clean training accuracy; 0.5 in epoch 1), MixACM's teacher.
#[derive(Clone, Copy)]
pub struct StepState<'a> {
    pub predictors: &'a [Predictor],
    pub adv_weight: f64,
    pub mixacm: Option<MixAcmState<'a>>,
}

impl StepState<'_> {
    /// No predictors, `w_a` = 0.5, no teacher.
    pub fn plain() -> StepState<'static> {
        StepState {
            predictors: &[],
            adv_weight: 0.5,
            mixacm: None,
        }
    }
}

/// MixACM's frozen teacher and the student's projections (see [`crate::train::mixacm`]).
#[derive(Clone, Copy)]
pub struct MixAcmState<'a> {
    pub spec: &'a MixAcmSpec,
    pub teacher: &'a dyn Model,
    pub projections: &'a Projections,
}

/// `1 - cos(a, b)` per row, averaged over the batch.
pub fn negative_cosine(a: &Tensor, b: &Tensor) -> Tensor {
    let cos = Tensor::cosine_similarity(a, b, 1, 1e-8);
    (cos.neg() + 1.0).mean(Kind::Float)
}

/// ARAT's loss (see [`Objective::Arat`]) with the ablation switches of `train.arat`.
pub fn arat_loss(
    recipe: &Recipe,
    model: &dyn Model,
    x: &Tensor,
    y: &Tensor,
    x_adv: &Tensor,
    mode: Mode,
    state: StepState,
) -> StepOutput {
    let t = &recipe.train;
    let h = &t.hybrid;
    let a = t.arat.as_ref().expect("validated: arat has [train.arat]");
    let n = y.size()[0];
    let (fa, fc, ha, hc) = forward_pair_hooked(model, h, x_adv, x, mode, &a.hooks);
    let (wa, wc) = if a.auto_balance {
        (state.adv_weight, 1.0 - state.adv_weight)
    } else {
        (1.0 - h.clean_weight, h.clean_weight)
    };
    let ce = |l: &Tensor| cross_entropy(l, y, Reduction::Mean);
    let mut loss = ce(&fa.logits) * wa + ce(&fc.logits) * wc;
    let inv = invariance_term(a, state.predictors, &ha, &hc, mode);
    loss = loss + inv * (a.lambda / a.hooks.len() as f64);
    StepOutput {
        loss,
        clean: Some((hits(&fc.logits, y), n)),
        adv: Some((hits(&fa.logits, y), n)),
    }
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

/// ARAT's invariance sum `sum_l D_l` (before the `lambda / |S|` factor) from the hooked
/// adversarial features `ha` and clean features `hc`, with the switches of `a`:
/// `D_l = 1 - cos(h_l(z'_l), sg(z_l))`; without predictor `h_l` is the identity, without
/// stop-gradient `sg` is; symmetric: `(D(h(z'), sg z) + D(h(z), sg z')) / 2`.
pub fn invariance_term(
    a: &AratSpec,
    predictors: &[Predictor],
    ha: &[Tensor],
    hc: &[Tensor],
    mode: Mode,
) -> Tensor {
    let mut inv = Tensor::zeros([], (Kind::Float, ha[0].device()));
    for ((hook, fa), fc) in a.hooks.iter().zip(ha).zip(hc) {
        let (za, zc) = (pooled_feature(fa), pooled_feature(fc));
        let pred = |z: &Tensor| -> Tensor {
            if a.predictor || a.symmetric {
                predictors
                    .iter()
                    .find(|p| p.hook == *hook)
                    .expect("validated: one predictor per hook")
                    .forward(z, mode)
            } else {
                z.shallow_clone()
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

/// The objective's loss given the batch and its adversarial inputs, forwards in `mode`
/// (`Train`; AWP's proxy pass uses `TrainFrozen`, batch statistics without moving the running
/// ones, as the reference's separate proxy model).
pub fn loss_with(
    recipe: &Recipe,
    model: &dyn Model,
    x: &Tensor,
    y: &Tensor,
    x_adv: Option<&Tensor>,
    mode: Mode,
) -> StepOutput {
    loss_with_state(recipe, model, x, y, x_adv, mode, StepState::plain())
}

/// [`loss_with`] with ARAT's predictors and auto-balance weight, or MixACM's teacher.
pub fn loss_with_state(
    recipe: &Recipe,
    model: &dyn Model,
    x: &Tensor,
    y: &Tensor,
    x_adv: Option<&Tensor>,
    mode: Mode,
    state: StepState,
) -> StepOutput {
    let t = &recipe.train;
    let h = &t.hybrid;
    let n = y.size()[0];
    let adv = || x_adv.expect("generate() gives adversarial inputs for this objective");
    let ce = |l: &Tensor, yy: &Tensor| cross_entropy(l, yy, Reduction::Mean);
    match t.objective {
        Objective::Standard => {
            let logits = model.forward(x, &Ctx::new(t.route, mode));
            StepOutput {
                loss: ce(&logits, y),
                clean: Some((hits(&logits, y), n)),
                adv: None,
            }
        }
        Objective::PgdAt | Objective::FgsmRs => {
            let clean = (t.track_clean_accuracy && mode == Mode::Train).then(|| {
                let logits = tch::no_grad(|| model.forward(x, &Ctx::new(t.route, Mode::Eval)));
                (hits(&logits, y), n)
            });
            let logits = model.forward(adv(), &Ctx::new(t.route, mode));
            StepOutput {
                loss: ce(&logits, y),
                clean,
                adv: Some((hits(&logits, y), n)),
            }
        }
        // TRADES (Zhang et al. 2019): CE(f(x; clean), y) + beta * (1/B) sum_i KL(p(x_i) ||
        // p(x'_i)), the per-sample KL summed over classes (not averaged over them), gradients
        // through both distributions as the reference. With Dual BN the clean CE goes through
        // BN_clean and the KL compares the branches; joint passes with one statistics set are
        // the mixed-batch variant. MART (Wang et al. 2020): see [`mart_loss`].
        Objective::Arat => arat_loss(recipe, model, x, y, adv(), mode, state),
        // MixACM: no attack; mixup CE + KD + ACM against the frozen teacher.
        Objective::Mixacm => {
            let m = state
                .mixacm
                .expect("the run loop passes MixACM's teacher for objective mixacm");
            let (loss, parts) = mixacm_loss(m.spec, model, m.teacher, m.projections, x, y, mode)
                .expect("MixACM pairs and projections are checked when the run starts");
            // With mixup the logits are of mixed images: accuracy against y is approximate.
            StepOutput {
                loss,
                clean: Some((hits(&parts.logits, y), n)),
                adv: None,
            }
        }
        Objective::Trades | Objective::Mart => {
            let (la, lc) = forward_pair(model, h, adv(), x, mode);
            let loss = if t.objective == Objective::Trades {
                ce(&lc, y) + kl_rows(&lc, &la).mean(Kind::Float) * t.trades_beta
            } else {
                mart_loss(&la, &lc, y, t.mart_lambda)
            };
            StepOutput {
                loss,
                clean: Some((hits(&lc, y), n)),
                adv: Some((hits(&la, y), n)),
            }
        }
        // Hybrid-AT: (1-a) CE(x'; adv_route) + a CE(x; clean_route) on the attacked first
        // `adv_rows` and the clean last `clean_rows` images; AdvProp: CE_main + CE_aux.
        Objective::Hybrid | Objective::Advprop => {
            let (na, nc) = (adv_rows(h, t.objective, n), clean_rows(h, t.objective, n));
            let ya = y.narrow(0, 0, na);
            let (xc, yc) = (x.narrow(0, n - nc, nc), y.narrow(0, n - nc, nc));
            let (logits_a, logits_c) = forward_pair(model, h, adv(), &xc, mode);
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
            } else if t.track_clean_accuracy && mode == Mode::Train {
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

/// Per-sample `KL(softmax(p_logits) || softmax(q_logits))`, summed over classes.
pub fn kl_rows(p_logits: &Tensor, q_logits: &Tensor) -> Tensor {
    let log_p = p_logits.log_softmax(-1, Kind::Float);
    let log_q = q_logits.log_softmax(-1, Kind::Float);
    (log_p.exp() * (log_p - log_q)).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
}

/// MART: `BCE(p(x'), y) + lambda * (1/B) sum_i KL(p(x_i) || p(x'_i)) * (1 - p_y(x_i))` with
/// `BCE = -log p_y(x') - log(1.0001 - max_{k != y} p_k(x'))` (the reference's 1.0001 and 1e-12
/// guards), from adversarial logits `la`, clean logits `lc` and labels `y`.
pub fn mart_loss(la: &Tensor, lc: &Tensor, y: &Tensor, lambda: f64) -> Tensor {
    let adv_probs = la.softmax(-1, Kind::Float);
    let yy = y.unsqueeze(1);
    let others = adv_probs.scatter_value(1, &yy, f64::NEG_INFINITY);
    let top_other = others.amax([1i64].as_slice(), false);
    let bce = cross_entropy(la, y, Reduction::Mean)
        + (-(top_other.neg() + 1.0001).log()).mean(Kind::Float);
    let nat_probs = lc.softmax(-1, Kind::Float);
    let true_probs = nat_probs.gather(1, &yy, false).squeeze_dim(1);
    let kl = (&nat_probs * ((&nat_probs + 1e-12).log() - (adv_probs + 1e-12).log()))
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    bce + (kl * (true_probs.neg() + 1.0)).mean(Kind::Float) * lambda
}

/// FGSM-RS (Wong et al. 2020) example of `x` (L-inf): `delta ~ U(-eps, eps)`, one step
/// `delta += alpha * sign(grad)` (alpha = 1.25 eps in the paper), `delta` clipped to
/// `[-eps, eps]` and `x + delta` to [0, 1].
pub fn fgsm_rs_example(f: &Classifier, x: &Tensor, y: &Tensor, eps: f64, alpha: f64) -> Tensor {
    let delta = (x.rand_like() * 2.0 - 1.0) * eps;
    let start = (x + &delta)
        .clamp(0.0, 1.0)
        .detach()
        .set_requires_grad(true);
    let loss = cross_entropy(&f.logits(&start), y, Reduction::Sum);
    let g = Tensor::run_backward(&[&loss], &[&start], false, false).remove(0);
    tch::no_grad(|| {
        let d = (&start - x + g.sign() * alpha).clamp(-eps, eps);
        (x + d).clamp(0.0, 1.0)
    })
}
