//! The flags of `advtrain analyze <kind>` and their one-to-one conversions into the plans of
//! [`crate::analysis`].

use crate::analysis::grad_conflict::Term;
use crate::analysis::plan::{default_out, AnalysisSetup, TestImages};
use crate::analysis::{bn_divergence, bn_swap, domain_gap, grad_conflict};
use crate::attack::ThreatNorm;
use crate::choice::choice;
use crate::compute::Compute;
use crate::device::DeviceChoice;
use crate::eval::controls::{Reestimate, StatsSource};
use crate::eval::Threat;
use crate::nn::{Hook, Route};
use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    #[command(subcommand)]
    pub kind: Kind,
}

#[derive(Subcommand, Debug)]
pub enum Kind {
    /// Per BN layer: W1 of adversarial / noise / clean batch statistics to the clean running ones.
    DomainGap(DomainGapArgs),
    /// Per norm layer: W1 and mean |difference| between the two branches' NS and AP.
    BnDivergence(BnDivergenceArgs),
    /// Clean and PGD accuracy for NS {adv, clean, re-estimated} x AP {adv, clean}.
    BnSwap(BnSwapArgs),
    /// Cosine and opposite-sign fraction of two loss terms' parameter gradients, per layer.
    GradConflict(GradConflictArgs),
}

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
        if let Some(t) = &self.torchscript {
            anyhow::bail!(
                "--torchscript {}: the analyses (domain-gap, bn-divergence, bn-swap, \
                 grad-conflict) read and switch advtrain's Norm layer (routes, statistics and \
                 affine sets), which a TorchScript module does not expose; run them on an \
                 advtrain checkpoint (advtrain eval --torchscript evaluates the module)",
                t.display()
            );
        }
        if let Some(f) = self.checkpoint.as_ref().filter(|f| f.is_file()) {
            crate::checkpoint::import::refuse_pickle(f, "--checkpoint")?;
        }
        let checkpoint =
            crate::checkpoint::locate(self.checkpoint.as_ref(), self.run.as_ref())?;
        Ok(AnalysisSetup {
            out: match (&self.out, &self.run) {
                (Some(o), _) => o.clone(),
                (None, Some(r)) => r.join("analysis"),
                (None, None) => default_out(&checkpoint),
            },
            checkpoint,
            seed: self.seed,
            device: self.device,
            compute,
        })
    }

    /// The first `n` test images of the recipe's data set.
    fn images(&self, n: usize) -> TestImages {
        TestImages {
            spec: None,
            n,
            data_dir: self.data_dir.clone(),
        }
    }
}

fn linf(eps: f64) -> Threat {
    Threat {
        norm: ThreatNorm::Linf,
        eps,
    }
}

#[derive(Args, Debug)]
pub struct DomainGapArgs {
    #[command(flatten)]
    pub common: Common,
    /// L-inf budget of the PGD-10 batch and of the uniform noise.
    #[arg(long, allow_negative_numbers = true)]
    pub eps: f64,
    /// Size of the one batch (the first N test images).
    #[arg(long, default_value_t = 256)]
    pub n: usize,
    /// Route of the forward passes and the attack; its NS names the running statistics compared.
    #[arg(long, default_value = "clean")]
    pub route: Route,
}

impl DomainGapArgs {
    pub fn plan(&self, compute: Compute) -> Result<domain_gap::Plan> {
        crate::analysis::plan::check_threat(&linf(self.eps))?;
        crate::analysis::plan::check_n(self.n)?;
        Ok(domain_gap::Plan {
            setup: self.common.setup(compute)?,
            data: self.common.images(self.n),
            threat: linf(self.eps),
            route: self.route,
        })
    }
}

#[derive(Args, Debug)]
pub struct BnDivergenceArgs {
    #[command(flatten)]
    pub common: Common,
}

impl BnDivergenceArgs {
    pub fn plan(&self, compute: Compute) -> Result<bn_divergence::Plan> {
        Ok(bn_divergence::Plan {
            setup: self.common.setup(compute)?,
        })
    }
}

#[derive(Args, Debug)]
pub struct BnSwapArgs {
    #[command(flatten)]
    pub common: Common,
    /// L-inf budget of the PGD attack.
    #[arg(long, allow_negative_numbers = true)]
    pub eps: f64,
    /// Evaluate on the first N test images.
    #[arg(long, default_value_t = 500)]
    pub n: usize,
    /// PGD steps (step eps/4 up to 10 steps, else 2.5 * eps / steps; uniform start).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Data the re-estimated rows' clean statistics are averaged on.
    #[arg(long, default_value = "clean", value_parser = choice::<StatsSource>())]
    pub reestimate_on: StatsSource,
    /// Training batches averaged by the re-estimation.
    #[arg(long, default_value_t = 50)]
    pub reestimate_batches: usize,
    /// Batch size of the re-estimation.
    #[arg(long, default_value_t = 128)]
    pub reestimate_batch_size: usize,
    /// eps of adv / noise re-estimation data (default: --eps).
    #[arg(long)]
    pub reestimate_eps: Option<f64>,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
}

impl BnSwapArgs {
    pub fn plan(&self, compute: Compute) -> Result<bn_swap::Plan> {
        let plan = bn_swap::Plan {
            setup: self.common.setup(compute)?,
            data: self.common.images(self.n),
            threat: linf(self.eps),
            steps: self.steps,
            batch_size: self.batch_size,
            reestimate: Reestimate {
                source: self.reestimate_on,
                batches: self.reestimate_batches,
                batch_size: self.reestimate_batch_size,
                norm: ThreatNorm::Linf,
                eps: self.reestimate_eps.unwrap_or(self.eps),
                seed: self.common.seed,
            },
        };
        plan.check()?;
        Ok(plan)
    }
}

#[derive(Args, Debug)]
pub struct GradConflictArgs {
    #[command(flatten)]
    pub common: Common,
    /// The two loss terms compared, `A,B` (inv, dist-sg, arat-asym: invariance terms over
    /// --hooks).
    #[arg(long, required = true, value_delimiter = ',', value_parser = choice::<Term>())]
    pub terms: Vec<Term>,
    /// Feature hooks of the invariance terms: stage indices or norm-layer names, comma
    /// separated (e.g. `2` or `layer4.0.bn1,layer4.1.bn2`); default: the run's
    /// train.arat.hooks, else the model's predictors, else the last stage.
    #[arg(long, value_delimiter = ',')]
    pub hooks: Option<Vec<Hook>>,
    /// L-inf budget of the PGD-10 batch (step eps/4, uniform start).
    #[arg(long, allow_negative_numbers = true)]
    pub eps: f64,
    /// Size of the one batch (the first N test images).
    #[arg(long, default_value_t = 128)]
    pub n: usize,
    /// Adversarial route (attack and adversarial side of the terms); default: adv for a
    /// multi-domain model, else clean. The clean side always takes the clean route.
    #[arg(long)]
    pub route: Option<Route>,
}

impl GradConflictArgs {
    pub fn plan(&self, compute: Compute) -> Result<grad_conflict::Plan> {
        let terms: [Term; 2] = self.terms.clone().try_into().map_err(|t: Vec<Term>| {
            let given: Vec<String> = t.iter().map(Term::to_string).collect();
            anyhow::anyhow!(
                "--terms {}: give exactly two terms, e.g. --terms clean-ce,adv-ce",
                given.join(",")
            )
        })?;
        crate::analysis::plan::check_threat(&linf(self.eps))?;
        crate::analysis::plan::check_n(self.n)?;
        Ok(grad_conflict::Plan {
            setup: self.common.setup(compute)?,
            data: self.common.images(self.n),
            threat: linf(self.eps),
            terms,
            hooks: self.hooks.clone(),
            route: self.route,
        })
    }
}
