//! `advtrain analyze <kind> (--run DIR | --checkpoint FILE) [...]`: the analyses of
//! METHODS.md section 4 (see [`crate::analysis`]). Each kind writes `<out>/<kind>.json` and
//! `<out>/<kind>.png` (default out: `<run>/analysis`).

use super::write_json;
use crate::analysis::{bn_divergence, bn_layers, bn_swap, domain_gap, GapConfig, SwapConfig};
use crate::data::{Augment, DataSpec, Dataset};
use crate::device::{device_name, parse_device};
use crate::eval::controls::{Reestimate, StatsSource};
use crate::nn::{Network, Route};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

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
        required_unless_present = "checkpoint"
    )]
    pub run: Option<PathBuf>,
    /// Checkpoint file (`.safetensors` with its `.json` sidecar).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Output folder (default: <run>/analysis; with --checkpoint: the run folder of
    /// `<run>/checkpoints/x.safetensors`, else the checkpoint's folder, + /analysis).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Override the data folder stored in the checkpoint's recipe.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
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

#[derive(Args, Debug)]
pub struct BnDivergenceArgs {
    #[command(flatten)]
    pub common: Common,
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
    /// Data the re-estimated rows' clean statistics are averaged on: clean | adv | noise.
    #[arg(long, default_value = "clean")]
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

#[derive(Args, Debug)]
pub struct GradConflictArgs {
    #[command(flatten)]
    pub common: Common,
    /// The two loss terms compared, `A,B`, each of clean-ce | adv-ce | kl | kl-sg | inv |
    /// dist-sg | arat-asym (the last three: invariance terms over --hooks).
    #[arg(long)]
    pub terms: String,
    /// Feature hooks of the invariance terms: stage indices or norm-layer names, comma
    /// separated (e.g. `2` or `layer4.0.bn1,layer4.1.bn2`); default: the run's
    /// train.arat.hooks, else the model's predictors, else the last stage.
    #[arg(long)]
    pub hooks: Option<String>,
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

pub fn run(a: AnalyzeArgs) -> Result<()> {
    match a.kind {
        Kind::DomainGap(a) => run_domain_gap(a),
        Kind::BnDivergence(a) => run_bn_divergence(a),
        Kind::BnSwap(a) => run_bn_swap(a),
        Kind::GradConflict(a) => run_grad_conflict(a),
    }
}

/// A loaded checkpoint.
struct Loaded {
    net: Network,
    ckpt: PathBuf,
    sha256: String,
    sidecar: crate::checkpoint::Sidecar,
    /// The typed recipe of the run (None when the sidecar holds none, e.g. a foreign import).
    recipe: Option<crate::train::Recipe>,
    device: Device,
    out: PathBuf,
}

/// The checkpoint named by `--run` / `--checkpoint`, with a clear error when it is missing.
fn checkpoint_file(c: &Common) -> Result<PathBuf> {
    super::checkpoint_file(c.checkpoint.as_ref(), c.run.as_ref())
}

/// Default output folder: `<run>/analysis`; for a checkpoint `<dir>/checkpoints/x` the run
/// folder `<dir>/analysis`, else `<checkpoint folder>/analysis`.
fn out_dir(c: &Common, ckpt: &Path) -> PathBuf {
    if let Some(o) = &c.out {
        return o.clone();
    }
    if let Some(r) = &c.run {
        return r.join("analysis");
    }
    let parent = ckpt
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = if parent.file_name().is_some_and(|n| n == "checkpoints") {
        parent
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    } else {
        parent
    };
    base.join("analysis")
}

fn load(c: &Common) -> Result<Loaded> {
    let device = parse_device(&c.device).context("--device")?;
    let ckpt = checkpoint_file(c)?;
    let loaded = crate::checkpoint::load(&ckpt, device)
        .with_context(|| format!("cannot load checkpoint {}", ckpt.display()))?;
    let (net, side) = (loaded.net, loaded.sidecar);
    let recipe = crate::train::saved::recipe_of(&side, &ckpt).ok();
    let out = out_dir(c, &ckpt);
    Ok(Loaded {
        net,
        sha256: side.sha256.clone(),
        sidecar: side,
        recipe,
        device,
        out,
        ckpt,
    })
}

impl Loaded {
    /// The recipe's data spec (with `--data-dir` applied).
    fn data_spec(&self, c: &Common) -> Result<DataSpec> {
        let recipe = crate::train::saved::recipe_of(&self.sidecar, &self.ckpt)
            .context("its data set is unknown")?;
        let mut spec = recipe.data;
        if let Some(d) = &c.data_dir {
            spec.dir = Some(d.clone());
        }
        Ok(spec)
    }

    /// The first `n` test images.
    fn test(&self, c: &Common, n: usize) -> Result<Dataset> {
        let mut spec = self.data_spec(c)?;
        spec.test_limit = Some(n);
        let test = spec
            .load_test()
            .context("loading the test images (set --data-dir if the data moved)")?;
        anyhow::ensure!(!test.is_empty(), "the test set is empty");
        if test.len() < n {
            eprintln!(
                "note: --n {n} but the test set has {} images; using all",
                test.len()
            );
        }
        Ok(test)
    }

    fn objective(&self) -> serde_json::Value {
        self.recipe
            .as_ref()
            .map(|r| serde_json::json!(r.train.objective.name()))
            .unwrap_or(serde_json::Value::Null)
    }

    fn paths(&self, kind: &str) -> (PathBuf, PathBuf) {
        (
            self.out.join(format!("{kind}.json")),
            self.out.join(format!("{kind}.png")),
        )
    }

    fn prepare_out(&self) -> Result<()> {
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("--out {}: cannot create the folder", self.out.display()))
    }
}

/// The analyses' budgets are L-inf in [0, 1] pixel units (the seeds' protocol): the shared
/// check, with no override (an eps above 1 is a budget in 0..255 units).
fn check_eps(eps: f64) -> Result<()> {
    crate::attack::check_eps(
        "--eps",
        crate::attack::ThreatNorm::Linf,
        eps,
        false,
        "give it in [0, 1] units (analyses have no --allow-large-eps)",
    )
    .map_err(anyhow::Error::msg)
}

fn check_has_bn(l: &Loaded, kind: &str) -> Result<()> {
    anyhow::ensure!(
        !bn_layers(l.net.model.as_ref()).is_empty(),
        "{kind}: the model of {} has no BatchNorm layer (norm.kind = {:?}), so it has no running \
         statistics to analyse",
        l.ckpt.display(),
        l.net.arch.norm.kind
    );
    Ok(())
}

/// The JSON written by `analyze domain-gap`.
#[derive(Debug, Serialize)]
struct DomainGapReport {
    kind: &'static str,
    checkpoint: String,
    sha256: String,
    architecture: String,
    objective: serde_json::Value,
    eps: f64,
    n: usize,
    route: String,
    seed: u64,
    attack: serde_json::Value,
    noise: String,
    statistic: &'static str,
    clean_batch_accuracy: f64,
    adv_batch_accuracy: f64,
    noise_batch_accuracy: f64,
    layers: Vec<crate::analysis::LayerGap>,
    summary: crate::analysis::domain_gap::GapSummary,
    device: String,
    elapsed_s: f64,
    plot: String,
}

fn run_domain_gap(a: DomainGapArgs) -> Result<()> {
    check_eps(a.eps)?;
    anyhow::ensure!(a.n >= 1, "--n must be >= 1");
    let start = Instant::now();
    let l = load(&a.common)?;
    check_has_bn(&l, "domain-gap")?;
    l.net.check_route(a.route, "--route")?;
    let test = l.test(&a.common, a.n)?;
    let (x, y) = test
        .batches(test.len(), None, Augment::default(), l.device)
        .next()
        .context("the test set is empty")?;
    let cfg = GapConfig::new(a.eps, a.route, a.common.seed);
    eprintln!(
        "domain-gap {} | eps {} | n {} | route {} | seed {} | device {}",
        l.ckpt.display(),
        a.eps,
        test.len(),
        a.route,
        a.common.seed,
        device_name(l.device)
    );
    let g = domain_gap(l.net.model.as_ref(), &x, &y, &cfg)?;
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "layer", "adv-mu", "noise-mu", "clean-mu", "adv-sig", "noise-sig", "clean-sig"
    );
    for r in &g.layers {
        println!(
            "{:<24} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4}",
            r.layer, r.adv_mu, r.noise_mu, r.clean_mu, r.adv_sigma, r.noise_sigma, r.clean_sigma
        );
    }
    l.prepare_out()?;
    let (json, png) = l.paths("domain-gap");
    let pgd = crate::attack::PgdConfig::new(
        crate::attack::ThreatNorm::Linf,
        a.eps,
        a.eps / 4.0,
        cfg.steps,
    );
    let report = DomainGapReport {
        kind: "domain-gap",
        checkpoint: l.ckpt.display().to_string(),
        sha256: l.sha256.clone(),
        architecture: l.net.arch.name.clone(),
        objective: l.objective(),
        eps: a.eps,
        n: test.len(),
        route: a.route.to_string(),
        seed: a.common.seed,
        attack: serde_json::to_value(&pgd)?,
        noise: "clip(x + U(-eps, eps), 0, 1)".into(),
        statistic: "W1 over channels: batch mean vs running_mean (mu), sqrt(batch var) vs \
                    sqrt(running_var) (sigma); running statistics of route.ns, eval mode",
        clean_batch_accuracy: g.clean_batch_accuracy,
        adv_batch_accuracy: g.adv_batch_accuracy,
        noise_batch_accuracy: g.noise_batch_accuracy,
        layers: g.layers.clone(),
        summary: g.summary.clone(),
        device: device_name(l.device),
        elapsed_s: start.elapsed().as_secs_f64(),
        plot: png.display().to_string(),
    };
    write_json(&json, &report)?;
    g.plot(format!(
        "Domain gap, eps {} (n={}, route {}): {}",
        a.eps,
        test.len(),
        a.route,
        l.net.arch.name
    ))
    .write(&png)?;
    println!("wrote {}", png.display());
    Ok(())
}

/// The JSON written by `analyze bn-divergence`.
#[derive(Debug, Serialize)]
struct BnDivergenceReport {
    kind: &'static str,
    checkpoint: String,
    sha256: String,
    architecture: String,
    objective: serde_json::Value,
    branches: [String; 2],
    layers: Vec<crate::analysis::LayerDivergence>,
    summary: crate::analysis::bn_divergence::DivergenceSummary,
    plot: String,
}

fn run_bn_divergence(a: BnDivergenceArgs) -> Result<()> {
    let l = load(&a.common)?;
    let d = bn_divergence(l.net.model.as_ref())
        .with_context(|| format!("bn-divergence on {}", l.ckpt.display()))?;
    let fmt = |d: Option<crate::analysis::Divergence>| match d {
        Some(d) => format!("{:>9.4} {:>9.4}", d.w1, d.mean_abs_diff),
        None => format!("{:>9} {:>9}", "shared", "-"),
    };
    println!(
        "{:<24} {:>19} {:>19} {:>19} {:>19}",
        "layer (W1, mean|d|)", "mu", "sigma", "gamma", "beta"
    );
    for r in &d.layers {
        println!(
            "{:<24} {} {} {} {}",
            r.layer,
            fmt(r.mu),
            fmt(r.sigma),
            fmt(r.gamma),
            fmt(r.beta)
        );
    }
    l.prepare_out()?;
    let (json, png) = l.paths("bn-divergence");
    let report = BnDivergenceReport {
        kind: "bn-divergence",
        checkpoint: l.ckpt.display().to_string(),
        sha256: l.sha256.clone(),
        architecture: l.net.arch.name.clone(),
        objective: l.objective(),
        branches: d.branches.clone(),
        layers: d.layers.clone(),
        summary: d.summary.clone(),
        plot: png.display().to_string(),
    };
    write_json(&json, &report)?;
    d.plot(format!(
        "BN branch divergence ({} vs {}): {}",
        d.branches[0], d.branches[1], l.net.arch.name
    ))
    .write(&png)?;
    println!("wrote {}", png.display());
    Ok(())
}

/// The JSON written by `analyze bn-swap`.
#[derive(Debug, Serialize)]
struct BnSwapReport {
    kind: &'static str,
    checkpoint: String,
    sha256: String,
    architecture: String,
    objective: serde_json::Value,
    eps: f64,
    n: usize,
    steps: usize,
    seed: u64,
    batch_size: usize,
    attack: String,
    attack_config: crate::attack::PgdConfig,
    bn_mode: &'static str,
    reestimate: Reestimate,
    reestimate_routes: Vec<String>,
    reestimated_images: usize,
    cells: Vec<crate::analysis::SwapCell>,
    device: String,
    elapsed_s: f64,
    plot: String,
}

fn run_bn_swap(a: BnSwapArgs) -> Result<()> {
    check_eps(a.eps)?;
    anyhow::ensure!(a.n >= 1, "--n must be >= 1");
    anyhow::ensure!(a.steps >= 1, "--steps must be >= 1");
    anyhow::ensure!(
        a.reestimate_batches >= 1,
        "--reestimate-batches must be >= 1"
    );
    anyhow::ensure!(
        a.reestimate_batch_size >= 1,
        "--reestimate-batch-size must be >= 1"
    );
    anyhow::ensure!(a.batch_size >= 1, "--batch-size must be >= 1");
    let reestimate_eps = a.reestimate_eps.unwrap_or(a.eps);
    anyhow::ensure!(
        reestimate_eps >= 0.0 && reestimate_eps.is_finite(),
        "--reestimate-eps must be a finite number >= 0, got {reestimate_eps}"
    );
    let start = Instant::now();
    let l = load(&a.common)?;
    check_has_bn(&l, "bn-swap")?;
    anyhow::ensure!(
        crate::analysis::is_multi_domain(&l.net),
        "bn-swap: the model of {} has one statistics set and one affine set in every layer \
         (a single-BN model); the swap matrix needs a multi-domain model (Dual BN, Dual-NS, Dual-AP)",
        l.ckpt.display()
    );
    let test = l.test(&a.common, a.n)?;
    let train = l
        .data_spec(&a.common)?
        .load()
        .context("loading the training split for --reestimate-on")?
        .train;
    let cfg = SwapConfig {
        eps: a.eps,
        steps: a.steps,
        batch_size: a.batch_size,
        seed: a.common.seed,
        reestimate: Reestimate {
            source: a.reestimate_on,
            batches: a.reestimate_batches,
            batch_size: a.reestimate_batch_size,
            norm: crate::attack::ThreatNorm::Linf,
            eps: reestimate_eps,
            seed: a.common.seed,
        },
    };
    eprintln!(
        "bn-swap {} | pgd-{} eps {} | n {} | re-estimation on {} ({} x {}) | seed {} | device {}",
        l.ckpt.display(),
        a.steps,
        a.eps,
        test.len(),
        a.reestimate_on,
        a.reestimate_batches,
        a.reestimate_batch_size,
        a.common.seed,
        device_name(l.device)
    );
    let s = bn_swap(&l.net, &test, &train, &cfg)?;
    if s.reestimated_images < a.reestimate_batches * a.reestimate_batch_size {
        eprintln!(
            "note: the training split holds {} images, fewer than --reestimate-batches x \
             --reestimate-batch-size; the re-estimation averaged all of them",
            s.reestimated_images
        );
    }
    println!("{:<14} {:<6} {:>8} {:>8}", "NS", "AP", "clean", "robust");
    for c in &s.cells {
        println!(
            "{:<14} {:<6} {:>7.2}% {:>7.2}%",
            c.ns,
            c.ap,
            100.0 * c.clean_accuracy,
            100.0 * c.robust_accuracy
        );
    }
    l.prepare_out()?;
    let (json, png) = l.paths("bn-swap");
    let report = BnSwapReport {
        kind: "bn-swap",
        checkpoint: l.ckpt.display().to_string(),
        sha256: l.sha256.clone(),
        architecture: l.net.arch.name.clone(),
        objective: l.objective(),
        eps: a.eps,
        n: s.n,
        steps: a.steps,
        seed: a.common.seed,
        batch_size: a.batch_size,
        attack: s.attack.clone(),
        attack_config: s.attack_config.clone(),
        bn_mode: "eval",
        reestimate: s.reestimate.clone(),
        reestimate_routes: vec!["ns=clean,ap=adv".into(), "ns=clean,ap=clean".into()],
        reestimated_images: s.reestimated_images,
        cells: s.cells.clone(),
        device: device_name(l.device),
        elapsed_s: start.elapsed().as_secs_f64(),
        plot: png.display().to_string(),
    };
    write_json(&json, &report)?;
    s.write_png(&png, &format!(" (n={}): {}", s.n, l.net.arch.name))?;
    println!("wrote {}", png.display());
    Ok(())
}

/// The JSON written by `analyze grad-conflict`.
#[derive(Debug, Serialize)]
struct GradConflictReport {
    kind: &'static str,
    checkpoint: String,
    sha256: String,
    architecture: String,
    objective: serde_json::Value,
    terms: [String; 2],
    hooks: Vec<crate::nn::Hook>,
    eps: f64,
    n: usize,
    seed: u64,
    adv_route: String,
    clean_route: String,
    attack: serde_json::Value,
    bn_mode: &'static str,
    loss_a: f64,
    loss_b: f64,
    overall: crate::analysis::grad_conflict::Conflict,
    layers: Vec<crate::analysis::grad_conflict::LayerConflict>,
    tensors: Vec<crate::analysis::grad_conflict::TensorConflict>,
    device: String,
    elapsed_s: f64,
    plot: String,
}

/// `--hooks`, else the run's `train.arat.hooks`, else the model's predictors, else the last stage.
fn conflict_hooks(a: &GradConflictArgs, l: &Loaded) -> Result<Vec<crate::nn::Hook>> {
    use crate::nn::Hook;
    if let Some(h) = &a.hooks {
        return h
            .split(',')
            .map(str::trim)
            .map(|s| {
                anyhow::ensure!(!s.is_empty(), "--hooks {h}: empty entry");
                Ok(s.parse::<usize>()
                    .map(Hook::Stage)
                    .unwrap_or_else(|_| Hook::Norm(s.to_string())))
            })
            .collect();
    }
    if let Some(crate::train::objectives::Objective::Arat(a)) =
        l.recipe.as_ref().map(|r| &r.train.objective)
    {
        return Ok(a.arat.hooks.clone());
    }
    if !l.net.arch.predictors.is_empty() {
        return Ok(l.net.arch.predictors.clone());
    }
    let n = l.net.probe_stages([32, 32]).len();
    Ok(vec![Hook::Stage(n.saturating_sub(1))])
}

fn run_grad_conflict(a: GradConflictArgs) -> Result<()> {
    use crate::analysis::grad_conflict::{
        default_adv_route, grad_conflict, parse_terms, ConflictConfig,
    };
    let terms = parse_terms(&a.terms)?;
    check_eps(a.eps)?;
    anyhow::ensure!(a.n >= 1, "--n must be >= 1");
    let start = Instant::now();
    let l = load(&a.common)?;
    let adv_route = a.route.unwrap_or_else(|| default_adv_route(&l.net));
    l.net.check_route(adv_route, "--route")?;
    let test = l.test(&a.common, a.n)?;
    let (x, y) = test
        .batches(test.len(), None, Augment::default(), l.device)
        .next()
        .context("the test set is empty")?;
    let mut cfg = ConflictConfig::new(terms, a.eps, a.common.seed, adv_route);
    cfg.hooks = conflict_hooks(&a, &l)?;
    eprintln!(
        "grad-conflict {} | {} vs {} | eps {} | n {} | adv route {} | hooks {:?} | seed {} | device {}",
        l.ckpt.display(),
        terms[0],
        terms[1],
        a.eps,
        test.len(),
        adv_route,
        cfg.hooks,
        a.common.seed,
        device_name(l.device)
    );
    let g = grad_conflict(&l.net, &x, &y, &cfg)?;
    println!(
        "{:<24} {:>10} {:>9} {:>9} {:>11} {:>11}",
        "layer", "parameters", "cosine", "opposite", "norm-a", "norm-b"
    );
    let row = |name: &str, c: &crate::analysis::grad_conflict::Conflict| {
        println!(
            "{:<24} {:>10} {:>9.4} {:>9.4} {:>11.4e} {:>11.4e}",
            name, c.parameters, c.cosine, c.opposite_sign_fraction, c.norm_a, c.norm_b
        )
    };
    for r in &g.layers {
        row(&r.layer, &r.conflict);
    }
    row("overall", &g.overall);
    l.prepare_out()?;
    let (json, png) = l.paths("grad-conflict");
    let report = GradConflictReport {
        kind: "grad-conflict",
        checkpoint: l.ckpt.display().to_string(),
        sha256: l.sha256.clone(),
        architecture: l.net.arch.name.clone(),
        objective: l.objective(),
        terms: [terms[0].to_string(), terms[1].to_string()],
        hooks: cfg.hooks.clone(),
        eps: a.eps,
        n: test.len(),
        seed: a.common.seed,
        adv_route: adv_route.to_string(),
        clean_route: Route::domain(crate::nn::CLEAN).to_string(),
        attack: serde_json::to_value(cfg.pgd())?,
        bn_mode: "attack: eval; gradients: train-frozen (batch statistics, running ones untouched)",
        loss_a: g.loss_a,
        loss_b: g.loss_b,
        overall: g.overall,
        layers: g.layers.clone(),
        tensors: g.tensors.clone(),
        device: device_name(l.device),
        elapsed_s: start.elapsed().as_secs_f64(),
        plot: png.display().to_string(),
    };
    write_json(&json, &report)?;
    g.plot(format!(
        "Gradient conflict {} vs {}, eps {} (n={}, adv route {}): {}",
        terms[0],
        terms[1],
        a.eps,
        test.len(),
        adv_route,
        l.net.arch.name
    ))
    .write(&png)?;
    println!("wrote {}", png.display());
    Ok(())
}
