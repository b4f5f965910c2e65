//! FAB, the Fast Adaptive Boundary attack (Croce & Hein 2020, "Minimally distorted adversarial
//! examples with a fast adaptive boundary attack"), untargeted (FAB) and targeted (FAB-T), in
//! L-inf and L2, following the reference implementation `autoattack/fab_base.py`,
//! `autoattack/fab_pt.py` (`FABAttack_PT`) and `autoattack/fab_projections.py`.
//!
//! FAB looks for the *smallest* perturbation that changes the decision. One run of `n_iter`
//! iterations on a batch of correctly classified points `x` with labels `y`:
//! * start `x_1 = x` (first run) or, for later restarts, a random point at half the eps radius:
//!   L-inf `x + (eps t / max|t|) / 2`, `t ~ U(-1,1)`; L2 `x + (eps t / ||t||_2) / 2`,
//!   `t ~ N(0,I)`; clamped to [0,1]. The noise is drawn in float32 on the CPU, as the reference
//!   draws it, so the start does not depend on the device.
//! * linearise the decision boundary at `x_k`: FAB-T takes the single hyperplane
//!   `z_t - z_y` (t = the target class, its gradient from one backward pass of
//!   `sum (z_t - z_y)`); FAB takes, among all classes `c != y` (the full Jacobian, one backward
//!   pass per class), the one whose linearised boundary is closest in the threat norm,
//!   `|z_c - z_y| / ||grad(z_c - z_y)||_*` (dual norm: L1 for L-inf, L2 for L2).
//! * project both `x_k` and the original `x` onto that hyperplane within the box [0,1]^d
//!   ([`projection_linf`], [`projection_l2`]), giving steps `d_1`, `d_2`; with
//!   `alpha = clamp(||d_1|| / (||d_1|| + ||d_2||), 0, alpha_max)` (norms floored at 1e-8) the
//!   next iterate is `clamp((x_k + eta d_1)(1 - alpha) + (x + eta d_2) alpha, 0, 1)`.
//! * an iterate that is misclassified replaces the run's adversarial example when it is closer
//!   to `x` than the best so far, and is then pulled back towards `x`: `x + beta (x_k - x)`.
//!
//! [`Fab::attack`] (the reference's `perturb`) attacks only the points the model classifies
//! correctly. FAB-T loops over the target classes (the 2nd, ..., (n_target_classes+1)-th largest
//! clean logits) and, per target, over `n_restarts` runs (random start from the second run on);
//! FAB loops over the runs only. Every run attacks only the points not fooled so far. As in the
//! reference, a point counts as fooled only when its example is misclassified **and** lies
//! within eps of `x`; a fooled point gets that example, every other point is returned unchanged.
//!
//! Where this follows the reference code rather than the paper: the random start at eps/2
//! (the paper samples in a ball around x), the restarts only on points not fooled within eps,
//! the targets chosen by clean-logit rank, the `1e-12` / `1e-8` / `1e12` guards, the
//! projections' sign conventions and binary searches. The reference's boolean-mask indexing
//! (which makes it synchronise with the host) is replaced by computing every branch on all rows
//! and selecting with `where`, so the iteration loop makes no host synchronisation; the values
//! are the same.
//!
//! Agreement with the reference is checked by `bench/reference/fab_check.py`:
//! `cargo test --release --test it -- --ignored attack_fab::dump_for_reference` writes a model,
//! a batch and our examples to /tmp/fab_check; then
//! `python bench/reference/fab_check.py --dir /tmp/fab_check --autoattack <auto-attack checkout>`.

use super::settings::{AttackConfig, AttackSettings};
use super::{noise_kind, rows, Attack, Classifier, ThreatNorm};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// FAB hyperparameters. The serde defaults and [`FabConfig::targeted`] give AutoAttack's
/// standard FAB-T: 100 iterations, 1 restart, 9 target classes, alpha_max 0.1, eta 1.05,
/// beta 0.9, seed 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FabConfig {
    #[serde(default = "default_norm")]
    pub norm: ThreatNorm,
    /// Threat radius: a point counts as fooled only with a perturbation of norm <= eps (also the
    /// radius of the random starts).
    pub eps: f64,
    #[serde(default = "default_n_iter")]
    pub n_iter: usize,
    /// Runs per point (per target class for FAB-T); the first starts at x, later ones at a
    /// random point, and each runs only on the points not fooled so far.
    #[serde(default = "one")]
    pub n_restarts: usize,
    /// Largest weight of the step from the original point (`alpha` in the paper).
    #[serde(default = "default_alpha_max")]
    pub alpha_max: f64,
    /// Overshoot of the projection steps.
    #[serde(default = "default_eta")]
    pub eta: f64,
    /// Backward step towards x after an adversarial iterate.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// FAB-T (one target class per run) instead of FAB (closest boundary among all classes).
    #[serde(default = "yes")]
    pub targeted: bool,
    /// FAB-T: targets are the 2nd, ..., (n_target_classes+1)-th largest clean logits.
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
fn default_alpha_max() -> f64 {
    0.1
}
fn default_eta() -> f64 {
    1.05
}
fn default_beta() -> f64 {
    0.9
}
fn yes() -> bool {
    true
}
fn default_n_target_classes() -> usize {
    9
}
fn default_seed() -> Option<u64> {
    Some(0)
}

impl FabConfig {
    /// FAB-T with AutoAttack's standard settings (`version='standard'`): 100 iterations,
    /// 1 restart per target class, 9 target classes, alpha_max 0.1, eta 1.05, beta 0.9, seed 0.
    pub fn targeted(norm: ThreatNorm, eps: f64) -> Self {
        FabConfig {
            norm,
            eps,
            n_iter: default_n_iter(),
            n_restarts: 1,
            alpha_max: default_alpha_max(),
            eta: default_eta(),
            beta: default_beta(),
            targeted: true,
            n_target_classes: default_n_target_classes(),
            seed: default_seed(),
        }
    }

    /// Untargeted FAB as AutoAttack configures it (`version='plus'`): 5 restarts, otherwise
    /// as [`FabConfig::targeted`].
    pub fn untargeted(norm: ThreatNorm, eps: f64) -> Self {
        FabConfig {
            n_restarts: 5,
            targeted: false,
            ..Self::targeted(norm, eps)
        }
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
        if !(0.0..=1.0).contains(&self.alpha_max) {
            return Err(format!(
                "{field}.alpha_max must be in [0, 1], got {}",
                self.alpha_max
            ));
        }
        if !(self.eta > 0.0) || !self.eta.is_finite() {
            return Err(format!(
                "{field}.eta must be a finite number > 0, got {}",
                self.eta
            ));
        }
        if !(0.0..=1.0).contains(&self.beta) {
            return Err(format!("{field}.beta must be in [0, 1], got {}", self.beta));
        }
        if self.targeted && self.n_target_classes == 0 {
            return Err(format!("{field}.n_target_classes must be >= 1"));
        }
        Ok(())
    }
}

/// Sum over dimension 1 in the tensor's own precision.
fn row_sum(t: &Tensor) -> Tensor {
    t.sum_dim_intlist([1i64].as_slice(), false, None::<Kind>)
}

/// `+1` where `v >= 0`, `-1` elsewhere, in `kind`.
fn side_sign(v: &Tensor, kind: Kind) -> Tensor {
    v.ge(0.0).to_kind(kind) * 2.0 - 1.0
}

/// Number of halvings the reference's binary searches make over `n` sorted positions.
fn search_steps(n: i64) -> usize {
    (n as f64).log2().ceil().max(0.0) as usize
}

/// The binary search shared by both projections: over positions `0..=n-1`, keeps `lb` where
/// `above(mid)` holds and `ub` elsewhere, for `ceil(log2 n)` halvings, on every row at once.
/// Returns the final `lb` as a `[rows, 1]` index.
fn bisect(rows: i64, n: i64, device: Device, above: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let mut lb = Tensor::zeros([rows], (Kind::Float, device));
    let mut ub = Tensor::full([rows], (n - 1) as f64, (Kind::Float, device));
    for _ in 0..search_steps(n) {
        let mid = ((&lb + &ub) / 2.0).floor();
        let c = above(&mid.to_kind(Kind::Int64).unsqueeze(1));
        lb = mid.where_self(&c, &lb);
        ub = ub.where_self(&c, &mid);
    }
    lb.to_kind(Kind::Int64).unsqueeze(1)
}

/// Smallest L-inf step `d` (rows of `[n, d]`) moving each point `t` onto its hyperplane
/// `w . (t + d) = b` while staying in the box `[0,1]^d`; where the hyperplane does not meet
/// the box, the step goes as far towards it as the box allows. `w: [n, d]`, `b: [n]`.
///
/// The reference's algorithm: orient `w` so that `t` lies on the positive side, sort the
/// coordinates by how far they can move (`p`), and find by bisection the largest L-inf radius
/// `lambda` at which the moves saturate; coordinates with `w_i = 0` do not move.
pub fn projection_linf(t: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    let (rows, dim) = (t.size()[0], t.size()[1]);
    let kind = t.kind();
    let sign = side_sign(&(row_sum(&(w * t)) - b), kind);
    let w = w * sign.unsqueeze(1);
    let b = b * &sign;

    // a_i = 1 where the coordinate moves towards 0 (w_i < 0), 0 where it moves towards 1.
    let a = w.lt(0.0).to_kind(kind);
    let moving = w.ne(0.0).to_kind(kind);
    // The step to the box corner and each coordinate's room to move.
    let d = (&a - t) * &moving;
    let p = &a - t * (&a * 2.0 - 1.0);
    let order = p.argsort(1, false);

    let b = &b - row_sum(&(&w * t));
    let b0 = row_sum(&(&w * &d));
    let order_desc = order.flip([1i64]);
    let ws = w.gather(1, &order_desc, false);
    let bs = -&ws * d.gather(1, &order_desc, false);
    let s = ws.abs().cumsum(1, None::<Kind>);
    let sb = bs.cumsum(1, None::<Kind>) + b0.unsqueeze(1);

    let last = |m: &Tensor| m.select(1, dim - 1);
    let b2 = last(&sb) - last(&s) * p.gather(1, &order.narrow(1, 0, 1), false).squeeze_dim(1);
    // Even the smallest radius saturates: move all coordinates by the same lambda.
    let all_free = (&b - &b2).gt(0.0);
    // The corner is beyond the hyperplane: search the radius at which it is reached.
    let searched = (&b - &b0).gt(0.0).logical_and(&all_free.logical_not());

    let lb = bisect(rows, dim, t.device(), |mid| {
        let cur = order.gather(1, &(-mid + (dim - 1)), false);
        let b2 = (sb.gather(1, mid, false) - s.gather(1, mid, false) * p.gather(1, &cur, false))
            .squeeze_dim(1);
        (&b - b2).gt(0.0)
    });

    let lambda_free = ((&b - last(&sb)) / (-last(&s))).clamp_min(0.0).unsqueeze(1);
    let d_free = (&a * 2.0 - 1.0) * &lambda_free;
    let lambda = ((&b - sb.gather(1, &lb, false).squeeze_dim(1))
        / (-s.gather(1, &lb, false).squeeze_dim(1)))
    .clamp_min(0.0)
    .unsqueeze(1);
    let d_searched = lambda.minimum(&d) * &a + (-&lambda).maximum(&d) * (1.0f64 - &a);

    let d = d_free.where_self(&all_free.unsqueeze(1), &d);
    let d = d_searched.where_self(&searched.unsqueeze(1), &d);
    d * moving
}

/// Smallest L2 step `d` (rows of `[n, d]`) moving each point `t` onto its hyperplane
/// `w . (t + d) = b` while staying in the box `[0,1]^d`; where the hyperplane does not meet
/// the box, the step goes as far towards it as the box allows. `w: [n, d]`, `b: [n]`.
///
/// The reference's algorithm: the solution is `d_i = -clip(mu w_i)` for the multiplier `mu`;
/// the breakpoints `r_i` at which coordinates hit the box are sorted, and the interval holding
/// the solution is found by bisection on the piecewise-linear constraint value. Coordinates with
/// `|w_i| <= 1e-8` do not move.
pub fn projection_l2(t: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    let (rows, dim) = (t.size()[0], t.size()[1]);
    let kind = t.kind();
    let c = row_sum(&(w * t)) - b;
    let sign = side_sign(&c, kind);
    let w = w * sign.unsqueeze(1);
    let c = c * &sign;

    let big = 1e12;
    let tiny_w = w.abs().lt(1e-8);
    let moving = w.abs().gt(1e-8).to_kind(kind);
    // Breakpoint of each coordinate: the multiplier at which it reaches the box.
    let r = (t / &w)
        .maximum(&((t - 1.0) / &w))
        .clamp(-big, big)
        .masked_fill(&tiny_w, big);
    let r = r.where_self(&r.ne(-big), &-&r);
    let (rs, order) = r.sort(1, false);
    let rs_next = Tensor::cat(
        &[
            rs.narrow(1, 1, dim - 1),
            Tensor::zeros([rows, 1], (kind, t.device())),
        ],
        1,
    );
    let rs = rs.masked_fill(&rs.eq(big), 0.0);
    let rs_next = rs_next.masked_fill(&rs_next.eq(big), 0.0);

    let w2 = w.square().gather(1, &order, false);
    let w2_total = w2.sum_dim_intlist([1i64].as_slice(), true, None::<Kind>);
    let w2_rest = &w2_total - w2.cumsum(1, None::<Kind>);
    let d = -(&r * &w) * &moving;
    let at_first = &w2_total * rs.narrow(1, 0, 1);
    let s = Tensor::cat(
        &[
            -&at_first,
            ((-&rs_next + &rs) * &w2_rest).cumsum(1, None::<Kind>) - &at_first,
        ],
        1,
    );

    // Unconstrained solution inside the box / the box corner not reaching the hyperplane.
    let inside = (s.select(1, 0) + &c).lt(0.0);
    let beyond = (row_sum(&(&d * &w)) + &c).gt(0.0);
    let searched = inside.logical_or(&beyond).logical_not();

    let lb = bisect(rows, dim, t.device(), |mid| {
        (s.gather(1, mid, false).squeeze_dim(1) + &c).gt(0.0)
    });

    let alpha_inside = (&c / w2_total.squeeze_dim(1)).unsqueeze(1);
    let d_inside = -alpha_inside * &w;
    let rest_lb = w2_rest.gather(1, &lb, false).squeeze_dim(1);
    let alpha = (s.gather(1, &lb, false).squeeze_dim(1) + &c) / &rest_lb
        + rs.gather(1, &lb, false).squeeze_dim(1);
    let alpha = alpha.masked_fill(&rest_lb.eq(0.0), 0.0).unsqueeze(1);
    let clipped = alpha.gt_tensor(&r).to_kind(kind);
    let d_searched = &d * &clipped - &alpha * &w * (1.0f64 - &clipped);

    let d = d_inside.where_self(&inside.unsqueeze(1), &d);
    let d = d_searched.where_self(&searched.unsqueeze(1), &d);
    d * moving
}

/// Per-row norm of `[n, d]` in the threat norm (L2 as `sqrt(sum t^2)`), `[n]`.
fn row_norm(t: &Tensor, norm: ThreatNorm) -> Tensor {
    match norm {
        ThreatNorm::Linf => t.abs().max_dim(1, false).0,
        ThreatNorm::L2 => row_sum(&t.square()).sqrt(),
    }
}

/// Predicted classes (first maximal logit).
fn predicted(logits: &Tensor) -> Tensor {
    logits.max_dim(1, false).1
}

/// The Fast Adaptive Boundary attack.
#[derive(Debug, Clone)]
pub struct Fab {
    pub cfg: FabConfig,
}

impl Fab {
    pub fn new(cfg: FabConfig) -> Self {
        Fab { cfg }
    }

    /// Linearised boundaries at `x1`: `df [n, K]` (logit differences `z_c - z_y`) and
    /// `dg [n, K, ...]` (their input gradients). FAB-T: K = 1, `c = target`; FAB: all K
    /// classes, with `df = 1e10` and `dg = 0` at `c = y` so that `y` is never the closest.
    fn boundaries(
        &self,
        f: &Classifier,
        x1: &Tensor,
        y: &Tensor,
        target: Option<&Tensor>,
    ) -> (Tensor, Tensor) {
        if let Some(t) = target {
            let (_, diff, g) = f.loss_grad(x1, |z, start, len| {
                let pick = |c: &Tensor| z.gather(1, &rows(c, start, len).unsqueeze(1), false);
                (pick(t) - pick(y)).squeeze_dim(1)
            });
            return (diff.unsqueeze(1), g.unsqueeze(1));
        }
        let xr = x1.detach().set_requires_grad(true);
        let logits = f.logits(&xr);
        let z_y = logits.gather(1, &y.unsqueeze(1), false);
        // FAB (untargeted): the gradient of every logit.
        let k = logits.size()[1];
        let grads: Vec<Tensor> = (0..k)
            .map(|c| {
                let z_c = logits.select(1, c).sum(logits.kind());
                Tensor::run_backward(&[z_c], &[&xr], c + 1 < k, false)
                    .pop()
                    .expect("one gradient")
            })
            .collect();
        let g = Tensor::stack(&grads, 1).detach();
        let n = x1.size()[0];
        let mut idx_shape = vec![n, 1];
        idx_shape.resize(g.dim(), 1);
        let mut expand = g.size();
        expand[1] = 1;
        let g_y = g.gather(
            1,
            &y.reshape(idx_shape.as_slice())
                .expand(expand.as_slice(), false),
            false,
        );
        let logits = logits.detach();
        let df = (&logits - z_y.detach()).scatter_value(1, &y.unsqueeze(1), 1e10);
        (df, g - g_y)
    }

    /// The random start of restarts after the first: x plus half the eps radius along random
    /// noise drawn in float32 on the CPU (float64 for float64 inputs, [`noise_kind`]), clamped
    /// to [0,1].
    fn random_start(&self, x: &Tensor) -> Tensor {
        let n = x.size()[0];
        let size = x.size();
        let mut bshape = vec![n];
        bshape.resize(x.dim(), 1);
        let cpu = (noise_kind(x.kind()), Device::Cpu);
        let t = match self.cfg.norm {
            ThreatNorm::Linf => Tensor::rand(size.as_slice(), cpu) * 2.0 - 1.0,
            ThreatNorm::L2 => Tensor::randn(size.as_slice(), cpu),
        };
        let t = t.to_device(x.device()).to_kind(x.kind());
        let radius = Tensor::full(bshape.as_slice(), self.cfg.eps, (x.kind(), x.device()));
        let len = row_norm(&t.reshape([n, -1]), self.cfg.norm).view(bshape.as_slice());
        (x + radius * t / len * 0.5).clamp(0.0, 1.0)
    }

    /// `n_iter` FAB iterations on points `x` (all correctly classified); returns the closest
    /// misclassified iterate per point, `x` itself where none was found.
    fn iterate(
        &self,
        f: &Classifier,
        x: &Tensor,
        y: &Tensor,
        target: Option<&Tensor>,
        random_start: bool,
    ) -> Tensor {
        let (norm, eta, beta) = (self.cfg.norm, self.cfg.eta, self.cfg.beta);
        let n = x.size()[0];
        let shape = x.size();
        let mut bshape = vec![n];
        bshape.resize(x.dim(), 1);
        let per_point = |m: &Tensor| m.view(bshape.as_slice());
        let x0 = x.reshape([n, -1]);

        let mut x1 = if random_start {
            self.random_start(x)
        } else {
            x.copy()
        };
        let mut adv = x.copy();
        let mut best = Tensor::full([n], 1e10, (x.kind(), x.device()));
        for _ in 0..self.cfg.n_iter {
            let (df, dg) = self.boundaries(f, &x1, y, target);
            x1 = tch::no_grad(|| {
                let k = dg.size()[1];
                let dual = match norm {
                    ThreatNorm::Linf => dg.abs().reshape([n, k, -1]).sum_dim_intlist(
                        [-1i64].as_slice(),
                        false,
                        None::<Kind>,
                    ),
                    ThreatNorm::L2 => dg
                        .square()
                        .reshape([n, k, -1])
                        .sum_dim_intlist([-1i64].as_slice(), false, None::<Kind>)
                        .sqrt(),
                };
                let closest = (df.abs() / (dual + 1e-12)).min_dim(1, false).1.unsqueeze(1);
                let dgf = dg.reshape([n, k, -1]);
                let dim = dgf.size()[2];
                let w = dgf
                    .gather(1, &closest.unsqueeze(2).expand([n, 1, dim], false), false)
                    .squeeze_dim(1);
                let x1f = x1.reshape([n, -1]);
                let b = row_sum(&(&w * &x1f)) - df.gather(1, &closest, false).squeeze_dim(1);

                let w2 = Tensor::cat(&[&w, &w], 0);
                let b2 = Tensor::cat(&[&b, &b], 0);
                let points = Tensor::cat(&[&x1f, &x0], 0);
                let d3 = match norm {
                    ThreatNorm::Linf => projection_linf(&points, &w2, &b2),
                    ThreatNorm::L2 => projection_l2(&points, &w2, &b2),
                };
                let d1 = d3.narrow(0, 0, n).reshape(shape.as_slice());
                let d2 = d3.narrow(0, n, n).reshape(shape.as_slice());
                let a0 = row_norm(&d3, norm).clamp_min(1e-8);
                let a1 = per_point(&a0.narrow(0, 0, n));
                let a2 = per_point(&a0.narrow(0, n, n));
                let alpha = (&a1 / (&a1 + &a2)).clamp(0.0, self.cfg.alpha_max);
                let x_next = ((&x1 + &d1 * eta) * (1.0f64 - &alpha) + (x + &d2 * eta) * &alpha)
                    .clamp(0.0, 1.0);

                let is_adv = predicted(&f.logits(&x_next)).ne_tensor(y);
                let dist = row_norm(&(&x_next - x).reshape([n, -1]), norm);
                let closer = is_adv.logical_and(&dist.lt_tensor(&best));
                adv = x_next.where_self(&per_point(&closer), &adv);
                best = dist.where_self(&closer, &best);
                (x + (&x_next - x) * beta).where_self(&per_point(&is_adv), &x_next)
            });
        }
        adv
    }

    /// One run on `x`: like the reference's `attack_single_run`, only the points classified
    /// correctly here are attacked (target of rank `rank` among their clean logits for FAB-T).
    fn run(
        &self,
        f: &Classifier,
        x: &Tensor,
        y: &Tensor,
        rank: Option<i64>,
        random_start: bool,
    ) -> Tensor {
        let n = x.size()[0];
        let clean = tch::no_grad(|| f.logits(x));
        let classes = clean.size()[1];
        let target = rank.map(|k| clean.sort(-1, false).1.select(1, classes - k));
        let ok = predicted(&clean).eq_tensor(y);
        let idx = ok.nonzero().squeeze_dim(1);
        let m = idx.size()[0];
        if m == 0 {
            return x.copy();
        }
        if m == n {
            return self.iterate(f, x, y, target.as_ref(), random_start);
        }
        let target = target.map(|t| t.index_select(0, &idx));
        let adv = self.iterate(
            f,
            &x.index_select(0, &idx),
            &y.index_select(0, &idx),
            target.as_ref(),
            random_start,
        );
        x.index_copy(0, &idx, &adv)
    }

    /// Adversarial examples and the mask of points still robust: classified correctly on the
    /// clean input and not fooled within eps by any run. Points not robust (and classified
    /// correctly on the clean input) are misclassified at their returned example, at distance
    /// <= eps; every robust or clean-misclassified point is returned unchanged.
    pub fn attack(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
        f.region(x.device(), || self.attack_in(f, x, y))
    }

    fn attack_in(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
        let x = x.detach();
        let y = y.detach();
        let clean_logits = tch::no_grad(|| f.logits(&x));
        let classes = clean_logits.size()[1];
        if self.cfg.targeted {
            assert!(
                (self.cfg.n_target_classes as i64) < classes,
                "FAB-T with {} target classes needs at least {} classes, the model has {classes}",
                self.cfg.n_target_classes,
                self.cfg.n_target_classes + 1
            );
        } else {
            assert!(classes >= 2, "FAB needs at least 2 classes");
        }
        if let Some(s) = self.cfg.seed {
            tch::manual_seed(s as i64);
        }
        let mut robust = predicted(&clean_logits).eq_tensor(&y);
        let mut x_adv = x.copy();
        let ranks: Vec<Option<i64>> = if self.cfg.targeted {
            (2..=self.cfg.n_target_classes as i64 + 1)
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        let mut shape = vec![-1i64];
        shape.resize(x.dim(), 1);
        for rank in ranks {
            for restart in 0..self.cfg.n_restarts {
                let idx = robust.nonzero().squeeze_dim(1);
                if idx.size()[0] == 0 {
                    return (x_adv, robust);
                }
                let xs = x.index_select(0, &idx);
                let ys = y.index_select(0, &idx);
                let adv = self.run(f, &xs, &ys, rank, restart > 0);
                let still = tch::no_grad(|| {
                    let ok = predicted(&f.logits(&adv)).eq_tensor(&ys);
                    let dist = row_norm(&(&xs - &adv).reshape([idx.size()[0], -1]), self.cfg.norm);
                    ok.logical_or(&dist.gt(self.cfg.eps))
                });
                let new = x_adv
                    .index_select(0, &idx)
                    .where_self(&still.view(shape.as_slice()), &adv);
                x_adv = x_adv.index_copy(0, &idx, &new);
                robust = robust.index_copy(0, &idx, &still);
            }
        }
        (x_adv, robust)
    }
}

impl Attack for Fab {
    fn name(&self) -> String {
        if self.cfg.targeted { "fab-t" } else { "fab" }.to_string()
    }

    fn config(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.cfg).expect("serialisable");
        v["attack"] = "fab".into();
        v["minimum_norm"] = true.into();
        v["random_start_radius"] = (0.5 * self.cfg.eps).into();
        v
    }

    fn perturb(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> Tensor {
        self.attack(f, x, y).0
    }
}

/// `fab`, `fab-t`: [`FabConfig::untargeted`] / [`FabConfig::targeted`] (the registry's
/// variant) with the iterations, restarts and seed given.
impl AttackConfig for FabConfig {
    type Variant = fn(ThreatNorm, f64) -> FabConfig;

    fn default_steps() -> usize {
        default_n_iter()
    }

    fn from_settings(
        standard: Self::Variant,
        s: &AttackSettings,
        steps: usize,
    ) -> Result<Self, String> {
        let base = standard(s.norm, s.eps);
        Ok(FabConfig {
            n_iter: steps,
            n_restarts: s.restarts.unwrap_or(base.n_restarts),
            seed: Some(s.seed),
            ..base
        })
    }

    fn build(&self) -> Box<dyn Attack> {
        Box::new(Fab::new(self.clone()))
    }
}
