//! The flags of `advtrain eval` and their one-to-one conversions into plan parts.

use crate::attack::pgd::Target;
use crate::attack::{check_eps, AttackName, AttackSettings, ThreatNorm};
use crate::choice::choice;
use crate::data::points::is_points_file;
use crate::data::{DataSpec, DatasetName};
use crate::eval::autoattack::Preset;
use crate::eval::controls::{Reestimate, StatsSource};
use crate::eval::{Batching, DataSelection, DataSource, Shard, TestTime};
use crate::nn::{Mode, Route};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Run directory (uses checkpoints/best, else checkpoints/last).
    #[arg(
        long,
        conflicts_with_all = ["checkpoint", "torchscript"],
        required_unless_present_any = ["checkpoint", "torchscript"]
    )]
    pub run: Option<PathBuf>,
    /// Checkpoint file: an advtrain `.safetensors` with its `.json` sidecar, or (with --arch /
    /// --arch-file) a PyTorch state dict saved as safetensors.
    #[arg(long, conflicts_with = "torchscript")]
    pub checkpoint: Option<PathBuf>,
    /// A TorchScript module (torch.jit.save): float32 NCHW inputs in [0, 1], logits out; needs
    /// --data.
    #[arg(long)]
    pub torchscript: Option<PathBuf>,
    /// --checkpoint is a PyTorch state dict of this architecture (small-cnn, preact-resnet18,
    /// resnet18, resnet, wide-resnet).
    #[arg(long, conflicts_with = "arch_file")]
    pub arch: Option<String>,
    /// --checkpoint is a PyTorch state dict of the architecture in this TOML file (the fields
    /// of a recipe's [model] table; a `[model]` table or the fields at the top).
    #[arg(long)]
    pub arch_file: Option<PathBuf>,
    /// Classes of --arch (default: the data set's, else 10).
    #[arg(long)]
    pub num_classes: Option<i64>,
    /// Depth of --arch resnet / wide-resnet.
    #[arg(long)]
    pub depth: Option<i64>,
    /// Width factor of --arch wide-resnet.
    #[arg(long)]
    pub width: Option<i64>,
    /// The evaluated points: a built-in data set (fashion-mnist, mnist, cifar10, cifar100,
    /// cifar100-coarse; its test split, folder from --data-dir) or a FILE.safetensors holding x
    /// (N, C, H, W; uint8 or float in [0, 1]) and y (N; int64). Default: the recipe's data.
    #[arg(long)]
    pub data: Option<String>,
    /// Also write a RobustBench-style model card (JSON) here.
    #[arg(long)]
    pub model_card: Option<PathBuf>,
    /// Evaluate only shard INDEX/COUNT (0-based) of the points, on batch boundaries (blocked
    /// batching); `auto` = RANK/WORLD_SIZE. `advtrain merge` joins the shards' JSON files.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// Batching of the attacks: pooled (the reference's) or blocked (each block of
    /// --batch-size points on its own; what --shard uses).
    #[arg(long, default_value = "pooled", value_parser = choice::<Batching>())]
    pub batching: Batching,
    /// The attack (autoattack: the cascade of --preset).
    #[arg(long, value_parser = choice::<AttackName>())]
    pub attack: AttackName,
    /// AutoAttack preset.
    #[arg(long, default_value = "standard", value_parser = choice::<Preset>())]
    pub preset: Preset,
    /// Perturbation budget (also the fallback when --curve is given).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_number)]
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
    /// Square: list the points still to fool (one host sync) every N iterations instead of
    /// every one (for GPUs; 1 = the reference; L-inf results unchanged in eval mode, L2 draws
    /// differ). Not used by AutoAttack's Square.
    #[arg(long)]
    pub square_check_every: Option<usize>,
    /// PGD step size (default 2.5 * eps / steps).
    #[arg(long, value_parser = parse_number)]
    pub step_size: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub restarts: usize,
    /// Target class choice of pgd-t.
    #[arg(long, default_value = "random", value_parser = choice::<Target>())]
    pub target: Target,
    /// Robust accuracy over this comma-separated list of eps values (JSON + PNG plot).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, value_parser = parse_number)]
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
    #[arg(long, value_parser = parse_number)]
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
        anyhow::ensure!(
            self.square_check_every.is_none() || self.attack == AttackName::Square,
            "--square-check-every applies to --attack square only (got --attack {})",
            self.attack
        );
        anyhow::ensure!(
            self.square_check_every != Some(0),
            "--square-check-every must be >= 1 (1 = every iteration, the reference), got 0"
        );
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
            square_check_every: self.square_check_every,
            target: self.target,
            seed: self.seed,
            ..AttackSettings::new(self.norm, eps)
        }
    }

    /// The evaluated points: --data (a data set or a points file), else `recipe` (the
    /// checkpoint's recipe's `[data]`), with the limit, the folder, the batching and the shard.
    pub fn data(&self, recipe: Option<DataSpec>) -> Result<DataSelection> {
        let source = match (&self.data, recipe) {
            (Some(d), _) if is_points_file(d) => DataSource::Points(PathBuf::from(d)),
            (Some(d), _) => {
                let dataset: DatasetName = crate::choice::parse(d, "--data")
                    .map_err(|e| anyhow::anyhow!("{e} (or a FILE.safetensors of x and y)"))?;
                DataSource::Dataset(DataSpec {
                    dataset,
                    dir: None,
                    val_size: 0,
                    split_seed: 0,
                    train_limit: None,
                    test_limit: None,
                    crop_padding: 0,
                    hflip: false,
                })
            }
            (None, Some(spec)) => DataSource::Dataset(spec),
            (None, None) => anyhow::bail!(
                "--data is required here (a built-in data set such as cifar10, or a \
                 FILE.safetensors holding x and y): a TorchScript module or a state dict carries \
                 no data set"
            ),
        };
        anyhow::ensure!(
            self.data_dir.is_none() || matches!(source, DataSource::Dataset(_)),
            "--data-dir applies to built-in data sets, not to the points file given with --data"
        );
        Ok(DataSelection {
            source,
            test_limit: self.test_limit,
            batch_size: self.batch_size,
            data_dir: self.data_dir.clone(),
            batching: self.batching,
            shard: self.shard,
        })
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

/// A number, or a fraction `a/b` (e.g. `8/255`).
pub fn parse_number(text: &str) -> Result<f64, String> {
    let num = |v: &str| {
        v.trim()
            .parse::<f64>()
            .map_err(|_| format!("'{text}' is not a number or a fraction like 8/255"))
    };
    match text.split_once('/') {
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if b == 0.0 {
                return Err(format!("'{text}': division by zero"));
            }
            Ok(a / b)
        }
        None => num(text),
    }
}

fn parse_shard(text: &str) -> Result<Shard, String> {
    Shard::parse(text)
}
