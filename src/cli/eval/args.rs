//! The flags of `advtrain eval` and their one-to-one conversions into plan parts.

use crate::attack::pgd::Target;
use crate::attack::{check_eps, AttackName, AttackSettings, ThreatNorm};
use crate::choice::choice;
use crate::data::DataSpec;
use crate::eval::autoattack::Preset;
use crate::eval::controls::{Reestimate, StatsSource};
use crate::eval::{DataSelection, TestTime};
use crate::nn::{Mode, Route};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Run directory (uses checkpoints/best, else checkpoints/last).
    #[arg(
        long,
        conflicts_with = "checkpoint",
        required_unless_present = "checkpoint"
    )]
    pub run: Option<PathBuf>,
    /// Checkpoint file (`.safetensors` with its `.json` sidecar).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// The attack (autoattack: the cascade of --preset).
    #[arg(long, value_parser = choice::<AttackName>())]
    pub attack: AttackName,
    /// AutoAttack preset.
    #[arg(long, default_value = "standard", value_parser = choice::<Preset>())]
    pub preset: Preset,
    /// Perturbation budget (also the fallback when --curve is given).
    #[arg(long, allow_negative_numbers = true)]
    pub eps: f64,
    /// Accept an L-inf eps above 1 (--eps, --curve, --reestimate-eps): in [0, 1] pixel space
    /// such a budget allows any image, and is usually a 0..255 value given by mistake.
    #[arg(long)]
    pub allow_large_eps: bool,
    #[arg(long, default_value = "linf", value_parser = choice::<ThreatNorm>())]
    pub norm: ThreatNorm,
    /// Iterations: PGD steps (default 20), APGD/FAB iterations (default 100).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Square: query budget per restart (default 5000).
    #[arg(long)]
    pub queries: Option<usize>,
    /// PGD step size (default 2.5 * eps / steps).
    #[arg(long)]
    pub step_size: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub restarts: usize,
    /// Target class choice of pgd-t.
    #[arg(long, default_value = "random", value_parser = choice::<Target>())]
    pub target: Target,
    /// Robust accuracy over this comma-separated list of eps values (JSON + PNG plot).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub curve: Option<Vec<f64>>,
    /// Robust accuracy over this comma-separated list of step counts (JSON + PNG plot).
    #[arg(long, value_delimiter = ',', conflicts_with = "curve")]
    pub curve_steps: Option<Vec<usize>>,
    /// Use only the first N test images.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Write the result as JSON here (default: <run>/eval/<attack>-eps<eps>.json with --run).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// AutoAttack state file (default: the JSON path with `.state.json`); an interrupted
    /// evaluation continues from it.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// AutoAttack: stop after N attack batches; a later run with the same state file continues.
    #[arg(long)]
    pub max_batches: Option<usize>,
    /// Route through the normalisation layers: clean, adv, or ns=..,ap=..
    #[arg(long, default_value = "clean")]
    pub route: Route,
    /// BN mode of the forward passes and the attack (train-frozen = batch-statistics inference).
    #[arg(long, default_value = "eval", value_parser = choice::<Mode>())]
    pub bn_mode: Mode,
    /// Use the other branch's affine parameters / head (route ap clean <-> adv).
    #[arg(long)]
    pub swap_ap: bool,
    /// Model soup: every per-domain parameter set used as w * adv + (1 - w) * clean.
    #[arg(long)]
    pub soup: Option<f64>,
    /// Re-estimate the route's running statistics first, on this training data.
    #[arg(long, value_parser = choice::<StatsSource>())]
    pub reestimate: Option<StatsSource>,
    /// Batches averaged by --reestimate (>= 1).
    #[arg(long, default_value_t = 50)]
    pub reestimate_batches: usize,
    /// Batch size of --reestimate (>= 1).
    #[arg(long, default_value_t = 128)]
    pub reestimate_batch_size: usize,
    /// eps of --reestimate adv / noise data (default: --eps).
    #[arg(long)]
    pub reestimate_eps: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: crate::device::DeviceChoice,
    /// Images per attack batch (>= 1).
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Override the data folder stored in the checkpoint's recipe.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl EvalArgs {
    /// Checks of flags that need nothing loaded (the attack's own are [`AttackName::spec`]'s):
    /// sizes (0 is never a default) and the L-inf budget of --reestimate-eps.
    pub fn check(&self) -> Result<()> {
        let queries = self.queries.filter(|_| self.attack == AttackName::Square);
        for (flag, v) in [
            ("--batch-size", Some(self.batch_size)),
            ("--test-limit", self.test_limit),
            ("--max-batches", self.max_batches),
            ("--reestimate-batches", Some(self.reestimate_batches)),
            ("--reestimate-batch-size", Some(self.reestimate_batch_size)),
            ("--queries", queries),
        ] {
            let why = if flag == "--test-limit" {
                " (0 leaves the test set empty; leave the flag out for the whole test split)"
            } else {
                ""
            };
            anyhow::ensure!(v != Some(0), "{flag} must be >= 1, got 0{why}");
        }
        if let Some(e) = self.reestimate_eps {
            let allow = "pass --allow-large-eps";
            check_eps(
                "--reestimate-eps",
                ThreatNorm::Linf,
                e,
                self.allow_large_eps,
                allow,
            )
            .map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    /// The attack settings at `eps` and `steps` (else the attack's default).
    pub fn settings(&self, eps: f64, steps: Option<usize>) -> AttackSettings {
        AttackSettings {
            steps,
            step_size: self.step_size,
            restarts: Some(self.restarts),
            queries: self.queries,
            target: self.target,
            seed: self.seed,
            ..AttackSettings::new(self.norm, eps)
        }
    }

    /// The test data: `spec` (the checkpoint's recipe's) with the limit and the folder.
    pub fn data(&self, spec: DataSpec) -> DataSelection {
        DataSelection {
            spec,
            test_limit: self.test_limit,
            batch_size: self.batch_size,
            data_dir: self.data_dir.clone(),
        }
    }

    /// Route, BN mode and the test-time controls.
    pub fn test_time(&self) -> TestTime {
        TestTime {
            route: self.route,
            swap_ap: self.swap_ap,
            bn_mode: self.bn_mode,
            soup: self.soup,
            reestimate: self.reestimate.map(|source| Reestimate {
                source,
                batches: self.reestimate_batches,
                batch_size: self.reestimate_batch_size,
                norm: self.norm,
                eps: self.reestimate_eps.unwrap_or(self.eps),
                seed: self.seed,
            }),
        }
    }
}
