//! `advtrain study run|plan|report`: flags into the library's study calls ([`crate::study`]).

use crate::study::{self, PlanFormat, RunSettings, Study};
use anyhow::Result;
use clap::{Args, CommandFactory, Subcommand};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct StudyArgs {
    #[command(subcommand)]
    pub command: StudyCommand,
}

#[derive(Subcommand, Debug)]
pub enum StudyCommand {
    /// Train, evaluate and analyse every run of a study file (skips what is done).
    Run(RunArgs),
    /// Print the exact commands of every run (shell lines, a Slurm array script, or JSON).
    Plan(PlanArgs),
    /// Tables (mean +- sd over seeds) and figures of a study folder: report.{md,csv,json,html}.
    Report(ReportArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The study file (TOML; docs/STUDIES.md).
    pub file: PathBuf,
    /// Runs side by side (lanes).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Torch threads of every command (default: the CPUs divided by --jobs).
    #[arg(long)]
    pub threads_per_job: Option<usize>,
    /// Continue a study whose output folder already holds it.
    #[arg(long)]
    pub resume: bool,
    /// Output folder (default: the study file's `out`, else runs/<study name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run only the runs whose name matches this glob (repeatable; e.g. '*-seed0' runs every
    /// cell's seed 0 first); the others are left for a later `study run --resume`.
    #[arg(long, value_name = "GLOB")]
    pub only: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The study file (TOML; docs/STUDIES.md).
    pub file: PathBuf,
    #[arg(long, default_value = "shell", value_parser = crate::choice::choice::<PlanFormat>())]
    pub format: PlanFormat,
    /// `--threads` of every command.
    #[arg(long, default_value_t = 1)]
    pub threads_per_job: usize,
    /// Output folder (default: the study file's `out`, else runs/<study name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The binary named in the commands (default: this one, as it was invoked).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Only the runs whose name matches this glob (repeatable), as `study run --only`.
    #[arg(long, value_name = "GLOB")]
    pub only: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The study's output folder (runs/<study>).
    pub dir: PathBuf,
    /// Paired difference A - B of two cells (`cell` or `cell@route-tag`, e.g.
    /// `e7-dual-ap@adv,e7-single-cat`), repeatable, added to the study file's `[report] compare`.
    #[arg(long, value_name = "A,B")]
    pub compare: Vec<String>,
}

/// The binary as invoked (argv[0]) when it names a file, else the running executable.
fn this_binary() -> PathBuf {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .filter(|p| p.components().count() > 1 && p.is_file())
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or_else(|| PathBuf::from("advtrain"))
}

fn load(file: &std::path::Path, out: Option<&std::path::Path>) -> Result<Study> {
    Study::load(file, &super::Cli::command(), out)
}

pub fn run(a: StudyArgs) -> Result<()> {
    match a.command {
        StudyCommand::Run(a) => run_study(a),
        StudyCommand::Plan(a) => {
            let mut study = load(&a.file, a.out.as_deref())?;
            anyhow::ensure!(a.threads_per_job >= 1, "--threads-per-job must be >= 1");
            if !a.only.is_empty() {
                let keep: Vec<_> = study::select_runs(&study, &a.only)?
                    .into_iter()
                    .cloned()
                    .collect();
                study.runs = keep;
            }
            let exe = a.bin.unwrap_or_else(this_binary);
            print!(
                "{}",
                study::render(&study, a.format, &exe, a.threads_per_job)
            );
            Ok(())
        }
        StudyCommand::Report(a) => {
            let pairs = a
                .compare
                .iter()
                .map(|c| study::report::parse_compare(c))
                .collect::<Result<Vec<_>>>()?;
            let written = crate::study::report::write_report(&a.dir, &pairs)?;
            for p in written {
                println!("wrote {}", p.display());
            }
            Ok(())
        }
    }
}

fn run_study(a: RunArgs) -> Result<()> {
    let study = load(&a.file, a.out.as_deref())?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = a
        .threads_per_job
        .unwrap_or_else(|| (cpus / a.jobs.max(1)).max(1));
    let exe = std::env::current_exe()?;
    let outcome = study::run_study(
        &study,
        &RunSettings {
            exe,
            jobs: a.jobs,
            threads_per_job: threads,
            resume: a.resume,
            only: a.only,
        },
    )?;
    println!("{}", outcome.summary(&study.study));
    if !outcome.failures.is_empty() || outcome.interrupted {
        anyhow::bail!(
            "{} of {} runs did not finish; fix the cause and continue with `advtrain study run {} --resume`",
            outcome.failures.len().max(1),
            outcome.runs,
            a.file.display()
        );
    }
    println!("report: advtrain study report {}", study.out.display());
    Ok(())
}
