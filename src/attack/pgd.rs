//! PGD (Madry et al.) in L-inf and L2 with random restarts (per-point worst case).
//!
//! L-inf step: x <- Proj(x + alpha * sign(g)); L2 step: x <- Proj(x + alpha * g / ||g||_2);
//! Proj = projection onto B_eps(x0) followed by clamping to [0,1].

pub use super::settings::Target;
use super::settings::{AttackConfig, AttackSettings};
use super::{
    correct, cross_entropy, draw, per_sample_l2, project, rows, Attack, Classifier, ThreatNorm,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Starting point of each restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// Uniform in B_eps(x) (L-inf: U(-eps,eps) per pixel; L2: uniform direction, radius eps*U^(1/d)).
    Uniform,
    /// x + 0.001 * N(0, I) (the TRADES start).
    Normal,
    /// x itself.
    Zero,
}

/// Loss maximised by the attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgdLoss {
    /// Cross-entropy with the true label.
    Ce,
    /// Carlini-Wagner margin: max_{k != y} z_k - z_y.
    Cw,
    /// Targeted cross-entropy: maximise `-CE(f(x'), t)`, i.e. pull `x'` towards the target class
    /// `t` chosen by [`PgdConfig::target`].
    TargetedCe,
    /// TRADES' inner loss: `KL(softmax(f(x)) || softmax(f(x')))` summed over classes, with the
    /// clean distribution fixed (no gradient) at the start of the attack.
    Kl,
}

/// PGD hyperparameters (defaults: Madry's CIFAR-10 L-inf setting, PGD-10, step eps/4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgdConfig {
    #[serde(default = "default_norm")]
    pub norm: ThreatNorm,
    pub eps: f64,
    /// Step size alpha.
    pub step_size: f64,
    pub steps: usize,
    #[serde(default = "one")]
    pub restarts: usize,
    #[serde(default = "default_init")]
    pub init: Init,
    #[serde(default = "default_loss")]
    pub loss: PgdLoss,
    /// Target choice for `loss = "targeted-ce"` (ignored otherwise).
    #[serde(default = "default_target")]
    pub target: Target,
}

fn default_norm() -> ThreatNorm {
    ThreatNorm::Linf
}
fn one() -> usize {
    1
}
fn default_init() -> Init {
    Init::Uniform
}
fn default_loss() -> PgdLoss {
    PgdLoss::Ce
}
fn default_target() -> Target {
    Target::Random
}

impl PgdConfig {
    /// `steps` steps of size `step_size`, uniform start, one restart, CE.
    pub fn new(norm: ThreatNorm, eps: f64, step_size: f64, steps: usize) -> Self {
        PgdConfig {
            norm,
            eps,
            step_size,
            steps,
            restarts: 1,
            init: Init::Uniform,
            loss: PgdLoss::Ce,
            target: Target::Random,
        }
    }

    /// The derived validation / probe attack (every place that needs "a PGD at this budget"
    /// without its own settings: validation, the overfitting check, BN re-estimation on
    /// adversarial data, the analyses): PGD-`steps` with step `eps / 4`, uniform start, CE, in
    /// the caller's norm (the recipe's, so an L2 recipe is probed in L2).
    pub fn probe(norm: ThreatNorm, eps: f64, steps: usize) -> Self {
        PgdConfig::new(norm, eps, eps / 4.0, steps)
    }

    /// TRADES' inner maximisation: KL to the clean prediction from `x + 0.001 * N(0, I)`.
    pub fn trades(norm: ThreatNorm, eps: f64, step_size: f64, steps: usize) -> Self {
        PgdConfig {
            init: Init::Normal,
            loss: PgdLoss::Kl,
            ..PgdConfig::new(norm, eps, step_size, steps)
        }
    }

    /// Checks on the values, naming the offending field of the recipe table `field` (e.g.
    /// `train.attack`): the shared [`super::check_attack_params`] (eps, steps, step size,
    /// restarts), with an L-inf eps above 1 refused unless `allow_large_eps`.
    pub fn validate(&self, field: &str, allow_large_eps: bool) -> Result<(), String> {
        super::check_attack_params(
            &super::ParamNames::recipe(field),
            &super::AttackParams {
                norm: self.norm,
                eps: self.eps,
                steps: Some(self.steps),
                step_size: Some(self.step_size),
                restarts: Some(self.restarts),
                allow_large_eps,
            },
        )
    }
}

/// Projected gradient descent.
#[derive(Debug, Clone)]
pub struct Pgd {
    pub cfg: PgdConfig,
}

impl Pgd {
    pub fn new(cfg: PgdConfig) -> Self {
        Pgd { cfg }
    }

    fn start(&self, x: &Tensor) -> Tensor {
        let eps = self.cfg.eps;
        match self.cfg.init {
            Init::Zero => x.copy(),
            Init::Normal => (x + draw::randn_like(x) * 0.001).clamp(0.0, 1.0),
            Init::Uniform => match self.cfg.norm {
                ThreatNorm::Linf => (x + draw::rand_like(x) * (2.0 * eps) - eps).clamp(0.0, 1.0),
                ThreatNorm::L2 => {
                    let d = (x.numel() / x.size()[0] as usize) as f64;
                    let dir = draw::randn_like(x);
                    let dir = &dir / (per_sample_l2(&dir) + 1e-12);
                    let r = draw::rand_like(&per_sample_l2(x)).pow_tensor_scalar(1.0 / d) * eps;
                    project(&(x + dir * r), x, eps, ThreatNorm::L2)
                }
            },
        }
    }

    /// What the loss needs besides the label, fixed once per batch from the clean logits:
    /// the target classes (targeted CE) or the clean distribution (KL).
    fn reference(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> Option<Tensor> {
        match self.cfg.loss {
            PgdLoss::Ce | PgdLoss::Cw => None,
            PgdLoss::Kl => Some(tch::no_grad(|| {
                let z = f.logits(x);
                z.softmax(-1, z.kind())
            })),
            PgdLoss::TargetedCe => Some(tch::no_grad(|| match self.cfg.target {
                Target::Random => random_other_class(y, f.logits(x).size()[1]),
                Target::LeastLikely => f
                    .logits(x)
                    .scatter_value(1, &y.unsqueeze(1), f64::INFINITY)
                    .argmin(-1, false),
                Target::RunnerUp => {
                    let z = f.logits(x);
                    z.scatter_value(1, &y.unsqueeze(1), f64::NEG_INFINITY)
                        .argmax(-1, false)
                }
            })),
        }
    }

    /// Per-row loss of rows `start..start + len` (summed by the caller, so each sample's
    /// gradient is unscaled).
    fn loss(
        &self,
        logits: &Tensor,
        y: &Tensor,
        reference: Option<&Tensor>,
        start: i64,
        len: i64,
    ) -> Tensor {
        let y = rows(y, start, len);
        match (self.cfg.loss, reference) {
            (PgdLoss::Ce, _) => cross_entropy(logits, &y, tch::Reduction::None),
            (PgdLoss::Cw, _) => cw_margin(logits, &y),
            (PgdLoss::TargetedCe, Some(t)) => {
                -cross_entropy(logits, &rows(t, start, len), tch::Reduction::None)
            }
            (PgdLoss::Kl, Some(p)) => kl_to_clean(logits, &rows(p, start, len)),
            (loss, None) => unreachable!("{loss:?} needs its reference tensor"),
        }
    }

    /// Target classes used by a targeted run (`None` for untargeted losses).
    pub fn targets(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> Option<Tensor> {
        match self.cfg.loss {
            PgdLoss::TargetedCe => self.reference(f, x, y),
            _ => None,
        }
    }

    /// One run of PGD from a fresh start. L-inf steps are done in place with the projection
    /// and the [0,1] clamp fused into one clamp to precomputed bounds:
    /// `x' <- clamp(x' + alpha sign(g), max(x - eps, 0), min(x + eps, 1))`.
    fn run_once(
        &self,
        f: &Classifier,
        x: &Tensor,
        y: &Tensor,
        reference: Option<&Tensor>,
    ) -> Tensor {
        let (eps, alpha) = (self.cfg.eps, self.cfg.step_size);
        let mut x_adv = self.start(x).detach();
        let loss = |z: &Tensor, start: i64, len: i64| self.loss(z, y, reference, start, len);
        match self.cfg.norm {
            ThreatNorm::Linf => {
                let lo = (x - eps).clamp_min(0.0);
                let hi = (x + eps).clamp_max(1.0);
                for _ in 0..self.cfg.steps {
                    let (_, _, mut g) = f.loss_grad(&x_adv, loss);
                    let _ = g.sign_().g_mul_scalar_(alpha);
                    let _ = x_adv.g_add_(&g).clamp_tensor_(Some(&lo), Some(&hi));
                }
            }
            ThreatNorm::L2 => {
                for _ in 0..self.cfg.steps {
                    let (_, _, g) = f.loss_grad(&x_adv, loss);
                    let step = &g * (alpha / (per_sample_l2(&g) + 1e-12));
                    x_adv = project(&(x_adv + step), x, eps, ThreatNorm::L2);
                }
            }
        }
        x_adv
    }
}

/// A class drawn uniformly from the `n_classes - 1` classes other than `y`:
/// `(y + 1 + floor(U * (n - 1))) mod n`.
pub fn random_other_class(y: &Tensor, n_classes: i64) -> Tensor {
    let shift = (draw::rand(&y.size(), (Kind::Float, y.device())) * (n_classes - 1) as f64)
        .floor()
        .to_kind(Kind::Int64)
        .clamp_max(n_classes - 2);
    (y + 1 + shift).remainder(n_classes)
}

/// Per-sample `KL(p || softmax(z)) = sum_k p_k (log p_k - log softmax(z)_k)`, with `0 log 0 = 0`
/// (PyTorch's `KLDivLoss` on `log_softmax(z)` and `p`, before reduction over the batch).
pub fn kl_to_clean(logits: &Tensor, p: &Tensor) -> Tensor {
    let log_q = logits.log_softmax(-1, logits.kind());
    let plogp = p.xlogy(p);
    (plogp - p * log_q).sum_dim_intlist([1i64].as_slice(), false, logits.kind())
}

/// CW margin per sample: max_{k != y} z_k - z_y.
pub fn cw_margin(logits: &Tensor, y: &Tensor) -> Tensor {
    let yy = y.unsqueeze(1);
    let z_y = logits.gather(1, &yy, false).squeeze_dim(1);
    let others = logits.scatter_value(1, &yy, f64::NEG_INFINITY);
    others.amax([1i64].as_slice(), false) - z_y
}

impl Attack for Pgd {
    fn name(&self) -> String {
        let r = if self.cfg.restarts > 1 {
            format!("x{}", self.cfg.restarts)
        } else {
            String::new()
        };
        let loss = match self.cfg.loss {
            PgdLoss::Ce => "",
            PgdLoss::Cw => "-cw",
            PgdLoss::TargetedCe => "-t",
            PgdLoss::Kl => "-kl",
        };
        format!("pgd{loss}-{}{r}", self.cfg.steps)
    }

    fn config(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.cfg).expect("serialisable");
        v["attack"] = "pgd".into();
        v
    }

    /// Runs `restarts` times; a point keeps the first restart's example that fools the model,
    /// else the last one (per-point worst case).
    fn perturb(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> Tensor {
        f.region(x.device(), || self.perturb_in(f, x, y))
    }
}

impl Pgd {
    /// [`Attack::perturb`] inside its autocast region.
    fn perturb_in(&self, f: &Classifier, x: &Tensor, y: &Tensor) -> Tensor {
        let x = x.detach();
        let reference = self.reference(f, &x, y);
        let mut best = self.run_once(f, &x, y, reference.as_ref());
        for _ in 1..self.cfg.restarts {
            let still = tch::no_grad(|| correct(&f.logits(&best), y));
            let cand = self.run_once(f, &x, y, reference.as_ref());
            let mut shape = vec![-1i64];
            shape.resize(x.dim(), 1);
            let mask = still.view(shape.as_slice());
            best = cand.where_self(&mask, &best);
        }
        best
    }
}

/// `eval`'s PGD family (`pgd`, `pgd-t`, `pgd-kl`, `cw`, told apart by their loss and start in
/// the registry): [`PgdConfig::new`] with step `2.5 * eps / steps` unless given.
impl AttackConfig for PgdConfig {
    type Variant = (PgdLoss, Init);

    fn from_settings(
        (loss, init): (PgdLoss, Init),
        s: &AttackSettings,
        steps: usize,
    ) -> Result<Self, String> {
        let step_size = s.step_size.unwrap_or(2.5 * s.eps / steps as f64);
        let base = PgdConfig::new(s.norm, s.eps, step_size, steps);
        Ok(PgdConfig {
            restarts: s.restarts.unwrap_or(base.restarts),
            init,
            loss,
            target: s.target,
            ..base
        })
    }

    fn build(&self) -> Box<dyn Attack> {
        Box::new(Pgd::new(self.clone()))
    }
}
