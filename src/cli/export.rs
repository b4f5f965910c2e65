//! `advtrain export`: one branch of a multi-domain model (or a soup of two) as a plain
//! single-BN checkpoint that loads, evaluates and fine-tunes as an ordinary model; or
//! (`--torchscript out.pt`) one route of any checkpoint traced into a TorchScript module that
//! PyTorch loads with `torch.jit.load`.

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
    /// Branch to keep: statistics from `ns`, affine parameters and head from `ap` (default
    /// with --torchscript: clean; required otherwise).
    #[arg(long)]
    pub route: Option<Route>,
    /// Instead of `ap`, interpolate every per-domain parameter set: w * adv + (1 - w) * clean.
    #[arg(long)]
    pub soup: Option<f64>,
    /// Output checkpoint file (`.safetensors`; the sidecar is written next to it).
    #[arg(
        long,
        required_unless_present = "torchscript",
        conflicts_with = "torchscript"
    )]
    pub out: Option<PathBuf>,
    /// Write a TorchScript module here instead: the route traced in eval mode (float32 NCHW
    /// inputs in [0, 1], logits out), for `torch.jit.load`.
    #[arg(long)]
    pub torchscript: Option<PathBuf>,
}

/// `--torchscript out.pt`: trace the route (eval mode) of the checkpoint at the image size of
/// the data it was trained on.
fn run_torchscript(a: &ExportArgs, out: &std::path::Path) -> Result<()> {
    let run = crate::train::saved::load_run(&a.checkpoint, Device::Cpu)?;
    let mut net = run.checkpoint.net;
    let route = a.route.unwrap_or_default();
    let (ns, ap) = net.route_sets();
    crate::nn::norm::check_route_sets(route, ns, ap)
        .map_err(|e| anyhow::anyhow!("--route {route}: {e}"))?;
    net.check_route(route, "--route")?;
    let soup = a.soup.map(check_soup).transpose()?;
    let ctx = crate::nn::Ctx::new(route, crate::nn::Mode::Eval).with_soup(soup);
    let (_, h, w) = run.recipe.data.image_shape()?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::checkpoint::torchscript::export_torchscript(&mut net, &ctx, [h, w], out)?;
    println!(
        "exported route {route}{} of {} as TorchScript (eval mode; inputs [N, {}, {h}, {w}] \
         float32 in [0, 1], logits out): {}",
        soup.map(|w| format!(" (soup w = {w})")).unwrap_or_default(),
        a.checkpoint.display(),
        net.arch.in_channels,
        out.display()
    );
    Ok(())
}

pub fn run(a: ExportArgs) -> Result<()> {
    if let Some(out) = &a.torchscript {
        return run_torchscript(&a, out);
    }
    let route = a
        .route
        .ok_or_else(|| anyhow::anyhow!("--route is required (the branch to export)"))?;
    let out = a.out.clone().expect("clap: --out or --torchscript");
    let loaded = checkpoint::load(&a.checkpoint, Device::Cpu)?;
    let (net, side) = (loaded.net, loaded.sidecar);
    let (ns, ap) = net.route_sets();
    crate::nn::norm::check_route_sets(route, ns, ap)
        .map_err(|e| anyhow::anyhow!("--route {}: {e}", route))?;
    net.check_route(route, "--route")?;
    if let Some((_, why)) = crate::nn::norm::shared_route(route, ns, ap) {
        log::warn!(
            "--route {}: {why}; the exported model is the same as for 'clean'",
            route
        );
    }
    let soup = a.soup.map(check_soup).transpose()?;
    let (arch, tensors) = export_branch(&net, route, soup)?;
    let mut recipe = side.recipe.clone();
    if let Some(model) = recipe.get_mut("model") {
        *model = serde_json::to_value(&arch)?;
    }
    let metrics = serde_json::json!({
        "exported_from": {
            "checkpoint": a.checkpoint.display().to_string(),
            "sha256": side.sha256,
            "route": route.to_string(),
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
    checkpoint::save(&out, &tensors, None, sidecar)?;
    println!(
        "exported route {}{} of {} as a plain model: {}",
        route,
        soup.map(|w| format!(" (soup w = {w})")).unwrap_or_default(),
        a.checkpoint.display(),
        out.display()
    );
    Ok(())
}
