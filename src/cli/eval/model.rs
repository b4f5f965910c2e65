//! Two flag groups of `advtrain eval` (flattened into `EvalArgs` (args.rs) in place, so
//! `--help` keeps its order): the evaluated model and the test-time controls, each with its
//! one-to-one conversion into the library's request or plan part.

use super::attack::parse_number;
use crate::attack::ThreatNorm;
use crate::choice::choice;
use crate::eval::controls::{Reestimate, StatsSource};
use crate::eval::{ModelRequest, StateDictArch, TestTime};
use crate::nn::{Mode, Route};
use std::path::PathBuf;

/// The evaluated model: a run, a checkpoint (an advtrain one, or a state dict with its
/// architecture) or a TorchScript module.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
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
}

impl ModelArgs {
    pub fn request(&self) -> ModelRequest {
        ModelRequest {
            run: self.run.clone(),
            checkpoint: self.checkpoint.clone(),
            torchscript: self.torchscript.clone(),
            arch: StateDictArch {
                file: self.arch_file.clone(),
                name: self.arch.clone(),
                num_classes: self.num_classes,
                depth: self.depth,
                width: self.width,
            },
        }
    }
}

/// Route, BN mode and the test-time controls of multi-domain models.
#[derive(clap::Args, Debug)]
pub struct TestTimeArgs {
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
}

impl TestTimeArgs {
    /// The test-time part of the plan; re-estimation attacks in `norm` at `--reestimate-eps`,
    /// else at `eps`.
    pub fn test_time(&self, norm: ThreatNorm, eps: f64, seed: u64) -> TestTime {
        TestTime {
            route: self.route,
            swap_ap: self.swap_ap,
            bn_mode: self.bn_mode,
            soup: self.soup,
            reestimate: self.reestimate.map(|source| Reestimate {
                source,
                batches: self.reestimate_batches,
                batch_size: self.reestimate_batch_size,
                norm,
                eps: self.reestimate_eps.unwrap_or(eps),
                seed,
            }),
        }
    }
}
