//! `advtrain eval`: the flags ([`args`]) as an [`EvalPlan`] or a [`CurvePlan`], run by
//! [`crate::eval`]; prints the report and writes its JSON (and a curve's plot).

mod args;

pub use args::EvalArgs;

use super::write_json;
use crate::attack::{AttackName, ParamNames};
use crate::checkpoint::LoadedCheckpoint;
use crate::compute::Compute;
use crate::eval::*;
use crate::report::plot::{LinePlot, Series};
use anyhow::Result;
use std::path::PathBuf;

/// The attack `a.attack` at `eps` and `steps` (names: how errors name the settings).
fn attack(a: &EvalArgs, eps: f64, steps: Option<usize>, names: &ParamNames) -> Result<EvalAttack> {
    let s = a.settings(eps, steps);
    EvalAttack::from_settings(a.attack, a.preset, &s, names, a.allow_large_eps)
        .map_err(anyhow::Error::msg)
}

/// Everything but the attack, and the checkpoint of --checkpoint / --run loaded with the
/// recipe that trained it (its `[data]` is the data evaluated).
fn setup(a: &EvalArgs, compute: Compute) -> Result<(EvalSetup, LoadedCheckpoint)> {
    let device = a.device.resolve()?;
    let checkpoint = super::checkpoint_file(a.checkpoint.as_ref(), a.run.as_ref())?;
    let run = crate::train::saved::load_run(&checkpoint, device)?;
    let setup = EvalSetup {
        checkpoint,
        data: a.data(run.recipe.data),
        test_time: a.test_time(),
        seed: a.seed,
        device: a.device,
        compute,
    };
    Ok((setup, run.checkpoint))
}

pub fn run(a: EvalArgs, compute: Compute) -> Result<()> {
    if a.curve.is_some() || a.curve_steps.is_some() {
        return run_curve(a, compute);
    }
    a.check()?;
    let mut attack = attack(&a, a.eps, a.steps, &ParamNames::flags())?;
    let name = attack.name();
    let in_run = |r: &PathBuf| r.join("eval").join(format!("{name}-eps{}.json", a.eps));
    let json = a.json.clone().or_else(|| a.run.as_ref().map(in_run));
    if let EvalAttack::AutoAttack(p) = &mut attack {
        let state = json.as_ref().map(|j| j.with_extension("state.json"));
        (p.state, p.max_batches) = (a.state.clone().or(state), a.max_batches);
    }
    let threat = Threat {
        norm: a.norm,
        eps: a.eps,
    };
    let (setup, checkpoint) = setup(&a, compute)?;
    let plan = EvalPlan {
        setup,
        threat,
        attack,
    };
    let report = evaluate_on(&plan, checkpoint, &mut Console)?;
    print!("{report}");
    json.map_or(Ok(()), |path| write_json(&path, &report))
}

/// `--curve eps1,eps2,..` or `--curve-steps s1,s2,..`: one point per value.
fn run_curve(a: EvalArgs, compute: Compute) -> Result<()> {
    let mut names = ParamNames::flags();
    let (axis, values): (_, Vec<_>) = match (&a.curve, &a.curve_steps) {
        (Some(e), _) => {
            names.eps = "--curve eps value".into();
            (
                CurveAxis::Eps,
                e.iter().map(|&eps| (eps, a.steps)).collect(),
            )
        }
        (None, Some(st)) => {
            names.steps = "--curve-steps value".into();
            (
                CurveAxis::Steps,
                st.iter().map(|&k| (a.eps, Some(k))).collect(),
            )
        }
        _ => unreachable!("run_curve without --curve or --curve-steps"),
    };
    anyhow::ensure!(!values.is_empty(), "--curve needs at least one value");
    a.check()?;
    let aa = a.attack == AttackName::Autoattack;
    anyhow::ensure!(
        !aa || axis == CurveAxis::Eps,
        "--curve-steps does not apply to autoattack"
    );
    let mut points = vec![];
    for (eps, steps) in values {
        let attack = attack(&a, eps, steps, &names)?;
        let steps = (!aa).then(|| steps.or(a.attack.default_steps())).flatten();
        points.push(CurvePointPlan { eps, steps, attack });
    }
    let (setup, checkpoint) = setup(&a, compute)?;
    let mut plan = CurvePlan {
        setup,
        norm: a.norm,
        axis,
        points,
        plot: PathBuf::new(),
    };
    let file = format!("curve-{}-{}.json", plan.name(), axis.as_str());
    let json = a.json.clone().unwrap_or_else(|| match &a.run {
        Some(r) => r.join("eval").join(file),
        None => PathBuf::from(file),
    });
    plan.plot = json.with_extension("png");
    let report = evaluate_curve_on(&plan, checkpoint, &mut Console)?;
    print!("{report}");
    write_json(&json, &report)?;
    plot(&report).write(&plan.plot)?;
    println!("wrote {}", plan.plot.display());
    Ok(())
}

/// Robust accuracy (%) over the varied setting, and the clean accuracy over eps.
fn plot(r: &CurveReport) -> LinePlot {
    let (xy, eps) = (r.xy(), r.vary == CurveAxis::Eps);
    let series = |name: String, y: &dyn Fn(f64) -> f64| Series {
        name,
        points: xy.iter().map(|&(x, acc)| (x, 100.0 * y(acc))).collect(),
    };
    let mut all = vec![series(format!("{} robust", r.attack), &|acc| acc)];
    if eps {
        all.push(series("clean".into(), &|_| r.clean_accuracy));
    }
    let x_label = if eps {
        format!("eps ({})", r.norm)
    } else {
        "steps".into()
    };
    LinePlot {
        title: format!("{} ({}, n={}) on {}", r.attack, r.norm, r.n, r.checkpoint),
        x_label,
        y_label: "accuracy (%)".into(),
        series: all,
        y_range: Some((0.0, 100.0)),
    }
}
