//! What `bench` times: the [`BenchPlan`] (subject, parts, sizes, rounds, device, compute
//! settings, the twin) and its checks. A leaf of the module: every other file of `bench`
//! reads the plan, none of them is read here.

use crate::compute::Compute;
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;
use tch::Device;

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// One PGD-k adversarial-training step.
    At,
    /// PGD-20 evaluation.
    Pgd20,
    /// AutoAttack-standard.
    Autoattack,
}

pub const PART_NAMES: &str = "at, pgd20, autoattack";

/// PGD steps of the `pgd20` part.
pub const EVAL_STEPS: usize = 20;

/// The architectures timed when no subject is named (`bench` without `--models`).
pub const DEFAULT_MODELS: &[&str] = &["small-cnn", "preact-resnet18"];

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::At => "at",
            Part::Pgd20 => "pgd20",
            Part::Autoattack => "autoattack",
        }
    }

    /// The comma-separated list of `--parts`, in the order given, without repeats.
    pub fn parse_list(s: &str) -> Result<Vec<Part>> {
        let mut out = vec![];
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let p = match name {
                "at" => Part::At,
                "pgd20" => Part::Pgd20,
                "autoattack" => Part::Autoattack,
                other => anyhow::bail!("--parts: unknown part '{other}': expected {PART_NAMES}"),
            };
            if !out.contains(&p) {
                out.push(p);
            }
        }
        anyhow::ensure!(
            !out.is_empty(),
            "--parts: give at least one of {PART_NAMES}"
        );
        Ok(out)
    }
}

/// The benchmarked model(s) and where their points come from.
#[derive(Debug, Clone)]
pub enum SubjectPlan {
    /// Freshly initialised architectures (seeded with the plan's seed) on random points.
    Fresh(Vec<String>),
    /// A checkpoint (`.safetensors` with its `.json` sidecar) on its recipe's test images,
    /// from `data_dir` instead of the recipe's folder when given.
    Checkpoint {
        file: PathBuf,
        data_dir: Option<PathBuf>,
    },
    /// A TorchScript module on `data`: a points file (`x`, `y`) or a built-in data set's test
    /// split (folder `data_dir`).
    Torchscript {
        file: PathBuf,
        data: Option<String>,
        data_dir: Option<PathBuf>,
    },
}

impl SubjectPlan {
    /// The architectures of a comma-separated `--models` list, else [`DEFAULT_MODELS`].
    pub fn fresh(list: Option<&str>) -> SubjectPlan {
        SubjectPlan::Fresh(match list {
            Some(s) => s
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            None => DEFAULT_MODELS.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// The names of the models timed, in order (a file's path for a checkpoint or module).
    pub fn names(&self) -> Vec<String> {
        match self {
            SubjectPlan::Fresh(v) => v.clone(),
            SubjectPlan::Checkpoint { file, .. } | SubjectPlan::Torchscript { file, .. } => {
                vec![file.display().to_string()]
            }
        }
    }
}

/// How to run the PyTorch eager twin; `None` fields take the defaults of `Twin::resolve` (the
/// repository's `.venv/bin/python`, else `python3`; its `bench/pytorch_bench.py`).
#[derive(Debug, Clone, Default)]
pub struct TwinPlan {
    /// The Python interpreter with torch and safetensors.
    pub python: Option<PathBuf>,
    /// The twin script (default: `bench/pytorch_bench.py` of the repository).
    pub script: Option<PathBuf>,
    /// Checkout of fra31/auto-attack (default: `$AUTOATTACK_DIR`).
    pub autoattack_dir: Option<PathBuf>,
}

/// Everything `bench::run` times, and how.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    pub subject: SubjectPlan,
    /// The parts, in order, without repeats.
    pub parts: Vec<Part>,
    /// Points attacked by pgd20 and autoattack.
    pub n: usize,
    /// Batch size of the AT step.
    pub batch_size: usize,
    /// Batch size of pgd20 and autoattack.
    pub eval_batch_size: usize,
    /// Timed AT steps (after warm-up).
    pub iters: usize,
    /// Untimed AT steps first (and one untimed pgd20 batch when > 0).
    pub warmup: usize,
    /// PGD steps of the AT step.
    pub steps: usize,
    /// L-inf budget (`None`: 0.1 for 1-channel inputs, 8/255 otherwise).
    pub eps: Option<f64>,
    pub seed: u64,
    pub device: Device,
    /// Convolution weights (both sides) and the AT batch channels-last.
    pub channels_last: bool,
    /// Rounds per part, each timing ours then the twin.
    pub repeat: usize,
    /// Our side's precision, BN folding and attack micro-batches.
    pub compute: Compute,
    /// The PyTorch twin; `None`: time advtrain only.
    pub twin: Option<TwinPlan>,
}

impl BenchPlan {
    /// Checks that need nothing loaded (sizes, the budget, what a subject allows); the errors
    /// name the `bench` flags.
    pub fn check(&self) -> Result<()> {
        anyhow::ensure!(self.batch_size >= 1, "--batch-size must be >= 1");
        anyhow::ensure!(self.eval_batch_size >= 1, "--eval-batch-size must be >= 1");
        anyhow::ensure!(self.iters >= 1, "--iters must be >= 1");
        anyhow::ensure!(self.steps >= 1, "--steps must be >= 1");
        anyhow::ensure!(self.repeat >= 1, "--repeat must be >= 1");
        anyhow::ensure!(
            !self.parts.is_empty(),
            "--parts: give at least one of {PART_NAMES}"
        );
        let script = matches!(self.subject, SubjectPlan::Torchscript { .. });
        anyhow::ensure!(
            !script || !self.parts.contains(&Part::At),
            "--torchscript: the part 'at' trains the model, which a TorchScript module (frozen \
             constants) cannot be here; give --parts pgd20,autoattack"
        );
        if self.parts.iter().any(|p| *p != Part::At) {
            anyhow::ensure!(self.n >= 1, "--n must be >= 1");
        }
        if let Some(e) = self.eps {
            anyhow::ensure!(
                e >= 0.0 && e.is_finite(),
                "--eps must be a finite number >= 0, got {e}"
            );
        }
        match &self.subject {
            SubjectPlan::Fresh(names) => anyhow::ensure!(
                !names.is_empty(),
                "--models: give at least one architecture"
            ),
            SubjectPlan::Torchscript { data: None, .. } => anyhow::bail!(
                "--torchscript needs --data (FILE.safetensors of x and y, or a data set)"
            ),
            _ => {}
        }
        Ok(())
    }

    /// Points every model needs: the first `n` for the evaluation parts, the first
    /// `batch_size` for the AT step.
    pub fn points(&self) -> usize {
        let eval_parts = self.parts.iter().any(|p| *p != Part::At);
        let at = self.parts.contains(&Part::At);
        (if eval_parts { self.n } else { 0 }).max(if at { self.batch_size } else { 0 })
    }
}
