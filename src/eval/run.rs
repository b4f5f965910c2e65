//! Running an [`EvalPlan`] or a [`CurvePlan`]: load the checkpoint and the test data, set up
//! the attacked function (route, BN mode, soup, re-estimation, compute settings), run the
//! gradient checks and the attack(s), and hand back the report.

use super::autoattack::{data_fingerprint, AutoAttack, AutoAttackResult, StateKey};
use super::checks::{curve_flags, gradient_flags, model_checks, Flag, GradientStats};
use super::controls::{check_soup, reestimate, swap_ap, Reestimate};
use super::plan::{AutoAttackPlan, CurveAxis, CurvePlan, EvalAttack, EvalPlan, EvalSetup, Threat};
use super::report::{CurvePoint, CurveReport, EvalReport, PerAttack};
use super::{clean_counts, robust_counts};
use crate::attack::Classifier;
use crate::checkpoint::LoadedCheckpoint;
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

/// Everything an evaluation needs, loaded once.
struct Loaded {
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

impl Loaded {
    /// The attacked function, with the plan's compute settings.
    fn classifier(&self, setup: &EvalSetup) -> Classifier<'_> {
        Classifier::new(self.net.model.as_ref(), self.ctx).with_compute(&setup.compute)
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
    fn state_key(&self, s: &EvalSetup, p: &AutoAttackPlan, t: Threat, data: String) -> StateKey {
        StateKey {
            preset: p.preset.to_string(),
            norm: t.norm,
            eps: t.eps,
            seed: s.seed,
            batch_size: s.data.batch_size,
            route: self.test_time_label(),
            bn_mode: s.test_time.bn_mode.to_string(),
            checkpoint_sha256: self.sha256.clone(),
            data_sha256: data,
            n: self.test.len(),
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
        Ok(aa)
    }

    /// Run (or continue, with a matching state file) the cascade `aa` of `p` at `t`.
    fn run_autoattack(
        &self,
        aa: &AutoAttack,
        s: &EvalSetup,
        p: &AutoAttackPlan,
        t: Threat,
        data_sha256: String,
        log: impl FnMut(&str),
    ) -> Result<AutoAttackResult> {
        let key = self.state_key(s, p, t, data_sha256);
        let f = self.classifier(s);
        aa.run(&f, &self.test, self.device, key, p.state.as_deref(), log)
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

/// Set up the evaluation of `loaded` (the checkpoint of `s`): the test data, the route, the
/// soup and the re-estimation.
fn load(s: &EvalSetup, loaded: LoadedCheckpoint, out: &mut dyn Progress) -> Result<Loaded> {
    let ckpt = s.checkpoint.clone();
    let net = loaded.net;
    let device = net.vs.device();
    let data_spec = s.data.resolved();
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
    let tt = &s.test_time;
    let route = if tt.swap_ap {
        swap_ap(tt.route)
    } else {
        tt.route
    };
    let label = route_label(&net, route, tt.swap_ap)?;
    let soup = tt.soup.map(check_soup).transpose()?;
    if let Some(r) = &tt.reestimate {
        let train = data_spec.load()?.train;
        let n = reestimate(net.model.as_ref(), route, r, &train, device)?;
        out.result(&format!(
            "re-estimated the running statistics of NS {} on {n} {} training images ({} batches)",
            crate::nn::norm::domain_name(route.ns),
            r.source,
            r.batches
        ));
    }
    Ok(Loaded {
        net,
        ckpt,
        sha256: loaded.sha256,
        test,
        ctx: Ctx::new(route, tt.bn_mode).with_soup(soup),
        route_label: label,
        device,
        reestimate: tt.reestimate.clone(),
    })
}

/// Clean and robust accuracy of the plan's checkpoint under its attack, with the gradient
/// checks' flags (and, for AutoAttack, the cascade's).
pub fn evaluate(plan: &EvalPlan, out: &mut dyn Progress) -> Result<EvalReport> {
    evaluate_on(plan, load_checkpoint(&plan.setup)?, out)
}

/// [`evaluate`] with the plan's checkpoint already loaded (on the plan's device).
pub fn evaluate_on(
    plan: &EvalPlan,
    checkpoint: LoadedCheckpoint,
    out: &mut dyn Progress,
) -> Result<EvalReport> {
    let s = &plan.setup;
    let t = plan.threat;
    let l = load(s, checkpoint, out)?;
    let checks = l.checks(s);
    let mut flags = gradient_flags(&checks);
    let start = Instant::now();
    let n = l.test.len();
    let compute = format!("compute: {}", s.compute.describe());
    let (name, config, clean, robust, per_attack) = match &plan.attack {
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
            let data = data_fingerprint(&l.test)?;
            let r = l.run_autoattack(&aa, s, p, t, data, |m| out.info(m))?;
            flags.extend(r.flags.clone());
            let per = r
                .per_attack
                .iter()
                .map(|x| PerAttack {
                    attack: x.attack.clone(),
                    robust_accuracy: x.robust_accuracy,
                    elapsed_s: x.elapsed_s,
                })
                .collect();
            (
                aa.name(),
                aa.config(),
                r.clean_accuracy,
                r.robust_accuracy,
                per,
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
            tch::manual_seed(s.seed as i64);
            let f = l.classifier(s);
            let counts = robust_counts(&f, attack.as_ref(), &l.test, s.data.batch_size, l.device);
            let per = vec![PerAttack {
                attack: attack.name(),
                robust_accuracy: counts.robust_accuracy(),
                elapsed_s: start.elapsed().as_secs_f64(),
            }];
            let (clean, robust) = (counts.clean_accuracy(), counts.robust_accuracy());
            (attack.name(), attack.config(), clean, robust, per)
        }
    };
    Ok(EvalReport {
        compute: s.compute,
        clean_accuracy: clean,
        robust_accuracy: robust,
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
    })
}

/// Robust accuracy at every point of the curve (AutoAttack points without a state file),
/// with the monotonicity flags over the curve.
pub fn evaluate_curve(plan: &CurvePlan, out: &mut dyn Progress) -> Result<CurveReport> {
    evaluate_curve_on(plan, load_checkpoint(&plan.setup)?, out)
}

/// [`evaluate_curve`] with the plan's checkpoint already loaded (on the plan's device).
pub fn evaluate_curve_on(
    plan: &CurvePlan,
    checkpoint: LoadedCheckpoint,
    out: &mut dyn Progress,
) -> Result<CurveReport> {
    let s = &plan.setup;
    let axis = plan.axis.as_str();
    let l = load(s, checkpoint, out)?;
    let checks = l.checks(s);
    let mut flags: Vec<Flag> = gradient_flags(&checks);
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
    out.info(&format!("compute: {}", s.compute.describe()));
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
                let r = l.run_autoattack(&cascade, s, aa, threat, String::new(), log)?;
                flags.extend(r.flags);
                r.robust_accuracy
            }
            EvalAttack::Single(spec) => {
                let attack = spec.build();
                tch::manual_seed(s.seed as i64);
                robust_counts(&f, attack.as_ref(), &l.test, s.data.batch_size, l.device)
                    .robust_accuracy()
            }
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
    };
    flags.extend(curve_flags(axis, clean, &report.xy()));
    report.flags = flags;
    Ok(report)
}
