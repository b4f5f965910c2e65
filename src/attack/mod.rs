//! Attacks. Every attack sees the model only as a fixed function `x -> logits` (a
//! [`Classifier`]), built from one model, one route and one mode, so it cannot switch
//! normalisation branches.
//!
//! The files, lowest first: this one (the `Classifier`, the [`Attack`] trait, projections and
//! the shared parameter checks), [`settings`] (what every attack is made from), one file per
//! attack ([`fgsm`], [`pgd`], [`apgd`], [`fab`], [`square`]), and the registry [`spec`], the only
//! file that names them all.

pub mod apgd;
pub mod draw;
pub mod fab;
pub mod fgsm;
pub mod pgd;
pub mod settings;
pub mod spec;
pub mod square;

pub use apgd::{checkpoints, dlr_loss, dlr_targeted_loss, Apgd, ApgdConfig, ApgdLoss};
pub use fab::{Fab, FabConfig};
pub use fgsm::Fgsm;
pub use pgd::{Pgd, PgdConfig};
pub use settings::{AttackConfig, AttackSettings, Target};
pub use spec::{AttackName, AttackSpec};
pub use square::{p_selection, square_size, Square, SquareConfig, SquareRun};

use crate::checkpoint::torchscript::ScriptModel;
use crate::compute::{self, Compute, Precision};
use crate::nn::{Ctx, Mode, Model};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// What a [`Classifier`] computes: one of our models under a route and mode, or a TorchScript
/// module (eval mode, frozen parameters; [`ScriptModel`]).
#[derive(Clone, Copy)]
pub enum Backend<'a> {
    Native { model: &'a dyn Model, ctx: Ctx },
    Script(&'a ScriptModel),
}

/// The attacked function: a model frozen to one route and mode (or a TorchScript module),
/// computed with explicit [`Compute`] settings (the defaults unless
/// [`Classifier::with_compute`] says otherwise): the precision of attack generation, BN folding,
/// and (for row-independent eval-mode forwards on CPU) micro-batches of `attack_chunk` rows.
pub struct Classifier<'a> {
    pub backend: Backend<'a>,
    /// Whether rows are computed independently (micro-batches are exact).
    row_independent: bool,
    /// Rows per forward/backward micro-batch (0 = whole batch).
    chunk: i64,
    precision: Precision,
    fold: bool,
}

impl<'a> Classifier<'a> {
    /// `model` under `ctx` with the default compute settings ([`Compute::default`]).
    pub fn new(model: &'a dyn Model, ctx: Ctx) -> Self {
        // Micro-batching is exact only when every row is computed alone: running statistics,
        // one route, no norm layer recording its inputs or outputs.
        let row_independent = ctx.mode == Mode::Eval
            && ctx.segments.is_empty()
            && model.norms().iter().all(|(_, n)| !n.recording());
        Classifier {
            backend: Backend::Native { model, ctx },
            row_independent,
            chunk: 0,
            precision: Precision::Fp32,
            fold: false,
        }
        .with_compute(&Compute::default())
    }

    /// A TorchScript module as the attacked function; `row_independent`: its eval-mode rows do
    /// not depend on each other (checked by [`ScriptModel::probe`]), so micro-batches are exact.
    pub fn script(module: &'a ScriptModel, row_independent: bool) -> Self {
        Classifier {
            backend: Backend::Script(module),
            row_independent,
            chunk: 0,
            precision: Precision::Fp32,
            fold: false,
        }
        .with_compute(&Compute::default())
    }

    /// The same function computed with the settings `c` (a run's or an evaluation's).
    pub fn with_compute(mut self, c: &Compute) -> Self {
        self.chunk = if self.row_independent {
            c.attack_chunk as i64
        } else {
            0
        };
        self.precision = c.precision_attack;
        self.fold = c.fold_bn;
        self
    }

    /// Rows per micro-batch for a batch of `n` rows on `device` (`n` = no split).
    fn rows_per_chunk(&self, n: i64, device: tch::Device) -> i64 {
        if self.chunk > 0 && self.chunk < n && device == tch::Device::Cpu {
            self.chunk
        } else {
            n
        }
    }

    /// Run `f` (a whole attack on a batch on `device`) inside one autocast region of the attack
    /// precision: its forwards reuse autocast's casts of the weights it can cache instead of
    /// re-casting them every iteration, and fp32 verdicts ([`Classifier::predict`]) inside it
    /// switch autocast off without dropping that cache ([`compute::with_precision`]). Ops
    /// outside the model see autocast too; the attacks do their own arithmetic in float32 (no
    /// matmul or convolution), where autocast changes nothing.
    pub fn region<T>(&self, device: tch::Device, f: impl FnOnce() -> T) -> T {
        compute::with_precision(self.precision, device, f)
    }

    /// Logits (float32, [`crate::nn::models::Head`]) of one (micro-)batch, BN folded when
    /// possible, in `precision`.
    fn forward_in(&self, x: &Tensor, precision: Precision) -> Tensor {
        compute::with_precision(precision, x.device(), || match self.backend {
            Backend::Native { model, ctx } => {
                if self.fold {
                    if let Some(z) = model.forward_folded(x, &ctx) {
                        return z;
                    }
                }
                model.forward(x, &ctx)
            }
            Backend::Script(m) => m.forward(x),
        })
    }

    /// `f(x)` as the attack computes it: float32 logits of the model under `ctx`, in the
    /// attack precision. Without autograd recording (inside `no_grad`) the batch is computed in
    /// micro-batches when allowed.
    pub fn logits(&self, x: &Tensor) -> Tensor {
        self.logits_in(x, self.precision)
    }

    /// `f(x)` in float32 whatever the attack precision: for verdicts (clean and robust
    /// accuracy, AutoAttack's which-points-are-left, gradient sanity checks), so that bf16 changes
    /// how adversarial examples are generated, never how they are judged.
    pub fn predict(&self, x: &Tensor) -> Tensor {
        self.logits_in(x, Precision::Fp32)
    }

    fn logits_in(&self, x: &Tensor, precision: Precision) -> Tensor {
        let n = x.size().first().copied().unwrap_or(0);
        let step = self.rows_per_chunk(n, x.device());
        if step >= n || compute::grad_enabled() {
            return self.forward_in(x, precision);
        }
        let parts: Vec<Tensor> = (0..n)
            .step_by(step as usize)
            .map(|s| self.forward_in(&x.narrow(0, s, step.min(n - s)), precision))
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// Logits, per-row loss and input gradient of the summed loss at `x` (all detached):
    /// `loss = per_row(logits, start, len)` is the `[len]` loss of rows `start..start + len`
    /// (so the caller can take the matching rows of its labels), and
    /// `grad = d(sum_i loss_i)/dx`. Parameters accumulate nothing. Forward and backward run in
    /// micro-batches when allowed; every row's values are those of the whole-batch computation.
    pub fn loss_grad(
        &self,
        x: &Tensor,
        per_row: impl Fn(&Tensor, i64, i64) -> Tensor,
    ) -> (Tensor, Tensor, Tensor) {
        let n = x.size()[0];
        let step = self.rows_per_chunk(n, x.device());
        // Data-parallel sync BatchNorm: the summed loss weighs every worker's rows alike.
        let _summed = crate::dist::sync_bn_summed_losses();
        let one = |start: i64, len: i64| {
            let xr = if len == n {
                x.detach()
            } else {
                x.narrow(0, start, len).detach()
            }
            .set_requires_grad(true);
            let z = self.forward_in(&xr, self.precision);
            let loss = per_row(&z, start, len);
            let g = input_grad(&loss.sum(loss.kind()), &xr);
            (z.detach(), loss.detach(), g)
        };
        if step >= n {
            return one(0, n);
        }
        let (mut zs, mut ls, mut gs) = (vec![], vec![], vec![]);
        for start in (0..n).step_by(step as usize) {
            let (z, l, g) = one(start, step.min(n - start));
            zs.push(z);
            ls.push(l);
            gs.push(g);
        }
        (
            Tensor::cat(&zs, 0),
            Tensor::cat(&ls, 0),
            Tensor::cat(&gs, 0),
        )
    }
}

/// Rows `start..start + len` of `t`.
pub fn rows(t: &Tensor, start: i64, len: i64) -> Tensor {
    if start == 0 && len == t.size()[0] {
        t.shallow_clone()
    } else {
        t.narrow(0, start, len)
    }
}

/// The kind the random starts are drawn in: float32 (the reference's default dtype), or float64
/// for float64 inputs (the reference run in float64, under torch's float64 default dtype, draws
/// them in float64). Drawn on the CPU, so the start does not depend on the device.
pub(crate) fn noise_kind(input: Kind) -> Kind {
    if input == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// Threat model norm (`linf`, also `l-inf` / `inf`; `l2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ThreatNorm {
    /// L-infinity ball (per-pixel budget).
    #[value(alias = "l-inf", alias = "inf")]
    Linf,
    /// L2 ball.
    L2,
}

crate::choice::value_enum_text!(ThreatNorm => "norm");

/// How the shared attack settings are named in messages: recipe fields under one table
/// (`train.attack.eps`, ...) or `eval` flags (`--eps`, ...), with the way to allow a large
/// L-inf eps in that place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamNames {
    pub eps: String,
    pub steps: String,
    pub step_size: String,
    pub restarts: String,
    /// How to accept an L-inf eps above 1 (named in the error).
    pub allow_large_eps: String,
}

impl ParamNames {
    /// Fields of the recipe table `table` (e.g. `train.attack`).
    pub fn recipe(table: &str) -> ParamNames {
        ParamNames {
            eps: format!("{table}.eps"),
            steps: format!("{table}.steps"),
            step_size: format!("{table}.step_size"),
            restarts: format!("{table}.restarts"),
            allow_large_eps: "set allow_large_eps = true at the top of the recipe (or --set \
                              allow_large_eps=true)"
                .into(),
        }
    }

    /// The flags of `advtrain eval`.
    pub fn flags() -> ParamNames {
        ParamNames {
            eps: "--eps".into(),
            steps: "--steps".into(),
            step_size: "--step-size".into(),
            restarts: "--restarts".into(),
            allow_large_eps: "pass --allow-large-eps".into(),
        }
    }
}

/// The settings every attack family shares (`None` = not used by the attack or left to its
/// default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttackParams {
    pub norm: ThreatNorm,
    pub eps: f64,
    pub steps: Option<usize>,
    pub step_size: Option<f64>,
    pub restarts: Option<usize>,
    /// Accept an L-inf eps above 1.
    pub allow_large_eps: bool,
}

/// Error unless `eps` is a usable budget: finite, `>= 0`, and for L-inf at most 1 (the whole
/// [0, 1] pixel range; a larger value is almost always a budget in 0..255 units) unless
/// `allow_large_eps`. `name` is the field or flag; `allow` says how to accept a large eps.
pub fn check_eps(
    name: &str,
    norm: ThreatNorm,
    eps: f64,
    allow_large_eps: bool,
    allow: &str,
) -> Result<(), String> {
    if !(eps >= 0.0) || !eps.is_finite() {
        return Err(format!("{name} must be a finite number >= 0, got {eps}"));
    }
    if norm == ThreatNorm::Linf && eps > 1.0 && !allow_large_eps {
        return Err(format!(
            "{name} = {eps} is above 1: L-inf budgets are in [0, 1] pixel units, where eps 1 \
             already allows any image (did you mean {eps}/255 = {:.6}?); {allow} to use it anyway",
            eps / 255.0
        ));
    }
    Ok(())
}

/// The one check of the shared attack settings, used by recipe validation
/// ([`PgdConfig::validate`]) and by `eval`'s arguments: eps ([`check_eps`]), steps `>= 1`, a
/// finite step size `>= 0` that is `> 0` when eps is (a zero step never moves), restarts `>= 1`.
pub fn check_attack_params(names: &ParamNames, p: &AttackParams) -> Result<(), String> {
    check_eps(
        &names.eps,
        p.norm,
        p.eps,
        p.allow_large_eps,
        &names.allow_large_eps,
    )?;
    if let Some(steps) = p.steps {
        if steps == 0 {
            return Err(format!("{} must be >= 1, got 0", names.steps));
        }
    }
    if let Some(a) = p.step_size {
        if !(a >= 0.0) || !a.is_finite() {
            return Err(format!(
                "{} must be a finite number >= 0, got {a}",
                names.step_size
            ));
        }
        if a == 0.0 && p.eps > 0.0 {
            return Err(format!(
                "{} must be > 0 when {} = {} > 0 (a zero step never moves), got {a}",
                names.step_size, names.eps, p.eps
            ));
        }
    }
    if let Some(r) = p.restarts {
        if r == 0 {
            return Err(format!("{} must be >= 1, got 0", names.restarts));
        }
    }
    Ok(())
}

/// An attack: maps clean images and labels to adversarial images in B_eps(x) ∩ [0,1]^d.
pub trait Attack {
    /// Short name, e.g. `pgd-20`.
    fn name(&self) -> String;
    /// Every hyperparameter, for printing and for result files.
    fn config(&self) -> serde_json::Value;
    /// Adversarial examples for `(x, y)` against `f`. Parameters receive no gradient.
    fn perturb(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> Tensor;
}

/// Gradient of `loss` with respect to `x` only (parameters accumulate nothing).
pub fn input_grad(loss: &Tensor, x: &Tensor) -> Tensor {
    Tensor::run_backward(&[loss], &[x], false, false)
        .pop()
        .expect("one gradient")
}

/// Per-sample L2 norm over all but the first dimension, shaped `[N,1,1,1]`-broadcastable.
pub fn per_sample_l2(t: &Tensor) -> Tensor {
    let n = t.size()[0];
    let flat = t.view([n, -1]);
    let mut shape = vec![n];
    shape.extend(std::iter::repeat(1).take(t.dim() - 1));
    flat.norm_scalaropt_dim(2.0, [1i64].as_slice(), false)
        .view(shape.as_slice())
}

/// Project `x_adv` onto B_eps(x) in `norm`, then clamp to [0,1].
pub fn project(x_adv: &Tensor, x: &Tensor, eps: f64, norm: ThreatNorm) -> Tensor {
    let delta = x_adv - x;
    let delta = match norm {
        ThreatNorm::Linf => delta.clamp(-eps, eps),
        ThreatNorm::L2 => {
            let scale = (eps / (per_sample_l2(&delta) + 1e-12)).clamp_max(1.0);
            delta * scale
        }
    };
    (x + delta).clamp(0.0, 1.0)
}

/// Boolean mask of correctly classified points.
pub fn correct(logits: &Tensor, y: &Tensor) -> Tensor {
    logits.argmax(-1, false).eq_tensor(y)
}

/// Count of `true` in a boolean tensor (one host sync).
pub fn count(mask: &Tensor) -> i64 {
    mask.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[])
}

/// Cross-entropy `-log softmax(z)_y`, computed in the logits' own precision (tch's
/// `cross_entropy_for_logits` casts to float32), reduced by `reduction`.
pub fn cross_entropy(logits: &Tensor, y: &Tensor, reduction: tch::Reduction) -> Tensor {
    logits
        .log_softmax(-1, logits.kind())
        .g_nll_loss::<Tensor>(y, None, reduction, -100)
}
