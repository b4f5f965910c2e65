//! Running an [`EvalPlan`] or a [`CurvePlan`]: load the checkpoint and the test data, set up
//! the attacked function (route, BN mode, soup, re-estimation, compute settings), run the
//! gradient checks and the attack(s), and hand back the report.

use super::autoattack::{data_fingerprint, AutoAttack, AutoAttackResult, StateKey};
use super::checks::{curve_flags, gradient_flags, model_checks, Flag, GradientStats};
use super::clean_counts;
use super::controls::{check_soup, reestimate, swap_ap, Reestimate};
use super::plan::{AutoAttackPlan, CurveAxis, CurvePlan, EvalAttack, EvalPlan, EvalSetup, Threat};
use super::plan::{Batching, DataSource, ModelFormat, TestTime};
use super::report::ShardInfo;
use super::report::{CurvePoint, CurveReport, EvalReport, PerAttack};
use super::{counts_of, flag_string};
use crate::attack::Classifier;
use crate::checkpoint::torchscript::{ScriptModel, ScriptProbe};
use crate::checkpoint::LoadedCheckpoint;
use crate::data::loader::to_unit;
use crate::data::Dataset;
use crate::device::device_name;
use crate::nn::{Ctx, Network, Route};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Instant;
use tch::Device;

/// Where an evaluation reports as it goes: progress (the CLI's stderr) and results measured
/// along the way (stdout: re-estimation, curve points).
pub trait Progress {
    fn info(&mut self, line: &str);
    fn result(&mut self, line: &str);
}

/// Progress to stderr, results to stdout.
pub struct Console;

impl Progress for Console {
    fn info(&mut self, line: &str) {
        eprintln!("{line}");
    }
    fn result(&mut self, line: &str) {
        println!("{line}");
    }
}

/// Nothing reported.
pub struct Silent;

impl Progress for Silent {
    fn info(&mut self, _: &str) {}
    fn result(&mut self, _: &str) {}
}

/// A model ready to evaluate, from any supported format ([`ModelFormat`]).
pub enum LoadedModel {
    /// One of our networks: an advtrain checkpoint or an imported PyTorch state dict.
    Native {
        net: Network,
        file: PathBuf,
        sha256: String,
    },
    /// A TorchScript module (eval mode, frozen parameters).
    Script(ScriptModel),
}

impl From<LoadedCheckpoint> for LoadedModel {
    fn from(c: LoadedCheckpoint) -> Self {
        LoadedModel::Native {
            net: c.net,
            file: c.file,
            sha256: c.sha256,
        }
    }
}

/// The model of `s` loaded on its device, as its format says.
pub fn load_model(s: &EvalSetup) -> Result<LoadedModel> {
    let device = s.device.resolve()?;
    match &s.format {
        ModelFormat::Advtrain => Ok(crate::checkpoint::load(&s.checkpoint, device)?.into()),
        ModelFormat::Torchscript => Ok(LoadedModel::Script(ScriptModel::load(
            &s.checkpoint,
            device,
        )?)),
        ModelFormat::StateDict(arch) => {
            let f = &s.checkpoint;
            anyhow::ensure!(f.is_file(), "--checkpoint {}: no such file", f.display());
            crate::checkpoint::import::refuse_pickle(f, "--checkpoint")?;
            let net = crate::checkpoint::import::load_foreign(f, arch, device)?;
            Ok(LoadedModel::Native {
                net,
                file: f.clone(),
                sha256: crate::checkpoint::sha256_file(f)?,
            })
        }
    }
}

/// Everything an evaluation needs, loaded once.
struct Loaded {
    model: LoadedModel,
    ckpt: PathBuf,
    sha256: String,
    format: &'static str,
    /// The evaluated points (a shard's slice when sharded).
    test: Dataset,
    /// What they are ([`DataSelection::describe`]) and their sha256.
    data: String,
    data_sha256: String,
    shard: Option<ShardInfo>,
    ctx: Ctx,
    /// The route used, `shared` where the model holds one set ([`route_label`]).
    route_label: String,
    device: Device,
    reestimate: Option<Reestimate>,
    /// TorchScript: eval-mode rows are independent (micro-batches allowed).
    row_independent: bool,
    /// Flags raised while loading (the TorchScript probe).
    model_flags: Vec<Flag>,
}

impl Loaded {
    /// The attacked function, with the plan's compute settings.
    fn classifier(&self, setup: &EvalSetup) -> Classifier<'_> {
        match &self.model {
            LoadedModel::Native { net, .. } => Classifier::new(net.model.as_ref(), self.ctx),
            LoadedModel::Script(m) => Classifier::script(m, self.row_independent),
        }
        .with_compute(&setup.compute)
    }

    /// The data, model format, batching and shard, as printed at the start.
    fn data_line(&self, s: &EvalSetup) -> String {
        let shard = match &self.shard {
            Some(sh) => format!(
                " | shard {}/{}: points {}..{} of {}",
                sh.index, sh.count, sh.start, sh.end, sh.n_total
            ),
            None => String::new(),
        };
        format!(
            "model {} ({}) | data {} (sha256 {}) | batching {}{shard}",
            self.ckpt.display(),
            self.format,
            self.data,
            &self.data_sha256[..12.min(self.data_sha256.len())],
            s.data.batching()
        )
    }

    /// The route plus every test-time control that changes results (state-file key).
    fn test_time_label(&self) -> String {
        let mut l = self.route_label.clone();
        if let Some(w) = self.ctx.soup {
            l += &format!(" soup={w}");
        }
        if let Some(r) = &self.reestimate {
            l += &format!(
                " reestimate={}x{}x{}@{}",
                r.source, r.batches, r.batch_size, r.eps
            );
        }
        l
    }

    /// What identifies an AutoAttack evaluation in its state file.
    fn state_key(&self, s: &EvalSetup, p: &AutoAttackPlan, t: Threat) -> StateKey {
        StateKey {
            preset: p.preset.to_string(),
            norm: t.norm,
            eps: t.eps,
            seed: s.seed,
            batch_size: s.data.batch_size,
            route: self.test_time_label(),
            bn_mode: s.test_time.bn_mode.to_string(),
            checkpoint_sha256: self.sha256.clone(),
            data_sha256: self.data_sha256.clone(),
            n: self.test.len(),
            batching: s.data.batching(),
        }
    }

    /// The gradient checks at the clean inputs (after seeding with the plan's seed).
    fn checks(&self, s: &EvalSetup) -> GradientStats {
        tch::manual_seed(s.seed as i64);
        model_checks(
            &self.classifier(s),
            &self.test,
            s.data.batch_size,
            self.device,
        )
    }

    /// The cascade of `p` at `t` on this data.
    fn autoattack(&self, s: &EvalSetup, p: &AutoAttackPlan, t: Threat) -> Result<AutoAttack> {
        let mut aa = AutoAttack::new(
            p.preset,
            t.norm,
            t.eps,
            s.seed,
            s.data.batch_size,
            self.test.num_classes,
        )?;
        aa.max_batches = p.max_batches;
        aa.batching = s.data.batching();
        Ok(aa)
    }

    /// Run (or continue, with a matching state file) the cascade `aa` of `p` at `t`.
    fn run_autoattack(
        &self,
        aa: &AutoAttack,
        s: &EvalSetup,
        p: &AutoAttackPlan,
        t: Threat,
        log: impl FnMut(&str),
    ) -> Result<AutoAttackResult> {
        let key = self.state_key(s, p, t);
        let f = self.classifier(s);
        aa.run(&f, &self.test, self.device, key, p.state.as_deref(), log)
    }

    /// Clean and robust counts of a single attack, seeded as the batching says, with the
    /// per-point clean and robust flags.
    fn single(
        &self,
        s: &EvalSetup,
        attack: &dyn crate::attack::Attack,
    ) -> (super::Counts, Vec<bool>, Vec<bool>) {
        let f = self.classifier(s);
        let (bs, dev) = (s.data.batch_size, self.device);
        match s.data.batching() {
            Batching::Pooled => {
                tch::manual_seed(s.seed as i64);
                counts_of(&f, attack, &self.test, bs, dev, None)
            }
            Batching::Blocked => counts_of(&f, attack, &self.test, bs, dev, Some(s.seed)),
        }
    }
}
/// The label of `route` on `net` (what [`EvalReport::route`] holds) after checking that the
/// model has the domains it names; warns when it names another domain than clean for a part
/// the model holds once (`swapped`: the route came from `--swap-ap`).
fn route_label(net: &Network, route: Route, swapped: bool) -> Result<String> {
    let (ns, ap) = net.route_sets();
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

/// The checkpoint of `s` loaded on its device ([`crate::checkpoint::load`]).
pub fn load_checkpoint(s: &EvalSetup) -> Result<LoadedCheckpoint> {
    crate::checkpoint::load(&s.checkpoint, s.device.resolve()?)
}

/// The selected points of `s` (the whole selection, before sharding).
fn load_points(s: &EvalSetup) -> Result<Dataset> {
    let test = match &s.data.source {
        DataSource::Dataset(_) => s.data.resolved().expect("a data set").load_test()?,
        DataSource::Points(file) => {
            let d = crate::data::points::load_points(file, None)?;
            match s.data.test_limit {
                Some(n) => d.take(n),
                None => d,
            }
        }
    };
    anyhow::ensure!(!test.is_empty(), "the test set is empty (--test-limit 0?)");
    Ok(test)
}

/// Flags of a TorchScript probe: a module traced in train mode (BatchNorm on batch statistics
/// frozen in), outputs that depend on the batch, a module frozen in one mode.
fn probe_flags(file: &str, p: &ScriptProbe) -> Vec<Flag> {
    let mut out = vec![];
    if p.batch_dependent && p.mode_invariant {
        out.push(Flag::new(
            "traced-in-train-mode",
            format!(
                "{file}: in eval mode the module's logits for an image change with the other \
                 images of its batch, and train and eval mode give identical outputs: it looks \
                 traced (torch.jit.trace) in training mode, with BatchNorm's batch statistics \
                 frozen into the trace; results depend on the batch composition. Re-trace it \
                 after model.eval(), or use torch.jit.script"
            ),
        ));
    } else if p.batch_dependent {
        out.push(Flag::new(
            "batch-dependent-outputs",
            format!(
                "{file}: in eval mode the module's logits for an image change with the other \
                 images of its batch (batch statistics?); results depend on the batch composition"
            ),
        ));
    } else if p.mode_invariant && !p.norm_parameters.is_empty() {
        out.push(Flag::new(
            "frozen-mode",
            format!(
                "{file}: train and eval mode give identical outputs although the module has \
                 normalisation parameters ({}, ...): it was traced in one mode. Its eval-mode \
                 rows are independent, so it was probably traced after model.eval() (then the \
                 results are right); check that it was",
                p.norm_parameters.first().cloned().unwrap_or_default()
            ),
        ));
    }
    out
}

/// Set up the evaluation of `model` (the model of `s`): the test data (checked against the
/// model's classes and input), the shard, the route, the soup and the re-estimation.
fn load(s: &EvalSetup, model: LoadedModel, out: &mut dyn Progress) -> Result<Loaded> {
    let data = s.data.describe();
    let mut test = load_points(s)?;
    let (ckpt, sha256, device) = match &model {
        LoadedModel::Native { net, file, sha256 } => {
            (file.clone(), sha256.clone(), net.vs.device())
        }
        LoadedModel::Script(m) => (m.file.clone(), m.sha256.clone(), s.device.resolve()?),
    };
    // The model's classes, its input checked on the data, and the TorchScript probe.
    let mut model_flags = vec![];
    let mut row_independent = false;
    let classes = match &model {
        LoadedModel::Native { net, .. } => {
            let channels = test.images.size()[1];
            anyhow::ensure!(
                channels == net.arch.in_channels,
                "the test images of {data} have {channels} channels but the model of {} takes \
                 {} (model.in_channels)",
                ckpt.display(),
                net.arch.in_channels
            );
            net.arch.num_classes
        }
        LoadedModel::Script(m) => {
            out.info(&format!(
                "torchscript {}: {}",
                ckpt.display(),
                crate::checkpoint::torchscript::CONTRACT
            ));
            let rows = (test.len() as i64)
                .min(32)
                .min(s.data.batch_size.max(1) as i64);
            let x = to_unit(&test.images.narrow(0, 0, rows)).to_device(device);
            let probe = m
                .probe(&x)
                .with_context(|| format!("checking the module on {data}"))?;
            row_independent = !probe.batch_dependent;
            model_flags = probe_flags(&ckpt.display().to_string(), &probe);
            for f in &model_flags {
                log::warn!("{}: {}", f.code, f.message);
            }
            anyhow::ensure!(
                probe.classes >= 2,
                "--torchscript {}: the module returns {} logit(s) per image; expected one per \
                 class (at least 2)",
                ckpt.display(),
                probe.classes
            );
            probe.classes
        }
    };
    let max_label = test.labels.max().int64_value(&[]);
    anyhow::ensure!(
        max_label < classes,
        "the labels of {data} go up to {max_label}, but the model {} has {classes} classes \
         (labels 0..{})",
        ckpt.display(),
        classes - 1
    );
    if let DataSource::Dataset(spec) = &s.data.source {
        let want = spec.dataset.num_classes() as i64;
        anyhow::ensure!(
            classes == want,
            "the model {} has {classes} classes (output width), data set {} has {want}",
            ckpt.display(),
            spec.dataset
        );
    }
    test.num_classes = classes as usize;
    let data_sha256 = data_fingerprint(&test)?;
    let mut shard = None;
    if let Some(sh) = s.data.shard {
        let n_total = test.len();
        let (start, end) = sh
            .range(n_total, s.data.batch_size)
            .map_err(anyhow::Error::msg)?;
        test = test.slice(start, end - start);
        shard = Some(ShardInfo {
            index: sh.index,
            count: sh.count,
            start,
            end,
            n_total,
            data_sha256_total: data_sha256.clone(),
        });
    }
    let data_sha256 = if shard.is_some() {
        data_fingerprint(&test)?
    } else {
        data_sha256
    };
    let tt = &s.test_time;
    let (ctx, label) = match &model {
        LoadedModel::Script(_) => {
            let default = TestTime::default();
            anyhow::ensure!(
                tt.route == default.route
                    && !tt.swap_ap
                    && tt.bn_mode == default.bn_mode
                    && tt.soup.is_none()
                    && tt.reestimate.is_none(),
                "--route, --swap-ap, --bn-mode, --soup and --reestimate act on advtrain's Norm \
                 layer; a TorchScript module ({}) is attacked as it is, in eval mode",
                ckpt.display()
            );
            (Ctx::new(tt.route, tt.bn_mode), "none".to_string())
        }
        LoadedModel::Native { net, .. } => {
            let route = if tt.swap_ap {
                swap_ap(tt.route)
            } else {
                tt.route
            };
            let label = route_label(net, route, tt.swap_ap)?;
            let soup = tt.soup.map(check_soup).transpose()?;
            if let Some(r) = &tt.reestimate {
                let Some(spec) = s.data.resolved() else {
                    anyhow::bail!(
                        "--reestimate needs training images: give a built-in data set, not the \
                         points file {data}"
                    );
                };
                let train = spec.load()?.train;
                let n = reestimate(net.model.as_ref(), route, r, &train, device)?;
                out.result(&format!(
                    "re-estimated the running statistics of NS {} on {n} {} training images ({} batches)",
                    crate::nn::norm::domain_name(route.ns),
                    r.source,
                    r.batches
                ));
            }
            (Ctx::new(route, tt.bn_mode).with_soup(soup), label)
        }
    };
    Ok(Loaded {
        model,
        ckpt,
        sha256,
        format: s.format.name(),
        test,
        data,
        data_sha256,
        shard,
        ctx,
        route_label: label,
        device,
        reestimate: tt.reestimate.clone(),
        row_independent,
        model_flags,
    })
}

/// Clean and robust accuracy of the plan's checkpoint under its attack, with the gradient
/// checks' flags (and, for AutoAttack, the cascade's).
pub fn evaluate(plan: &EvalPlan, out: &mut dyn Progress) -> Result<EvalReport> {
    evaluate_model(plan, load_model(&plan.setup)?, out)
}

/// [`evaluate`] with the plan's checkpoint already loaded (on the plan's device).
pub fn evaluate_on(
    plan: &EvalPlan,
    checkpoint: LoadedCheckpoint,
    out: &mut dyn Progress,
) -> Result<EvalReport> {
    evaluate_model(plan, checkpoint.into(), out)
}

/// [`evaluate`] with the plan's model already loaded ([`load_model`]).
pub fn evaluate_model(
    plan: &EvalPlan,
    model: LoadedModel,
    out: &mut dyn Progress,
) -> Result<EvalReport> {
    let s = &plan.setup;
    let t = plan.threat;
    anyhow::ensure!(
        s.data.shard.is_none()
            || !matches!(&plan.attack, EvalAttack::AutoAttack(p) if p.max_batches.is_some()),
        "--shard and --max-batches do not combine: a shard must run to completion to be merged"
    );
    let l = load(s, model, out)?;
    let checks = l.checks(s);
    let mut flags = l.model_flags.clone();
    flags.extend(gradient_flags(&checks));
    let start = Instant::now();
    let n = l.test.len();
    let compute = format!("compute: {} | {}", s.compute.describe(), l.data_line(s));
    let (name, config, (clean, robust), per_attack, max_pert, complete, points) = match &plan.attack
    {
        EvalAttack::AutoAttack(p) => {
            if let Some(dir) = p.state.as_ref().and_then(|p| p.parent()) {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
            }
            out.info(&format!(
                "eval {} | autoattack-{} ({}) | {} eps {} | route {} | BN mode {} | n {n} | seed {} | batch {} | device {}",
                l.ckpt.display(),
                p.preset,
                p.preset.description(),
                t.norm,
                t.eps,
                l.test_time_label(),
                s.test_time.bn_mode,
                s.seed,
                s.data.batch_size,
                device_name(l.device)
            ));
            let aa = l.autoattack(s, p, t)?;
            out.info(&format!("preset {}", aa.config()));
            out.info(&compute);
            out.info(&match &p.state {
                Some(p) => format!("state file {} (resumable)", p.display()),
                None => "no state file (give --json or --state to make the run resumable)".into(),
            });
            let r = l.run_autoattack(&aa, s, p, t, |m| out.info(m))?;
            flags.extend(r.flags.clone());
            let per = r
                .per_attack
                .iter()
                .map(|x| PerAttack {
                    attack: x.attack.clone(),
                    robust_accuracy: x.robust_accuracy,
                    elapsed_s: x.elapsed_s,
                    robust_correct: (x.robust_accuracy * n as f64).round() as usize,
                })
                .collect();
            let count = |v: &[bool]| v.iter().filter(|&&b| b).count();
            (
                aa.name(),
                aa.config(),
                (count(&r.clean), count(&r.robust)),
                per,
                Some(r.max_perturbation),
                r.complete,
                (flag_string(&r.clean), flag_string(&r.robust)),
            )
        }
        EvalAttack::Single(spec) => {
            let attack = spec.build();
            out.info(&format!(
                "eval {} | attack {} {} | route {} | BN mode {} | n {n} | seed {} | device {}",
                l.ckpt.display(),
                attack.name(),
                attack.config(),
                l.test_time_label(),
                s.test_time.bn_mode,
                s.seed,
                device_name(l.device)
            ));
            out.info(&compute);
            let (counts, cf, rf) = l.single(s, attack.as_ref());
            let per = vec![PerAttack {
                attack: attack.name(),
                robust_accuracy: counts.robust_accuracy(),
                elapsed_s: start.elapsed().as_secs_f64(),
                robust_correct: counts.robust_correct,
            }];
            let c = (counts.clean_correct, counts.robust_correct);
            let points = (flag_string(&cf), flag_string(&rf));
            (attack.name(), attack.config(), c, per, None, true, points)
        }
    };
    Ok(EvalReport {
        compute: s.compute,
        clean_accuracy: clean as f64 / n as f64,
        robust_accuracy: robust as f64 / n as f64,
        attack: name,
        attack_config: config,
        eps: t.eps,
        norm: t.norm,
        n,
        seed: s.seed,
        route: l.route_label.clone(),
        route_requested: l.ctx.route.to_string(),
        soup: l.ctx.soup,
        reestimate: l.reestimate.clone(),
        bn_mode: s.test_time.bn_mode,
        elapsed_s: start.elapsed().as_secs_f64(),
        checkpoint: l.ckpt.display().to_string(),
        checkpoint_sha256: l.sha256.clone(),
        device: device_name(l.device),
        per_attack,
        flags,
        gradient_checks: checks,
        model_format: l.format.to_string(),
        data: l.data.clone(),
        data_sha256: l.data_sha256.clone(),
        batch_size: s.data.batch_size,
        batching: s.data.batching(),
        clean_correct: clean,
        robust_correct: robust,
        max_perturbation: max_pert,
        complete,
        clean_points: points.0,
        robust_points: points.1,
        shard: l.shard.clone(),
    })
}

/// Robust accuracy at every point of the curve (AutoAttack points without a state file),
/// with the monotonicity flags over the curve.
pub fn evaluate_curve(plan: &CurvePlan, out: &mut dyn Progress) -> Result<CurveReport> {
    evaluate_curve_model(plan, load_model(&plan.setup)?, out)
}

/// [`evaluate_curve`] with the plan's checkpoint already loaded (on the plan's device).
pub fn evaluate_curve_on(
    plan: &CurvePlan,
    checkpoint: LoadedCheckpoint,
    out: &mut dyn Progress,
) -> Result<CurveReport> {
    evaluate_curve_model(plan, checkpoint.into(), out)
}

/// [`evaluate_curve`] with the plan's model already loaded ([`load_model`]).
pub fn evaluate_curve_model(
    plan: &CurvePlan,
    model: LoadedModel,
    out: &mut dyn Progress,
) -> Result<CurveReport> {
    let s = &plan.setup;
    let axis = plan.axis.as_str();
    anyhow::ensure!(
        s.data.shard.is_none(),
        "--shard does not apply to --curve / --curve-steps (shard a single evaluation per value)"
    );
    let l = load(s, model, out)?;
    let checks = l.checks(s);
    let mut flags: Vec<Flag> = l.model_flags.clone();
    flags.extend(gradient_flags(&checks));
    let name = plan.name();
    let values: Vec<f64> = plan
        .points
        .iter()
        .map(|p| match plan.axis {
            CurveAxis::Eps => p.eps,
            CurveAxis::Steps => p.steps.unwrap_or(0) as f64,
        })
        .collect();
    out.info(&format!(
        "eval curve over {axis} {values:?} | {name} | {} | route {} | BN mode {} | n {} | seed {} | device {}",
        l.ckpt.display(),
        l.test_time_label(),
        s.test_time.bn_mode,
        l.test.len(),
        s.seed,
        device_name(l.device)
    ));
    out.info(&format!(
        "compute: {} | {}",
        s.compute.describe(),
        l.data_line(s)
    ));
    let f = l.classifier(s);
    let clean = clean_counts(&f, &l.test, s.data.batch_size, l.device).clean_accuracy();
    let mut points = Vec::new();
    for p in &plan.points {
        let t = Instant::now();
        let threat = Threat {
            norm: plan.norm,
            eps: p.eps,
        };
        let robust = match &p.attack {
            EvalAttack::AutoAttack(aa) => {
                // No state file for curve points, so no data fingerprint is needed.
                let cascade = l.autoattack(s, aa, threat)?;
                let log = |m: &str| out.info(&format!("  {m}"));
                let r = l.run_autoattack(&cascade, s, aa, threat, log)?;
                flags.extend(r.flags);
                r.robust_accuracy
            }
            EvalAttack::Single(spec) => l.single(s, spec.build().as_ref()).0.robust_accuracy(),
        };
        let point = CurvePoint {
            eps: p.eps,
            steps: p.steps,
            robust_accuracy: robust,
            elapsed_s: t.elapsed().as_secs_f64(),
        };
        out.result(&format!(
            "{axis} {:<8} robust {:6.2}%  ({:.1} s)",
            match plan.axis {
                CurveAxis::Eps => p.eps.to_string(),
                CurveAxis::Steps => p.steps.unwrap_or(0).to_string(),
            },
            100.0 * robust,
            point.elapsed_s
        ));
        points.push(point);
    }
    let mut report = CurveReport {
        compute: s.compute,
        attack: name,
        vary: plan.axis,
        clean_accuracy: clean,
        points,
        norm: plan.norm,
        n: l.test.len(),
        seed: s.seed,
        route: l.route_label.clone(),
        route_requested: l.ctx.route.to_string(),
        soup: l.ctx.soup,
        reestimate: l.reestimate.clone(),
        bn_mode: s.test_time.bn_mode,
        checkpoint: l.ckpt.display().to_string(),
        checkpoint_sha256: l.sha256.clone(),
        device: device_name(l.device),
        flags: vec![],
        gradient_checks: checks,
        plot: plan.plot.display().to_string(),
        model_format: l.format.to_string(),
        data: l.data.clone(),
    };
    flags.extend(curve_flags(axis, clean, &report.xy()));
    report.flags = flags;
    Ok(report)
}
