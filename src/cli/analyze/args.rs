//! The flags of each `advtrain analyze <kind>` and their one-to-one conversions into the
//! plans of [`crate::analysis`].

use super::common::Common;
use crate::analysis::grad_conflict::Term;
use crate::analysis::{bn_divergence, bn_swap, domain_gap, grad_conflict};
use crate::attack::ThreatNorm;
use crate::choice::choice;
use crate::compute::Compute;
use crate::eval::controls::{Reestimate, StatsSource};
use crate::eval::Threat;
use crate::nn::{Hook, Route};
use anyhow::Result;
use clap::Args;

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
        crate::analysis::plan::check_threat(&Threat::linf(self.eps))?;
        crate::analysis::plan::check_n(self.n)?;
        Ok(domain_gap::Plan {
            setup: self.common.setup(compute)?,
            data: self.common.images(self.n),
            threat: Threat::linf(self.eps),
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
            threat: Threat::linf(self.eps),
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
        let terms = Term::pair(&self.terms)?;
        crate::analysis::plan::check_threat(&Threat::linf(self.eps))?;
        crate::analysis::plan::check_n(self.n)?;
        Ok(grad_conflict::Plan {
            setup: self.common.setup(compute)?,
            data: self.common.images(self.n),
            threat: Threat::linf(self.eps),
            terms,
            hooks: self.hooks.clone(),
            route: self.route,
        })
    }
}
