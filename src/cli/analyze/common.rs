//! The flags every `advtrain analyze <kind>` takes (flattened into each kind's flags) and
//! their conversion into the library's [`AnalysisSetup`] and [`TestImages`].

use crate::analysis::plan::{AnalysisSetup, SubjectRequest, TestImages};
use crate::compute::Compute;
use crate::device::DeviceChoice;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Flags every kind takes.
#[derive(Args, Debug)]
pub struct Common {
    /// Run directory (uses checkpoints/best, else checkpoints/last).
    #[arg(
        long,
        conflicts_with = "checkpoint",
        required_unless_present_any = ["checkpoint", "torchscript"]
    )]
    pub run: Option<PathBuf>,
    /// Checkpoint file (`.safetensors` with its `.json` sidecar).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Refused with an explanation: the analyses need advtrain's Norm layer, which a TorchScript
    /// module does not expose.
    #[arg(long, hide = true)]
    pub torchscript: Option<PathBuf>,
    /// Output folder (default: <run>/analysis; with --checkpoint: the run folder of
    /// `<run>/checkpoints/x.safetensors`, else the checkpoint's folder, + /analysis).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Override the data folder stored in the checkpoint's recipe.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl Common {
    /// The checkpoint, the output folder, seed, device and compute settings.
    pub fn setup(&self, compute: Compute) -> Result<AnalysisSetup> {
        let request = SubjectRequest {
            run: self.run.clone(),
            checkpoint: self.checkpoint.clone(),
            torchscript: self.torchscript.clone(),
            out: self.out.clone(),
        };
        AnalysisSetup::locate(&request, self.seed, self.device, compute)
    }

    /// The first `n` test images of the recipe's data set.
    pub fn images(&self, n: usize) -> TestImages {
        TestImages {
            spec: None,
            n,
            data_dir: self.data_dir.clone(),
        }
    }
}
