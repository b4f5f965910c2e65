//! `advtrain bench`: images/s of adversarial training and evaluation, ours (in-process) against
//! the PyTorch eager twin `bench/pytorch_bench.py` (a subprocess per part) on the same weights,
//! points, batch, threads, device, eps and seed; with achieved GFLOP/s next to the machine's
//! measured fp32 GEMM rate.
//!
//! Parts (`--parts`):
//! - `at`: one PGD-k adversarial-training step on `--batch-size` points (k = `--steps`): k L-inf
//!   PGD steps (uniform start, CE, step eps/4, model in eval mode, gradients w.r.t. the input
//!   only), then one SGD step (lr 0.01, momentum 0.9, weight decay 5e-4) in train mode.
//!   `--warmup` untimed steps, then `--iters` timed ones: images/s = batch x iters / time.
//! - `pgd20`: `advtrain eval --attack pgd` with its defaults (20 L-inf steps of 2.5 eps / 20,
//!   uniform start, CE) on the first `--n` points in batches of `--eval-batch-size`: per batch a
//!   clean forward, the attack and a forward of the adversarial batch. One untimed batch when
//!   `--warmup` > 0, then one timed pass: images/s = n / time.
//! - `autoattack`: AutoAttack-standard (APGD-CE, APGD-T, FAB-T, Square; the reference
//!   `AutoAttack(version='standard')` on the PyTorch side) on the first `--n` points, clean pass
//!   included: images/s = n / time. Its work depends on how many points survive each attack, so
//!   an untrained model (no `--checkpoint`) makes it fast and meaningless: report it on a trained
//!   checkpoint.
//!
//! Work per image, with F = forward FLOPs per image ([`flops::forward_flops`]), an
//! input-gradient backward ~ F (no weight gradients) and a full backward ~ 2F:
//!   at:    k (F + F) + F + 2F = (2k + 3) F      (23 F for PGD-10)
//!   pgd20: F + 20 (F + F) + F = 42 F
//! GFLOP/s = work per image x images / time / 1e9, with the same F for both sides.

pub mod flops;
pub mod parts;
pub mod report;
pub mod subject;
pub mod twin;

use crate::device::{device_name, parse_device};
use anyhow::Result;
use clap::Args;
use parts::{time_ours, Part};
use report::{
    print_model, side, twin_timing, work_flops, BenchReport, Gemm, ModelReport, PartReport, Round,
    TwinInfo,
};
use std::path::PathBuf;
use subject::Opts;
use subject::{checkpoint_subject, fresh_subject, script_subject, TempDir};
use twin::Twin;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Parts to time, comma-separated: at (PGD-k AT step), pgd20 (PGD-20 evaluation),
    /// autoattack (AutoAttack-standard).
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

fn check_args(a: &BenchArgs, parts: &[Part]) -> Result<()> {
    anyhow::ensure!(a.batch_size >= 1, "--batch-size must be >= 1");
    anyhow::ensure!(a.eval_batch_size >= 1, "--eval-batch-size must be >= 1");
    anyhow::ensure!(a.iters >= 1, "--iters must be >= 1");
    anyhow::ensure!(a.steps >= 1, "--steps must be >= 1");
    anyhow::ensure!(a.repeat >= 1, "--repeat must be >= 1");
    anyhow::ensure!(
        a.torchscript.is_none() || !parts.contains(&Part::At),
        "--torchscript: the part 'at' trains the model, which a TorchScript module (frozen \
         constants) cannot be here; give --parts pgd20,autoattack"
    );
    if parts.iter().any(|p| *p != Part::At) {
        anyhow::ensure!(a.n >= 1, "--n must be >= 1");
    }
    if let Some(e) = a.eps {
        anyhow::ensure!(
            e >= 0.0 && e.is_finite(),
            "--eps must be a finite number >= 0, got {e}"
        );
    }
    Ok(())
}

pub fn run(a: BenchArgs, compute: &crate::compute::Compute) -> Result<()> {
    let parts = Part::parse_list(&a.parts)?;
    check_args(&a, &parts)?;
    let device = parse_device(&a.device)?;
    if let Some(c) = &a.checkpoint {
        super::checkpoint_file(Some(c), None)?;
    }
    let twin = if a.no_pytorch {
        None
    } else {
        Some(Twin::resolve(&a)?)
    };
    let threads = tch::get_num_threads();
    let o = Opts {
        device,
        batch_size: a.batch_size,
        eval_batch_size: a.eval_batch_size,
        n: a.n,
        iters: a.iters,
        warmup: a.warmup,
        steps: a.steps,
        seed: a.seed,
        channels_last: a.channels_last,
        compute: *compute,
    };
    let tmp = TempDir::new()?;
    log::info!(
        "measuring the fp32 GEMM rate ({0}x{0}, {threads} threads)",
        flops::GEMM_N
    );
    let mut gemm = Gemm {
        n: flops::GEMM_N,
        advtrain_gflops_per_s: flops::gemm_gflops(device),
        pytorch_gflops_per_s: None,
    };
    let mut torch_version = None;
    let eval_parts = parts.iter().any(|p| *p != Part::At);
    let at = parts.contains(&Part::At);
    let points = (if eval_parts { a.n } else { 0 }).max(if at { a.batch_size } else { 0 });
    let mut models = vec![];
    let names: Vec<String> = match (&a.checkpoint, &a.torchscript) {
        (Some(c), _) | (None, Some(c)) => vec![c.display().to_string()],
        (None, None) => a
            .models
            .as_deref()
            .unwrap_or("small-cnn,preact-resnet18")
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    };
    anyhow::ensure!(
        !names.is_empty(),
        "--models: give at least one architecture"
    );
    for name in &names {
        let s = match (&a.checkpoint, &a.torchscript) {
            (Some(c), _) => checkpoint_subject(&a, c, points)?,
            (None, Some(t)) => script_subject(&a, t, points)?,
            (None, None) => fresh_subject(&a, name, points, &tmp.0)?,
        };
        let data_file = tmp.0.join("points.safetensors");
        s.write_data(&data_file)?;
        let f = match &s.script {
            Some(_) => None,
            None => flops::forward_flops(&s.network(&o)?, s.shape),
        };
        let mut report = ModelReport {
            model: s.arch.name.clone(),
            checkpoint: s.checkpoint.as_ref().map(|c| c.display().to_string()),
            data: s.data_label.clone(),
            input_shape: s.shape,
            num_classes: s.arch.num_classes,
            eps: s.eps,
            at_step_size: s.at_step_size(),
            pgd20_step_size: s.pgd_step_size(),
            forward_flops: f,
            forward_flops_pytorch: None,
            pytorch_skipped: match &twin {
                None => Some("--no-pytorch".to_string()),
                Some(_) => Twin::unsupported(&s.arch),
            },
            parts: vec![],
        };
        let model_skip = report.pytorch_skipped.clone();
        for &part in &parts {
            let work = f.and_then(|f| work_flops(part, f, a.steps));
            let mut rounds = vec![];
            let mut skipped = model_skip.clone();
            for round in 0..a.repeat {
                log::info!(
                    "{}: timing {} (advtrain), round {}/{}",
                    s.arch.name,
                    part.name(),
                    round + 1,
                    a.repeat
                );
                // cuDNN's algorithm search where shapes stay fixed (the twin does the same).
                crate::device::enter_phase(
                    device,
                    match part {
                        Part::At => crate::device::Phase::Training,
                        Part::Pgd20 => crate::device::Phase::FixedShapes,
                        Part::Autoattack => crate::device::Phase::Evaluation,
                    },
                );
                let ours = side(time_ours(part, &s, &o)?, work);
                let mut theirs = None;
                if let (Some(t), None) = (&twin, &skipped) {
                    log::info!("{}: timing {} (PyTorch twin)", s.arch.name, part.name());
                    let r = t.run(
                        part,
                        &s,
                        &o,
                        &data_file,
                        threads,
                        gemm.pytorch_gflops_per_s.is_none(),
                    )?;
                    if let Some(g) = r.info["gemm_gflops_per_s"].as_f64() {
                        gemm.pytorch_gflops_per_s = Some(g);
                    }
                    torch_version = r.info["torch"].as_str().map(String::from);
                    report.forward_flops_pytorch = r.info["forward_flops"].as_f64();
                    match twin_timing(&r.part)? {
                        Ok(tm) => theirs = Some(side(tm, work)),
                        Err(reason) => skipped = Some(reason),
                    }
                }
                rounds.push(Round {
                    ratio: theirs.as_ref().map(|t| ours.images_per_s / t.images_per_s),
                    advtrain: ours,
                    pytorch: theirs,
                });
            }
            report
                .parts
                .push(PartReport::from_rounds(part, work, rounds, skipped));
        }
        print_model(&report, &gemm, &o, threads);
        models.push(report);
    }
    let report = BenchReport {
        advtrain_version: env!("CARGO_PKG_VERSION").into(),
        device: device_name(device),
        threads,
        seed: a.seed,
        parts,
        batch_size: a.batch_size,
        eval_batch_size: a.eval_batch_size,
        n: a.n,
        iters: a.iters,
        warmup: a.warmup,
        steps: a.steps,
        repeat: a.repeat,
        channels_last: a.channels_last,
        compute: *compute,
        gemm,
        pytorch: twin.map(|t| TwinInfo {
            python: t.python.display().to_string(),
            script: t.script.display().to_string(),
            torch: torch_version,
            autoattack_dir: t.autoattack_dir.map(|d| d.display().to_string()),
        }),
        models,
    };
    if let Some(p) = &a.json {
        super::write_json(p, &report)?;
    }
    Ok(())
}
