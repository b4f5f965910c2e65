//! The command-line interface: flags into the library's typed plans, then its calls, prints and
//! files. One file (or folder) per subcommand; `compute.rs` holds the global compute flags.

pub mod analyze;
pub mod bench;
mod compute;
pub mod eval;
pub mod export;
pub mod merge;
pub mod study;
pub mod train;

pub use compute::ComputeArgs;

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
    // `train` applies its recipe's settings itself. bf16 on a CPU without native bf16 is
    // warned about where autocast first runs on the CPU (`compute::with_precision`).
    if !matches!(cli.command, Command::Train(_)) {
        crate::compute::apply_process_settings(&compute)?;
    }
    // Only `train` and `eval` run as several workers (eval: one shard each, rank 0 merges);
    // N copies of another command would write the same files.
    if !matches!(cli.command, Command::Train(_) | Command::Eval(_)) {
        crate::dist::refuse_launch(
            "only `advtrain train` and `advtrain eval` run as several workers",
        )?;
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
