//! How far the two branches of a multi-domain model lie apart, per norm layer: running mean,
//! running std (`sqrt(running_var)`), gamma and beta of branch `a` against branch `b`, each as the
//! 1-D Wasserstein-1 distance between the channel vectors (distribution shape, ignores which
//! channel is which) and the mean absolute channel-wise difference. Parts the layer shares
//! between the branches are `None` (JSON null).

use super::plan::{AnalysisSetup, Provenance, Subject};
use super::{finite_mean, mean_abs_diff, to_vec, wasserstein1};
use crate::nn::norm::domain_name;
use crate::nn::{Domain, Model, ADV, CLEAN};
use crate::report::plot::{LinePlot, Series};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::Tensor;

/// Two distances between the channel vectors of one quantity in the two branches.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Divergence {
    /// 1-D Wasserstein-1 distance (over the sorted channel values).
    pub w1: f64,
    /// Mean over channels of |a_c - b_c|.
    pub mean_abs_diff: f64,
}

impl Divergence {
    pub fn of(a: &[f64], b: &[f64]) -> Divergence {
        Divergence {
            w1: wasserstein1(a, b),
            mean_abs_diff: mean_abs_diff(a, b),
        }
    }
}

/// One norm layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerDivergence {
    pub layer: String,
    pub channels: i64,
    /// The layer holds one statistics set per domain.
    pub ns_split: bool,
    /// The layer holds one affine set per domain.
    pub ap_split: bool,
    /// running_mean (None when NS is shared or the layer has no statistics).
    pub mu: Option<Divergence>,
    /// sqrt(running_var).
    pub sigma: Option<Divergence>,
    /// weight.
    pub gamma: Option<Divergence>,
    /// bias.
    pub beta: Option<Divergence>,
}

/// Means over the layers where the part is split (None when it is split nowhere).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DivergenceSummary {
    pub mu: Option<Divergence>,
    pub sigma: Option<Divergence>,
    pub gamma: Option<Divergence>,
    pub beta: Option<Divergence>,
    pub ns_split_layers: usize,
    pub ap_split_layers: usize,
}

/// The bn-divergence result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BnDivergence {
    /// Names of the compared branches `[a, b]` (e.g. `["clean", "adv"]`).
    pub branches: [String; 2],
    pub layers: Vec<LayerDivergence>,
    pub summary: DivergenceSummary,
}

fn pair(a: &Tensor, b: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Divergence {
    let (va, vb) = tch::no_grad(|| (to_vec(&f(a)), to_vec(&f(b))));
    Divergence::of(&va, &vb)
}

fn summarise(
    layers: &[LayerDivergence],
    f: fn(&LayerDivergence) -> Option<Divergence>,
) -> Option<Divergence> {
    let ds: Vec<Divergence> = layers.iter().filter_map(f).collect();
    (!ds.is_empty()).then(|| Divergence {
        w1: finite_mean(ds.iter().map(|d| d.w1)),
        mean_abs_diff: finite_mean(ds.iter().map(|d| d.mean_abs_diff)),
    })
}

/// Branch `a` against branch `b` in every norm layer of `model` (clean vs adv: [`bn_divergence`]).
/// Error when no layer holds separate sets for the two branches, or a split layer has no set
/// for one of them.
pub fn bn_divergence_between(model: &dyn Model, a: Domain, b: Domain) -> Result<BnDivergence> {
    anyhow::ensure!(
        a != b,
        "the two branches to compare must differ (both are {a})"
    );
    let mut layers = vec![];
    for (name, n) in model.norms() {
        let ns_split = n.stats.len() > 1;
        let ap_split = n.affine.len() > 1;
        for (split, len, what) in [
            (ns_split, n.stats.len(), "statistics"),
            (ap_split, n.affine.len(), "affine"),
        ] {
            anyhow::ensure!(
                !split || (a < len && b < len),
                "layer {name} has {len} {what} sets, no set for domain {}",
                a.max(b)
            );
        }
        let (mu, sigma) = if ns_split {
            let (sa, sb) = (&n.stats[a], &n.stats[b]);
            (
                Some(pair(&sa.running_mean, &sb.running_mean, |t| {
                    t.shallow_clone()
                })),
                Some(pair(&sa.running_var, &sb.running_var, |t| {
                    t.clamp_min(0.0).sqrt()
                })),
            )
        } else {
            (None, None)
        };
        let (gamma, beta) = if ap_split {
            let (fa, fb) = (&n.affine[a], &n.affine[b]);
            (
                Some(pair(&fa.weight, &fb.weight, |t| t.shallow_clone())),
                Some(pair(&fa.bias, &fb.bias, |t| t.shallow_clone())),
            )
        } else {
            (None, None)
        };
        layers.push(LayerDivergence {
            layer: name,
            channels: n.channels,
            ns_split,
            ap_split,
            mu,
            sigma,
            gamma,
            beta,
        });
    }
    let ns_split_layers = layers.iter().filter(|l| l.ns_split).count();
    let ap_split_layers = layers.iter().filter(|l| l.ap_split).count();
    anyhow::ensure!(
        ns_split_layers + ap_split_layers > 0,
        "the model has no split norm layer (every layer holds one statistics set and one affine \
         set): bn-divergence needs a multi-domain model (norm.ns_domains or norm.ap_domains = 2)"
    );
    let summary = DivergenceSummary {
        mu: summarise(&layers, |l| l.mu),
        sigma: summarise(&layers, |l| l.sigma),
        gamma: summarise(&layers, |l| l.gamma),
        beta: summarise(&layers, |l| l.beta),
        ns_split_layers,
        ap_split_layers,
    };
    Ok(BnDivergence {
        branches: [domain_name(a), domain_name(b)],
        layers,
        summary,
    })
}

/// The clean branch against the adversarial branch in every norm layer of `model`.
pub fn bn_divergence(model: &dyn Model) -> Result<BnDivergence> {
    bn_divergence_between(model, CLEAN, ADV)
}

impl BnDivergence {
    /// W1 per layer index (1 = first in forward order), one series per part that is split
    /// somewhere; layers where a part is shared have no point.
    pub fn plot(&self, title: impl Into<String>) -> LinePlot {
        let parts: [(&str, fn(&LayerDivergence) -> Option<Divergence>); 4] = [
            ("mu (running mean)", |l| l.mu),
            ("sigma (running std)", |l| l.sigma),
            ("gamma", |l| l.gamma),
            ("beta", |l| l.beta),
        ];
        let series = parts
            .iter()
            .map(|(name, f)| {
                Series::new(
                    format!("W1 {name}"),
                    self.layers
                        .iter()
                        .enumerate()
                        .filter_map(|(i, l)| f(l).map(|d| ((i + 1) as f64, d.w1))),
                )
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        LinePlot {
            title: title.into(),
            x_label: "norm layer (forward order)".into(),
            y_label: format!("W1 ({} vs {})", self.branches[0], self.branches[1]),
            series,
            y_range: None,
        }
    }
}

/// `advtrain analyze bn-divergence` as a plan: the clean branch against the adversarial one
/// in every norm layer of the checkpoint (no data, no randomness).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub setup: AnalysisSetup,
}

/// The JSON written by `analyze bn-divergence` (tests/it/analysis_contract.rs guards it).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub branches: [String; 2],
    pub layers: Vec<LayerDivergence>,
    pub summary: DivergenceSummary,
    pub plot: String,
}

/// Run `plan` on its checkpoint ([`Subject::load`]).
pub fn run(plan: &Plan) -> Result<Report> {
    run_on(plan, Subject::load(&plan.setup)?)
}

/// [`run`] on the plan's checkpoint, already loaded.
pub fn run_on(plan: &Plan, s: Subject) -> Result<Report> {
    let d = bn_divergence(s.net().model.as_ref())
        .with_context(|| format!("bn-divergence on {}", s.file.display()))?;
    Ok(Report {
        provenance: s.provenance("bn-divergence"),
        branches: d.branches,
        layers: d.layers,
        summary: d.summary,
        plot: plan.setup.paths("bn-divergence").1.display().to_string(),
    })
}

impl Report {
    /// The result the report holds.
    pub fn result(&self) -> BnDivergence {
        BnDivergence {
            branches: self.branches.clone(),
            layers: self.layers.clone(),
            summary: self.summary.clone(),
        }
    }

    /// The PNG the report names ([`BnDivergence::plot`]) written to `path`.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let title = format!(
            "BN branch divergence ({} vs {}): {}",
            self.branches[0], self.branches[1], self.provenance.architecture
        );
        self.result().plot(title).write(path)
    }
}

/// The per-layer table (W1 and mean |difference| of each part; `shared` where it is not split).
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cell = |d: Option<Divergence>| match d {
            Some(d) => format!("{:>9.4} {:>9.4}", d.w1, d.mean_abs_diff),
            None => format!("{:>9} {:>9}", "shared", "-"),
        };
        writeln!(
            f,
            "{:<24} {:>19} {:>19} {:>19} {:>19}",
            "layer (W1, mean|d|)", "mu", "sigma", "gamma", "beta"
        )?;
        for r in &self.layers {
            writeln!(
                f,
                "{:<24} {} {} {} {}",
                r.layer,
                cell(r.mu),
                cell(r.sigma),
                cell(r.gamma),
                cell(r.beta)
            )?;
        }
        Ok(())
    }
}
