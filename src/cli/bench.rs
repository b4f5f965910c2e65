//! `advtrain bench`: the flags into a [`BenchPlan`], timed by [`crate::bench::run`]; prints each
//! model's table and writes the report's JSON (`--json`).

use crate::bench::{self, BenchPlan, Part, SubjectPlan, TwinPlan};
use crate::device::parse_device;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// The forward FLOP count, where it was before the benchmark became a library module.
pub use crate::bench::flops;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Parts to time, comma-separated: at (PGD-k AT step on one batch already on the device:
    /// no data loading; `scripts/gpu-check` times a training epoch with the loader), pgd20
    /// (PGD-20 evaluation), autoattack (AutoAttack-standard).
    #[arg(long, default_value = "at,pgd20,autoattack")]
    pub parts: String,
    /// Comma-separated architectures, freshly initialised, on random points
    /// (default: small-cnn,preact-resnet18).
    #[arg(long, conflicts_with_all = ["checkpoint", "torchscript"])]
    pub models: Option<String>,
    /// Checkpoint to benchmark (`.safetensors` with its `.json` sidecar) on its test images;
    /// report figures on a trained one, e.g. runs/fmnist-full-seed0/checkpoints/best.safetensors.
    #[arg(long, conflicts_with = "torchscript")]
    pub checkpoint: Option<PathBuf>,
    /// A TorchScript module to benchmark (parts pgd20, autoattack) on --data; the twin runs the
    /// same file with torch.jit.load.
    #[arg(long)]
    pub torchscript: Option<PathBuf>,
    /// The points of --torchscript: FILE.safetensors (x, y) or a built-in data set's test split.
    #[arg(long, requires = "torchscript")]
    pub data: Option<String>,
    /// Folder of the test images for --checkpoint (default: the one in its recipe) or of the
    /// data set of --data.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Points attacked by pgd20 and autoattack.
    #[arg(long, default_value_t = 100)]
    pub n: usize,
    /// Batch size of the AT step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Batch size of pgd20 and autoattack (`eval`'s default).
    #[arg(long, default_value_t = 500)]
    pub eval_batch_size: usize,
    /// Timed AT steps (after warm-up).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Untimed AT steps first (and one untimed pgd20 batch when > 0).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// PGD steps of the AT step.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// L-inf budget (default: 0.1 for 1-channel inputs, 8/255 otherwise).
    #[arg(long)]
    pub eps: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Lay out convolution weights (both sides) and the AT batch channels-last.
    #[arg(long)]
    pub channels_last: bool,
    /// Python interpreter of the PyTorch twin (default: the repository's .venv/bin/python,
    /// else python3).
    #[arg(long)]
    pub pytorch: Option<PathBuf>,
    /// Time advtrain only (no PyTorch twin).
    #[arg(long, conflicts_with_all = ["pytorch", "twin", "autoattack_dir"])]
    pub no_pytorch: bool,
    /// The twin script (default: bench/pytorch_bench.py of the repository).
    #[arg(long)]
    pub twin: Option<PathBuf>,
    /// Checkout of fra31/auto-attack for the twin's autoattack (default: $AUTOATTACK_DIR;
    /// without one the twin skips autoattack).
    #[arg(long)]
    pub autoattack_dir: Option<PathBuf>,
    /// Rounds per part, each timing ours then the twin; the table shows the median round of
    /// each side and the median of the per-round ratios (the JSON keeps every round).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Write the whole report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl BenchArgs {
    /// The plan of these flags with `compute` (the global compute flags).
    pub fn plan(&self, compute: &crate::compute::Compute) -> Result<BenchPlan> {
        let parts = Part::parse_list(&self.parts)?;
        let device = parse_device(&self.device)?;
        let subject = match (&self.checkpoint, &self.torchscript) {
            (Some(c), _) => SubjectPlan::Checkpoint {
                file: c.clone(),
                data_dir: self.data_dir.clone(),
            },
            (None, Some(t)) => SubjectPlan::Torchscript {
                file: t.clone(),
                data: self.data.clone(),
                data_dir: self.data_dir.clone(),
            },
            (None, None) => SubjectPlan::fresh(self.models.as_deref()),
        };
        Ok(BenchPlan {
            subject,
            parts,
            n: self.n,
            batch_size: self.batch_size,
            eval_batch_size: self.eval_batch_size,
            iters: self.iters,
            warmup: self.warmup,
            steps: self.steps,
            eps: self.eps,
            seed: self.seed,
            device,
            channels_last: self.channels_last,
            repeat: self.repeat,
            compute: *compute,
            twin: (!self.no_pytorch).then(|| TwinPlan {
                python: self.pytorch.clone(),
                script: self.twin.clone(),
                autoattack_dir: self.autoattack_dir.clone(),
            }),
        })
    }
}

pub fn run(a: BenchArgs, compute: &crate::compute::Compute) -> Result<()> {
    let report = bench::run(&a.plan(compute)?, &mut |table| print!("{table}"))?;
    match &a.json {
        Some(p) => super::write_json(p, &report),
        None => Ok(()),
    }
}
