//! The report of a benchmark: [`BenchReport`] serialises to the JSON of `bench --json`; its
//! [`ModelTable`]s (`Display`) are the table printed per model. Reads the plan and the timings.

use super::parts::Timing;
use super::plan::{Part, EVAL_STEPS};
use anyhow::{Context, Result};
use serde::Serialize;
use std::fmt;

/// One side of one part.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    #[serde(flatten)]
    pub timing: Timing,
    pub images_per_s: f64,
    /// Achieved GFLOP/s (`work_flops_per_image` x images / time / 1e9); null when not counted.
    pub gflops_per_s: Option<f64>,
}

/// One round of one part: ours, then the twin.
#[derive(Debug, Serialize)]
pub struct Round {
    pub advtrain: Side,
    pub pytorch: Option<Side>,
    /// advtrain images/s / PyTorch images/s of this round.
    pub ratio: Option<f64>,
}

/// One part of one model.
#[derive(Debug, Serialize)]
pub struct PartReport {
    pub part: Part,
    /// FLOPs per image of the part (see the module doc); null for autoattack.
    pub work_flops_per_image: Option<f64>,
    /// The median round of our side (by images/s).
    pub advtrain: Side,
    /// The median round of the twin's side.
    pub pytorch: Option<Side>,
    /// Why there is no PyTorch figure (null when there is one).
    pub pytorch_skipped: Option<String>,
    /// Median over rounds of advtrain images/s / PyTorch images/s.
    pub ratio: Option<f64>,
    /// Smallest and largest per-round ratio.
    pub ratio_range: Option<[f64; 2]>,
    /// Every round (`--repeat`), in order.
    pub rounds: Vec<Round>,
}

/// The middle element of `v` by `key` (the upper middle for an even count).
fn median_by<T>(v: Vec<T>, key: impl Fn(&T) -> f64) -> Option<T> {
    let mut v = v;
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mid = v.len() / 2;
    v.into_iter().nth(mid)
}

impl PartReport {
    /// The report of `rounds` (at least one): median sides and the median ratio.
    pub fn from_rounds(
        part: Part,
        work: Option<f64>,
        rounds: Vec<Round>,
        pytorch_skipped: Option<String>,
    ) -> PartReport {
        let ratios: Vec<f64> = rounds.iter().filter_map(|r| r.ratio).collect();
        let ratio_range = (!ratios.is_empty()).then(|| {
            [
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            ]
        });
        let ratio = median_by(ratios, |r| *r);
        let ours: Vec<Side> = rounds.iter().map(|r| r.advtrain.clone()).collect();
        let theirs: Vec<Side> = rounds.iter().filter_map(|r| r.pytorch.clone()).collect();
        PartReport {
            part,
            work_flops_per_image: work,
            advtrain: median_by(ours, |s| s.images_per_s).expect("at least one round"),
            pytorch: median_by(theirs, |s| s.images_per_s),
            pytorch_skipped: if ratio.is_some() {
                None
            } else {
                pytorch_skipped
            },
            ratio,
            ratio_range,
            rounds,
        }
    }
}

/// One model.
#[derive(Debug, Serialize)]
pub struct ModelReport {
    pub model: String,
    pub checkpoint: Option<String>,
    /// `random` or the folder of the test images.
    pub data: String,
    pub input_shape: [i64; 3],
    pub num_classes: i64,
    pub eps: f64,
    pub at_step_size: f64,
    pub pgd20_step_size: f64,
    /// Forward FLOPs per image, ours ([`super::flops::forward_flops`]); used for both sides.
    pub forward_flops: Option<f64>,
    /// The twin's count (`torch.utils.flop_counter.FlopCounterMode`), a cross-check.
    pub forward_flops_pytorch: Option<f64>,
    /// Why the twin did not run on this model (null when it did).
    pub pytorch_skipped: Option<String>,
    pub parts: Vec<PartReport>,
}

/// The machine's fp32 GEMM rate as each side measured it.
#[derive(Debug, Serialize)]
pub struct Gemm {
    pub n: i64,
    pub advtrain_gflops_per_s: f64,
    pub pytorch_gflops_per_s: Option<f64>,
}

/// The twin's interpreter and versions.
#[derive(Debug, Serialize)]
pub struct TwinInfo {
    pub python: String,
    pub script: String,
    pub torch: Option<String>,
    pub autoattack_dir: Option<String>,
}

/// The JSON written by `--json`.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub advtrain_version: String,
    pub device: String,
    pub threads: i32,
    pub seed: u64,
    pub parts: Vec<Part>,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub n: usize,
    pub iters: usize,
    pub warmup: usize,
    pub steps: usize,
    /// Rounds per part (`--repeat`).
    pub repeat: usize,
    pub channels_last: bool,
    /// Our side's precision, BN folding and attack micro-batches ([`crate::compute`]); the
    /// PyTorch twin is always plain eager fp32.
    pub compute: crate::compute::Compute,
    pub gemm: Gemm,
    pub pytorch: Option<TwinInfo>,
    pub models: Vec<ModelReport>,
}

/// Work of `part` per image in FLOPs given the forward FLOPs `f` (see the module doc).
pub(super) fn work_flops(part: Part, f: f64, steps: usize) -> Option<f64> {
    match part {
        Part::At => Some((2 * steps + 3) as f64 * f),
        Part::Pgd20 => Some((2 * EVAL_STEPS + 2) as f64 * f),
        Part::Autoattack => None,
    }
}

pub(super) fn side(timing: Timing, work: Option<f64>) -> Side {
    let ips = timing.images_per_s();
    Side {
        gflops_per_s: work.map(|w| w * ips / 1e9),
        images_per_s: ips,
        timing,
    }
}

/// The twin's measurement of a part as a [`Timing`] (or why it skipped it).
pub(super) fn twin_timing(v: &serde_json::Value) -> Result<std::result::Result<Timing, String>> {
    if let Some(reason) = v["skipped"].as_str() {
        return Ok(Err(reason.to_string()));
    }
    let num = |k: &str| v[k].as_f64();
    Ok(Ok(Timing {
        images: v["images"].as_u64().context("twin line without 'images'")? as usize,
        elapsed_s: num("elapsed_s").context("twin line without 'elapsed_s'")?,
        clean_accuracy: num("clean_accuracy"),
        robust_accuracy: num("robust_accuracy"),
        robust_points: v["robust_points"].as_str().map(String::from),
    }))
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}"))
}

impl BenchReport {
    /// The table of `model` with the report's settings (the GEMM rates as they stand).
    pub fn table<'a>(&'a self, model: &'a ModelReport) -> ModelTable<'a> {
        ModelTable {
            report: self,
            model,
        }
    }
}

/// Every model's table, in order.
impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.models
            .iter()
            .try_for_each(|m| write!(f, "{}", self.table(m)))
    }
}

/// The table of one model: per part images/s of both sides, their ratio and GFLOP/s, under
/// a header of the settings (from `report`; its `models` need not hold `model` yet).
pub struct ModelTable<'a> {
    pub report: &'a BenchReport,
    pub model: &'a ModelReport,
}

impl fmt::Display for ModelTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let (o, r, g) = (self.report, self.model, &self.report.gemm);
        writeln!(
            f,
            "\n{} | {} | {}x{}x{} | eps {:.4} | batch {} (AT), {} (eval) | n {} | {} threads | {}",
            r.model,
            r.checkpoint.as_deref().unwrap_or("fresh weights"),
            r.input_shape[0],
            r.input_shape[1],
            r.input_shape[2],
            r.eps,
            o.batch_size,
            o.eval_batch_size,
            o.n,
            o.threads,
            o.device
        )?;
        writeln!(f, "data: {}", r.data)?;
        writeln!(
            f,
            "advtrain compute: {} | PyTorch: eager fp32",
            o.compute.describe()
        )?;
        writeln!(
            f,
            "forward: {} MFLOP/image (PyTorch FlopCounterMode: {}) | fp32 GEMM {}^3: advtrain \
             {:.1} GFLOP/s, PyTorch {} GFLOP/s",
            opt(r.forward_flops.map(|f| f / 1e6), 3),
            opt(r.forward_flops_pytorch.map(|f| f / 1e6), 3),
            g.n,
            g.advtrain_gflops_per_s,
            opt(g.pytorch_gflops_per_s, 1)
        )?;
        if let Some(why) = &r.pytorch_skipped {
            writeln!(f, "no PyTorch figures: {why}")?;
        }
        if let (Some(a), Some(b)) = (r.forward_flops, r.forward_flops_pytorch) {
            if (a - b).abs() > 1e-3 * a {
                writeln!(
                    f,
                    "WARNING: the two FLOP counts differ; GFLOP/s use advtrain's"
                )?;
            }
        }
        writeln!(
            f,
            "{:<11}{:>7}{:>12}{:>15}{:>7}{:>14}{:>17}{:>18}",
            "part",
            "images",
            "ours img/s",
            "PyTorch img/s",
            "ratio",
            "ours GFLOP/s",
            "PyTorch GFLOP/s",
            "robust ours/PT"
        )?;
        for p in &r.parts {
            let pt = p.pytorch.as_ref();
            let pct = |x: Option<f64>| x.map(|v| format!("{:.1}%", 100.0 * v));
            let robust = format!(
                "{}/{}",
                pct(p.advtrain.timing.robust_accuracy).unwrap_or("-".into()),
                pct(pt.and_then(|t| t.timing.robust_accuracy)).unwrap_or("-".into())
            );
            writeln!(
                f,
                "{:<11}{:>7}{:>12.2}{:>15}{:>7}{:>14}{:>17}{:>18}",
                p.part.name(),
                p.advtrain.timing.images,
                p.advtrain.images_per_s,
                opt(pt.map(|t| t.images_per_s), 2),
                opt(p.ratio, 2),
                opt(p.advtrain.gflops_per_s, 1),
                opt(pt.and_then(|t| t.gflops_per_s), 1),
                robust
            )?;
            if p.rounds.len() > 1 {
                let list: Vec<String> = p
                    .rounds
                    .iter()
                    .map(|r| match (&r.pytorch, r.ratio) {
                        (Some(t), Some(q)) => format!(
                            "{:.2}/{:.2}={:.2}",
                            r.advtrain.images_per_s, t.images_per_s, q
                        ),
                        _ => format!("{:.2}", r.advtrain.images_per_s),
                    })
                    .collect();
                writeln!(
                    f,
                    "  rounds (ours/PyTorch img/s = ratio): {}",
                    list.join(", ")
                )?;
            }
            if let Some(why) = p
                .pytorch_skipped
                .as_ref()
                .filter(|_| r.pytorch_skipped.is_none())
            {
                writeln!(f, "  ({}: no PyTorch figure: {why})", p.part.name())?;
            }
        }
        Ok(())
    }
}
