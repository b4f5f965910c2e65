//! `advtrain eval`: the flags ([`args`]) as an [`EvalPlan`] or a [`CurvePlan`], run by
//! [`crate::eval`]; prints the report and writes its JSON (and a curve's plot).

mod args;

pub use args::EvalArgs;

use super::write_json;
use crate::attack::{AttackName, ParamNames};
use crate::checkpoint::torchscript::ScriptModel;
use crate::compute::Compute;
use crate::eval::*;
use crate::nn::ArchSpec;
use crate::report::plot::{LinePlot, Series};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// The attack `a.attack` at `eps` and `steps` (names: how errors name the settings).
fn attack(a: &EvalArgs, eps: f64, steps: Option<usize>, names: &ParamNames) -> Result<EvalAttack> {
    let s = a.settings(eps, steps);
    EvalAttack::from_settings(a.attack, a.preset, &s, names, a.allow_large_eps)
        .map_err(anyhow::Error::msg)
}

/// The architecture of a state dict: --arch-file, or --arch with --num-classes / --depth /
/// --width and the data's channels (`None` when neither flag is given).
fn state_dict_arch(a: &EvalArgs, data: &DataSelection) -> Result<Option<ArchSpec>> {
    if let Some(f) = &a.arch_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("--arch-file {}: cannot read it", f.display()))?;
        let v: toml::Value = toml::from_str(&text)
            .with_context(|| format!("--arch-file {}: not valid TOML", f.display()))?;
        let table = v.get("model").cloned().unwrap_or(v);
        let arch: ArchSpec = table.try_into().with_context(|| {
            format!(
                "--arch-file {}: not an architecture (the fields of a recipe's [model] table: \
                 name, num_classes, in_channels, depth, width, norm, heads)",
                f.display()
            )
        })?;
        return Ok(Some(arch));
    }
    let Some(name) = &a.arch else {
        return Ok(None);
    };
    anyhow::ensure!(
        crate::nn::models::ARCHITECTURES.contains(&name.as_str()),
        "--arch '{name}': expected one of {}",
        crate::nn::models::ARCHITECTURES.join(", ")
    );
    let (channels, classes) = match &data.source {
        DataSource::Dataset(spec) => (
            spec.dataset.image_shape().0,
            Some(spec.dataset.num_classes() as i64),
        ),
        DataSource::Points(p) => (crate::data::points::points_shape(p)?[1], None),
    };
    Ok(Some(ArchSpec {
        name: name.clone(),
        num_classes: a.num_classes.or(classes).unwrap_or(10),
        in_channels: channels,
        depth: a.depth,
        width: a.width,
        norm: Default::default(),
        predictors: vec![],
        heads: 1,
    }))
}

/// Everything but the attack, and the model of --torchscript, --checkpoint (an advtrain
/// checkpoint loaded with the recipe that trained it, whose `[data]` is the default data, or a
/// state dict with --arch) or --run.
fn setup(a: &EvalArgs, compute: Compute) -> Result<(EvalSetup, LoadedModel)> {
    let device = a.device.resolve()?;
    let arch_flags = a.arch.is_some() || a.arch_file.is_some();
    let (checkpoint, format, data, model) = if let Some(ts) = &a.torchscript {
        anyhow::ensure!(
            !arch_flags,
            "--arch / --arch-file describe a state dict given with --checkpoint; a TorchScript \
             module carries its architecture"
        );
        let data = a.data(None)?;
        let model = LoadedModel::Script(ScriptModel::load(ts, device)?);
        (ts.clone(), ModelFormat::Torchscript, data, model)
    } else if arch_flags {
        let file = a.checkpoint.clone().ok_or_else(|| {
            anyhow::anyhow!("--arch / --arch-file need --checkpoint sd.safetensors")
        })?;
        let data = a.data(None)?;
        let arch = state_dict_arch(a, &data)?.expect("--arch or --arch-file");
        eprintln!(
            "state dict {} as {}",
            file.display(),
            serde_json::to_string(&arch)?
        );
        let format = ModelFormat::StateDict(arch);
        let probe = EvalSetup {
            checkpoint: file.clone(),
            format: format.clone(),
            data: data.clone(),
            test_time: a.test_time(),
            seed: a.seed,
            device: a.device,
            compute,
        };
        let model = load_model(&probe)?;
        (file, format, data, model)
    } else {
        if let Some(c) = &a.checkpoint {
            if c.is_file() {
                crate::checkpoint::import::refuse_pickle(c, "--checkpoint")?;
            }
            let side = crate::checkpoint::paths(c).2;
            anyhow::ensure!(
                !c.is_file() || side.is_file(),
                "--checkpoint {}: its sidecar {} does not exist, so it is not an advtrain \
                 checkpoint; a PyTorch state dict of one of our architectures loads with --arch \
                 NAME (or --arch-file), a TorchScript module with --torchscript",
                c.display(),
                side.display()
            );
        }
        let checkpoint = crate::checkpoint::locate(a.checkpoint.as_ref(), a.run.as_ref())?;
        let run = crate::train::saved::load_run(&checkpoint, device)?;
        let data = a.data(Some(run.recipe.data))?;
        let model: LoadedModel = run.checkpoint.into();
        (checkpoint, ModelFormat::Advtrain, data, model)
    };
    let setup = EvalSetup {
        checkpoint,
        format,
        data,
        test_time: a.test_time(),
        seed: a.seed,
        device: a.device,
        compute,
    };
    Ok((setup, model))
}

pub fn run(a: EvalArgs, compute: Compute) -> Result<()> {
    if a.curve.is_some() || a.curve_steps.is_some() {
        return run_curve(a, compute);
    }
    a.check()?;
    let mut attack = attack(&a, a.eps, a.steps, &ParamNames::flags())?;
    let name = attack.name();
    let shard = a
        .shard
        .map(|s| format!(".shard-{}-of-{}", s.index, s.count))
        .unwrap_or_default();
    let in_run = |r: &PathBuf| {
        r.join("eval")
            .join(format!("{name}-eps{}{shard}.json", a.eps))
    };
    let json = a.json.clone().or_else(|| a.run.as_ref().map(in_run));
    anyhow::ensure!(
        a.shard.is_none() || json.is_some(),
        "--shard needs --json FILE (each shard writes its own report for advtrain merge)"
    );
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
    let report = evaluate_model(&plan, checkpoint, &mut Console)?;
    print!("{report}");
    if let Some(card) = &a.model_card {
        let c = crate::eval::card::ModelCard::new(&plan, &report);
        write_json(card, &c)?;
    }
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
    let report = evaluate_curve_model(&plan, checkpoint, &mut Console)?;
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
