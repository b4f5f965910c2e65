//! `advtrain eval (--run DIR | --checkpoint FILE) --attack NAME --eps X [...]`

use super::write_json;
use crate::attack::fab::{Fab, FabConfig};
use crate::attack::pgd::{Init, PgdLoss, Target};
use crate::attack::{
    check_attack_params, check_eps, Apgd, ApgdConfig, Attack, AttackParams, Classifier, Fgsm,
    ParamNames, Pgd, PgdConfig, Square, SquareConfig, ThreatNorm,
};
use crate::data::Dataset;
use crate::device::{device_name, parse_device};
use crate::eval::autoattack::{data_fingerprint, preset, AutoAttack, Preset, StateKey};
use crate::eval::checks::{curve_flags, gradient_flags, model_checks, Flag, GradientStats};
use crate::eval::controls::{check_soup, reestimate, swap_ap, Reestimate, StatsSource};
use crate::eval::robust_counts;
use crate::nn::{Ctx, Mode, Network, Route};
use crate::report::plot::{LinePlot, Series};
use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use tch::Device;

/// Attacks available to `eval`.
pub const ATTACKS: &[&str] = &[
    "fgsm",
    "pgd",
    "pgd-t",
    "pgd-kl",
    "cw",
    "apgd-ce",
    "apgd-dlr",
    "apgd-t",
    "fab",
    "fab-t",
    "square",
    "autoattack",
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
    /// fgsm | pgd | pgd-t (targeted CE, --target) | pgd-kl (TRADES' KL) | cw (PGD on the CW
    /// margin) | apgd-ce | apgd-dlr | apgd-t | fab | fab-t | square | autoattack (--preset)
    #[arg(long)]
    pub attack: String,
    /// AutoAttack preset: standard (the reference protocol) or fast (APGD-CE + APGD-T, not standard).
    #[arg(long, default_value = "standard")]
    pub preset: String,
    /// Perturbation budget (also the fallback when --curve is given).
    #[arg(long, allow_negative_numbers = true)]
    pub eps: f64,
    /// Accept an L-inf eps above 1 (--eps, --curve, --reestimate-eps): in [0, 1] pixel space
    /// such a budget allows any image, and is usually a 0..255 value given by mistake.
    #[arg(long)]
    pub allow_large_eps: bool,
    #[arg(long, default_value = "linf")]
    pub norm: ThreatNorm,
    /// Iterations: PGD steps (default 20), APGD/FAB iterations (default 100).
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
    /// Target class choice of pgd-t: random | least-likely | runner-up.
    #[arg(long, default_value = "random")]
    pub target: String,
    /// Robust accuracy over this comma-separated list of eps values (JSON + PNG plot).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub curve: Option<Vec<f64>>,
    /// Robust accuracy over this comma-separated list of step counts (JSON + PNG plot).
    #[arg(long, value_delimiter = ',', conflicts_with = "curve")]
    pub curve_steps: Option<Vec<usize>>,
    /// Use only the first N test images.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Write the result as JSON here (default: <run>/eval/<attack>-eps<eps>.json with --run).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// AutoAttack state file (default: next to the JSON, `.state.json`); an interrupted
    /// evaluation continues from it.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// AutoAttack: stop after N attack batches; a later run with the same state file continues.
    #[arg(long)]
    pub max_batches: Option<usize>,
    /// Route through the normalisation layers: clean, adv, or ns=..,ap=..
    #[arg(long, default_value = "clean")]
    pub route: Route,
    /// BN mode for the forward passes and the attack: eval | train | train-frozen
    /// (train-frozen = batch-statistics inference, Xie & Yuille's "consistent" BN).
    #[arg(long, default_value = "eval")]
    pub bn_mode: Mode,
    /// Use the other branch's affine parameters / head (route ap clean <-> adv).
    #[arg(long)]
    pub swap_ap: bool,
    /// Model soup: every per-domain parameter set used as w * adv + (1 - w) * clean.
    #[arg(long)]
    pub soup: Option<f64>,
    /// Re-estimate the route's running statistics first, on clean | adv | noise training data.
    #[arg(long)]
    pub reestimate: Option<StatsSource>,
    /// Batches averaged by --reestimate (>= 1).
    #[arg(long, default_value_t = 50)]
    pub reestimate_batches: usize,
    /// Batch size of --reestimate (>= 1).
    #[arg(long, default_value_t = 128)]
    pub reestimate_batch_size: usize,
    /// eps of --reestimate adv / noise data (default: --eps).
    #[arg(long)]
    pub reestimate_eps: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Images per attack batch (>= 1).
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Override the data folder stored in the checkpoint's recipe.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Robust accuracy after one attack (for a cascade: after it and every earlier one).
#[derive(Debug, Clone, Serialize)]
pub struct PerAttack {
    pub attack: String,
    pub robust_accuracy: f64,
    pub elapsed_s: f64,
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
    /// The route used: as requested, except that parts the model holds once (shared by every
    /// domain) read `shared` when the request named another domain than clean for them.
    pub route: String,
    /// The route as requested (`--route`, after `--swap-ap`).
    pub route_requested: String,
    pub bn_mode: String,
    /// Precision, BN folding and micro-batching of the attacks ([`crate::compute`]).
    pub compute: crate::compute::Compute,
    /// Model-soup weight of the adversarial parameter sets, when used.
    pub soup: Option<f64>,
    /// Running statistics re-estimated before evaluating, when done.
    pub reestimate: Option<Reestimate>,
    pub elapsed_s: f64,
    pub checkpoint: String,
    pub checkpoint_sha256: String,
    pub device: String,
    pub per_attack: Vec<PerAttack>,
    /// Gradient-masking sanity flags raised (empty when none).
    pub flags: Vec<Flag>,
    /// What the gradient checks measured at the clean inputs.
    pub gradient_checks: GradientStats,
}

/// One point of a curve.
#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    pub eps: f64,
    pub steps: Option<usize>,
    pub robust_accuracy: f64,
    pub elapsed_s: f64,
}

/// The JSON written by `eval --curve` / `--curve-steps`.
#[derive(Debug, Serialize)]
pub struct CurveReport {
    pub attack: String,
    /// `eps` or `steps`.
    pub vary: String,
    pub clean_accuracy: f64,
    pub points: Vec<CurvePoint>,
    pub norm: String,
    pub n: usize,
    pub seed: u64,
    /// The route used (see [`EvalReport::route`]).
    pub route: String,
    /// The route as requested (`--route`, after `--swap-ap`).
    pub route_requested: String,
    pub bn_mode: String,
    pub compute: crate::compute::Compute,
    pub soup: Option<f64>,
    pub reestimate: Option<Reestimate>,
    pub checkpoint: String,
    pub checkpoint_sha256: String,
    pub device: String,
    pub flags: Vec<Flag>,
    pub gradient_checks: GradientStats,
    pub plot: String,
}

fn default_steps(attack: &str) -> usize {
    if attack.starts_with("apgd") || attack.starts_with("fab") {
        100
    } else {
        20
    }
}

/// Checks of the arguments that need nothing loaded: sizes (0 is never a default), the L-inf
/// budgets of --reestimate-eps, and the attack settings ([`build_attack`] checks the rest).
fn check_args(a: &EvalArgs) -> Result<()> {
    let mut sizes = vec![
        ("--batch-size", Some(a.batch_size)),
        ("--test-limit", a.test_limit),
        ("--max-batches", a.max_batches),
        ("--reestimate-batches", Some(a.reestimate_batches)),
        ("--reestimate-batch-size", Some(a.reestimate_batch_size)),
    ];
    if a.attack == "square" {
        sizes.push(("--queries", Some(a.queries)));
    }
    for (flag, v) in sizes {
        let why = if flag == "--test-limit" {
            " (0 leaves the test set empty; leave the flag out for the whole test split)"
        } else {
            ""
        };
        anyhow::ensure!(v != Some(0), "{flag} must be >= 1, got 0{why}");
    }
    if let Some(e) = a.reestimate_eps {
        check_eps(
            "--reestimate-eps",
            ThreatNorm::Linf,
            e,
            a.allow_large_eps,
            "pass --allow-large-eps",
        )
        .map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// The names of the settings for one attack built from the flags: `--eps` and `--steps`, or
/// the values of a curve.
fn flag_names(curve: Option<&str>) -> ParamNames {
    let mut n = ParamNames::flags();
    match curve {
        Some("eps") => n.eps = "--curve eps value".into(),
        Some(_) => n.steps = "--curve-steps value".into(),
        None => {}
    }
    n
}

/// The attack named by `a.attack` at budget `eps` and `steps` iterations (not autoattack);
/// `names` names the settings in errors ([`flag_names`]).
fn build_attack(
    a: &EvalArgs,
    eps: f64,
    steps: usize,
    names: &ParamNames,
) -> Result<Box<dyn Attack>> {
    check_attack_params(
        names,
        &AttackParams {
            norm: a.norm,
            eps,
            steps: Some(steps),
            step_size: a.step_size,
            restarts: Some(a.restarts),
            allow_large_eps: a.allow_large_eps,
        },
    )
    .map_err(anyhow::Error::msg)?;
    let step = a.step_size.unwrap_or(2.5 * eps / steps as f64);
    let apgd = |cfg: ApgdConfig| {
        Apgd::new(ApgdConfig {
            n_iter: steps,
            n_restarts: a.restarts,
            seed: Some(a.seed),
            ..cfg
        })
    };
    let fab = |cfg: FabConfig| {
        Fab::new(FabConfig {
            n_iter: steps,
            n_restarts: a.restarts,
            seed: Some(a.seed),
            ..cfg
        })
    };
    let target = match a.target.as_str() {
        "random" => Target::Random,
        "least-likely" => Target::LeastLikely,
        "runner-up" => Target::RunnerUp,
        other => anyhow::bail!(
            "--target '{other}' is not a target choice: expected random, least-likely or runner-up"
        ),
    };
    let pgd = |loss, init| PgdConfig {
        norm: a.norm,
        eps,
        step_size: step,
        steps,
        restarts: a.restarts,
        init,
        loss,
        target,
    };
    Ok(match a.attack.as_str() {
        "fgsm" => {
            anyhow::ensure!(
                a.norm == ThreatNorm::Linf,
                "fgsm is an L-inf attack; use --norm linf"
            );
            Box::new(Fgsm { eps })
        }
        "pgd" => Box::new(Pgd::new(pgd(PgdLoss::Ce, Init::Uniform))),
        "pgd-t" => Box::new(Pgd::new(pgd(PgdLoss::TargetedCe, Init::Uniform))),
        "pgd-kl" => Box::new(Pgd::new(pgd(PgdLoss::Kl, Init::Normal))),
        "cw" => Box::new(Pgd::new(pgd(PgdLoss::Cw, Init::Uniform))),
        "apgd-ce" => Box::new(apgd(ApgdConfig::ce(a.norm, eps))),
        "apgd-dlr" => Box::new(apgd(ApgdConfig::dlr(a.norm, eps))),
        "apgd-t" => Box::new(apgd(ApgdConfig::targeted(a.norm, eps))),
        "fab" => Box::new(fab(FabConfig::untargeted(a.norm, eps))),
        "fab-t" => Box::new(fab(FabConfig::targeted(a.norm, eps))),
        "square" => {
            let cfg = SquareConfig {
                n_queries: a.queries,
                n_restarts: a.restarts,
                ..SquareConfig::new(a.norm, eps)
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

/// Everything an evaluation needs, loaded once.
struct Setup {
    net: Network,
    ckpt: PathBuf,
    sha256: String,
    test: Dataset,
    ctx: Ctx,
    /// The route used, `shared` where the model holds one set ([`route_label`]).
    route_label: String,
    device: Device,
    reestimate: Option<Reestimate>,
}

/// The label of `route` on `net` (what [`EvalReport::route`] holds) after checking that the
/// model has the domains it names; warns when it names another domain than clean for a part
/// the model holds once (`swapped`: the route came from `--swap-ap`).
fn route_label(net: &Network, route: Route, swapped: bool) -> Result<String> {
    let norms = net.model.norms();
    let ns = norms.iter().map(|(_, n)| n.stats.len()).max().unwrap_or(0);
    let ap = norms
        .iter()
        .map(|(_, n)| n.affine.len())
        .max()
        .unwrap_or(0)
        .max(net.arch.heads);
    let flag = if swapped {
        "--route (with --swap-ap)"
    } else {
        "--route"
    };
    crate::nn::norm::check_route_sets(route, ns, ap)
        .map_err(|e| anyhow::anyhow!("{flag} {route}: {e}"))?;
    net.check_route(route, flag)?;
    Ok(match crate::nn::norm::shared_route(route, ns, ap) {
        Some((label, why)) => {
            let swap = if swapped && ap <= 1 {
                " --swap-ap has no other affine set to take;"
            } else {
                ""
            };
            log::warn!("{flag} {route}:{swap} {why}; the output labels the route '{label}'");
            label
        }
        None => route.to_string(),
    })
}

fn load(a: &EvalArgs) -> Result<Setup> {
    let device = parse_device(&a.device)?;
    let ckpt = super::checkpoint_file(a.checkpoint.as_ref(), a.run.as_ref())?;
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
    let channels = test.images.size()[1];
    anyhow::ensure!(
        channels == net.arch.in_channels,
        "the test images in {} have {channels} channels but the model of {} takes {} \
         (model.in_channels)",
        data_spec.resolved_dir()?.display(),
        ckpt.display(),
        net.arch.in_channels
    );
    let route = if a.swap_ap { swap_ap(a.route) } else { a.route };
    let label = route_label(&net, route, a.swap_ap)?;
    let soup = a.soup.map(check_soup).transpose()?;
    let reestimate = match a.reestimate {
        Some(source) => {
            let r = Reestimate {
                source,
                batches: a.reestimate_batches,
                batch_size: a.reestimate_batch_size,
                norm: a.norm,
                eps: a.reestimate_eps.unwrap_or(a.eps),
                seed: a.seed,
            };
            let train = data_spec.load()?.train;
            let n = reestimate(net.model.as_ref(), route, &r, &train, device)?;
            println!(
                "re-estimated the running statistics of NS {} on {n} {} training images ({} batches)",
                crate::nn::norm::domain_name(route.ns),
                r.source,
                r.batches
            );
            Some(r)
        }
        None => None,
    };
    Ok(Setup {
        net,
        ckpt,
        sha256: side.sha256,
        test,
        ctx: Ctx::new(route, a.bn_mode).with_soup(soup),
        route_label: label,
        device,
        reestimate,
    })
}

/// What identifies an AutoAttack evaluation in its state file.
fn state_key(a: &EvalArgs, s: &Setup, p: Preset, eps: f64, data_sha256: String) -> StateKey {
    StateKey {
        preset: p.name.to_string(),
        norm: a.norm,
        eps,
        seed: a.seed,
        batch_size: a.batch_size,
        route: test_time_label(s),
        bn_mode: a.bn_mode.to_string(),
        checkpoint_sha256: s.sha256.clone(),
        data_sha256,
        n: s.test.len(),
    }
}

/// The route plus every test-time control that changes results (state-file key).
fn test_time_label(s: &Setup) -> String {
    let mut l = s.route_label.clone();
    if let Some(w) = s.ctx.soup {
        l += &format!(" soup={w}");
    }
    if let Some(r) = &s.reestimate {
        l += &format!(
            " reestimate={}x{}x{}@{}",
            r.source, r.batches, r.batch_size, r.eps
        );
    }
    l
}

fn print_flags(flags: &[Flag]) {
    if flags.is_empty() {
        println!("sanity checks: no flag raised");
    }
    for f in flags {
        println!("FLAG {}: {}", f.code, f.message);
    }
}

pub fn run(a: EvalArgs) -> Result<()> {
    if a.curve.is_some() || a.curve_steps.is_some() {
        return run_curve(a);
    }
    // Validate the arguments and the attack before loading anything.
    check_args(&a)?;
    let aa = if a.attack == "autoattack" {
        let p = preset(&a.preset)?;
        check_eps(
            "--eps",
            a.norm,
            a.eps,
            a.allow_large_eps,
            "pass --allow-large-eps",
        )
        .map_err(anyhow::Error::msg)?;
        Some(p)
    } else {
        build_attack(
            &a,
            a.eps,
            a.steps.unwrap_or(default_steps(&a.attack)),
            &flag_names(None),
        )?;
        None
    };
    let s = load(&a)?;
    let f = Classifier::new(s.net.model.as_ref(), s.ctx);
    tch::manual_seed(a.seed as i64);
    let checks = model_checks(&f, &s.test, a.batch_size, s.device);
    let mut flags = gradient_flags(&checks);
    let start = Instant::now();
    let (name, config, clean, robust, per_attack, default_json) = if let Some(p) = aa {
        let mut aa = AutoAttack::new(p, a.norm, a.eps, a.seed, a.batch_size, s.test.num_classes)?;
        aa.max_batches = a.max_batches;
        let name = aa.name();
        let json = a.json.clone().or_else(|| {
            a.run
                .as_ref()
                .map(|r| r.join("eval").join(format!("{name}-eps{}.json", a.eps)))
        });
        let state = a
            .state
            .clone()
            .or_else(|| json.as_ref().map(|j| j.with_extension("state.json")));
        if let Some(st) = state.as_ref().and_then(|p| p.parent()) {
            if !st.as_os_str().is_empty() {
                std::fs::create_dir_all(st)
                    .with_context(|| format!("cannot create {}", st.display()))?;
            }
        }
        eprintln!(
            "eval {} | {} ({}) | {} eps {} | route {} | BN mode {} | n {} | seed {} | batch {} | device {}",
            s.ckpt.display(),
            name,
            p.description,
            a.norm,
            a.eps,
            test_time_label(&s),
            a.bn_mode,
            s.test.len(),
            a.seed,
            a.batch_size,
            device_name(s.device)
        );
        eprintln!("preset {}", aa.config());
        eprintln!("compute: {}", crate::compute::get().describe());
        match &state {
            Some(p) => eprintln!("state file {} (resumable)", p.display()),
            None => eprintln!("no state file (give --json or --state to make the run resumable)"),
        }
        let key = state_key(&a, &s, p, a.eps, data_fingerprint(&s.test)?);
        let r = aa.run(&f, &s.test, s.device, key, state.as_deref(), |m| {
            eprintln!("{m}")
        })?;
        flags.extend(r.flags.clone());
        let per: Vec<PerAttack> = r
            .per_attack
            .iter()
            .map(|x| PerAttack {
                attack: x.attack.clone(),
                robust_accuracy: x.robust_accuracy,
                elapsed_s: x.elapsed_s,
            })
            .collect();
        (
            name,
            aa.config(),
            r.clean_accuracy,
            r.robust_accuracy,
            per,
            json,
        )
    } else {
        let attack = build_attack(
            &a,
            a.eps,
            a.steps.unwrap_or(default_steps(&a.attack)),
            &flag_names(None),
        )?;
        eprintln!(
            "eval {} | attack {} {} | route {} | BN mode {} | n {} | seed {} | device {}",
            s.ckpt.display(),
            attack.name(),
            attack.config(),
            test_time_label(&s),
            a.bn_mode,
            s.test.len(),
            a.seed,
            device_name(s.device)
        );
        eprintln!("compute: {}", crate::compute::get().describe());
        tch::manual_seed(a.seed as i64);
        let counts = robust_counts(&f, attack.as_ref(), &s.test, a.batch_size, s.device);
        let per = vec![PerAttack {
            attack: attack.name(),
            robust_accuracy: counts.robust_accuracy(),
            elapsed_s: start.elapsed().as_secs_f64(),
        }];
        let json = a.json.clone().or_else(|| {
            a.run.as_ref().map(|r| {
                r.join("eval")
                    .join(format!("{}-eps{}.json", attack.name(), a.eps))
            })
        });
        (
            attack.name(),
            attack.config(),
            counts.clean_accuracy(),
            counts.robust_accuracy(),
            per,
            json,
        )
    };
    let report = EvalReport {
        compute: crate::compute::get(),
        clean_accuracy: clean,
        robust_accuracy: robust,
        attack: name,
        attack_config: config,
        eps: a.eps,
        norm: a.norm.to_string(),
        n: s.test.len(),
        seed: a.seed,
        route: s.route_label.clone(),
        route_requested: s.ctx.route.to_string(),
        soup: s.ctx.soup,
        reestimate: s.reestimate.clone(),
        bn_mode: a.bn_mode.to_string(),
        elapsed_s: start.elapsed().as_secs_f64(),
        checkpoint: s.ckpt.display().to_string(),
        checkpoint_sha256: s.sha256.clone(),
        device: device_name(s.device),
        per_attack,
        flags,
        gradient_checks: checks,
    };
    println!(
        "{:<22} {:>10} {:>10} {:>8} {:>10}",
        "attack", "clean", "robust", "n", "time (s)"
    );
    for p in &report.per_attack {
        println!(
            "{:<22} {:>9.2}% {:>9.2}% {:>8} {:>10.1}",
            p.attack,
            100.0 * report.clean_accuracy,
            100.0 * p.robust_accuracy,
            report.n,
            p.elapsed_s
        );
    }
    if report.per_attack.len() > 1 {
        println!(
            "{:<22} {:>9.2}% {:>9.2}% {:>8} {:>10.1}",
            report.attack,
            100.0 * report.clean_accuracy,
            100.0 * report.robust_accuracy,
            report.n,
            report.elapsed_s
        );
    }
    print_flags(&report.flags);
    if let Some(path) = default_json {
        write_json(&path, &report)?;
    }
    Ok(())
}

/// `eval --curve eps1,eps2,..` or `--curve-steps s1,s2,..`: robust accuracy of one attack
/// (or AutoAttack) over a list of budgets, as JSON and a PNG plot, with monotonicity flags.
fn run_curve(a: EvalArgs) -> Result<()> {
    let vary = if a.curve.is_some() { "eps" } else { "steps" };
    let settings: Vec<(f64, usize)> = match (&a.curve, &a.curve_steps) {
        (Some(e), _) => e
            .iter()
            .map(|&eps| (eps, a.steps.unwrap_or(default_steps(&a.attack))))
            .collect(),
        (None, Some(st)) => st.iter().map(|&k| (a.eps, k)).collect(),
        _ => unreachable!(),
    };
    anyhow::ensure!(!settings.is_empty(), "--curve needs at least one value");
    check_args(&a)?;
    let aa = if a.attack == "autoattack" {
        anyhow::ensure!(vary == "eps", "--curve-steps does not apply to autoattack");
        Some(preset(&a.preset)?)
    } else {
        None
    };
    let names = flag_names(Some(vary));
    for &(eps, steps) in &settings {
        if aa.is_none() {
            build_attack(&a, eps, steps, &names)?;
        } else {
            check_eps(
                &names.eps,
                a.norm,
                eps,
                a.allow_large_eps,
                "pass --allow-large-eps",
            )
            .map_err(anyhow::Error::msg)?;
        }
    }
    let s = load(&a)?;
    let f = Classifier::new(s.net.model.as_ref(), s.ctx);
    tch::manual_seed(a.seed as i64);
    let checks = model_checks(&f, &s.test, a.batch_size, s.device);
    let mut flags = gradient_flags(&checks);
    let name = match aa {
        Some(p) => format!("autoattack-{}", p.name),
        // The attack's own name (e.g. `pgd-20`) when only eps varies.
        None if vary == "eps" => build_attack(&a, settings[0].0, settings[0].1, &names)?.name(),
        None => a.attack.clone(),
    };
    eprintln!(
        "eval curve over {vary} {:?} | {name} | {} | route {} | BN mode {} | n {} | seed {} | device {}",
        settings.iter().map(|&(e, k)| if vary == "eps" { e } else { k as f64 }).collect::<Vec<_>>(),
        s.ckpt.display(),
        test_time_label(&s),
        a.bn_mode,
        s.test.len(),
        a.seed,
        device_name(s.device)
    );
    eprintln!("compute: {}", crate::compute::get().describe());
    let clean = {
        let c = crate::eval::clean_counts(&f, &s.test, a.batch_size, s.device);
        c.clean_accuracy()
    };
    let mut points = Vec::new();
    for &(eps, steps) in &settings {
        let t = Instant::now();
        let robust = match aa {
            Some(p) => {
                let aa = AutoAttack::new(p, a.norm, eps, a.seed, a.batch_size, s.test.num_classes)?;
                // No state file for curve points, so no data fingerprint is needed.
                let key = state_key(&a, &s, p, eps, String::new());
                let r = aa.run(&f, &s.test, s.device, key, None, |m| eprintln!("  {m}"))?;
                flags.extend(r.flags);
                r.robust_accuracy
            }
            None => {
                let attack = build_attack(&a, eps, steps, &names)?;
                tch::manual_seed(a.seed as i64);
                robust_counts(&f, attack.as_ref(), &s.test, a.batch_size, s.device)
                    .robust_accuracy()
            }
        };
        let p = CurvePoint {
            eps,
            steps: aa.is_none().then_some(steps),
            robust_accuracy: robust,
            elapsed_s: t.elapsed().as_secs_f64(),
        };
        println!(
            "{vary} {:<8} robust {:6.2}%  ({:.1} s)",
            if vary == "eps" {
                eps.to_string()
            } else {
                steps.to_string()
            },
            100.0 * robust,
            p.elapsed_s
        );
        points.push(p);
    }
    let xy: Vec<(f64, f64)> = points
        .iter()
        .map(|p| {
            let x = if vary == "eps" {
                p.eps
            } else {
                p.steps.unwrap_or(0) as f64
            };
            (x, p.robust_accuracy)
        })
        .collect();
    flags.extend(curve_flags(vary, clean, &xy));
    let json = a.json.clone().unwrap_or_else(|| match &a.run {
        Some(r) => r.join("eval").join(format!("curve-{name}-{vary}.json")),
        None => PathBuf::from(format!("curve-{name}-{vary}.json")),
    });
    let png = json.with_extension("png");
    let report = CurveReport {
        compute: crate::compute::get(),
        attack: name.clone(),
        vary: vary.to_string(),
        clean_accuracy: clean,
        points,
        norm: a.norm.to_string(),
        n: s.test.len(),
        seed: a.seed,
        route: s.route_label.clone(),
        route_requested: s.ctx.route.to_string(),
        soup: s.ctx.soup,
        reestimate: s.reestimate.clone(),
        bn_mode: a.bn_mode.to_string(),
        checkpoint: s.ckpt.display().to_string(),
        checkpoint_sha256: s.sha256.clone(),
        device: device_name(s.device),
        flags,
        gradient_checks: checks,
        plot: png.display().to_string(),
    };
    print_flags(&report.flags);
    write_json(&json, &report)?;
    let mut series = vec![Series {
        name: format!("{name} robust"),
        points: xy.iter().map(|&(x, y)| (x, 100.0 * y)).collect(),
    }];
    if vary == "eps" {
        series.push(Series {
            name: "clean".into(),
            points: xy.iter().map(|&(x, _)| (x, 100.0 * clean)).collect(),
        });
    }
    LinePlot {
        title: format!(
            "{name} ({}, n={}) on {}",
            a.norm,
            s.test.len(),
            s.ckpt.display()
        ),
        x_label: if vary == "eps" {
            format!("eps ({})", a.norm)
        } else {
            "steps".into()
        },
        y_label: "accuracy (%)".into(),
        series,
        y_range: Some((0.0, 100.0)),
    }
    .write(&png)?;
    println!("wrote {}", png.display());
    Ok(())
}
