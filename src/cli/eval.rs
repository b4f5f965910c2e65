//! `advtrain eval (--run DIR | --checkpoint FILE) --attack NAME --eps X [...]`

use crate::attack::pgd::{Init, PgdLoss};
use crate::attack::{
    Apgd, ApgdConfig, Attack, Classifier, Fgsm, Pgd, PgdConfig, Square, SquareConfig, ThreatNorm,
};
use crate::device::{device_name, parse_device};
use crate::eval::robust_counts;
use crate::nn::{Ctx, Mode, Network, Route};
use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// Attacks available to `eval`.
pub const ATTACKS: &[&str] = &[
    "fgsm", "pgd", "cw", "apgd-ce", "apgd-dlr", "apgd-t", "square",
];

#[derive(Args, Debug)]
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
    /// fgsm | pgd | cw (PGD on the CW margin loss) | apgd-ce | apgd-dlr | apgd-t | square
    #[arg(long)]
    pub attack: String,
    #[arg(long, allow_negative_numbers = true)]
    pub eps: f64,
    #[arg(long, default_value = "linf")]
    pub norm: ThreatNorm,
    /// Iterations: PGD steps (default 20) or APGD iterations (default 100).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Square: query budget per restart.
    #[arg(long, default_value_t = 5000)]
    pub queries: usize,
    /// PGD step size (default 2.5 * eps / steps).
    #[arg(long)]
    pub step_size: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub restarts: usize,
    /// Use only the first N test images.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Write the result as JSON here (default: <run>/eval/<attack>-eps<eps>.json with --run).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Route through the normalisation layers: clean, adv, or ns=..,ap=..
    #[arg(long, default_value = "clean")]
    pub route: Route,
    /// BN mode for the forward passes and the attack: eval | train | train-frozen.
    #[arg(long, default_value = "eval")]
    pub bn_mode: Mode,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Override the data folder stored in the checkpoint's recipe.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// The JSON written by `eval`.
#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub clean_accuracy: f64,
    pub robust_accuracy: f64,
    pub attack: String,
    pub attack_config: serde_json::Value,
    pub eps: f64,
    pub norm: String,
    pub n: usize,
    pub seed: u64,
    pub route: String,
    pub bn_mode: String,
    pub elapsed_s: f64,
    pub checkpoint: String,
    pub checkpoint_sha256: String,
    pub device: String,
}

fn build_attack(a: &EvalArgs) -> Result<Box<dyn Attack>> {
    anyhow::ensure!(
        a.eps >= 0.0 && a.eps.is_finite(),
        "--eps must be a finite number >= 0, got {}",
        a.eps
    );
    anyhow::ensure!(a.restarts >= 1, "--restarts must be >= 1");
    let steps = a.steps.unwrap_or(if a.attack.starts_with("apgd") {
        100
    } else {
        20
    });
    let step = a.step_size.unwrap_or(2.5 * a.eps / steps.max(1) as f64);
    let apgd = |cfg: ApgdConfig| {
        Apgd::new(ApgdConfig {
            n_iter: steps,
            n_restarts: a.restarts,
            seed: Some(a.seed),
            ..cfg
        })
    };
    let pgd = |loss| PgdConfig {
        norm: a.norm,
        eps: a.eps,
        step_size: step,
        steps,
        restarts: a.restarts,
        init: Init::Uniform,
        loss,
    };
    Ok(match a.attack.as_str() {
        "fgsm" => {
            anyhow::ensure!(
                a.norm == ThreatNorm::Linf,
                "fgsm is an L-inf attack; use --norm linf"
            );
            Box::new(Fgsm { eps: a.eps })
        }
        "pgd" => Box::new(Pgd::new(pgd(PgdLoss::Ce))),
        "cw" => Box::new(Pgd::new(pgd(PgdLoss::Cw))),
        "apgd-ce" => Box::new(apgd(ApgdConfig::ce(a.norm, a.eps))),
        "apgd-dlr" => Box::new(apgd(ApgdConfig::dlr(a.norm, a.eps))),
        "apgd-t" => Box::new(apgd(ApgdConfig::targeted(a.norm, a.eps))),
        "square" => {
            let cfg = SquareConfig {
                n_queries: a.queries,
                n_restarts: a.restarts,
                ..SquareConfig::new(a.norm, a.eps)
            };
            cfg.validate("square").map_err(anyhow::Error::msg)?;
            Box::new(Square::new(cfg))
        }
        other => anyhow::bail!(
            "unknown attack '{other}': expected one of {}",
            ATTACKS.join(", ")
        ),
    })
}

pub fn run(a: EvalArgs) -> Result<()> {
    let attack = build_attack(&a)?;
    let device = parse_device(&a.device)?;
    let ckpt = match (&a.checkpoint, &a.run) {
        (Some(c), _) => c.clone(),
        (None, Some(r)) => {
            let best = r.join("checkpoints/best.safetensors");
            if best.exists() {
                best
            } else {
                r.join("checkpoints/last.safetensors")
            }
        }
        (None, None) => anyhow::bail!("give --run DIR or --checkpoint FILE"),
    };
    let (net, side) = Network::from_checkpoint(&ckpt, device)?;
    let recipe: crate::train::Recipe = serde_json::from_value(side.recipe.clone())
        .with_context(|| format!("the sidecar of {} holds no valid recipe", ckpt.display()))?;
    let mut data_spec = recipe.data.clone();
    if let Some(d) = &a.data_dir {
        data_spec.dir = Some(d.clone());
    }
    data_spec.test_limit = a.test_limit;
    let test = data_spec.load_test()?;
    anyhow::ensure!(!test.is_empty(), "the test set is empty (--test-limit 0?)");
    check_route(&net, a.route)?;

    let ctx = Ctx::new(a.route, a.bn_mode);
    eprintln!(
        "eval {} | attack {} {} | route {} | BN mode {} | n {} | seed {} | device {}",
        ckpt.display(),
        attack.name(),
        attack.config(),
        a.route,
        a.bn_mode,
        test.len(),
        a.seed,
        device_name(device)
    );
    tch::manual_seed(a.seed as i64);
    let start = Instant::now();
    let counts = robust_counts(
        &Classifier::new(net.model.as_ref(), ctx),
        attack.as_ref(),
        &test,
        a.batch_size,
        device,
    );
    let report = EvalReport {
        clean_accuracy: counts.clean_accuracy(),
        robust_accuracy: counts.robust_accuracy(),
        attack: attack.name(),
        attack_config: attack.config(),
        eps: a.eps,
        norm: a.norm.to_string(),
        n: counts.n,
        seed: a.seed,
        route: a.route.to_string(),
        bn_mode: a.bn_mode.to_string(),
        elapsed_s: start.elapsed().as_secs_f64(),
        checkpoint: ckpt.display().to_string(),
        checkpoint_sha256: side.sha256.clone(),
        device: device_name(device),
    };
    println!(
        "{:<12} {:>10} {:>10} {:>8} {:>10}",
        "attack", "clean", "robust", "n", "time (s)"
    );
    println!(
        "{:<12} {:>9.2}% {:>9.2}% {:>8} {:>10.1}",
        report.attack,
        100.0 * report.clean_accuracy,
        100.0 * report.robust_accuracy,
        report.n,
        report.elapsed_s
    );
    let json = a.json.clone().or_else(|| {
        a.run.as_ref().map(|r| {
            r.join("eval")
                .join(format!("{}-eps{}.json", report.attack, a.eps))
        })
    });
    if let Some(path) = json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The route must name domains the model has.
fn check_route(net: &Network, route: Route) -> Result<()> {
    for (name, norm) in net.model.norms() {
        norm.check_route(route)
            .map_err(|e| anyhow::anyhow!("--route {route}: layer {name}: {e}"))?;
    }
    Ok(())
}
