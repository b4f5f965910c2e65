//! Square Attack (Andriushchenko, Croce, Flammarion, Hein, ECCV 2020): a score-based black-box
//! attack that only queries the logits (no gradient), untargeted, with the margin loss
//! `z_y - max_{k != y} z_k` (negative = misclassified), in L-inf and L2.
//!
//! It follows the version used by AutoAttack (`autoattack/square.py`, class `SquareAttack`, in
//! fra31/auto-attack), not the earlier NumPy release (max-andr/square-attack):
//!
//! * L-inf start: vertical stripes, `x + eps * sign` with one sign per (image, channel, column),
//!   clamped to [0,1]. L2 start: a 5x5 grid of `h/5`-sided squares, each filled with the
//!   [`l2_square_pattern`] times a random sign per (image, channel), rescaled to norm `eps`.
//! * Iteration `it` (0-based): `p = p_selection(p_init, it, n_queries)`, side
//!   `s = square_size(norm, p, c, h, w)`, one window position drawn per iteration and shared by
//!   the whole batch (as in AutoAttack; the NumPy release draws one per image and resamples a
//!   window that would leave the image unchanged — AutoAttack does not resample, and neither does
//!   this code). L-inf: the window gets `x_best + 2 eps * sign_c` (one sign per channel, shared by
//!   the batch), projected on the eps-ball and [0,1]. L2: the mass of the current perturbation in
//!   a first and a second window is moved into the first one, which gets a fresh pattern with a
//!   random sign per (image, channel); the whole perturbation is rescaled to norm `eps`.
//! * Only the points with a positive margin are queried; a candidate replaces a point's best
//!   when its margin is lower (or <= 0); the loop stops when no point is left.
//! * [`Attack::perturb`] attacks only the correctly classified points, over `n_restarts` runs
//!   (each run only on the points no run has fooled yet); a point that is never fooled is returned
//!   unchanged (clean), exactly as AutoAttack's `SquareAttack.perturb`.
//!
//! Randomness: every draw comes from torch's global generators, seeded by `tch::manual_seed`,
//! in the reference's order and shapes. The window positions and the L2 pattern orientation are
//! drawn on the CPU generator (as the reference draws them) and read on the host, which does not
//! wait for the device; the sign tensors are drawn on the attack's device (the reference draws
//! them on the CPU and copies them over). On the CPU the stream is therefore the reference's one:
//! with the same seed, the same model and one thread the run makes the same choices as
//! AutoAttack's `SquareAttack(seed=...)` (whose `perturb` calls `torch.manual_seed(seed)`; here
//! the caller seeds). On a GPU the stream is not the reference's, and a seed repeats a run only
//! with deterministic algorithms (`[compute] deterministic`, `--deterministic`): otherwise cuDNN
//! may pick other convolution algorithms from run to run, whose rounding can change a margin's
//! sign and so which points stay in the list (not measured on a GPU).
//!
//! Host synchronisation: one per iteration, the `nonzero` that lists the points still to fool
//! (its size must be known on the host to gather them, and the L2 draws are shaped by it); an
//! empty list ends the run, which is the reference's early stop, so the termination check costs
//! no sync of its own. Plus one `nonzero` per restart in `perturb`, and, for L2, the copies of
//! the few square patterns to the device, made before the loop. Nothing else in the loop waits
//! for the device (the window positions are CPU draws).
//!
//! `check_every = N > 1` (opt-in, for GPUs, where the per-iteration sync stalls the launch
//! queue; `eval --square-check-every N`) lists the points still to fool only every N
//! iterations. In between, the points of the last list are queried, and a point fooled since
//! then is frozen: its best, its margin and its query count no longer change, as if it had left
//! the list. The loop may run up to N - 1 iterations past the point where every point is
//! fooled, and `iterations` counts them. L-inf: the draws do not depend on the list's size, so
//! with row-independent forwards (eval mode) the run is that of `check_every = 1` up to the
//! forward's rounding, which may depend on the batch size (the points still listed are
//! computed in a larger batch): on the CPU the same examples, verdicts and query counts and
//! margins within 1e-5 (tests/square_check_every.rs); and the generator has advanced further
//! afterwards (AutoAttack reseeds before every attack and batch). L2: the per-point signs are drawn for the listed
//! points, so the stream, hence the examples, differ from the reference's (still a Square
//! attack with the same budget and schedule). The default, 1, is the reference.

use super::pgd::cw_margin;
use super::settings::{AttackConfig, AttackSettings};
use super::{correct, Attack, Classifier, ThreatNorm};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Square Attack hyperparameters (defaults: AutoAttack's, 5000 queries, p_init 0.8, 1 restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SquareConfig {
    #[serde(default = "default_norm")]
    pub norm: ThreatNorm,
    pub eps: f64,
    /// Iterations (one model query per remaining point each) per restart.
    #[serde(default = "default_n_queries")]
    pub n_queries: usize,
    /// Initial fraction of pixels changed per iteration (the square's area / (h*w)).
    #[serde(default = "default_p_init")]
    pub p_init: f64,
    #[serde(default = "one")]
    pub n_restarts: usize,
    /// List the points still to fool (one host sync) every this many iterations (1 = every
    /// iteration, the reference; see the module doc). Left out of the JSON when 1.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub check_every: usize,
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

fn default_norm() -> ThreatNorm {
    ThreatNorm::Linf
}
fn default_n_queries() -> usize {
    5000
}
fn default_p_init() -> f64 {
    0.8
}
fn one() -> usize {
    1
}

impl SquareConfig {
    /// AutoAttack's defaults: 5000 queries, p_init 0.8, one restart.
    pub fn new(norm: ThreatNorm, eps: f64) -> Self {
        SquareConfig {
            norm,
            eps,
            n_queries: default_n_queries(),
            p_init: default_p_init(),
            n_restarts: 1,
            check_every: 1,
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
        if !(self.p_init > 0.0 && self.p_init <= 1.0) {
            return Err(format!(
                "{field}.p_init must be in (0, 1], got {}",
                self.p_init
            ));
        }
        if self.n_restarts == 0 {
            return Err(format!("{field}.n_restarts must be >= 1"));
        }
        if self.check_every == 0 {
            return Err(format!(
                "{field}.check_every must be >= 1 (1 = every iteration)"
            ));
        }
        Ok(())
    }
}

/// The reference's schedule of `p`: the iteration is rescaled to a 10000-query budget,
/// `it' = int(it / n_queries * 10000)`, and `p = p_init / 2^j` where `j` counts the thresholds
/// 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 that `it'` exceeds (strictly).
pub fn p_selection(p_init: f64, it: usize, n_queries: usize) -> f64 {
    // Same operations as Python's `int(it / self.n_queries * 10000)` (true division, then
    // truncation), so the boundaries fall on the same iterations.
    let it = (it as f64 / n_queries as f64 * 10000.0) as usize;
    let halvings = [10usize, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
        .iter()
        .filter(|&&t| it > t)
        .count();
    p_init / f64::from(1u32 << halvings)
}

/// Side of the square for a fraction `p` of an image of `c x h x w`:
/// `round(sqrt(p * c*h*w / c))` (Python's round: halves to even), at least 1 (L-inf) or at
/// least 3 and made odd (L2), and at most `min(h, w)`.
pub fn square_size(norm: ThreatNorm, p: f64, c: usize, h: usize, w: usize) -> usize {
    let n_features = (c * h * w) as f64;
    let r = (p * n_features / c as f64).sqrt().round_ties_even() as usize;
    let s = match norm {
        ThreatNorm::Linf => r.max(1),
        ThreatNorm::L2 => {
            let s = r.max(3);
            if s % 2 == 0 {
                s + 1
            } else {
                s
            }
        }
    };
    s.min(h.min(w))
}

/// One rectangle of the L2 pattern (the reference's `eta_rectangles`): `rows x cols`, the sum
/// of centred concentric rectangles `k = 0, 1, ...` of sides `2k+1` weighted `1/(k+1)^2`,
/// normalised to unit L2 norm. Float32 on the CPU.
fn l2_rectangle(rows: usize, cols: usize) -> Tensor {
    let mut d = vec![0f32; rows * cols];
    let (rc, cc) = (rows / 2 + 1, cols / 2 + 1);
    let (mut r0, mut c0) = (rc as i64 - 1, cc as i64 - 1);
    for k in 0..rc.max(cc) as i64 {
        let kk = (k + 1) as f32;
        let v = 1.0f32 / (kk * kk);
        let (ra, rb) = (r0.max(0), (r0 + 2 * k + 1).min(rows as i64));
        let (ca, cb) = (c0.max(0), (c0 + 2 * k + 1).min(cols as i64));
        for r in ra..rb {
            for c in ca..cb {
                d[r as usize * cols + c as usize] += v;
            }
        }
        r0 -= 1;
        c0 -= 1;
    }
    let t = Tensor::from_slice(&d).view([rows as i64, cols as i64]);
    unit_l2(&t)
}

/// `t / sqrt(sum(t^2))` over the whole (2-D) tensor, with the reference's operations.
fn unit_l2(t: &Tensor) -> Tensor {
    t / t
        .pow_tensor_scalar(2)
        .sum_dim_intlist([0i64, 1].as_slice(), true, None::<Kind>)
        .sqrt()
}

/// The L2 square pattern of side `s` (the reference's `eta` before its random transposition):
/// the top `s/2` rows are a positive [`l2_rectangle`], the other rows a negative one, the whole
/// normalised to unit L2 norm. Float32 `[s, s]` on the CPU.
pub fn l2_square_pattern(s: usize) -> Tensor {
    let top = s / 2;
    let d = Tensor::cat(&[l2_rectangle(top, s), -l2_rectangle(s - top, s)], 0);
    unit_l2(&d)
}

/// One uniform draw in [0,1) from the CPU generator, read on the host (no device wait).
fn cpu_uniform() -> f32 {
    Tensor::rand([1i64].as_slice(), (Kind::Float, Device::Cpu)).double_value(&[0]) as f32
}

/// The reference's `random_int(0, high)`: `int(high * u)` in float32, i.e. in `0..high`
/// (and 0 when `high` is 0).
fn random_int(high: i64) -> i64 {
    (high as f32 * cpu_uniform()) as i64
}

/// The reference's `random_choice(shape)`: `sign(2u - 1)` (float32, values -1 / 1, 0 with
/// probability ~0), drawn on `device`.
fn random_sign(shape: &[i64], device: Device) -> Tensor {
    (Tensor::rand(shape, (Kind::Float, device)) * 2.0 - 1.0).sign()
}

/// Square's margin loss per point: `z_y - max_{k != y} z_k` (<= 0: misclassified).
pub fn margin_loss(logits: &Tensor, y: &Tensor) -> Tensor {
    -cw_margin(logits, y)
}

/// `sqrt(sum(t^2))` per sample, shaped `[n, 1, 1, 1]` (the reference's `lp_norm` for L2).
fn l2_per_sample(t: &Tensor) -> Tensor {
    let n = t.size()[0];
    t.pow_tensor_scalar(2)
        .view([n, -1])
        .sum_dim_intlist([-1i64].as_slice(), false, None::<Kind>)
        .sqrt()
        .view([n, 1, 1, 1])
}

/// A `len_h x len_w` window of a `[.., .., h, w]` tensor (a view).
fn window(t: &Tensor, vh: i64, vw: i64, len_h: i64, len_w: i64) -> Tensor {
    t.narrow(2, vh, len_h).narrow(3, vw, len_w)
}

/// Result of one run of the attack on every given point (the reference's `attack_single_run`).
pub struct SquareRun {
    /// Best point found per input, in B_eps(x) ∩ [0,1]^d.
    pub x_adv: Tensor,
    /// Its margin `z_y - max_{k != y} z_k` (<= 0: misclassified), float `[n]`.
    pub margin: Tensor,
    /// The margin of the starting point (stripes for L-inf), float `[n]`.
    pub init_margin: Tensor,
    /// Model queries spent per point, including the start, float `[n]`.
    pub n_queries: Tensor,
    /// Loop iterations run (at most `n_queries`; fewer when every point was fooled early).
    pub iterations: usize,
}

/// Square Attack.
#[derive(Debug, Clone)]
pub struct Square {
    pub cfg: SquareConfig,
}

impl Square {
    pub fn new(cfg: SquareConfig) -> Self {
        Square { cfg }
    }

    /// One run on all of `(x, y)` (NCHW images in [0,1], int64 labels), from a fresh random
    /// start; no point is skipped for being misclassified already (its margin is <= 0 at the
    /// start, so it is never queried again). Panics on an invalid config or a non-4-D input.
    pub fn run_once(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> SquareRun {
        if let Err(e) = self.cfg.validate("square") {
            panic!("{e}");
        }
        f.region(x.device(), || {
            tch::no_grad(|| {
                let x = x.detach();
                match self.cfg.norm {
                    ThreatNorm::Linf => self.run_linf(f, &x, y),
                    ThreatNorm::L2 => self.run_l2(f, &x, y),
                }
            })
        })
    }

    fn dims(x: &Tensor) -> (i64, i64, i64, i64) {
        x.size4()
            .unwrap_or_else(|_| panic!("square attack expects NCHW images, got {:?}", x.size()))
    }

    fn run_linf(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> SquareRun {
        let (n, c, h, w) = Self::dims(x);
        let (eps, dev, kind) = (self.cfg.eps, x.device(), x.kind());
        // Vertical stripes: one sign per (image, channel, column).
        let stripes = (random_sign(&[n, c, 1, w], dev) * eps).to_kind(kind);
        let x_best = (x + stripes).clamp(0.0, 1.0);
        let (lo, hi) = (x - eps, x + eps);
        let (cu, hu, wu) = (c as usize, h as usize, w as usize);
        self.search(f, x, y, x_best, |it, idx, x_best_curr| {
            let p = p_selection(self.cfg.p_init, it, self.cfg.n_queries);
            let s = square_size(ThreatNorm::Linf, p, cu, hu, wu) as i64;
            let vh = random_int(h - s);
            let vw = random_int(w - s);
            // One sign per channel, shared by the batch, filled into the window.
            let signs = (random_sign(&[c, 1, 1], dev) * (2.0 * eps)).to_kind(kind);
            let delta = Tensor::zeros([c, h, w], (kind, dev));
            delta.narrow(1, vh, s).narrow(2, vw, s).copy_(&signs);
            let lo = lo.index_select(0, idx);
            let hi = hi.index_select(0, idx);
            (x_best_curr + delta)
                .maximum(&lo)
                .minimum(&hi)
                .clamp(0.0, 1.0)
        })
    }

    fn run_l2(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> SquareRun {
        let (n, c, h, w) = Self::dims(x);
        let (eps, dev, kind) = (self.cfg.eps, x.device(), x.kind());
        let (cu, hu, wu) = (c as usize, h as usize, w as usize);
        let s0 = h / 5;
        assert!(
            s0 >= 1,
            "L2 square attack needs images at least 5 pixels high, got {h}"
        );
        // Every pattern the run can use (start and schedule), copied to the device before the
        // loop: side -> (pattern, its transpose), `[1, 1, s, s]`.
        let mut patterns: HashMap<i64, (Tensor, Tensor)> = HashMap::new();
        let mut add = |s: i64| {
            patterns.entry(s).or_insert_with(|| {
                let e = l2_square_pattern(s as usize);
                let t = e.tr().contiguous();
                let dev_of = |t: Tensor| t.to_device(dev).to_kind(kind).view([1, 1, s, s]);
                (dev_of(e), dev_of(t))
            });
        };
        add(s0);
        for it in 0..self.cfg.n_queries {
            let p = p_selection(self.cfg.p_init, it, self.cfg.n_queries);
            add(square_size(ThreatNorm::L2, p, cu, hu, wu) as i64);
        }
        // The reference's `eta(s)`: the pattern, transposed when a CPU draw exceeds 0.5.
        let eta = |s: i64| -> Tensor {
            let (e, t) = &patterns[&s];
            if cpu_uniform() > 0.5 {
                t.shallow_clone()
            } else {
                e.shallow_clone()
            }
        };

        // Start: a grid of s0-sided squares from row/column (h - 5 s0) / 2, each with the
        // pattern times a sign per (image, channel). (A square that would cross the border,
        // which only happens for images under 25 pixels, where the reference fails, is cut.)
        let delta_init = Tensor::zeros([n, c, h, w], (kind, dev));
        let sp = (h - s0 * 5) / 2;
        let mut vh = sp;
        for _ in 0..h / s0 {
            let mut vw = sp;
            for _ in 0..w / s0 {
                let e = eta(s0);
                let sg = random_sign(&[n, c, 1, 1], dev).to_kind(kind);
                let (lh, lw) = (s0.min(h - vh), s0.min(w - vw));
                if lh > 0 && lw > 0 {
                    let cell = window(&e, 0, 0, lh, lw) * sg;
                    let _ = window(&delta_init, vh, vw, lh, lw).g_add_(&cell);
                }
                vw += s0;
            }
            vh += s0;
        }
        let normalize = |d: &Tensor| d / (l2_per_sample(d) + 1e-12);
        let x_best = (x + normalize(&delta_init) * eps).clamp(0.0, 1.0);
        // float32(eps)^2, as the reference's `(eps * ones) ** 2`.
        let eps2 = f64::from((eps as f32) * (eps as f32));

        self.search(f, x, y, x_best, |it, idx, x_best_curr| {
            let k = idx.size()[0];
            let x_curr = x.index_select(0, idx);
            let mut delta = x_best_curr - &x_curr;
            let p = p_selection(self.cfg.p_init, it, self.cfg.n_queries);
            let s = square_size(ThreatNorm::L2, p, cu, hu, wu) as i64;
            let (vh, vw) = (random_int(h - s), random_int(w - s));
            let (vh2, vw2) = (random_int(h - s), random_int(w - s));
            let win1 = window(&delta, vh, vw, s, s);
            let norms_win1 = win1
                .pow_tensor_scalar(2)
                .sum_dim_intlist([-2i64, -1].as_slice(), true, None::<Kind>)
                .sqrt();
            let mask = Tensor::zeros([1, 1, h, w], (kind, dev));
            let _ = window(&mask, vh, vw, s, s).fill_(1.0);
            let _ = window(&mask, vh2, vw2, s, s).fill_(1.0);
            let norms_image = l2_per_sample(&delta);
            let norms_windows = (&delta * &mask)
                .pow_tensor_scalar(2)
                .sum_dim_intlist([-2i64, -1].as_slice(), true, None::<Kind>)
                .sqrt();
            let fresh = eta(s) * random_sign(&[k, c, 1, 1], dev).to_kind(kind);
            let new = fresh + &win1 / (norms_win1 + 1e-12);
            // Rescale the new window so that the total norm stays eps: it receives the budget
            // left over (per channel) plus what both windows held.
            let budget = ((norms_image.pow_tensor_scalar(2).neg() + eps2).clamp_min(0.0)
                / c as f64
                + norms_windows.pow_tensor_scalar(2))
            .sqrt();
            let new = &new
                / (new
                    .pow_tensor_scalar(2)
                    .sum_dim_intlist([-2i64, -1].as_slice(), true, None::<Kind>)
                    .sqrt()
                    + 1e-12)
                * budget;
            let _ = window(&delta, vh2, vw2, s, s).fill_(0.0);
            window(&delta, vh, vw, s, s).copy_(&new);
            delta = normalize(&delta) * eps;
            (x_curr + delta).clamp(0.0, 1.0)
        })
    }

    /// The shared random search: `propose(it, idx, x_best[idx])` gives the candidates of the
    /// points `idx` still to fool at iteration `it`; a candidate is kept when its margin is lower
    /// than the point's best or <= 0.
    fn search(
        &self,
        f: &Classifier,
        x: &Tensor,
        y: &Tensor,
        mut x_best: Tensor,
        mut propose: impl FnMut(usize, &Tensor, &Tensor) -> Tensor,
    ) -> SquareRun {
        let n = x.size()[0];
        let dev = x.device();
        let init_margin = margin_loss(&f.logits(&x_best), y);
        let mut margin = init_margin.copy();
        let mut n_queries = Tensor::ones([n], (Kind::Float, dev));
        let mut iterations = 0;
        let every = self.cfg.check_every.max(1);
        let (mut idx, mut k) = (Tensor::zeros([0], (Kind::Int64, dev)), 0);
        for it in 0..self.cfg.n_queries {
            let fresh = it % every == 0;
            if fresh {
                // The one host synchronisation: which points are left.
                idx = margin.gt(0.0).nonzero().squeeze_dim(1);
                k = idx.size()[0];
                if k == 0 {
                    break;
                }
            }
            iterations += 1;
            let x_best_curr = x_best.index_select(0, &idx);
            let y_curr = y.index_select(0, &idx);
            let margin_curr = margin.index_select(0, &idx);
            let x_new = propose(it, &idx, &x_best_curr);
            let m = margin_loss(&f.logits(&x_new), &y_curr);
            let mut better = m.lt_tensor(&margin_curr).logical_or(&m.le(0.0));
            // Between checks: points fooled since the last list stay as they are.
            let active = (!fresh).then(|| margin_curr.gt(0.0));
            if let Some(a) = &active {
                better = better.logical_and(a);
            }
            let _ = margin.index_copy_(0, &idx, &m.where_self(&better, &margin_curr));
            let keep = better.view([k, 1, 1, 1]);
            let _ = x_best.index_copy_(0, &idx, &x_new.where_self(&keep, &x_best_curr));
            let counted = match &active {
                Some(a) => a.to_kind(Kind::Float),
                None => Tensor::ones([k], (Kind::Float, dev)),
            };
            let _ = n_queries.index_add_(0, &idx, &counted);
        }
        SquareRun {
            x_adv: x_best,
            margin,
            init_margin,
            n_queries,
            iterations,
        }
    }
}

impl Attack for Square {
    fn name(&self) -> String {
        let r = if self.cfg.n_restarts > 1 {
            format!("x{}", self.cfg.n_restarts)
        } else {
            String::new()
        };
        format!("square-{}{r}", self.cfg.n_queries)
    }

    fn config(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.cfg).expect("serialisable");
        v["attack"] = "square".into();
        v["loss"] = "margin".into();
        v["targeted"] = false.into();
        v["rescale_schedule"] = true.into();
        v
    }

    /// AutoAttack's `SquareAttack.perturb`: the correctly classified points are attacked
    /// `n_restarts` times (each restart only on those not fooled yet); a fooled point gets the
    /// run's example, the others are returned unchanged.
    fn perturb(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> Tensor {
        f.region(x.device(), || self.perturb_in(f, x, y))
    }
}

impl Square {
    /// [`Attack::perturb`] inside its autocast region.
    fn perturb_in(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let x = x.detach();
            let mut adv = x.copy();
            let mut acc = correct(&f.logits(&x), y);
            for _ in 0..self.cfg.n_restarts {
                let ind = acc.nonzero().squeeze_dim(1);
                let k = ind.size()[0];
                if k == 0 {
                    break;
                }
                let xs = x.index_select(0, &ind);
                let ys = y.index_select(0, &ind);
                let run = self.run_once(f, &xs, &ys);
                let acc_curr = correct(&f.logits(&run.x_adv), &ys);
                let mut shape = vec![k];
                shape.resize(x.dim(), 1);
                let fooled = acc_curr.logical_not().view(shape.as_slice());
                let _ = adv.index_copy_(0, &ind, &run.x_adv.where_self(&fooled, &xs));
                let _ = acc.index_copy_(0, &ind, &acc_curr);
            }
            adv
        })
    }
}

/// `square`: [`SquareConfig::new`] with the queries and restarts given.
impl AttackConfig for SquareConfig {
    type Variant = ();

    fn from_settings((): (), s: &AttackSettings, _steps: usize) -> Result<Self, String> {
        let base = SquareConfig::new(s.norm, s.eps);
        let cfg = SquareConfig {
            n_queries: s.queries.unwrap_or(base.n_queries),
            n_restarts: s.restarts.unwrap_or(base.n_restarts),
            check_every: s.square_check_every.unwrap_or(base.check_every),
            ..base
        };
        cfg.validate("square")?;
        Ok(cfg)
    }

    fn build(&self) -> Box<dyn Attack> {
        Box::new(Square::new(self.clone()))
    }
}
