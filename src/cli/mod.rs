//! The command-line interface: `advtrain train` and `advtrain eval`.

pub mod analyze;
pub mod bench;
pub mod eval;
pub mod export;
pub mod merge;
pub mod study;
pub mod train;

use crate::checkpoint;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "advtrain",
    version,
    about = "Adversarial training and robustness evaluation"
)]
pub struct Cli {
    /// Torch intra-op threads (default: torch's choice, usually the number of cores).
    #[arg(long, global = true)]
    pub threads: Option<i32>,
    #[command(flatten)]
    pub compute: ComputeArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model from a recipe.
    Train(train::TrainArgs),
    /// Evaluate a trained model: clean and robust accuracy.
    Eval(eval::EvalArgs),
    /// Export one branch of a multi-domain model as a plain single-BN checkpoint.
    Export(export::ExportArgs),
    /// Analyses of a trained model: domain-gap, bn-divergence, bn-swap, grad-conflict (JSON + PNG).
    Analyze(analyze::AnalyzeArgs),
    /// Join the JSON reports of a sharded evaluation (eval --shard i/n) into the unsharded one.
    Merge(merge::MergeArgs),
    /// Throughput of the PGD-10 AT step, PGD-20 and AutoAttack against the PyTorch eager twin.
    Bench(bench::BenchArgs),
    /// Studies: recipes x overrides x seeds, their evaluations, and reports over seeds.
    Study(study::StudyArgs),
    /// The report of one run folder: <run>/report.html (curves, evaluations, analyses, provenance).
    Report(ReportArgs),
}

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The run folder.
    pub run: PathBuf,
}

/// Compute settings on the command line ([`crate::compute`]); for `train` they override the
/// recipe's `[compute]` table.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ComputeArgs {
    /// Precision of attack generation: fp32 (default) or bf16 (autocast).
    #[arg(long, global = true, value_parser = crate::choice::choice::<crate::compute::Precision>())]
    pub precision_attack: Option<crate::compute::Precision>,
    /// Precision of the training forward/backward: fp32 (default) or bf16 (autocast).
    #[arg(long, global = true, value_parser = crate::choice::choice::<crate::compute::Precision>())]
    pub precision_train: Option<crate::compute::Precision>,
    /// Do not fold eval-mode BatchNorm into the convolutions in attacks (folding computes the
    /// same function to float rounding, faster; docs/BENCHMARKS.md).
    #[arg(long, global = true)]
    pub no_fold_bn: bool,
    /// Rows per forward/backward micro-batch of eval-mode attacks on CPU (0 = whole batch;
    /// default 128).
    #[arg(long, global = true, value_name = "ROWS")]
    pub attack_chunk: Option<usize>,
    /// TensorFloat-32 on CUDA: pytorch (default: convolutions TF32, matmuls fp32), on, off.
    #[arg(long, global = true, value_parser = crate::choice::choice::<crate::compute::Tf32>())]
    pub tf32: Option<crate::compute::Tf32>,
    /// Deterministic algorithms (CUDA: deterministic cuDNN, no benchmark search,
    /// CUBLAS_WORKSPACE_CONFIG); the CPU is deterministic already.
    #[arg(long, global = true)]
    pub deterministic: bool,
}

impl ComputeArgs {
    /// `base` with the flags given applied.
    pub fn apply(&self, base: crate::compute::Compute) -> crate::compute::Compute {
        let mut c = base;
        if let Some(p) = self.precision_attack {
            c.precision_attack = p;
        }
        if let Some(p) = self.precision_train {
            c.precision_train = p;
        }
        if self.no_fold_bn {
            c.fold_bn = false;
        }
        if let Some(n) = self.attack_chunk {
            c.attack_chunk = n;
        }
        if let Some(t) = self.tf32 {
            c.tf32 = t;
        }
        if self.deterministic {
            c.deterministic = true;
        }
        c
    }

    /// The flags given, as recipe `--set` overrides.
    pub fn as_overrides(&self) -> Vec<String> {
        let mut v = vec![];
        if let Some(p) = self.precision_attack {
            v.push(format!("compute.precision_attack=\"{p}\""));
        }
        if let Some(p) = self.precision_train {
            v.push(format!("compute.precision_train=\"{p}\""));
        }
        if self.no_fold_bn {
            v.push("compute.fold_bn=false".into());
        }
        if let Some(n) = self.attack_chunk {
            v.push(format!("compute.attack_chunk={n}"));
        }
        if let Some(t) = self.tf32 {
            v.push(format!("compute.tf32=\"{t}\""));
        }
        if self.deterministic {
            v.push("compute.deterministic=true".into());
        }
        v
    }
}

/// Parse the arguments and run the command.
pub fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_secs()
        .init();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        anyhow::ensure!(n >= 1, "--threads must be >= 1");
        tch::set_num_threads(n);
    }
    // The compute settings of this command, passed on as a value (for `train` they become
    // recipe overrides instead, saved with the run).
    let compute = cli.compute.apply(crate::compute::Compute::default());
    // `train` warns itself, from its recipe's settings and its device.
    if !matches!(cli.command, Command::Train(_)) {
        if let Some(w) = crate::compute::bf16_warning(&compute) {
            log::warn!("{w}");
        }
        crate::compute::apply_process_settings(&compute)?;
    }
    // Only `train` runs data-parallel; N copies of another command would write the same files.
    // A sharded `eval --shard` is the exception: each rank evaluates and writes its own shard.
    let sharded_eval = matches!(&cli.command, Command::Eval(a) if a.shard.is_some());
    if !matches!(cli.command, Command::Train(_)) && !sharded_eval {
        crate::dist::refuse_launch("only `advtrain train` runs as data-parallel workers")?;
    }
    match cli.command {
        Command::Train(mut a) => {
            // For training the flags are recipe overrides (`compute.*`), saved with the run.
            a.overrides.extend(cli.compute.as_overrides());
            train::run(a)
        }
        Command::Eval(a) => eval::run(a, compute),
        Command::Bench(a) => bench::run(a, &compute),
        Command::Export(a) => export::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Analyze(a) => analyze::run(a, compute),
        Command::Study(a) => study::run(a),
        Command::Report(a) => {
            crate::report::run::write_curves(&a.run).ok();
            let p = crate::report::run::write_run_report(&a.run)?;
            println!("wrote {}", p.display());
            Ok(())
        }
    }
}

/// The checkpoint named by `--checkpoint FILE` (checked to exist with its sidecar) or by `--run
/// DIR` (`checkpoints/best`, else `checkpoints/last`).
pub(crate) fn checkpoint_file(
    checkpoint: Option<&PathBuf>,
    run: Option<&PathBuf>,
) -> Result<PathBuf> {
    match (checkpoint, run) {
        (Some(f), _) => {
            let (model, _, side) = checkpoint::paths(f);
            anyhow::ensure!(
                model.is_file(),
                "--checkpoint {}: no such checkpoint file ({} does not exist)",
                f.display(),
                model.display()
            );
            anyhow::ensure!(
                side.is_file(),
                "--checkpoint {}: its sidecar {} does not exist",
                f.display(),
                side.display()
            );
            Ok(f.clone())
        }
        (None, Some(r)) => {
            anyhow::ensure!(r.is_dir(), "--run {}: no such directory", r.display());
            let best = r.join("checkpoints/best.safetensors");
            let last = r.join("checkpoints/last.safetensors");
            if best.is_file() {
                Ok(best)
            } else if last.is_file() {
                Ok(last)
            } else {
                anyhow::bail!(
                    "--run {}: no checkpoint (neither {} nor {} exists, with its .json sidecar)",
                    r.display(),
                    best.display(),
                    last.display()
                )
            }
        }
        (None, None) => anyhow::bail!("give --run DIR or --checkpoint FILE"),
    }
}

/// Write `value` as pretty JSON to `path` (creating its folder) and say so.
pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::fsio::write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
