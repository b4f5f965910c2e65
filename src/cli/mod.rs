//! The command-line interface: `advtrain train` and `advtrain eval`.

pub mod analyze;
pub mod bench;
pub mod eval;
pub mod export;
pub mod train;

use clap::{Parser, Subcommand};

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
    /// Analyses of a trained model: domain-gap, bn-divergence, bn-swap (JSON + PNG).
    Analyze(analyze::AnalyzeArgs),
    /// Time one PGD-10 adversarial-training step (twin of bench/pytorch_pgd_at.py).
    Bench(bench::BenchArgs),
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
    match cli.command {
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Export(a) => export::run(a),
        Command::Analyze(a) => analyze::run(a),
    }
}
