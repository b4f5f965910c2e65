//! The flags of `advtrain eval`: the model ([`ModelArgs`]), the points and output, the attack
//! ([`AttackArgs`]) and the test-time controls ([`TestTimeArgs`]) as flattened groups, and
//! their conversions into the library's requests and plan parts.

use super::attack::AttackArgs;
use super::model::{ModelArgs, TestTimeArgs};
use crate::attack::{check_eps, AttackName, ThreatNorm};
use crate::choice::choice;
use crate::eval::{Batching, DataRequest, SetupRest, Shard};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
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
    /// Launched as several workers (torchrun, srun) without --shard, each evaluates shard
    /// RANK/WORLD_SIZE and rank 0 merges them: how long (s) the workers wait for each other.
    #[arg(long, default_value_t = 3600)]
    pub merge_timeout: u64,
    /// Batching of the attacks: pooled (the reference's) or blocked (each block of
    /// --batch-size points on its own; what --shard uses).
    #[arg(long, default_value = "pooled", value_parser = choice::<Batching>())]
    pub batching: Batching,
    #[command(flatten)]
    pub attack: AttackArgs,
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
    #[command(flatten)]
    pub test_time: TestTimeArgs,
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
        let queries = self
            .attack
            .queries
            .filter(|_| self.attack.attack == AttackName::Square);
        let tt = &self.test_time;
        for (flag, v) in [
            ("--batch-size", Some(self.batch_size)),
            ("--test-limit", self.test_limit),
            ("--max-batches", self.max_batches),
            ("--reestimate-batches", Some(tt.reestimate_batches)),
            ("--reestimate-batch-size", Some(tt.reestimate_batch_size)),
            ("--queries", queries),
        ] {
            let why = if flag == "--test-limit" {
                " (0 leaves the test set empty; leave the flag out for the whole test split)"
            } else {
                ""
            };
            anyhow::ensure!(v != Some(0), "{flag} must be >= 1, got 0{why}");
        }
        self.attack.check()?;
        if let Some(e) = tt.reestimate_eps {
            let (allow, large) = ("pass --allow-large-eps", self.attack.allow_large_eps);
            check_eps("--reestimate-eps", ThreatNorm::Linf, e, large, allow)
                .map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    /// The evaluated points as given (the recipe's data when --data is not).
    pub fn data_request(&self) -> DataRequest {
        DataRequest {
            data: self.data.clone(),
            test_limit: self.test_limit,
            batch_size: self.batch_size,
            data_dir: self.data_dir.clone(),
            batching: self.batching,
            shard: self.shard,
        }
    }

    /// The setup besides model and data, with `compute` (the global compute flags).
    pub fn rest(&self, compute: crate::compute::Compute) -> SetupRest {
        let a = &self.attack;
        SetupRest {
            test_time: self.test_time.test_time(a.norm, a.eps, self.seed),
            seed: self.seed,
            device: self.device,
            compute,
        }
    }
}

fn parse_shard(text: &str) -> Result<Shard, String> {
    Shard::parse(text)
}
