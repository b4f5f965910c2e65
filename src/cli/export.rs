//! `advtrain export`: one branch of a multi-domain model (or a soup of two) as a plain
//! single-BN checkpoint that loads, evaluates and fine-tunes as an ordinary model.

use crate::checkpoint::{self, Sidecar};
use crate::eval::controls::{check_soup, export_branch};
use crate::nn::Route;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use tch::Device;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Source checkpoint (`.safetensors` with its `.json` sidecar).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Branch to keep: statistics from `ns`, affine parameters and head from `ap`.
    #[arg(long)]
    pub route: Route,
    /// Instead of `ap`, interpolate every per-domain parameter set: w * adv + (1 - w) * clean.
    #[arg(long)]
    pub soup: Option<f64>,
    /// Output checkpoint file (`.safetensors`; the sidecar is written next to it).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let loaded = checkpoint::load(&a.checkpoint, Device::Cpu)?;
    let (net, side) = (loaded.net, loaded.sidecar);
    let (ns, ap) = net.route_sets();
    crate::nn::norm::check_route_sets(a.route, ns, ap)
        .map_err(|e| anyhow::anyhow!("--route {}: {e}", a.route))?;
    net.check_route(a.route, "--route")?;
    if let Some((_, why)) = crate::nn::norm::shared_route(a.route, ns, ap) {
        log::warn!(
            "--route {}: {why}; the exported model is the same as for 'clean'",
            a.route
        );
    }
    let soup = a.soup.map(check_soup).transpose()?;
    let (arch, tensors) = export_branch(&net, a.route, soup)?;
    let mut recipe = side.recipe.clone();
    if let Some(model) = recipe.get_mut("model") {
        *model = serde_json::to_value(&arch)?;
    }
    let metrics = serde_json::json!({
        "exported_from": {
            "checkpoint": a.checkpoint.display().to_string(),
            "sha256": side.sha256,
            "route": a.route.to_string(),
            "soup": soup,
        },
        "source_metrics": side.metrics,
    });
    let sidecar = Sidecar {
        architecture: arch,
        recipe,
        recipe_version: side.recipe_version,
        metrics,
        sha256: String::new(),
        optimizer_sha256: None,
        ..side
    };
    checkpoint::save(&a.out, &tensors, None, sidecar)?;
    println!(
        "exported route {}{} of {} as a plain model: {}",
        a.route,
        soup.map(|w| format!(" (soup w = {w})")).unwrap_or_default(),
        a.checkpoint.display(),
        a.out.display()
    );
    Ok(())
}
