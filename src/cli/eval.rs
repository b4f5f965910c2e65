//! `advtrain eval`: the flags as an [`EvalPlan`] or a [`CurvePlan`], run by [`crate::eval`];
//! prints the report and writes its JSON (and a curve's plot).

use super::write_json;
use crate::attack::pgd::Target;
use crate::attack::{check_eps, AttackName, AttackSettings, AttackSpec, ParamNames, ThreatNorm};
use crate::choice::choice;
use crate::compute::Compute;
use crate::eval::autoattack::Preset;
use crate::eval::controls::{Reestimate, StatsSource};
use crate::eval::*;
use crate::nn::{Mode, Route};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Run directory (uses checkpoints/best, else checkpoints/last).
    #[arg(long, conflicts_with = "checkpoint", required_unless_present = "checkpoint")]
    pub run: Option<PathBuf>,
    /// Checkpoint file (`.safetensors` with its `.json` sidecar).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    #[arg(long, value_parser = choice::<AttackName>())]
    pub attack: AttackName,
    /// AutoAttack preset.
    #[arg(long, default_value = "standard", value_parser = choice::<Preset>())]
    pub preset: Preset,
    /// Perturbation budget (also the fallback when --curve is given).
    #[arg(long, allow_negative_numbers = true)]
    pub eps: f64,
    /// Accept an L-inf eps above 1 (--eps, --curve, --reestimate-eps): in [0, 1] pixel space
    /// such a budget allows any image, and is usually a 0..255 value given by mistake.
    #[arg(long)]
    pub allow_large_eps: bool,
    #[arg(long, default_value = "linf", value_parser = choice::<ThreatNorm>())]
    pub norm: ThreatNorm,
    /// Iterations: PGD steps (default 20), APGD/FAB iterations (default 100).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Square: query budget per restart (default 5000).
    #[arg(long)]
    pub queries: Option<usize>,
    /// PGD step size (default 2.5 * eps / steps).
    #[arg(long)]
    pub step_size: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub restarts: usize,
    /// Target class choice of pgd-t.
    #[arg(long, default_value = "random", value_parser = choice::<Target>())]
    pub target: Target,
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
    /// AutoAttack state file (default: the JSON path with `.state.json`); an interrupted
    /// evaluation continues from it.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// AutoAttack: stop after N attack batches; a later run with the same state file continues.
    #[arg(long)]
    pub max_batches: Option<usize>,
    /// Route through the normalisation layers: clean, adv, or ns=..,ap=..
    #[arg(long, default_value = "clean")]
    pub route: Route,
    /// BN mode of the forward passes and the attack (train-frozen = batch-statistics inference).
    #[arg(long, default_value = "eval", value_parser = choice::<Mode>())]
    pub bn_mode: Mode,
    /// Use the other branch's affine parameters / head (route ap clean <-> adv).
    #[arg(long)]
    pub swap_ap: bool,
    /// Model soup: every per-domain parameter set used as w * adv + (1 - w) * clean.
    #[arg(long)]
    pub soup: Option<f64>,
    /// Re-estimate the route's running statistics first, on this training data.
    #[arg(long, value_parser = choice::<StatsSource>())]
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

/// Checks of flags that need nothing loaded (the attack's own are [`AttackName::spec`]'s):
/// sizes (0 is never a default) and the L-inf budget of --reestimate-eps.
fn check_flags(a: &EvalArgs) -> Result<()> {
    let queries = a.queries.filter(|_| a.attack == AttackName::Square);
    for (flag, v) in [
        ("--batch-size", Some(a.batch_size)),
        ("--test-limit", a.test_limit),
        ("--max-batches", a.max_batches),
        ("--reestimate-batches", Some(a.reestimate_batches)),
        ("--reestimate-batch-size", Some(a.reestimate_batch_size)),
        ("--queries", queries),
    ] {
        let why = if flag == "--test-limit" {
            " (0 leaves the test set empty; leave the flag out for the whole test split)"
        } else {
            ""
        };
        anyhow::ensure!(v != Some(0), "{flag} must be >= 1, got 0{why}");
    }
    if let Some(e) = a.reestimate_eps {
        let allow = "pass --allow-large-eps";
        check_eps("--reestimate-eps", ThreatNorm::Linf, e, a.allow_large_eps, allow)
            .map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// The attack at `eps` (and `steps`, else its default), or for autoattack the checked eps
/// (`None`); `names` names the settings in errors.
fn attack(a: &EvalArgs, eps: f64, steps: Option<usize>, names: &ParamNames) -> Result<Option<AttackSpec>> {
    if a.attack == AttackName::Autoattack {
        check_eps(&names.eps, a.norm, eps, a.allow_large_eps, &names.allow_large_eps)
            .map_err(anyhow::Error::msg)?;
        return Ok(None);
    }
    let s = AttackSettings {
        steps,
        step_size: a.step_size,
        restarts: Some(a.restarts),
        queries: a.queries,
        target: a.target,
        seed: a.seed,
        ..AttackSettings::new(a.norm, eps)
    };
    let spec = a.attack.spec(&s, names, a.allow_large_eps);
    Ok(Some(spec.map_err(anyhow::Error::msg)?))
}

/// Everything but the attack (the checkpoint resolved from --checkpoint / --run).
fn setup(a: &EvalArgs, compute: Compute) -> Result<EvalSetup> {
    let reestimate = a.reestimate.map(|source| Reestimate {
        source,
        batches: a.reestimate_batches,
        batch_size: a.reestimate_batch_size,
        norm: a.norm,
        eps: a.reestimate_eps.unwrap_or(a.eps),
        seed: a.seed,
    });
    let (route, swap_ap, bn_mode, soup) = (a.route, a.swap_ap, a.bn_mode, a.soup);
    Ok(EvalSetup {
        checkpoint: super::checkpoint_file(a.checkpoint.as_ref(), a.run.as_ref())?,
        data: DataSelection { test_limit: a.test_limit, batch_size: a.batch_size, data_dir: a.data_dir.clone() },
        test_time: TestTime { route, swap_ap, bn_mode, soup, reestimate },
        seed: a.seed,
        device: a.device,
        compute,
    })
}

fn cascade(a: &EvalArgs, state: Option<PathBuf>, max_batches: Option<usize>) -> EvalAttack {
    EvalAttack::AutoAttack(AutoAttackPlan { preset: a.preset, state, max_batches })
}

pub fn run(a: EvalArgs, compute: Compute) -> Result<()> {
    if a.curve.is_some() || a.curve_steps.is_some() {
        return run_curve(a, compute);
    }
    check_flags(&a)?;
    let spec = attack(&a, a.eps, a.steps, &ParamNames::flags())?;
    let name = spec.as_ref().map_or(format!("autoattack-{}", a.preset), AttackSpec::name);
    let in_run = |r: &PathBuf| r.join("eval").join(format!("{name}-eps{}.json", a.eps));
    let json = a.json.clone().or_else(|| a.run.as_ref().map(in_run));
    let attack = match spec {
        Some(s) => EvalAttack::Single(s),
        None => {
            let state = a.state.clone().or_else(|| json.as_ref().map(|j| j.with_extension("state.json")));
            cascade(&a, state, a.max_batches)
        }
    };
    let threat = Threat { norm: a.norm, eps: a.eps };
    let plan = EvalPlan { setup: setup(&a, compute)?, threat, attack };
    let report = evaluate(&plan, &mut Console)?;
    print!("{report}");
    json.map_or(Ok(()), |path| write_json(&path, &report))
}

/// `--curve eps1,eps2,..` or `--curve-steps s1,s2,..`: one point per value.
fn run_curve(a: EvalArgs, compute: Compute) -> Result<()> {
    let (axis, values): (CurveAxis, Vec<(f64, Option<usize>)>) = match (&a.curve, &a.curve_steps) {
        (Some(e), _) => (CurveAxis::Eps, e.iter().map(|&eps| (eps, a.steps)).collect()),
        (None, Some(st)) => (CurveAxis::Steps, st.iter().map(|&k| (a.eps, Some(k))).collect()),
        _ => unreachable!("run_curve without --curve or --curve-steps"),
    };
    anyhow::ensure!(!values.is_empty(), "--curve needs at least one value");
    check_flags(&a)?;
    let aa = a.attack == AttackName::Autoattack;
    anyhow::ensure!(!aa || axis == CurveAxis::Eps, "--curve-steps does not apply to autoattack");
    let mut names = ParamNames::flags();
    match axis {
        CurveAxis::Eps => names.eps = "--curve eps value".into(),
        CurveAxis::Steps => names.steps = "--curve-steps value".into(),
    }
    let mut points = vec![];
    for (eps, steps) in values {
        points.push(match attack(&a, eps, steps, &names)? {
            Some(s) => {
                let steps = steps.or(a.attack.default_steps());
                CurvePointPlan { eps, steps, attack: EvalAttack::Single(s) }
            }
            None => CurvePointPlan { eps, steps: None, attack: cascade(&a, None, None) },
        });
    }
    let setup = setup(&a, compute)?;
    let mut plan = CurvePlan { setup, norm: a.norm, axis, points, plot: PathBuf::new() };
    let file = format!("curve-{}-{}.json", plan.name(), axis.as_str());
    let json = a.json.clone().unwrap_or_else(|| match &a.run {
        Some(r) => r.join("eval").join(file),
        None => PathBuf::from(file),
    });
    plan.plot = json.with_extension("png");
    let report = evaluate_curve(&plan, &mut Console)?;
    print!("{report}");
    write_json(&json, &report)?;
    report.write_plot()?;
    println!("wrote {}", plan.plot.display());
    Ok(())
}
