//! APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
//! diverse parameter-free attacks"), following the reference implementation
//! `autoattack/autopgd_base.py` (classes `APGDAttack` and `APGDAttack_targeted`) in L-inf and L2:
//! APGD-CE, APGD-DLR and APGD-T (targeted DLR over the top `n_target_classes` other classes).
//!
//! One run of `n_iter` iterations on a batch:
//! * start: L-inf `x + eps * t / max|t|` with `t ~ U(-1,1)`; L2 `x + eps * t / ||t||_2` with
//!   `t ~ N(0,I)`; then clamped to [0,1]. The noise is drawn in float32 on the CPU (as the
//!   reference does), so the start does not depend on the device; for float64 inputs it is
//!   drawn in float64, as the reference run in float64 draws it (`noise_kind` in `attack`).
//! * step size `eta = 2 * eps` per point; step `z = P(x_k + eta * s)` with `s = sign(g)` (L-inf)
//!   or `g / ||g||_2` (L2), then `x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))` with
//!   `a = 1` on the first iteration and `0.75` after; `P` = projection onto B_eps(x) ∩ [0,1]^d.
//! * every iteration keeps the highest-loss point `x_max` (with its gradient) and the latest
//!   misclassified iterate (the adversarial example returned).
//! * at each checkpoint ([`checkpoints`]) a point's step size is halved and it restarts from
//!   `x_max` (with `x_max`'s gradient) when (a) the number of loss increases between consecutive
//!   iterates since the last checkpoint is `<= rho * (interval length)`, or (b) its step size was
//!   not halved at the last checkpoint and its best loss did not improve since.
//!
//! `perturb` attacks only the points the model classifies correctly, and each restart (and, for
//! APGD-T, each target class) runs only on the points not fooled so far; a fooled point gets the
//! adversarial example of the run that fooled it, every other point is returned unchanged.
//! The iteration loop makes no host synchronisation: counters, masks and step sizes are device
//! tensors and the checkpoint schedule is fixed on the host before the loop.

use super::settings::{AttackConfig, AttackSettings};
use super::{correct, cross_entropy, noise_kind, rows, Attack, Classifier, ThreatNorm};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Momentum coefficient of the update (`autopgd_base.py`: `a = 0.75 if i > 0 else 1.0`).
pub const MOMENTUM: f64 = 0.75;
/// Initial step size as a multiple of eps (`alpha = 2.` for L-inf and L2).
pub const STEP_SIZE_INIT: f64 = 2.0;

/// Loss maximised by APGD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApgdLoss {
    /// Cross-entropy with the true label (APGD-CE).
    Ce,
    /// Difference of logits ratio, [`dlr_loss`] (APGD-DLR).
    Dlr,
    /// Targeted DLR, [`dlr_targeted_loss`], one run per target class (APGD-T).
    DlrTargeted,
}

/// APGD hyperparameters. The constructors give AutoAttack's standard setting: 100 iterations,
/// 1 restart, rho 0.75, 9 target classes, seed 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApgdConfig {
    #[serde(default = "default_norm")]
    pub norm: ThreatNorm,
    pub eps: f64,
    #[serde(default = "default_n_iter")]
    pub n_iter: usize,
    /// Runs per point (per target class for APGD-T); later runs only on points not yet fooled.
    #[serde(default = "one")]
    pub n_restarts: usize,
    /// Step-size halving threshold on the fraction of loss increases.
    #[serde(default = "default_rho")]
    pub rho: f64,
    #[serde(default = "default_loss")]
    pub loss: ApgdLoss,
    /// APGD-T: targets are the 2nd, ..., (n_target_classes+1)-th largest clean logits.
    #[serde(default = "default_n_target_classes")]
    pub n_target_classes: usize,
    /// `Some(s)`: torch's (global) generator is seeded with `s` at the start of every
    /// `perturb` call, as the reference does; `None`: the caller's random stream is used.
    #[serde(default = "default_seed")]
    pub seed: Option<u64>,
}

fn default_norm() -> ThreatNorm {
    ThreatNorm::Linf
}
fn default_n_iter() -> usize {
    100
}
fn one() -> usize {
    1
}
fn default_rho() -> f64 {
    0.75
}
fn default_loss() -> ApgdLoss {
    ApgdLoss::Ce
}
fn default_n_target_classes() -> usize {
    9
}
fn default_seed() -> Option<u64> {
    Some(0)
}

impl ApgdConfig {
    fn standard(norm: ThreatNorm, eps: f64, loss: ApgdLoss) -> Self {
        ApgdConfig {
            norm,
            eps,
            n_iter: default_n_iter(),
            n_restarts: 1,
            rho: default_rho(),
            loss,
            n_target_classes: default_n_target_classes(),
            seed: default_seed(),
        }
    }

    /// APGD-CE with AutoAttack's standard hyperparameters.
    pub fn ce(norm: ThreatNorm, eps: f64) -> Self {
        Self::standard(norm, eps, ApgdLoss::Ce)
    }

    /// APGD-DLR with AutoAttack's standard hyperparameters.
    pub fn dlr(norm: ThreatNorm, eps: f64) -> Self {
        Self::standard(norm, eps, ApgdLoss::Dlr)
    }

    /// APGD-T (targeted DLR, 9 target classes) with AutoAttack's standard hyperparameters.
    pub fn targeted(norm: ThreatNorm, eps: f64) -> Self {
        Self::standard(norm, eps, ApgdLoss::DlrTargeted)
    }

    /// Checks on the values (names the offending field).
    pub fn validate(&self, field: &str) -> Result<(), String> {
        if !(self.eps >= 0.0) || !self.eps.is_finite() {
            return Err(format!(
                "{field}.eps must be a finite number >= 0, got {}",
                self.eps
            ));
        }
        if self.n_iter == 0 {
            return Err(format!("{field}.n_iter must be >= 1"));
        }
        if self.n_restarts == 0 {
            return Err(format!("{field}.n_restarts must be >= 1"));
        }
        if !(0.0..=1.0).contains(&self.rho) {
            return Err(format!("{field}.rho must be in [0, 1], got {}", self.rho));
        }
        if self.loss == ApgdLoss::DlrTargeted && self.n_target_classes == 0 {
            return Err(format!("{field}.n_target_classes must be >= 1"));
        }
        Ok(())
    }
}

/// The checkpoints: the numbers of iterations completed when the step-size check runs (the
/// start, w_0 = 0, is not listed). As in the reference, the first check comes after
/// `max(floor(0.22 n), 1)` iterations and each later interval is the previous one minus
/// `max(floor(0.03 n), 1)`, but at least `max(floor(0.06 n), 1)`; checks stop at `n`.
/// For n = 100 this is the paper's `ceil(p_j n)` with p = 0.22, 0.41, 0.57, ...; for small n
/// the reference's truncations give a different list (e.g. n = 20 checks after 4, 7, 9, 10, ...).
pub fn checkpoints(n_iter: usize) -> Vec<usize> {
    let n = n_iter as f64;
    let first = ((0.22 * n) as usize).max(1);
    let min_len = ((0.06 * n) as usize).max(1);
    let decr = ((0.03 * n) as usize).max(1);
    let mut out = Vec::new();
    let (mut at, mut len) = (0usize, first);
    while at + len <= n_iter {
        at += len;
        out.push(at);
        len = len.saturating_sub(decr).max(min_len);
    }
    out
}

/// Logits sorted in descending order and the (per-sample) logit of class `c`.
fn sorted_desc(logits: &Tensor) -> (Tensor, Tensor) {
    logits.sort(1, true)
}

fn logit_of(logits: &Tensor, c: &Tensor) -> Tensor {
    logits.gather(1, &c.unsqueeze(1), false).squeeze_dim(1)
}

/// Untargeted DLR loss per sample: `-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`, with
/// `z_pi1 >= z_pi2 >= ...` the sorted logits (needs at least 3 classes).
pub fn dlr_loss(logits: &Tensor, y: &Tensor) -> Tensor {
    let (s, order) = sorted_desc(logits);
    let top = s.select(1, 0);
    // max over the other classes: the second-largest logit when y is the largest, else the largest.
    let y_on_top = order.select(1, 0).eq_tensor(y).to_kind(s.kind());
    let other: Tensor = s.select(1, 1) * &y_on_top + &top * (y_on_top.ones_like() - &y_on_top);
    let denom: Tensor = &top - s.select(1, 2) + 1e-12;
    (other - logit_of(logits, y)) / denom
}

/// Targeted DLR loss per sample: `-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`
/// (needs at least 4 classes).
pub fn dlr_targeted_loss(logits: &Tensor, y: &Tensor, target: &Tensor) -> Tensor {
    let (s, _) = sorted_desc(logits);
    let denom: Tensor = s.select(1, 0) - (s.select(1, 2) + s.select(1, 3)) * 0.5 + 1e-12;
    (logit_of(logits, target) - logit_of(logits, y)) / denom
}

/// Auto-PGD.
#[derive(Debug, Clone)]
pub struct Apgd {
    pub cfg: ApgdConfig,
}

/// What one run hands back to the restart loop.
struct Run {
    /// Points classified correctly at every iterate (and the start).
    robust: Tensor,
    /// Latest misclassified iterate (the start where never misclassified).
    x_adv: Tensor,
}

impl Apgd {
    pub fn new(cfg: ApgdConfig) -> Self {
        Apgd { cfg }
    }

    /// Per-sample loss of the configured kind.
    fn loss(&self, logits: &Tensor, y: &Tensor, target: Option<&Tensor>) -> Tensor {
        match self.cfg.loss {
            ApgdLoss::Ce => cross_entropy(logits, y, tch::Reduction::None),
            ApgdLoss::Dlr => dlr_loss(logits, y),
            ApgdLoss::DlrTargeted => {
                dlr_targeted_loss(logits, y, target.expect("APGD-T run without a target"))
            }
        }
    }

    /// Logits, per-sample loss and input gradient of the summed loss at `x_adv` (all detached).
    fn eval_grad(
        &self,
        f: &Classifier,
        x_adv: &Tensor,
        y: &Tensor,
        target: Option<&Tensor>,
    ) -> (Tensor, Tensor, Tensor) {
        f.loss_grad(x_adv, |z, start, len| {
            self.loss(
                z,
                &rows(y, start, len),
                target.map(|t| rows(t, start, len)).as_ref(),
            )
        })
    }

    /// Random start in B_eps(x) (on the sphere of radius eps in L2, on a face of the cube in
    /// L-inf), clamped to [0,1].
    fn start(&self, x: &Tensor) -> Tensor {
        let eps = self.cfg.eps;
        let size = x.size();
        let cpu = (noise_kind(x.kind()), Device::Cpu);
        let t = match self.cfg.norm {
            ThreatNorm::Linf => Tensor::rand(size.as_slice(), cpu) * 2.0 - 1.0,
            ThreatNorm::L2 => Tensor::randn(size.as_slice(), cpu),
        };
        let t = t.to_device(x.device()).to_kind(x.kind());
        (x + normalize(&t, self.cfg.norm) * eps).clamp(0.0, 1.0)
    }

    /// One run of `n_iter` iterations on points `x` (all attacked), labels `y`.
    fn run_once(&self, f: &Classifier, x: &Tensor, y: &Tensor, target: Option<&Tensor>) -> Run {
        let (eps, norm, n_iter) = (self.cfg.eps, self.cfg.norm, self.cfg.n_iter);
        let n = x.size()[0];
        let mut bshape = vec![n];
        bshape.resize(x.dim(), 1);
        let per_point = |m: &Tensor| m.view(bshape.as_slice());

        let mut x_adv = self.start(x).detach();
        let mut x_prev = x_adv.copy();
        let (logits, loss, mut grad) = self.eval_grad(f, &x_adv, y, target);
        let mut robust = correct(&logits, y);
        let mut x_best = x_adv.copy();
        let mut x_best_adv = x_adv.copy();
        let mut grad_best = grad.copy();
        let mut loss_best = loss;
        let mut step = Tensor::full(
            bshape.as_slice(),
            STEP_SIZE_INIT * eps,
            (x.kind(), x.device()),
        );

        // Step-size bookkeeping.
        let schedule = checkpoints(n_iter);
        let mut next_check = 0usize;
        let mut last_check = 0usize;
        let mut loss_best_last_check = loss_best.copy();
        let mut reduced_last_check = Tensor::ones([n], (Kind::Bool, x.device()));
        let mut increases = Tensor::zeros([n], (loss_best.kind(), x.device()));
        // The reference compares the first iterate's loss with a zero-initialised row of its
        // loss history (index -1), i.e. with 0 (with itself when n_iter = 1).
        let mut loss_prev = Tensor::zeros([n], (loss_best.kind(), x.device()));

        for i in 0..n_iter {
            // Gradient step with momentum.
            let a = if i > 0 { MOMENTUM } else { 1.0 };
            let dir = match norm {
                ThreatNorm::Linf => grad.sign(),
                ThreatNorm::L2 => normalize(&grad, ThreatNorm::L2),
            };
            let z = project(&(&x_adv + &step * dir), x, eps, norm);
            let moved = &x_adv + (z - &x_adv) * a + (&x_adv - &x_prev) * (1.0 - a);
            let x_next = project(&moved, x, eps, norm);
            x_prev = std::mem::replace(&mut x_adv, x_next);

            let (logits, loss, g) = self.eval_grad(f, &x_adv, y, target);
            grad = g;

            // Fooled points take the current iterate as their adversarial example.
            let ok = correct(&logits, y);
            robust = robust.logical_and(&ok);
            x_best_adv = x_best_adv.where_self(&per_point(&ok), &x_adv);

            // Loss increases and best-loss point.
            if !(n_iter == 1 && i == 0) {
                increases += loss.gt_tensor(&loss_prev).to_kind(increases.kind());
            }
            loss_prev = loss.shallow_clone();
            let improved = loss.gt_tensor(&loss_best);
            let improved_pp = per_point(&improved);
            x_best = x_adv.where_self(&improved_pp, &x_best);
            grad_best = grad.where_self(&improved_pp, &grad_best);
            loss_best = loss.where_self(&improved, &loss_best);

            // Checkpoint: halve the step size and go back to x_max where progress stalled.
            if next_check < schedule.len() && schedule[next_check] == i + 1 {
                let len = (i + 1 - last_check) as f64;
                let oscillating = increases.le(len * self.cfg.rho);
                let no_improvement = reduced_last_check
                    .logical_not()
                    .logical_and(&loss_best_last_check.ge_tensor(&loss_best));
                let reduce = oscillating.logical_or(&no_improvement);
                let reduce_pp = per_point(&reduce);
                step = (&step * 0.5).where_self(&reduce_pp, &step);
                x_adv = x_best.where_self(&reduce_pp, &x_adv);
                grad = grad_best.where_self(&reduce_pp, &grad);
                reduced_last_check = reduce;
                loss_best_last_check = loss_best.copy();
                let _ = increases.zero_();
                last_check = i + 1;
                next_check += 1;
            }
        }
        Run {
            robust,
            x_adv: x_best_adv,
        }
    }

    /// Adversarial examples and the mask of points still robust (classified correctly on the
    /// clean input and at every iterate of every run). Points not robust are misclassified at
    /// their returned example; robust points are returned unchanged.
    pub fn attack(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
        f.region(x.device(), || self.attack_in(f, x, y))
    }

    fn attack_in(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
        if let Some(s) = self.cfg.seed {
            tch::manual_seed(s as i64);
        }
        let x = x.detach();
        let y = y.detach();
        let clean_logits = tch::no_grad(|| f.logits(&x));
        let classes = clean_logits.size()[1];
        match self.cfg.loss {
            ApgdLoss::Ce => {}
            ApgdLoss::Dlr => assert!(classes >= 3, "APGD-DLR needs at least 3 classes"),
            ApgdLoss::DlrTargeted => assert!(
                classes >= 4 && self.cfg.n_target_classes as i64 + 1 <= classes,
                "APGD-T with {} target classes needs at least {} classes (and 4), the model has {classes}",
                self.cfg.n_target_classes,
                self.cfg.n_target_classes + 1
            ),
        }
        let mut robust = correct(&clean_logits, &y);
        let mut x_adv = x.copy();
        // Class indices by ascending clean logit: column classes - k is the k-th largest.
        let order = clean_logits.argsort(1, false);
        let targets: Vec<Option<i64>> = match self.cfg.loss {
            ApgdLoss::DlrTargeted => (2..=self.cfg.n_target_classes as i64 + 1)
                .map(Some)
                .collect(),
            _ => vec![None],
        };
        for k in targets {
            for _ in 0..self.cfg.n_restarts {
                let idx = robust.nonzero().squeeze_dim(1);
                if idx.size()[0] == 0 {
                    return (x_adv, robust);
                }
                let xs = x.index_select(0, &idx);
                let ys = y.index_select(0, &idx);
                let target = k.map(|k| order.index_select(0, &idx).select(1, classes - k));
                let run = self.run_once(f, &xs, &ys, target.as_ref());
                let mut shape = vec![-1i64];
                shape.resize(x.dim(), 1);
                let keep = run.robust.view(shape.as_slice());
                let new = x_adv.index_select(0, &idx).where_self(&keep, &run.x_adv);
                x_adv = x_adv.index_copy(0, &idx, &new);
                robust = robust.index_copy(0, &idx, &run.robust);
            }
        }
        (x_adv, robust)
    }
}

/// Per-sample L-inf norm or L2 norm (`sqrt(sum t^2)`, as the reference computes it), shaped
/// `[N,1,...]`.
fn per_sample_norm(t: &Tensor, norm: ThreatNorm) -> Tensor {
    let n = t.size()[0];
    let mut shape = vec![n];
    shape.resize(t.dim(), 1);
    let flat = t.reshape([n, -1]);
    let v = match norm {
        ThreatNorm::Linf => flat.abs().amax([1i64].as_slice(), false),
        ThreatNorm::L2 => (&flat * &flat)
            .sum_dim_intlist([1i64].as_slice(), false, flat.kind())
            .sqrt(),
    };
    v.view(shape.as_slice())
}

/// `t / (||t|| + 1e-12)` per sample.
fn normalize(t: &Tensor, norm: ThreatNorm) -> Tensor {
    t / (per_sample_norm(t, norm) + 1e-12)
}

/// Projection onto B_eps(x) ∩ [0,1]^d in the reference's arithmetic (the same map as
/// [`super::project`] up to rounding; written this way so that runs agree with the reference
/// bit for bit): L-inf `clamp(min(max(v, x - eps), x + eps), 0, 1)`, L2
/// `clamp(x + (d / (||d|| + 1e-12)) * min(eps, ||d||), 0, 1)` with `d = v - x`.
fn project(v: &Tensor, x: &Tensor, eps: f64, norm: ThreatNorm) -> Tensor {
    match norm {
        ThreatNorm::Linf => v.maximum(&(x - eps)).minimum(&(x + eps)).clamp(0.0, 1.0),
        ThreatNorm::L2 => {
            let d = v - x;
            let r = per_sample_norm(&d, ThreatNorm::L2);
            (x + normalize(&d, ThreatNorm::L2) * r.clamp_max(eps)).clamp(0.0, 1.0)
        }
    }
}

impl Attack for Apgd {
    fn name(&self) -> String {
        match self.cfg.loss {
            ApgdLoss::Ce => "apgd-ce",
            ApgdLoss::Dlr => "apgd-dlr",
            ApgdLoss::DlrTargeted => "apgd-t",
        }
        .to_string()
    }

    fn config(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.cfg).expect("serialisable");
        v["attack"] = "apgd".into();
        v["momentum"] = MOMENTUM.into();
        v["step_size_init"] = (STEP_SIZE_INIT * self.cfg.eps).into();
        v["checkpoints"] = checkpoints(self.cfg.n_iter).into();
        v
    }

    fn perturb(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> Tensor {
        self.attack(f, x, y).0
    }
}

/// `apgd-ce`, `apgd-dlr`, `apgd-t`: AutoAttack's standard settings ([`ApgdConfig::ce`], ...,
/// the registry's variant) with the iterations, restarts and seed given.
impl AttackConfig for ApgdConfig {
    type Variant = fn(ThreatNorm, f64) -> ApgdConfig;

    fn default_steps() -> usize {
        default_n_iter()
    }

    fn from_settings(
        standard: Self::Variant,
        s: &AttackSettings,
        steps: usize,
    ) -> Result<Self, String> {
        let base = standard(s.norm, s.eps);
        Ok(ApgdConfig {
            n_iter: steps,
            n_restarts: s.restarts.unwrap_or(base.n_restarts),
            seed: Some(s.seed),
            ..base
        })
    }

    fn build(&self) -> Box<dyn Attack> {
        Box::new(Apgd::new(self.clone()))
    }
}
