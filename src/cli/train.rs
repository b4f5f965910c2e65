//! `advtrain train --recipe FILE [--set key=value]... [--out DIR] [--resume] ...`

use crate::train::{self, Recipe, RunOptions};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Recipe TOML file (with --resume it defaults to the run's saved recipe.toml).
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Override a recipe value: --set train.attack.eps=0.2 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run directory (default runs/<recipe name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Use only the first N training images.
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    pub test_limit: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// auto | cpu | cuda | cuda:N
    #[arg(long)]
    pub device: Option<String>,
}

impl TrainArgs {
    /// The flags as `--set` overrides (applied after the explicit ones).
    fn flag_overrides(&self) -> Vec<String> {
        let mut v = vec![];
        if let Some(e) = self.epochs {
            v.push(format!("train.epochs={e}"));
        }
        if let Some(n) = self.train_limit {
            v.push(format!("data.train_limit={n}"));
        }
        if let Some(n) = self.test_limit {
            v.push(format!("data.test_limit={n}"));
        }
        if let Some(s) = self.seed {
            v.push(format!("seed={s}"));
        }
        if let Some(d) = &self.device {
            v.push(format!("device=\"{d}\""));
        }
        v
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    let saved = a.out.as_ref().map(|o| o.join("recipe.toml"));
    let path = match (&a.recipe, a.resume, &saved) {
        (Some(p), _, _) => p.clone(),
        (None, true, Some(s)) if s.exists() => s.clone(),
        _ => anyhow::bail!(
            "--recipe FILE is required (or --resume with --out DIR of an existing run)"
        ),
    };
    let recipe = Recipe::load_with_flags(&path, &a.overrides, &a.flag_overrides())?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&recipe.name));
    if a.resume {
        check_same_recipe(&recipe, &out)?;
    }
    // After every epoch: redraw curves.png (a figure: drawn here, figures are a higher layer).
    let mut curves = |dir: &std::path::Path| {
        if crate::dist::launched_rank() != 0 {
            return; // rank 0 alone writes the run directory
        }
        if let Err(e) = crate::report::run::write_curves(dir) {
            log::warn!("could not draw {}/curves.png: {e:#}", dir.display());
        }
    };
    let summary = train::train_observed(
        &recipe,
        &RunOptions {
            out: out.clone(),
            resume: a.resume,
            stop_after: None,
        },
        &mut curves,
    )?;
    // Data-parallel workers other than rank 0 print nothing (rank 0 speaks for the run).
    if crate::dist::launched_rank() == 0 {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        match crate::report::run::write_run_report(&out) {
            Ok(p) => println!("report: {}", p.display()),
            Err(e) => log::warn!("could not write the run report: {e:#}"),
        }
        println!("run directory: {}", out.display());
    }
    Ok(())
}

/// A resumed run must use the recipe it started with (the number of epochs may grow).
fn check_same_recipe(recipe: &Recipe, out: &std::path::Path) -> Result<()> {
    let saved_path = out.join("recipe.toml");
    if !saved_path.exists() {
        return Ok(());
    }
    let saved = Recipe::load(&saved_path, &[])?;
    let mut a = saved.clone();
    let mut b = recipe.clone();
    a.train.epochs = 0;
    b.train.epochs = 0;
    // The world size is resolved at launch and checked against the checkpoint by the library.
    a.distributed.world_size = None;
    b.distributed.world_size = None;
    if a != b {
        let (ta, tb) = (a.to_toml(), b.to_toml());
        let diff: Vec<String> = tb
            .lines()
            .filter(|l| !ta.lines().any(|m| m == *l))
            .map(|l| format!("  {l}"))
            .collect();
        anyhow::bail!(
            "--resume: the recipe differs from the run's saved {} (only train.epochs may change); differing lines:\n{}",
            saved_path.display(),
            diff.join("\n")
        );
    }
    Ok(())
}
