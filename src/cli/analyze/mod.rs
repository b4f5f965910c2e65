//! `advtrain analyze <kind> (--run DIR | --checkpoint FILE) [...]`: the analyses of
//! METHODS.md section 4. The flags ([`args`]) become the kind's plan, run by
//! [`crate::analysis`]; this prints the report's table and writes `<out>/<kind>.json` and
//! `<out>/<kind>.png` (default out: `<run>/analysis`).

mod args;
mod common;

use super::write_json;
use crate::analysis::plan::{prepare_out, AnalysisSetup};
use crate::analysis::{bn_divergence, bn_swap, domain_gap, grad_conflict};
use crate::compute::Compute;
use crate::eval::Console;
use anyhow::Result;
use args::{BnDivergenceArgs, BnSwapArgs, DomainGapArgs, GradConflictArgs};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::fmt::Display;
use std::path::Path;

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

pub fn run(a: AnalyzeArgs, compute: Compute) -> Result<()> {
    match a.kind {
        Kind::DomainGap(a) => {
            let plan = a.plan(compute)?;
            let r = domain_gap::run(&plan, &mut Console)?;
            finish(&plan.setup, "domain-gap", &r, |p| r.write_png(p))
        }
        Kind::BnDivergence(a) => {
            let plan = a.plan(compute)?;
            let r = bn_divergence::run(&plan)?;
            finish(&plan.setup, "bn-divergence", &r, |p| r.write_png(p))
        }
        Kind::BnSwap(a) => {
            let plan = a.plan(compute)?;
            let r = bn_swap::run(&plan, &mut Console)?;
            finish(&plan.setup, "bn-swap", &r, |p| r.write_png(p))
        }
        Kind::GradConflict(a) => {
            let plan = a.plan(compute)?;
            let r = grad_conflict::run(&plan, &mut Console)?;
            finish(&plan.setup, "grad-conflict", &r, |p| r.write_png(p))
        }
    }
}

/// Print the report's table, then write `<out>/<kind>.json` and the PNG.
fn finish(
    setup: &AnalysisSetup,
    kind: &str,
    report: &(impl Serialize + Display),
    png: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    print!("{report}");
    prepare_out(&setup.out)?;
    let (json, plot) = setup.paths(kind);
    write_json(&json, report)?;
    png(&plot)?;
    println!("wrote {}", plot.display());
    Ok(())
}
