//! What an evaluation reports: [`EvalReport`] and [`CurveReport`], serialised as the eval JSON
//! files (tests/it/eval_contract.rs holds them to the stored examples: fields are added, never
//! renamed or dropped), and printed as the CLI's tables ([`std::fmt::Display`]).

use super::checks::{Flag, GradientStats};
use super::controls::Reestimate;
use super::plan::{Batching, CurveAxis};
use crate::attack::ThreatNorm;
use crate::nn::Mode;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Robust accuracy after one attack (for a cascade: after it and every earlier one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerAttack {
    pub attack: String,
    pub robust_accuracy: f64,
    pub elapsed_s: f64,
    /// Points robust after it (and every earlier one): `robust_accuracy * n`.
    #[serde(default)]
    pub robust_correct: usize,
}

/// Which slice of the selected points a sharded evaluation covered (`eval --shard`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub index: usize,
    pub count: usize,
    /// The points `start..end` of the selection.
    pub start: usize,
    pub end: usize,
    /// Points of the whole selection (what the merged report's `n` is).
    pub n_total: usize,
    /// sha256 of the whole selection's images and labels (the merged `data_sha256`).
    pub data_sha256_total: String,
}

/// The JSON written by `eval` (read back by `advtrain merge`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub clean_accuracy: f64,
    pub robust_accuracy: f64,
    pub attack: String,
    pub attack_config: serde_json::Value,
    pub eps: f64,
    pub norm: ThreatNorm,
    pub n: usize,
    pub seed: u64,
    /// The route used: as requested, except that parts the model holds once (shared by every
    /// domain) read `shared` when the request named another domain than clean for them.
    pub route: String,
    /// The route as requested (`--route`, after `--swap-ap`).
    pub route_requested: String,
    pub bn_mode: Mode,
    /// Precision, BN folding and micro-batching of the attacks ([`crate::compute`]).
    pub compute: crate::compute::Compute,
    /// Model-soup weight of the adversarial parameter sets, when used.
    pub soup: Option<f64>,
    /// Running statistics re-estimated before evaluating, when done.
    pub reestimate: Option<Reestimate>,
    pub elapsed_s: f64,
    pub checkpoint: String,
    pub checkpoint_sha256: String,
    pub device: String,
    pub per_attack: Vec<PerAttack>,
    /// Gradient-masking sanity flags raised (empty when none).
    pub flags: Vec<Flag>,
    /// What the gradient checks measured at the clean inputs.
    pub gradient_checks: GradientStats,
    /// `advtrain` (checkpoint), `torchscript` or `state-dict`.
    #[serde(default)]
    pub model_format: String,
    /// The evaluated points: a data set's test split or a points file.
    #[serde(default)]
    pub data: String,
    /// sha256 of the evaluated images and labels.
    #[serde(default)]
    pub data_sha256: String,
    #[serde(default)]
    pub batch_size: usize,
    #[serde(default)]
    pub batching: Batching,
    /// Points classified correctly (`clean_accuracy * n`) and robust (`robust_accuracy * n`).
    #[serde(default)]
    pub clean_correct: usize,
    #[serde(default)]
    pub robust_correct: usize,
    /// AutoAttack: the largest perturbation norm among successful adversarial examples.
    #[serde(default)]
    pub max_perturbation: Option<f64>,
    /// False when an AutoAttack run stopped early (`--max-batches`).
    #[serde(default = "yes")]
    pub complete: bool,
    /// Per point, in data order: `1` classified correctly on the clean input, else `0`.
    #[serde(default)]
    pub clean_points: String,
    /// Per point: `1` robust (correct on the clean input and after every attack), else `0`.
    #[serde(default)]
    pub robust_points: String,
    /// The slice of a sharded evaluation (absent when unsharded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardInfo>,
}

fn yes() -> bool {
    true
}

/// One point of a curve.
#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    pub eps: f64,
    pub steps: Option<usize>,
    pub robust_accuracy: f64,
    pub elapsed_s: f64,
}

/// The JSON written by `eval --curve` / `--curve-steps`.
#[derive(Debug, Serialize)]
pub struct CurveReport {
    pub attack: String,
    /// `eps` or `steps`.
    pub vary: CurveAxis,
    pub clean_accuracy: f64,
    pub points: Vec<CurvePoint>,
    pub norm: ThreatNorm,
    pub n: usize,
    pub seed: u64,
    /// The route used (see [`EvalReport::route`]).
    pub route: String,
    /// The route as requested (`--route`, after `--swap-ap`).
    pub route_requested: String,
    pub bn_mode: Mode,
    pub compute: crate::compute::Compute,
    pub soup: Option<f64>,
    pub reestimate: Option<Reestimate>,
    pub checkpoint: String,
    pub checkpoint_sha256: String,
    pub device: String,
    pub flags: Vec<Flag>,
    pub gradient_checks: GradientStats,
    /// The PNG plot of the curve ([`CurveReport::xy`], drawn by the CLI).
    pub plot: String,
    /// `advtrain`, `torchscript` or `state-dict`.
    pub model_format: String,
    /// The evaluated points.
    pub data: String,
}

/// One line per raised flag, or that none was.
fn write_flags(f: &mut fmt::Formatter<'_>, flags: &[Flag]) -> fmt::Result {
    if flags.is_empty() {
        writeln!(f, "sanity checks: no flag raised")?;
    }
    for fl in flags {
        writeln!(f, "FLAG {}: {}", fl.code, fl.message)?;
    }
    Ok(())
}

/// The table: one row per attack (and the total of a cascade), then the flags.
impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<22} {:>10} {:>10} {:>8} {:>10}",
            "attack", "clean", "robust", "n", "time (s)"
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, robust: f64, time: f64| {
            writeln!(
                f,
                "{:<22} {:>9.2}% {:>9.2}% {:>8} {:>10.1}",
                name,
                100.0 * self.clean_accuracy,
                100.0 * robust,
                self.n,
                time
            )
        };
        for p in &self.per_attack {
            row(f, &p.attack, p.robust_accuracy, p.elapsed_s)?;
        }
        if self.per_attack.len() > 1 {
            row(f, &self.attack, self.robust_accuracy, self.elapsed_s)?;
        }
        write_flags(f, &self.flags)
    }
}

/// The flags (the points are reported as they are measured).
impl fmt::Display for CurveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_flags(f, &self.flags)
    }
}

impl CurveReport {
    /// (x, robust accuracy) per point: x is the eps or the steps.
    pub fn xy(&self) -> Vec<(f64, f64)> {
        self.points
            .iter()
            .map(|p| {
                let x = match self.vary {
                    CurveAxis::Eps => p.eps,
                    CurveAxis::Steps => p.steps.unwrap_or(0) as f64,
                };
                (x, p.robust_accuracy)
            })
            .collect()
    }
}
