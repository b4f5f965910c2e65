//! `advtrain eval`: the flags ([`args`]) as an [`EvalPlan`] or a [`CurvePlan`], the model and
//! points resolved by [`crate::eval::source`], run by [`crate::eval`]; prints the report and
//! writes its JSON (and a curve's plot, [`crate::report::run::curve_plot`]).

mod args;
mod attack;
mod model;

pub use args::EvalArgs;

use super::write_json;
use crate::attack::{AttackName, ParamNames};
use crate::compute::Compute;
use crate::data::DataSpec;
use crate::eval::*;
use crate::report::run::curve_plot;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The attack of the flags at `eps` and `steps` (names: how errors name the settings).
fn attack(a: &EvalArgs, eps: f64, steps: Option<usize>, names: &ParamNames) -> Result<EvalAttack> {
    let (f, s) = (&a.attack, a.attack.settings(eps, steps, a.seed));
    EvalAttack::from_settings(f.attack, f.preset, &s, names, f.allow_large_eps)
        .map_err(anyhow::Error::msg)
}

/// An advtrain checkpoint with its recipe's `[data]` (the recipe is `train`'s to read).
fn load_advtrain(file: &Path, device: tch::Device) -> Result<(LoadedModel, DataSpec)> {
    let run = crate::train::saved::load_run(file, device)?;
    Ok((run.checkpoint.into(), run.recipe.data))
}

/// Everything but the attack, and the loaded model.
fn setup(a: &EvalArgs, compute: Compute) -> Result<(EvalSetup, LoadedModel)> {
    let request = a.model.request();
    request.open(&a.data_request(), a.rest(compute), &load_advtrain)
}

pub fn run(mut a: EvalArgs, compute: Compute) -> Result<()> {
    // Launched as several workers without --shard: worker r evaluates shard r/N, rank 0 merges.
    let timeout = std::time::Duration::from_secs(a.merge_timeout);
    let workers = match a.shard {
        None => workers::Workers::from_env(timeout)?,
        Some(_) => None,
    };
    if a.attack.curve.is_some() || a.attack.curve_steps.is_some() {
        anyhow::ensure!(
            workers.is_none(),
            "curves are not sharded: run --curve once, without the launch variables"
        );
        return run_curve(a, compute);
    }
    a.shard = workers.as_ref().map(|w| w.shard()).or(a.shard);
    a.check()?;
    let eps = a.attack.eps;
    let mut attack = attack(&a, eps, a.attack.steps, &ParamNames::flags())?;
    let name = attack.name();
    let (json, run, w) = (a.json.as_deref(), a.model.run.as_deref(), workers.as_ref());
    let (merged, json) = workers::report_files(json, run, &format!("{name}-eps{eps}"), a.shard, w)?;
    if let EvalAttack::AutoAttack(p) = &mut attack {
        let state = json.as_ref().map(|j| j.with_extension("state.json"));
        (p.state, p.max_batches) = (a.state.clone().or(state), a.max_batches);
    }
    let threat = Threat {
        norm: a.attack.norm,
        eps,
    };
    let (setup, checkpoint) = setup(&a, compute)?;
    let plan = EvalPlan {
        setup,
        threat,
        attack,
    };
    let mut report = evaluate_model(&plan, checkpoint, &mut Console)?;
    print!("{report}");
    let mut json = json;
    if let (Some(w), Some(m)) = (&workers, &merged) {
        write_json(json.as_ref().expect("a shard file"), &report)?;
        let Some(all) = w.meet_and_merge(m)? else {
            return Ok(());
        };
        (report, json) = (all, Some(m.clone()));
        print!("merged {} shards:\n{report}", w.env.world_size);
    }
    if let Some(card) = &a.model_card {
        let c = crate::eval::card::ModelCard::new(&plan, &report);
        write_json(card, &c)?;
    }
    json.map_or(Ok(()), |path| write_json(&path, &report))
}

/// `--curve eps1,eps2,..` or `--curve-steps s1,s2,..`: one point per value.
fn run_curve(a: EvalArgs, compute: Compute) -> Result<()> {
    let mut names = ParamNames::flags();
    let f = &a.attack;
    let (axis, values): (_, Vec<_>) = match (&f.curve, &f.curve_steps) {
        (Some(e), _) => {
            names.eps = "--curve eps value".into();
            let values = e.iter().map(|&eps| (eps, f.steps)).collect();
            (CurveAxis::Eps, values)
        }
        (None, Some(st)) => {
            names.steps = "--curve-steps value".into();
            (
                CurveAxis::Steps,
                st.iter().map(|&k| (f.eps, Some(k))).collect(),
            )
        }
        _ => unreachable!("run_curve without --curve or --curve-steps"),
    };
    anyhow::ensure!(!values.is_empty(), "--curve needs at least one value");
    a.check()?;
    let aa = f.attack == AttackName::Autoattack;
    anyhow::ensure!(
        !aa || axis == CurveAxis::Eps,
        "--curve-steps does not apply to autoattack"
    );
    let mut points = vec![];
    for (eps, steps) in values {
        let attack = attack(&a, eps, steps, &names)?;
        let steps = (!aa).then(|| steps.or(f.attack.default_steps())).flatten();
        points.push(CurvePointPlan { eps, steps, attack });
    }
    let (setup, checkpoint) = setup(&a, compute)?;
    let (norm, plot) = (f.norm, PathBuf::new());
    let mut plan = CurvePlan {
        setup,
        norm,
        axis,
        points,
        plot,
    };
    let file = format!("curve-{}-{}.json", plan.name(), axis.as_str());
    let json = a.json.clone().unwrap_or_else(|| match &a.model.run {
        Some(r) => r.join("eval").join(file),
        None => PathBuf::from(file),
    });
    plan.plot = json.with_extension("png");
    let report = evaluate_curve_model(&plan, checkpoint, &mut Console)?;
    print!("{report}");
    write_json(&json, &report)?;
    let (r, json_value) = (&report, serde_json::to_value(&report)?);
    let title = format!("{} ({}, n={}) on {}", r.attack, r.norm, r.n, r.checkpoint);
    curve_plot(title, &json_value).write(&plan.plot)?;
    println!("wrote {}", plan.plot.display());
    Ok(())
}
