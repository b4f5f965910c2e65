//! The test-time swap matrix of a multi-domain model (Zhang et al.): clean and PGD robust accuracy
//! for every combination of normalisation statistics NS in {adv, clean, re-estimated} and affine
//! parameters AP in {adv, clean} (the AP domain also selects the head of a Dual-Linear model).
//!
//! Every cell attacks through its own route in eval mode, with torch seeded by the same seed, so
//! cells differ only by the route. "Re-estimated" = a fresh copy of the network whose clean
//! running statistics are replaced by their average over training batches
//! ([`reestimate`](crate::eval::controls::reestimate) through ns = clean, ap = the column), then
//! evaluated through ns = clean, ap = the column; the network passed in is never modified.

use super::plan::{check_n, check_threat, AnalysisSetup, Provenance, Subject, TestImages};
use super::{bn_layers, copy_network, is_multi_domain};
use crate::attack::{Attack, Classifier, Pgd, PgdConfig, ThreatNorm};
use crate::compute::Compute;
use crate::data::Dataset;
use crate::device::device_name;
use crate::eval::controls::{reestimate, Reestimate};
use crate::eval::{robust_counts, Counts, Progress, Threat};
use crate::nn::norm::domain_name;
use crate::nn::{Ctx, Domain, Mode, Model, Network, Route, ADV, CLEAN};
use crate::report::plot::{write_grid, Figure, Heatmap, ValueFormat};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::Device;

/// Settings of the swap matrix.
#[derive(Debug, Clone, Serialize)]
pub struct SwapConfig {
    /// L-inf budget of the PGD attack.
    pub eps: f64,
    /// PGD iterations (step size [`swap_step_size`], uniform start, one restart).
    pub steps: usize,
    /// Evaluation batch size.
    pub batch_size: usize,
    /// torch seed set before each cell's evaluation.
    pub seed: u64,
    /// How the re-estimated rows' running statistics are computed.
    pub reestimate: Reestimate,
    /// Compute settings of the attacked function ([`Classifier::with_compute`]).
    pub compute: Compute,
}

/// PGD step size: eps/4 for up to 10 steps, else 2.5 * eps / steps.
pub fn swap_step_size(eps: f64, steps: usize) -> f64 {
    if steps <= 10 {
        eps / 4.0
    } else {
        2.5 * eps / steps as f64
    }
}

/// One cell of the matrix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwapCell {
    /// `adv`, `clean` or `re-estimated` (the clean set, re-estimated).
    pub ns: String,
    /// `adv` or `clean`.
    pub ap: String,
    /// The route evaluated (`ns=..,ap=..`).
    pub route: String,
    pub clean_accuracy: f64,
    pub robust_accuracy: f64,
}

/// The swap-matrix result.
#[derive(Debug, Clone, Serialize)]
pub struct BnSwap {
    /// Row-major: NS adv, clean, re-estimated; within each, AP adv, clean.
    pub cells: Vec<SwapCell>,
    pub n: usize,
    /// e.g. `pgd-20`.
    pub attack: String,
    pub attack_config: PgdConfig,
    pub reestimate: Reestimate,
    /// Training images averaged per re-estimation (one re-estimation per AP column).
    pub reestimated_images: usize,
}

/// Names of the rows and columns, in order.
pub const NS_ROWS: [&str; 3] = ["adv", "clean", "re-estimated"];
pub const AP_COLS: [&str; 2] = ["adv", "clean"];

/// Clean and PGD robust counts of `model` through `route` in eval mode on `test`
/// (torch seeded with `cfg.seed` first).
pub fn eval_route(
    model: &dyn Model,
    route: Route,
    test: &Dataset,
    cfg: &SwapConfig,
    device: Device,
) -> Counts {
    let pgd = Pgd::new(attack_config(cfg));
    let f = Classifier::new(model, Ctx::new(route, Mode::Eval)).with_compute(&cfg.compute);
    tch::manual_seed(cfg.seed as i64);
    robust_counts(&f, &pgd, test, cfg.batch_size, device)
}

fn attack_config(cfg: &SwapConfig) -> PgdConfig {
    PgdConfig::new(
        ThreatNorm::Linf,
        cfg.eps,
        swap_step_size(cfg.eps, cfg.steps),
        cfg.steps,
    )
}

fn cell(ns: &str, ap: Domain, route: String, c: Counts) -> SwapCell {
    SwapCell {
        ns: ns.to_string(),
        ap: domain_name(ap),
        route,
        clean_accuracy: c.clean_accuracy(),
        robust_accuracy: c.robust_accuracy(),
    }
}

/// The swap matrix of `net` on `test`, re-estimating on `train`. Error for a model without
/// BatchNorm layers or without two branches, and for bad settings.
pub fn bn_swap(net: &Network, test: &Dataset, train: &Dataset, cfg: &SwapConfig) -> Result<BnSwap> {
    anyhow::ensure!(
        cfg.eps >= 0.0 && cfg.eps.is_finite(),
        "--eps must be a finite number >= 0, got {}",
        cfg.eps
    );
    anyhow::ensure!(cfg.steps >= 1, "--steps must be >= 1");
    anyhow::ensure!(cfg.batch_size >= 1, "--batch-size must be >= 1");
    anyhow::ensure!(!test.is_empty(), "no test images to evaluate on");
    anyhow::ensure!(
        !bn_layers(net.model.as_ref()).is_empty(),
        "the model has no BatchNorm layer: bn-swap needs running statistics to swap and re-estimate"
    );
    anyhow::ensure!(
        is_multi_domain(net),
        "the model has one statistics set and one affine set in every layer (a single-BN model): \
         bn-swap needs a multi-domain model (norm.ns_domains and/or norm.ap_domains = 2)"
    );
    net.check_route(Route::domain(ADV), "bn-swap route")?;
    net.check_route(Route::domain(CLEAN), "bn-swap route")?;
    let device = net.vs.device();
    let model = net.model.as_ref();
    let mut cells = vec![];
    for (ns, ns_name) in [(ADV, NS_ROWS[0]), (CLEAN, NS_ROWS[1])] {
        for ap in [ADV, CLEAN] {
            let route = Route { ns, ap };
            let c = eval_route(model, route, test, cfg, device);
            cells.push(cell(ns_name, ap, route.to_string(), c));
        }
    }
    let mut images = 0;
    for ap in [ADV, CLEAN] {
        let route = Route { ns: CLEAN, ap };
        let fresh = copy_network(net)?;
        images = reestimate(fresh.model.as_ref(), route, &cfg.reestimate, train, device)
            .with_context(|| format!("re-estimating the statistics of route {route}"))?;
        let c = eval_route(fresh.model.as_ref(), route, test, cfg, device);
        let label = format!("{route} (NS re-estimated on {})", cfg.reestimate.source);
        cells.push(cell(NS_ROWS[2], ap, label, c));
    }
    let pgd = attack_config(cfg);
    Ok(BnSwap {
        cells,
        n: test.len(),
        attack: Pgd::new(pgd.clone()).name(),
        attack_config: pgd,
        reestimate: cfg.reestimate.clone(),
        reestimated_images: images,
    })
}

impl BnSwap {
    /// The cell of row `ns` (`adv`, `clean`, `re-estimated`) and column `ap` (`adv`, `clean`).
    pub fn cell(&self, ns: &str, ap: &str) -> Option<&SwapCell> {
        self.cells.iter().find(|c| c.ns == ns && c.ap == ap)
    }

    fn matrix(&self, f: fn(&SwapCell) -> f64) -> Vec<Vec<f64>> {
        NS_ROWS
            .iter()
            .map(|ns| {
                AP_COLS
                    .iter()
                    .map(|ap| self.cell(ns, ap).map(f).unwrap_or(f64::NAN))
                    .collect()
            })
            .collect()
    }

    /// The two heatmaps: clean accuracy and robust accuracy (rows NS, columns AP).
    pub fn heatmaps(&self, title: &str) -> (Heatmap, Heatmap) {
        let rows = vec![
            "NS adv".to_string(),
            "NS clean".to_string(),
            format!("NS re-est. ({})", self.reestimate.source),
        ];
        let cols: Vec<String> = AP_COLS.iter().map(|c| format!("AP {c}")).collect();
        let map = |what: String, values| Heatmap {
            title: format!("{what}{title}"),
            row_label: "normalisation statistics".into(),
            col_label: "affine parameters".into(),
            rows: rows.clone(),
            cols: cols.clone(),
            values,
            value_format: ValueFormat::Percent(1),
            value_range: Some((0.0, 1.0)),
        };
        (
            map("clean accuracy".into(), self.matrix(|c| c.clean_accuracy)),
            map(
                format!("{} accuracy (eps {})", self.attack, self.attack_config.eps),
                self.matrix(|c| c.robust_accuracy),
            ),
        )
    }

    /// One PNG with the clean (left) and robust (right) heatmap side by side.
    pub fn write_png(&self, path: &Path, title: &str) -> Result<()> {
        let (clean, robust) = self.heatmaps(title);
        let figs = [Figure::Heatmap(&clean), Figure::Heatmap(&robust)];
        write_grid(&figs, 2, path, (2 * 760, 560))
    }
}

/// `advtrain analyze bn-swap` as a plan: the swap matrix on the first `data.n` test images,
/// PGD-`steps` at `threat.eps` ([`swap_step_size`]), re-estimating on the training split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub setup: AnalysisSetup,
    pub data: TestImages,
    /// L-inf only ([`check_threat`]).
    pub threat: Threat,
    pub steps: usize,
    /// Evaluation batch size.
    pub batch_size: usize,
    /// How the re-estimated rows' clean statistics are computed.
    pub reestimate: Reestimate,
}

impl Plan {
    /// The sizes and the re-estimation budget (errors name the flags).
    pub fn check(&self) -> Result<()> {
        check_threat(&self.threat)?;
        check_n(self.data.n)?;
        let r = &self.reestimate;
        for (flag, v) in [
            ("--steps", self.steps),
            ("--reestimate-batches", r.batches),
            ("--reestimate-batch-size", r.batch_size),
            ("--batch-size", self.batch_size),
        ] {
            anyhow::ensure!(v >= 1, "{flag} must be >= 1");
        }
        anyhow::ensure!(
            r.eps >= 0.0 && r.eps.is_finite(),
            "--reestimate-eps must be a finite number >= 0, got {}",
            r.eps
        );
        Ok(())
    }
}

/// The JSON written by `analyze bn-swap` (tests/it/analysis_contract.rs guards it).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub eps: f64,
    pub n: usize,
    pub steps: usize,
    pub seed: u64,
    pub batch_size: usize,
    pub attack: String,
    pub attack_config: PgdConfig,
    pub bn_mode: &'static str,
    pub reestimate: Reestimate,
    pub reestimate_routes: Vec<String>,
    pub reestimated_images: usize,
    pub cells: Vec<SwapCell>,
    pub device: String,
    pub elapsed_s: f64,
    pub plot: String,
    /// Precision, BN folding and micro-batching of the attacks.
    pub compute: Compute,
}

/// Run `plan` on its checkpoint ([`Subject::load`]).
pub fn run(plan: &Plan, out: &mut dyn Progress) -> Result<Report> {
    plan.check()?;
    run_on(plan, Subject::load(&plan.setup)?, out)
}

/// [`run`] on the plan's checkpoint, already loaded.
pub fn run_on(plan: &Plan, s: Subject, out: &mut dyn Progress) -> Result<Report> {
    plan.check()?;
    let (eps, seed, r) = (plan.threat.eps, plan.setup.seed, &plan.reestimate);
    let start = Instant::now();
    s.check_has_bn("bn-swap")?;
    anyhow::ensure!(
        is_multi_domain(s.net()),
        "bn-swap: the model of {} has one statistics set and one affine set in every layer \
         (a single-BN model); the swap matrix needs a multi-domain model (Dual BN, Dual-NS, Dual-AP)",
        s.file.display()
    );
    let test = s.test(&plan.data, out)?;
    let train = s
        .data_spec(&plan.data)?
        .load()
        .context("loading the training split for --reestimate-on")?
        .train;
    let cfg = SwapConfig {
        eps,
        steps: plan.steps,
        batch_size: plan.batch_size,
        seed,
        reestimate: r.clone(),
        compute: plan.setup.compute,
    };
    out.info(&format!(
        "bn-swap {} | pgd-{} eps {eps} | n {} | re-estimation on {} ({} x {}) | seed {seed} | device {}",
        s.file.display(),
        plan.steps,
        test.len(),
        r.source,
        r.batches,
        r.batch_size,
        device_name(s.device())
    ));
    s.say_compute(&plan.setup.compute, out);
    let m = bn_swap(s.net(), &test, &train, &cfg)?;
    if m.reestimated_images < r.batches * r.batch_size {
        out.info(&format!(
            "note: the training split holds {} images, fewer than --reestimate-batches x \
             --reestimate-batch-size; the re-estimation averaged all of them",
            m.reestimated_images
        ));
    }
    Ok(Report {
        provenance: s.provenance("bn-swap"),
        eps,
        n: m.n,
        steps: plan.steps,
        seed,
        batch_size: plan.batch_size,
        attack: m.attack,
        attack_config: m.attack_config,
        bn_mode: "eval",
        reestimate: m.reestimate,
        reestimate_routes: vec!["ns=clean,ap=adv".into(), "ns=clean,ap=clean".into()],
        reestimated_images: m.reestimated_images,
        cells: m.cells,
        device: device_name(s.device()),
        elapsed_s: start.elapsed().as_secs_f64(),
        compute: plan.setup.compute,
        plot: plan.setup.paths("bn-swap").1.display().to_string(),
    })
}

impl Report {
    /// The result the report holds.
    pub fn result(&self) -> BnSwap {
        BnSwap {
            cells: self.cells.clone(),
            n: self.n,
            attack: self.attack.clone(),
            attack_config: self.attack_config.clone(),
            reestimate: self.reestimate.clone(),
            reestimated_images: self.reestimated_images,
        }
    }

    /// The PNG the report names ([`BnSwap::write_png`]) written to `path`.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let title = format!(" (n={}): {}", self.n, self.provenance.architecture);
        self.result().write_png(path, &title)
    }
}

/// The matrix as a table: clean and robust accuracy per (NS, AP).
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{:<14} {:<6} {:>8} {:>8}", "NS", "AP", "clean", "robust")?;
        for c in &self.cells {
            writeln!(
                f,
                "{:<14} {:<6} {:>7.2}% {:>7.2}%",
                c.ns,
                c.ap,
                100.0 * c.clean_accuracy,
                100.0 * c.robust_accuracy
            )?;
        }
        Ok(())
    }
}
