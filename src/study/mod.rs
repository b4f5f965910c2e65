//! Studies: grids of runs (recipes x variants x override grids x seeds) with the evaluations and
//! analyses of every run, run as subprocesses of this binary in parallel lanes, planned as shell
//! or Slurm scripts, and reported as tables of mean +- sd over seeds (docs/STUDIES.md).
//!
//! [`spec`] reads a study file into a [`Study`] (every run's exact commands), [`plan`] prints
//! them, [`run`] runs them (resumable, locked, failures collected), [`report`] aggregates the
//! run folders into `report.{md,csv,json,html}`.

pub mod plan;
pub mod report;
pub mod run;
pub mod spec;

pub use plan::{render, PlanFormat};
pub use run::{run_study, select_runs, Outcome, RunSettings};
pub use spec::{Study, STUDY_JSON};
