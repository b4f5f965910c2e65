//! Gradient conflict (ARAT, METHODS.md section 4): how far the parameter gradients of two loss
//! terms point in different directions, per parameter tensor, per layer and overall.
//!
//! For one batch `(x, y)` and its PGD example `x'` (L-inf, `steps` steps of eps/4, uniform start,
//! through the adversarial route in eval mode), the gradients of two [`Term`]s with respect to
//! every trainable variable are computed separately (forwards in [`Mode::TrainFrozen`]: batch
//! statistics, running statistics untouched) and compared by [`conflict`]: cosine similarity,
//! the fraction of scalar parameters whose two gradient components have opposite signs, and both
//! norms.
//!
//! Besides the classification terms, three invariance terms over ARAT's feature hooks
//! (`z = GAP(ReLU(feature))`, averaged over the hooks) reproduce E13: the naive
//! `1 - cos(z', z)`, `Dist(sg z', z)` (gradient through the clean side only) and ARAT's
//! asymmetric `1 - cos(h(z'), sg z)` (through the adversarial side, with the model's predictor
//! `h` when it has one for the hook).

use super::is_multi_domain;
use super::plan::{check_n, check_threat, AnalysisSetup, Provenance, Subject, TestImages};
use crate::attack::{cross_entropy, Attack, Classifier, Pgd, PgdConfig, ThreatNorm};
use crate::compute::Compute;
use crate::device::device_name;
use crate::eval::{Progress, Threat};
use crate::nn::hook::hooked;
use crate::nn::predictor::Predictor;
use crate::nn::{Ctx, Hook, Mode, Model, Network, Route, ADV, CLEAN};
use crate::report::plot::{BarPlot, BarSeries};
use crate::train::objectives::arat::{negative_cosine, pooled_feature};
use crate::train::objectives::trades::kl_rows;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{Kind, Reduction, Tensor};

/// A loss term whose parameter gradient is compared (its name: the kebab-case of the variant,
/// written once here for the command line, `Display`, `FromStr` and serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Term {
    /// `CE(f(x; clean route), y)`.
    CleanCe,
    /// `CE(f(x'; adv route), y)`.
    AdvCe,
    /// TRADES' `(1/B) sum_i KL(p(x_i) || p(x'_i))`, `p(x)` through the clean route, `p(x')`
    /// through the adversarial route.
    Kl,
    /// As `kl` with `p(x)` detached (stop-gradient on the clean side).
    KlSg,
    /// Naive invariance `1 - cos(z', z)`, gradient through both sides.
    Inv,
    /// `Dist(sg z', z) = 1 - cos(sg z', z)`: the gradient moves the clean representation.
    DistSg,
    /// ARAT's asymmetric term `1 - cos(h(z'), sg z)`: the gradient moves the adversarial side.
    AratAsym,
}

crate::choice::value_enum_text!(Term => "term");

impl Term {
    /// Whether the term reads feature hooks.
    pub fn uses_features(self) -> bool {
        matches!(self, Term::Inv | Term::DistSg | Term::AratAsym)
    }

    /// The two terms compared, from the list given as `--terms` (exactly two).
    pub fn pair(terms: &[Term]) -> anyhow::Result<[Term; 2]> {
        <[Term; 2]>::try_from(terms).map_err(|_| {
            let given: Vec<String> = terms.iter().map(Term::to_string).collect();
            anyhow::anyhow!(
                "--terms {}: give exactly two terms, e.g. --terms clean-ce,adv-ce",
                given.join(",")
            )
        })
    }
}

/// What the invariance terms read: the hooks and the model's ARAT predictors (may be empty).
#[derive(Clone, Copy)]
pub struct Features<'a> {
    pub hooks: &'a [Hook],
    pub predictors: &'a [Predictor],
}

impl Features<'_> {
    pub const NONE: Features<'static> = Features {
        hooks: &[],
        predictors: &[],
    };
}

/// Exactly two terms from `A,B` (errors name `--terms`).
pub fn parse_terms(s: &str) -> Result<[Term; 2]> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    anyhow::ensure!(
        parts.len() == 2 && parts.iter().all(|p| !p.is_empty()),
        "--terms {s}: give exactly two terms, e.g. --terms clean-ce,adv-ce"
    );
    let mut out = [Term::CleanCe; 2];
    for (o, p) in out.iter_mut().zip(&parts) {
        *o = p
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--terms {s}: {e}"))?;
    }
    Ok(out)
}

/// The default adversarial route: `adv` for a multi-domain model (a norm layer with two NS or AP
/// sets, or two heads), else `clean`.
pub fn default_adv_route(net: &Network) -> Route {
    if is_multi_domain(net) {
        Route::domain(ADV)
    } else {
        Route::domain(CLEAN)
    }
}

/// The scalar loss of `term` on clean images `x`, adversarial images `x_adv` and labels `y`.
/// The clean route is always `clean`; forwards run in [`Mode::TrainFrozen`]. Feature terms
/// need [`term_loss_with`].
pub fn term_loss(
    model: &dyn Model,
    term: Term,
    x: &Tensor,
    x_adv: &Tensor,
    y: &Tensor,
    adv_route: Route,
) -> Tensor {
    term_loss_with(model, term, x, x_adv, y, adv_route, Features::NONE)
}

/// [`term_loss`] with the hooks (and predictors) the invariance terms read; they average
/// their per-hook distance over the hooks.
pub fn term_loss_with(
    model: &dyn Model,
    term: Term,
    x: &Tensor,
    x_adv: &Tensor,
    y: &Tensor,
    adv_route: Route,
    features: Features,
) -> Tensor {
    let clean = Ctx::new(Route::domain(CLEAN), Mode::TrainFrozen);
    let adv = Ctx::new(adv_route, Mode::TrainFrozen);
    match term {
        Term::CleanCe => cross_entropy(&model.forward(x, &clean), y, Reduction::Mean),
        Term::AdvCe => cross_entropy(&model.forward(x_adv, &adv), y, Reduction::Mean),
        Term::Kl | Term::KlSg => {
            let mut lc = model.forward(x, &clean);
            if term == Term::KlSg {
                lc = lc.detach();
            }
            let la = model.forward(x_adv, &adv);
            kl_rows(&lc, &la).mean(Kind::Float)
        }
        Term::Inv | Term::DistSg | Term::AratAsym => {
            let hooks = features.hooks;
            assert!(!hooks.is_empty(), "{term} needs feature hooks");
            let (_, hc) = hooked(model, hooks, || model.forward_stages(x, &clean));
            let (_, ha) = hooked(model, hooks, || model.forward_stages(x_adv, &adv));
            let mut sum = Tensor::zeros([], (Kind::Float, x.device()));
            for ((hook, fa), fc) in hooks.iter().zip(&ha).zip(&hc) {
                let (za, zc) = (pooled_feature(fa), pooled_feature(fc));
                let d = match term {
                    Term::Inv => negative_cosine(&za, &zc),
                    Term::DistSg => negative_cosine(&za.detach(), &zc),
                    _ => {
                        let pa = match features.predictors.iter().find(|p| p.hook == *hook) {
                            Some(p) => p.forward(&za, Mode::TrainFrozen),
                            None => za,
                        };
                        negative_cosine(&pa, &zc.detach())
                    }
                };
                sum = sum + d;
            }
            sum / hooks.len() as f64
        }
    }
}

/// The gradient of `term` (see [`term_loss`]) with respect to each of `vars`, in order; a
/// variable the loss does not reach gets zeros. Nothing is accumulated into `.grad()`.
pub fn term_gradients(
    model: &dyn Model,
    vars: &[Tensor],
    term: Term,
    x: &Tensor,
    x_adv: &Tensor,
    y: &Tensor,
    adv_route: Route,
) -> Vec<Tensor> {
    term_gradients_with(model, vars, term, x, x_adv, y, adv_route, Features::NONE)
}

/// [`term_gradients`] with the features of [`term_loss_with`].
#[allow(clippy::too_many_arguments)]
pub fn term_gradients_with(
    model: &dyn Model,
    vars: &[Tensor],
    term: Term,
    x: &Tensor,
    x_adv: &Tensor,
    y: &Tensor,
    adv_route: Route,
    features: Features,
) -> Vec<Tensor> {
    let loss = term_loss_with(model, term, x, x_adv, y, adv_route, features);
    let refs: Vec<&Tensor> = vars.iter().collect();
    let grads = if loss.requires_grad() && !refs.is_empty() {
        Tensor::run_backward(&[&loss], &refs, false, false)
    } else {
        Vec::new()
    };
    vars.iter()
        .enumerate()
        .map(|(i, v)| match grads.get(i) {
            Some(g) if g.defined() => g.detach(),
            _ => v.zeros_like().detach(),
        })
        .collect()
}

/// Comparison of two gradient vectors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Conflict {
    /// Number of scalar parameters compared.
    pub parameters: usize,
    /// `<a, b> / (|a| |b|)`; NaN (JSON null) when either vector is zero or empty.
    pub cosine: f64,
    /// Scalars whose components have opposite signs (`a_i * b_i < 0`, so both non-zero) over all
    /// scalars compared; NaN when there is none.
    pub opposite_sign_fraction: f64,
    /// Scalars whose components are both non-zero, over all scalars; NaN when there is none.
    pub both_nonzero_fraction: f64,
    /// `|a|` (L2).
    pub norm_a: f64,
    /// `|b|` (L2).
    pub norm_b: f64,
}

/// [`Conflict`] of the concatenation of `a` with the concatenation of `b` (pairs of tensors of
/// equal numel; panics otherwise). Computed in double precision.
pub fn conflict(a: &[Tensor], b: &[Tensor]) -> Conflict {
    assert_eq!(a.len(), b.len(), "conflict: unequal numbers of tensors");
    let flat = |ts: &[Tensor]| {
        let parts: Vec<Tensor> = ts
            .iter()
            .map(|t| t.detach().to_kind(Kind::Double).reshape([-1]))
            .collect();
        Tensor::cat(&parts, 0)
    };
    let n: usize = a.iter().map(|t| t.numel()).sum();
    if n == 0 {
        return Conflict {
            parameters: 0,
            cosine: f64::NAN,
            opposite_sign_fraction: f64::NAN,
            both_nonzero_fraction: f64::NAN,
            norm_a: 0.0,
            norm_b: 0.0,
        };
    }
    tch::no_grad(|| {
        let (fa, fb) = (flat(a), flat(b));
        assert_eq!(fa.size(), fb.size(), "conflict: unequal tensor sizes");
        let na = fa.dot(&fa).double_value(&[]).sqrt();
        let nb = fb.dot(&fb).double_value(&[]).sqrt();
        let dot = fa.dot(&fb).double_value(&[]);
        let prod = &fa * &fb;
        let opposite = prod.lt(0.0).sum(Kind::Int64).int64_value(&[]) as f64;
        let both = (fa.ne(0.0).logical_and(&fb.ne(0.0)))
            .sum(Kind::Int64)
            .int64_value(&[]) as f64;
        let cosine = if na > 0.0 && nb > 0.0 {
            (dot / (na * nb)).clamp(-1.0, 1.0)
        } else {
            f64::NAN
        };
        Conflict {
            parameters: n,
            cosine,
            opposite_sign_fraction: opposite / n as f64,
            both_nonzero_fraction: both / n as f64,
            norm_a: na,
            norm_b: nb,
        }
    })
}

/// The layer of a parameter: its name up to the last `.` (`bn1.weight` -> `bn1`,
/// `bn1.0.weight` -> `bn1.0`); a name without `.` is its own layer.
pub fn layer_of(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(l, _)| l)
}

/// One parameter tensor's comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorConflict {
    pub tensor: String,
    #[serde(flatten)]
    pub conflict: Conflict,
}

/// One layer's comparison (its tensors concatenated).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerConflict {
    pub layer: String,
    /// The layer's parameter tensors, sorted.
    pub tensors: Vec<String>,
    #[serde(flatten)]
    pub conflict: Conflict,
}

/// Settings of one gradient-conflict measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConflictConfig {
    /// Term A and term B.
    pub terms: [Term; 2],
    /// L-inf budget of the PGD.
    pub eps: f64,
    /// PGD iterations (step eps/4, uniform start).
    pub steps: usize,
    /// Seed of torch's generator (the PGD start).
    pub seed: u64,
    /// Route of the attack and of the adversarial side of the terms.
    pub adv_route: Route,
    /// Feature hooks of the invariance terms (inv, dist-sg, arat-asym).
    pub hooks: Vec<Hook>,
    /// Compute settings of the attack ([`Classifier::with_compute`]).
    pub compute: Compute,
}

impl ConflictConfig {
    /// PGD-10 (step eps/4).
    pub fn new(terms: [Term; 2], eps: f64, seed: u64, adv_route: Route) -> ConflictConfig {
        ConflictConfig {
            terms,
            eps,
            steps: 10,
            seed,
            adv_route,
            hooks: vec![],
            compute: Compute::default(),
        }
    }

    /// The PGD configuration of the adversarial batch.
    pub fn pgd(&self) -> PgdConfig {
        PgdConfig::new(ThreatNorm::Linf, self.eps, self.eps / 4.0, self.steps)
    }
}

/// The gradient-conflict result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GradConflict {
    /// Value of term A and term B on the batch.
    pub loss_a: f64,
    pub loss_b: f64,
    pub overall: Conflict,
    /// Per layer, sorted by name.
    pub layers: Vec<LayerConflict>,
    /// Per parameter tensor, sorted by name.
    pub tensors: Vec<TensorConflict>,
}

/// Per-tensor, per-layer and overall [`conflict`] of the named gradients `a` and `b` (same names
/// in the same order).
pub fn compare(
    names: &[String],
    a: &[Tensor],
    b: &[Tensor],
) -> (Conflict, Vec<LayerConflict>, Vec<TensorConflict>) {
    assert!(names.len() == a.len() && a.len() == b.len());
    let mut idx: Vec<usize> = (0..names.len()).collect();
    idx.sort_by(|&i, &j| names[i].cmp(&names[j]));
    let tensors = idx
        .iter()
        .map(|&i| TensorConflict {
            tensor: names[i].clone(),
            conflict: conflict(&a[i..i + 1], &b[i..i + 1]),
        })
        .collect();
    let mut groups: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for &i in &idx {
        groups.entry(layer_of(&names[i])).or_default().push(i);
    }
    let layers = groups
        .into_iter()
        .map(|(layer, ix)| {
            let pick = |g: &[Tensor]| ix.iter().map(|&i| g[i].shallow_clone()).collect::<Vec<_>>();
            LayerConflict {
                layer: layer.to_string(),
                tensors: ix.iter().map(|&i| names[i].clone()).collect(),
                conflict: conflict(&pick(a), &pick(b)),
            }
        })
        .collect();
    (conflict(a, b), layers, tensors)
}

/// The gradient conflict of `cfg.terms` for `net` on the batch `(x, y)` (images in [0, 1]):
/// `tch::manual_seed(seed)`, PGD through `cfg.adv_route` in eval mode, then both terms'
/// gradients over the [`Network::trainable`] variables. The model's variables and running statistics are
/// left unchanged.
pub fn grad_conflict(
    net: &Network,
    x: &Tensor,
    y: &Tensor,
    cfg: &ConflictConfig,
) -> Result<GradConflict> {
    anyhow::ensure!(
        cfg.eps >= 0.0 && cfg.eps.is_finite(),
        "--eps must be a finite number >= 0, got {}",
        cfg.eps
    );
    anyhow::ensure!(cfg.steps >= 1, "PGD steps must be >= 1");
    anyhow::ensure!(x.size()[0] >= 1, "the batch is empty");
    net.check_route(cfg.adv_route, "--route")?;
    if cfg.terms.iter().any(|t| t.uses_features()) {
        anyhow::ensure!(
            !cfg.hooks.is_empty(),
            "--terms {},{}: the invariance terms need feature hooks (--hooks)",
            cfg.terms[0],
            cfg.terms[1]
        );
        net.check_hooks(&cfg.hooks, "--hooks")?;
    }
    let features = Features {
        hooks: &cfg.hooks,
        predictors: &net.predictors,
    };
    let model = net.model.as_ref();
    tch::manual_seed(cfg.seed as i64);
    let pgd = Pgd::new(cfg.pgd());
    let x_adv = pgd
        .perturb(
            &Classifier::new(model, Ctx::new(cfg.adv_route, Mode::Eval)).with_compute(&cfg.compute),
            x,
            y,
        )
        .detach();
    let named = net.trainable();
    anyhow::ensure!(!named.is_empty(), "the model has no trainable variables");
    let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
    let vars: Vec<Tensor> = named.into_iter().map(|(_, t)| t).collect();
    let [ta, tb] = cfg.terms;
    let loss = |t| {
        tch::no_grad(|| {
            term_loss_with(model, t, x, &x_adv, y, cfg.adv_route, features).double_value(&[])
        })
    };
    let ga = term_gradients_with(model, &vars, ta, x, &x_adv, y, cfg.adv_route, features);
    let gb = term_gradients_with(model, &vars, tb, x, &x_adv, y, cfg.adv_route, features);
    let (overall, layers, tensors) = compare(&names, &ga, &gb);
    Ok(GradConflict {
        loss_a: loss(ta),
        loss_b: loss(tb),
        overall,
        layers,
        tensors,
    })
}

impl GradConflict {
    /// Per layer: cosine and opposite-sign fraction as two bar series.
    pub fn plot(&self, title: impl Into<String>) -> BarPlot {
        BarPlot {
            title: title.into(),
            x_label: "layer".into(),
            y_label: "cosine / fraction".into(),
            categories: self.layers.iter().map(|l| l.layer.clone()).collect(),
            series: vec![
                BarSeries::new("cosine", self.layers.iter().map(|l| l.conflict.cosine)),
                BarSeries::new(
                    "opposite-sign fraction",
                    self.layers
                        .iter()
                        .map(|l| l.conflict.opposite_sign_fraction),
                ),
            ],
        }
    }
}

/// `advtrain analyze grad-conflict` as a plan: the gradient conflict of two terms on one batch
/// of the first `data.n` test images and its PGD-10 (step eps/4) at `threat.eps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub setup: AnalysisSetup,
    pub data: TestImages,
    /// L-inf only ([`check_threat`]).
    pub threat: Threat,
    /// Term A and term B.
    pub terms: [Term; 2],
    /// Feature hooks of the invariance terms; `None`: the run's `train.arat.hooks`, else the
    /// model's predictors, else the last stage ([`default_hooks`]).
    pub hooks: Option<Vec<Hook>>,
    /// Adversarial route (attack and adversarial side of the terms); `None`:
    /// [`default_adv_route`]. The clean side always takes the clean route.
    pub route: Option<Route>,
}

/// The hooks of a run without `--hooks`: its `train.arat.hooks`, else the model's
/// predictors, else the last stage.
pub fn default_hooks(s: &Subject) -> Vec<Hook> {
    if let Some(crate::train::objectives::Objective::Arat(a)) =
        s.recipe.as_ref().map(|r| &r.train.objective)
    {
        return a.arat.hooks.clone();
    }
    let net = s.net();
    if !net.arch.predictors.is_empty() {
        return net.arch.predictors.clone();
    }
    let n = net.probe_stages([32, 32]).len();
    vec![Hook::Stage(n.saturating_sub(1))]
}

/// The JSON written by `analyze grad-conflict` (tests/it/analysis_contract.rs guards it).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub terms: [String; 2],
    pub hooks: Vec<Hook>,
    pub eps: f64,
    pub n: usize,
    pub seed: u64,
    pub adv_route: String,
    pub clean_route: String,
    pub attack: serde_json::Value,
    pub bn_mode: &'static str,
    pub loss_a: f64,
    pub loss_b: f64,
    pub overall: Conflict,
    pub layers: Vec<LayerConflict>,
    pub tensors: Vec<TensorConflict>,
    pub device: String,
    pub elapsed_s: f64,
    pub plot: String,
    /// Precision, BN folding and micro-batching of the attacks.
    pub compute: Compute,
}

/// Run `plan` on its checkpoint ([`Subject::load`]).
pub fn run(plan: &Plan, out: &mut dyn Progress) -> Result<Report> {
    check_threat(&plan.threat)?;
    check_n(plan.data.n)?;
    run_on(plan, Subject::load(&plan.setup)?, out)
}

/// [`run`] on the plan's checkpoint, already loaded.
pub fn run_on(plan: &Plan, s: Subject, out: &mut dyn Progress) -> Result<Report> {
    let (eps, seed, terms) = (plan.threat.eps, plan.setup.seed, plan.terms);
    check_threat(&plan.threat)?;
    check_n(plan.data.n)?;
    let start = Instant::now();
    let adv_route = plan.route.unwrap_or_else(|| default_adv_route(s.net()));
    s.net().check_route(adv_route, "--route")?;
    let (test, x, y) = s.test_batch(&plan.data, out)?;
    let mut cfg = ConflictConfig::new(terms, eps, seed, adv_route);
    cfg.hooks = plan.hooks.clone().unwrap_or_else(|| default_hooks(&s));
    cfg.compute = plan.setup.compute;
    out.info(&format!(
        "grad-conflict {} | {} vs {} | eps {eps} | n {} | adv route {adv_route} | hooks {:?} | seed {seed} | device {}",
        s.file.display(),
        terms[0],
        terms[1],
        test.len(),
        cfg.hooks,
        device_name(s.device())
    ));
    s.say_compute(&plan.setup.compute, out);
    let g = grad_conflict(s.net(), &x, &y, &cfg)?;
    Ok(Report {
        provenance: s.provenance("grad-conflict"),
        terms: [terms[0].to_string(), terms[1].to_string()],
        hooks: cfg.hooks.clone(),
        eps,
        n: test.len(),
        seed,
        adv_route: adv_route.to_string(),
        clean_route: Route::domain(CLEAN).to_string(),
        attack: serde_json::to_value(cfg.pgd())?,
        bn_mode: "attack: eval; gradients: train-frozen (batch statistics, running ones untouched)",
        loss_a: g.loss_a,
        loss_b: g.loss_b,
        overall: g.overall,
        layers: g.layers,
        tensors: g.tensors,
        device: device_name(s.device()),
        elapsed_s: start.elapsed().as_secs_f64(),
        compute: plan.setup.compute,
        plot: plan.setup.paths("grad-conflict").1.display().to_string(),
    })
}

impl Report {
    /// The result the report holds.
    pub fn result(&self) -> GradConflict {
        GradConflict {
            loss_a: self.loss_a,
            loss_b: self.loss_b,
            overall: self.overall,
            layers: self.layers.clone(),
            tensors: self.tensors.clone(),
        }
    }

    /// The PNG the report names ([`GradConflict::plot`]) written to `path`.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let title = format!(
            "Gradient conflict {} vs {}, eps {} (n={}, adv route {}): {}",
            self.terms[0],
            self.terms[1],
            self.eps,
            self.n,
            self.adv_route,
            self.provenance.architecture
        );
        // 18 pixels a layer at least: many layers make horizontal bars, one row per layer.
        let plot = self.result().plot(title);
        let height = (160 + 18 * plot.categories.len() as u32).max(640);
        plot.write_sized(path, (1000, height))
    }
}

/// Per layer and overall: parameters, cosine, opposite-sign fraction and both norms.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<24} {:>10} {:>9} {:>9} {:>11} {:>11}",
            "layer", "parameters", "cosine", "opposite", "norm-a", "norm-b"
        )?;
        let row = |f: &mut std::fmt::Formatter<'_>, name: &str, c: &Conflict| {
            writeln!(
                f,
                "{:<24} {:>10} {:>9.4} {:>9.4} {:>11.4e} {:>11.4e}",
                name, c.parameters, c.cosine, c.opposite_sign_fraction, c.norm_a, c.norm_b
            )
        };
        for r in &self.layers {
            row(f, &r.layer, &r.conflict)?;
        }
        row(f, "overall", &self.overall)
    }
}
