//! `study report DIR`: the run folders of one study aggregated over seeds.
//!
//! Per evaluation one table: per cell and route the number of seeds n, the mean and the sample
//! standard deviation (n - 1 in the denominator; `-` for n = 1) of the clean and the robust
//! accuracy, and the per-seed values. Optional paired differences `a - b` between two cells over
//! the seeds both have (mean +- sample sd of the per-seed differences), so a verdict can be read
//! against the seed spread. Figures: the training curves of every run, grouped bars (mean, error
//! bar = sd) per evaluation, eps / steps curves where present, the analyses' figures.
//!
//! Writes `DIR/report.md` (figures as `DIR/report-figures/*.png`), `DIR/report.csv` (one row per
//! table row), `DIR/report.json` and a self-contained `DIR/report.html`; never anything inside a
//! run folder. With `DIR/study.json` (written by `study run`) evaluation names, routes and cells
//! come from the study; without it (run folders of the earlier script layout) each run folder
//! must be named `<cell>-seed<S>` and each eval JSON's file stem is its evaluation.

use super::spec::{route_tag, CellPoint, StepKind, Study, STUDY_JSON};
use crate::fsio::write_atomic;
use crate::nn::Route;
use crate::report::html::{md_table, Block, Page, Table};
use crate::report::plot::{BarPlot, BarSeries, LinePlot, Series};
use crate::report::run::{self as run_report, files_with, is_curve, read_json};
use crate::train::metrics;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Mean and sample standard deviation (denominator n - 1; `None` for n < 2) of `v`.
pub fn mean_sd(v: &[f64]) -> (f64, Option<f64>) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = (v.len() >= 2)
        .then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (mean, sd)
}

/// A statistic over seeds: values per seed, n, mean, sample sd.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stat {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1); null for n = 1.
    pub sd: Option<f64>,
    /// seed -> value.
    pub values: BTreeMap<u64, f64>,
}

impl Stat {
    pub fn of(values: BTreeMap<u64, f64>) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let v: Vec<f64> = values.values().copied().collect();
        let (mean, sd) = mean_sd(&v);
        Some(Stat {
            n: v.len(),
            mean,
            sd,
            values,
        })
    }

    /// `73.40 +- 0.57` in percent (`73.40` for n = 1).
    fn pct(&self) -> String {
        match self.sd {
            Some(sd) => format!("{:.2} ± {:.2}", 100.0 * self.mean, 100.0 * sd),
            None => format!("{:.2}", 100.0 * self.mean),
        }
    }

    /// `s0 73.40, s1 72.80` in percent.
    fn per_seed(&self) -> String {
        self.values
            .iter()
            .map(|(s, v)| format!("s{s} {:.2}", 100.0 * v))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One row of an evaluation's table: a cell through one route.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub cell: String,
    /// Route tag (`clean`, `adv`, `ns-clean-ap-adv`).
    pub route: String,
    pub clean: Option<Stat>,
    pub robust: Option<Stat>,
    /// Test images per evaluation (the values seen; normally one).
    pub images: Vec<u64>,
}

/// One evaluation over the study.
#[derive(Debug, Clone, Serialize)]
pub struct EvalTable {
    pub name: String,
    /// What was run: attack, eps, norm, BN mode (from the JSONs; `mixed` when they differ).
    pub attack: String,
    pub rows: Vec<Row>,
}

/// One eps / steps curve over the study: per cell and route the mean robust accuracy at each
/// point.
#[derive(Debug, Clone, Serialize)]
pub struct CurveTable {
    pub name: String,
    pub vary: String,
    /// (cell, route) -> x -> robust accuracy per seed.
    pub lines: Vec<(String, String, Vec<(f64, Stat)>)>,
}

/// One evaluation along one numeric grid key (E6's depth curve): per line (the cell without
/// this key's value, and the route) the clean and robust accuracy over seeds at each value.
#[derive(Debug, Clone, Serialize)]
pub struct GridTable {
    pub evaluation: String,
    /// The dotted grid key (`model.depth`).
    pub axis: String,
    /// Its values that have results, ascending.
    pub xs: Vec<f64>,
    pub lines: Vec<GridLine>,
}

impl GridTable {
    /// Its figure's file stem: `grid-<evaluation>-<key>` (`model.depth` -> `model_depth`).
    fn stem(&self) -> String {
        let key: String = self
            .axis
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("grid-{}-{key}", self.evaluation)
    }
}

/// One line of a [`GridTable`]: `(x, clean, robust)` per grid value it has.
#[derive(Debug, Clone, Serialize)]
pub struct GridLine {
    /// `<recipe>[-<variant>]`, plus `key=value` of the other grid keys.
    pub line: String,
    pub route: String,
    pub points: Vec<(f64, Option<Stat>, Option<Stat>)>,
}

/// The grid tables of a study: every evaluation along every grid key whose values are
/// numbers, when at least two of its values have results.
fn grid_tables(grid: &[CellPoint], evaluations: &[EvalTable]) -> Vec<GridTable> {
    let axes: Vec<String> = grid
        .first()
        .map(|c| c.point.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let mut out = vec![];
    for axis in &axes {
        // A cell's value on `axis` and its line: the base and the other keys' values.
        let place = |cell: &str| -> Option<(f64, String)> {
            let c = grid.iter().find(|c| c.cell == cell)?;
            let x = c.point.iter().find(|(k, _)| k == axis)?.1.as_f64()?;
            let others: Vec<String> = c
                .point
                .iter()
                .filter(|(k, _)| k != axis)
                .map(|(k, v)| format!("{}={v}", k.rsplit('.').next().unwrap_or(k)))
                .collect();
            Some((x, [vec![c.base.clone()], others].concat().join(" ")))
        };
        for t in evaluations {
            let (mut xs, mut lines) = (vec![], Vec::<GridLine>::new());
            for r in &t.rows {
                let Some((x, line)) = place(&r.cell) else {
                    continue;
                };
                xs.push(x);
                let point = (x, r.clean.clone(), r.robust.clone());
                match lines
                    .iter_mut()
                    .find(|l| l.line == line && l.route == r.route)
                {
                    Some(l) => l.points.push(point),
                    None => lines.push(GridLine {
                        line,
                        route: r.route.clone(),
                        points: vec![point],
                    }),
                }
            }
            xs.sort_by(f64::total_cmp);
            xs.dedup();
            if xs.len() < 2 {
                continue;
            }
            for l in &mut lines {
                l.points.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
            out.push(GridTable {
                evaluation: t.name.clone(),
                axis: axis.clone(),
                xs,
                lines,
            });
        }
    }
    out
}

/// A paired difference `a - b` of one evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub evaluation: String,
    pub a: String,
    pub b: String,
    pub clean: Option<Stat>,
    pub robust: Option<Stat>,
}

/// Final training metrics of a cell over its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct TrainRow {
    pub cell: String,
    pub epochs: Vec<usize>,
    pub val_clean: Option<Stat>,
    pub val_pgd: Option<Stat>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct StudyReport {
    pub study: String,
    pub dir: PathBuf,
    pub sd: &'static str,
    pub cells: Vec<String>,
    pub seeds: Vec<u64>,
    /// Run folders found, and those the study lists that hold no results yet.
    pub runs: Vec<String>,
    pub missing: Vec<String>,
    pub training: Vec<TrainRow>,
    pub evaluations: Vec<EvalTable>,
    pub curves: Vec<CurveTable>,
    /// Evaluations along numeric grid keys.
    pub grids: Vec<GridTable>,
    pub differences: Vec<Difference>,
    /// Compared pairs left out because a side has no results yet.
    pub pending_differences: Vec<String>,
    #[serde(skip)]
    run_dirs: Vec<(String, u64, PathBuf)>,
}

/// A run folder of the study.
struct RunDir {
    cell: String,
    seed: u64,
    dir: PathBuf,
    /// eval JSON path -> (evaluation, route tag) from the study, when known.
    evals: BTreeMap<PathBuf, (String, Option<String>)>,
}

/// `<cell>-seed<S>`.
fn split_run_name(name: &str) -> Option<(String, u64)> {
    let (cell, seed) = name.rsplit_once("-seed")?;
    Some((cell.to_string(), seed.parse().ok()?))
}

fn tag_of_json(v: &Value) -> String {
    v["route"]
        .as_str()
        .and_then(|r| r.parse::<Route>().ok())
        .map(route_tag)
        .unwrap_or_else(|| "clean".into())
}

/// Find the study's run folders in `dir`.
fn find_runs(dir: &Path) -> Result<(String, Option<Study>, Vec<RunDir>, Vec<String>)> {
    anyhow::ensure!(dir.is_dir(), "{}: no such folder", dir.display());
    let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.join("recipe.toml").is_file())
        .collect();
    subs.sort();
    let stored = dir.join(STUDY_JSON);
    let study: Option<Study> = if stored.is_file() {
        Some(
            serde_json::from_slice(&std::fs::read(&stored)?).with_context(|| {
                format!(
                    "{} is not a study file written by `study run`",
                    stored.display()
                )
            })?,
        )
    } else {
        None
    };
    if subs.is_empty() {
        bail!(
            "{} holds no run folders (no subfolder with a recipe.toml){}",
            dir.display(),
            if study.is_some() {
                ": run the study first (`advtrain study run`)"
            } else {
                ""
            }
        );
    }
    let name_of = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    let mut runs = vec![];
    let mut missing = vec![];
    match &study {
        Some(s) => {
            let mut foreign = vec![];
            for p in &subs {
                let n = name_of(p);
                if !s.runs.iter().any(|r| r.dir.file_name() == p.file_name()) {
                    foreign.push(n);
                }
            }
            anyhow::ensure!(
                foreign.is_empty(),
                "{} mixes runs of different studies: {} not run(s) of study `{}` ({}); move them out \
                 or report them separately",
                dir.display(),
                foreign.join(", "),
                s.study,
                stored.display()
            );
            for r in &s.runs {
                let d = dir.join(r.dir.file_name().unwrap_or_default());
                if !d.join("recipe.toml").is_file() {
                    missing.push(r.id());
                    continue;
                }
                let mut evals = BTreeMap::new();
                for st in &r.steps {
                    if let StepKind::Eval { eval, route } = &st.kind {
                        let f = d
                            .join("eval")
                            .join(st.output.file_name().unwrap_or_default());
                        evals.insert(f, (eval.clone(), route.clone()));
                    }
                }
                runs.push(RunDir {
                    cell: r.cell.clone(),
                    seed: r.seed,
                    dir: d,
                    evals,
                });
            }
        }
        None => {
            let mut bad = vec![];
            for p in &subs {
                match split_run_name(&name_of(p)) {
                    Some((cell, seed)) => runs.push(RunDir {
                        cell,
                        seed,
                        dir: p.clone(),
                        evals: BTreeMap::new(),
                    }),
                    None => bad.push(name_of(p)),
                }
            }
            anyhow::ensure!(
                bad.is_empty(),
                "{}: run folders must be named <cell>-seed<S> when the folder has no {STUDY_JSON}: {}",
                dir.display(),
                bad.join(", ")
            );
        }
    }
    let name = study
        .as_ref()
        .map(|s| s.study.clone())
        .unwrap_or_else(|| name_of(dir));
    Ok((name, study, runs, missing))
}

fn pct1(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// `a` = `cell` or `cell@route`.
fn parse_side(s: &str) -> (String, Option<String>) {
    match s.split_once('@') {
        Some((c, r)) => (
            c.to_string(),
            Some(
                r.parse::<Route>()
                    .map(route_tag)
                    .unwrap_or_else(|_| r.to_string()),
            ),
        ),
        None => (s.to_string(), None),
    }
}

impl StudyReport {
    /// Read the run folders of `dir` and aggregate them; `extra` are paired differences added
    /// to the study's `[report] compare`.
    pub fn build(dir: &Path, extra: &[[String; 2]]) -> Result<StudyReport> {
        let (name, study, runs, missing) = find_runs(dir)?;
        let mut cells: Vec<String> = match &study {
            Some(s) => s.cells.clone(),
            None => vec![],
        };
        for r in &runs {
            if !cells.contains(&r.cell) {
                cells.push(r.cell.clone());
            }
        }
        let mut seeds: Vec<u64> = runs.iter().map(|r| r.seed).collect();
        seeds.sort();
        seeds.dedup();

        // evaluation -> (cell, route) -> seed -> (clean, robust, n); curves separately.
        type Key = (String, String);
        let mut evals: BTreeMap<
            String,
            BTreeMap<Key, BTreeMap<u64, (Option<f64>, Option<f64>, u64)>>,
        > = BTreeMap::new();
        let mut what: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut curves: BTreeMap<String, (String, BTreeMap<Key, BTreeMap<u64, Vec<(f64, f64)>>>)> =
            BTreeMap::new();
        let mut eval_order: Vec<String> = study
            .as_ref()
            .map(|s| s.evals.iter().map(|e| e.name.clone()).collect())
            .unwrap_or_default();
        for r in &runs {
            for f in files_with(&r.dir.join("eval"), "json") {
                let stem = f
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if stem.ends_with(".state") {
                    continue;
                }
                let v = read_json(&f)?;
                let (ename, tag) = match r.evals.get(&f) {
                    Some((e, t)) => (e.clone(), t.clone().unwrap_or_else(|| tag_of_json(&v))),
                    None => (stem.clone(), tag_of_json(&v)),
                };
                if !eval_order.contains(&ename) {
                    eval_order.push(ename.clone());
                }
                let key = (r.cell.clone(), tag);
                if is_curve(&v) {
                    let steps = v["vary"].as_str() == Some("steps");
                    let pts = v["points"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| {
                            let x = if steps {
                                p["steps"].as_f64()
                            } else {
                                p["eps"].as_f64()
                            }?;
                            Some((x, p["robust_accuracy"].as_f64()?))
                        })
                        .collect();
                    let e = curves.entry(ename).or_insert_with(|| {
                        (
                            v["vary"].as_str().unwrap_or("eps").to_string(),
                            BTreeMap::new(),
                        )
                    });
                    e.1.entry(key).or_default().insert(r.seed, pts);
                    continue;
                }
                let desc = format!(
                    "{} eps {} ({}), BN {}, n {}",
                    v["attack"].as_str().unwrap_or("?"),
                    v["eps"],
                    v["norm"].as_str().unwrap_or("?"),
                    v["bn_mode"].as_str().unwrap_or("?"),
                    v["n"]
                );
                let w = what.entry(ename.clone()).or_default();
                if !w.contains(&desc) {
                    w.push(desc);
                }
                evals
                    .entry(ename)
                    .or_default()
                    .entry(key)
                    .or_default()
                    .insert(
                        r.seed,
                        (
                            pct1(&v["clean_accuracy"]),
                            pct1(&v["robust_accuracy"]),
                            v["n"].as_u64().unwrap_or(0),
                        ),
                    );
            }
        }
        let cell_pos = |c: &str| cells.iter().position(|x| x == c).unwrap_or(usize::MAX);
        let route_pos = |r: &str| (r != "clean") as u8;
        let mut evaluations = vec![];
        for ename in &eval_order {
            let Some(m) = evals.get(ename) else { continue };
            let mut keys: Vec<&Key> = m.keys().collect();
            keys.sort_by_key(|(c, r)| (cell_pos(c), route_pos(r), r.clone()));
            let rows = keys
                .into_iter()
                .map(|k| {
                    let per = &m[k];
                    let pick = |f: &dyn Fn(&(Option<f64>, Option<f64>, u64)) -> Option<f64>| {
                        Stat::of(per.iter().filter_map(|(s, v)| Some((*s, f(v)?))).collect())
                    };
                    let mut images: Vec<u64> = per.values().map(|v| v.2).collect();
                    images.sort();
                    images.dedup();
                    Row {
                        cell: k.0.clone(),
                        route: k.1.clone(),
                        clean: pick(&|v| v.0),
                        robust: pick(&|v| v.1),
                        images,
                    }
                })
                .collect();
            let w = &what[ename];
            evaluations.push(EvalTable {
                name: ename.clone(),
                attack: if w.len() == 1 {
                    w[0].clone()
                } else {
                    format!("mixed: {}", w.join("; "))
                },
                rows,
            });
        }
        let curves = eval_order
            .iter()
            .filter_map(|n| curves.get(n).map(|c| (n, c)))
            .map(|(n, (vary, m))| {
                let mut lines = vec![];
                for ((cell, route), per) in m {
                    let mut xs: Vec<f64> = per.values().flatten().map(|p| p.0).collect();
                    xs.sort_by(f64::total_cmp);
                    xs.dedup();
                    let pts = xs
                        .into_iter()
                        .filter_map(|x| {
                            let vals = per
                                .iter()
                                .filter_map(|(s, pts)| {
                                    pts.iter().find(|p| p.0 == x).map(|p| (*s, p.1))
                                })
                                .collect();
                            Some((x, Stat::of(vals)?))
                        })
                        .collect();
                    lines.push((cell.clone(), route.clone(), pts));
                }
                lines.sort_by_key(|(c, r, _)| (cell_pos(c), route_pos(r)));
                CurveTable {
                    name: n.clone(),
                    vary: vary.clone(),
                    lines,
                }
            })
            .collect();

        let grids = grid_tables(
            study.as_ref().map_or(&[][..], |s| s.grid.as_slice()),
            &evaluations,
        );

        // Paired differences.
        let mut pairs: Vec<[String; 2]> = study
            .as_ref()
            .map(|s| s.report.compare.clone())
            .unwrap_or_default();
        pairs.extend(extra.iter().cloned());
        let (mut differences, mut pending) = (vec![], vec![]);
        for [a, b] in &pairs {
            let (ca, ra) = parse_side(a);
            let (cb, rb) = parse_side(b);
            for c in [&ca, &cb] {
                anyhow::ensure!(
                    cells.contains(c),
                    "[report] compare: no cell `{c}` in {} (cells: {})",
                    dir.display(),
                    cells.join(", ")
                );
            }
            let mut any = false;
            for t in &evaluations {
                let routes_of =
                    |c: &str| -> Vec<&Row> { t.rows.iter().filter(|r| r.cell == c).collect() };
                let (xa, xb) = (routes_of(&ca), routes_of(&cb));
                // a's rows (its route, if given); b's row: its route if given, else its only
                // row, else the row with a's route.
                let mut matched: Vec<(&Row, &Row)> = vec![];
                for x in xa
                    .iter()
                    .filter(|x| ra.as_ref().is_none_or(|r| *r == x.route))
                {
                    let y = match &rb {
                        Some(rb) => xb.iter().find(|y| &y.route == rb),
                        None if xb.len() == 1 => xb.first(),
                        None => xb.iter().find(|y| y.route == x.route),
                    };
                    if let Some(y) = y {
                        matched.push((x, y));
                    }
                }
                for (x, y) in matched {
                    let diff = |p: &Option<Stat>, q: &Option<Stat>| -> Option<Stat> {
                        let (p, q) = (p.as_ref()?, q.as_ref()?);
                        Stat::of(
                            p.values
                                .iter()
                                .filter_map(|(s, v)| Some((*s, v - q.values.get(s)?)))
                                .collect(),
                        )
                    };
                    any = true;
                    differences.push(Difference {
                        evaluation: t.name.clone(),
                        a: format!("{}@{}", x.cell, x.route),
                        b: format!("{}@{}", y.cell, y.route),
                        clean: diff(&x.clean, &y.clean),
                        robust: diff(&x.robust, &y.robust),
                    });
                }
            }
            // A cell without any result yet (a study still running, or saved in part) only
            // postpones the pair; two cells with results that never meet are an error.
            let has_rows = |c: &str| {
                evaluations
                    .iter()
                    .any(|t| t.rows.iter().any(|r| r.cell == c))
            };
            if !any && has_rows(&ca) && has_rows(&cb) {
                anyhow::bail!(
                    "[report] compare {a} - {b}: no evaluation has both (with matching routes)"
                );
            }
            if !any {
                pending.push(format!("{a} - {b}"));
            }
        }

        // Training: the last epoch of each run.
        let mut training = vec![];
        for c in &cells {
            let mut vc = BTreeMap::new();
            let mut vp = BTreeMap::new();
            let mut epochs = vec![];
            for r in runs.iter().filter(|r| &r.cell == c) {
                let csv = r.dir.join("metrics.csv");
                if !csv.is_file() {
                    continue;
                }
                let rows = metrics::read(&csv)?;
                if let Some(last) = rows.last() {
                    epochs.push(last.epoch);
                    if let Some(v) = last.val_clean_acc {
                        vc.insert(r.seed, v);
                    }
                    if let Some(v) = last.val_pgd_acc {
                        vp.insert(r.seed, v);
                    }
                }
            }
            epochs.sort();
            epochs.dedup();
            if !epochs.is_empty() {
                training.push(TrainRow {
                    cell: c.clone(),
                    epochs,
                    val_clean: Stat::of(vc),
                    val_pgd: Stat::of(vp),
                });
            }
        }
        let mut run_dirs: Vec<(String, u64, PathBuf)> = runs
            .iter()
            .map(|r| (r.cell.clone(), r.seed, r.dir.clone()))
            .collect();
        run_dirs.sort_by_key(|(c, s, _)| (cell_pos(c), *s));
        Ok(StudyReport {
            study: name,
            dir: dir.to_path_buf(),
            sd: "sample standard deviation over seeds (denominator n - 1); none for n = 1",
            cells,
            seeds,
            runs: run_dirs
                .iter()
                .map(|(c, s, _)| format!("{c}-seed{s}"))
                .collect(),
            missing,
            training,
            evaluations,
            curves,
            grids,
            differences,
            pending_differences: pending,
            run_dirs,
        })
    }

    fn eval_table(t: &EvalTable) -> Table {
        let mut tab = Table::new([
            "cell",
            "route",
            "n",
            "clean % (mean ± sd)",
            "robust % (mean ± sd)",
            "clean % per seed",
            "robust % per seed",
        ]);
        tab.caption = Some(format!("{}: {}", t.name, t.attack));
        let s = |x: &Option<Stat>| x.as_ref().map_or("-".into(), Stat::pct);
        let p = |x: &Option<Stat>| x.as_ref().map_or("-".into(), Stat::per_seed);
        for r in &t.rows {
            let n = r.clean.as_ref().or(r.robust.as_ref()).map_or(0, |s| s.n);
            tab.row([
                r.cell.clone(),
                r.route.clone(),
                n.to_string(),
                s(&r.clean),
                s(&r.robust),
                p(&r.clean),
                p(&r.robust),
            ]);
        }
        tab
    }

    /// Mean ± sd per grid value, one row per line, route and metric.
    fn grid_table(g: &GridTable) -> Table {
        let mut header = vec!["line".to_string(), "route".into(), "metric".into()];
        header.extend(g.xs.iter().map(|x| format!("{} = {x}", g.axis)));
        let mut tab = Table::new(header);
        tab.caption = Some(format!("{} over {}", g.evaluation, g.axis));
        for l in &g.lines {
            for (metric, pick) in [("clean %", 1), ("robust %", 2)] {
                let mut row = vec![l.line.clone(), l.route.clone(), metric.to_string()];
                for x in &g.xs {
                    let stat = l.points.iter().find(|p| p.0 == *x).and_then(|p| {
                        if pick == 1 {
                            p.1.as_ref()
                        } else {
                            p.2.as_ref()
                        }
                    });
                    row.push(stat.map_or("-".into(), Stat::pct));
                }
                tab.row(row);
            }
        }
        tab
    }

    fn training_table(&self) -> Table {
        let mut t = Table::new([
            "cell",
            "epochs",
            "n",
            "val clean % (mean ± sd)",
            "val PGD % (mean ± sd)",
            "val PGD % per seed",
        ]);
        t.caption = Some("training: validation accuracy after the last epoch (metrics.csv)".into());
        for r in &self.training {
            let n = r.val_clean.as_ref().map_or(0, |s| s.n);
            t.row([
                r.cell.clone(),
                r.epochs
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                n.to_string(),
                r.val_clean.as_ref().map_or("-".into(), Stat::pct),
                r.val_pgd.as_ref().map_or("-".into(), Stat::pct),
                r.val_pgd.as_ref().map_or("-".into(), Stat::per_seed),
            ]);
        }
        t
    }

    fn diff_table(&self) -> Table {
        let mut t = Table::new([
            "evaluation",
            "a",
            "b",
            "n",
            "Δ clean % (mean ± sd)",
            "Δ robust % (mean ± sd)",
            "Δ robust % per seed",
        ]);
        t.caption = Some("paired differences a - b over the seeds both have".into());
        for d in &self.differences {
            let n = d.robust.as_ref().or(d.clean.as_ref()).map_or(0, |s| s.n);
            t.row([
                d.evaluation.clone(),
                d.a.clone(),
                d.b.clone(),
                n.to_string(),
                d.clean.as_ref().map_or("-".into(), Stat::pct),
                d.robust.as_ref().map_or("-".into(), Stat::pct),
                d.robust.as_ref().map_or("-".into(), Stat::per_seed),
            ]);
        }
        t
    }

    /// Figures: (file stem, caption, PNG).
    fn figures(&self) -> Result<Vec<(String, String, Vec<u8>)>> {
        let mut out = vec![];
        // Training curves of every run, one figure per metric.
        let mut per_metric: Vec<(&str, &str, Vec<Series>)> = vec![
            ("val-pgd", "validation PGD accuracy (%)", vec![]),
            ("val-clean", "validation clean accuracy (%)", vec![]),
            ("train-loss", "training loss", vec![]),
            ("lr", "learning rate", vec![]),
        ];
        for (cell, seed, dir) in &self.run_dirs {
            let csv = dir.join("metrics.csv");
            if !csv.is_file() {
                continue;
            }
            let rows = metrics::read(&csv)?;
            let name = format!("{cell}-seed{seed}");
            let pct = |v: Option<f64>| v.map_or(f64::NAN, |x| 100.0 * x);
            let get: [Box<dyn Fn(&metrics::EpochMetrics) -> f64>; 4] = [
                Box::new(move |m| pct(m.val_pgd_acc)),
                Box::new(move |m| pct(m.val_clean_acc)),
                Box::new(|m| m.train_loss),
                Box::new(|m| m.lr),
            ];
            for (i, g) in get.iter().enumerate() {
                let pts: Vec<(f64, f64)> = rows.iter().map(|m| (m.epoch as f64, g(m))).collect();
                if pts.iter().any(|p| p.1.is_finite()) {
                    per_metric[i].2.push(Series::new(name.clone(), pts));
                }
            }
        }
        for (stem, label, series) in per_metric {
            if series.is_empty() {
                continue;
            }
            let plot = LinePlot {
                title: format!("{}: {label}", self.study),
                x_label: "epoch".into(),
                y_label: label.into(),
                series,
                y_range: None,
            };
            out.push((
                format!("training-{stem}"),
                format!("training curves: {label}, every run"),
                plot.to_png((900, 520))?,
            ));
        }
        // Grouped bars per evaluation.
        for t in &self.evaluations {
            let cats: Vec<String> = t
                .rows
                .iter()
                .map(|r| format!("{}@{}", r.cell, r.route))
                .collect();
            let series = |name: &str, f: &dyn Fn(&Row) -> &Option<Stat>| {
                BarSeries::new(
                    name,
                    t.rows
                        .iter()
                        .map(|r| f(r).as_ref().map_or(f64::NAN, |s| 100.0 * s.mean)),
                )
                .with_errors(t.rows.iter().map(|r| {
                    f(r).as_ref()
                        .and_then(|s| s.sd)
                        .map_or(0.0, |sd| 100.0 * sd)
                }))
            };
            let plot = BarPlot {
                title: format!("{} ({})", t.name, t.attack),
                x_label: "cell @ route".into(),
                y_label: "accuracy (%), mean ± sd".into(),
                categories: cats,
                series: vec![
                    series("clean", &|r| &r.clean),
                    series("robust", &|r| &r.robust),
                ],
            };
            out.push((
                format!("bars-{}", t.name),
                format!("{}: mean over seeds, error bars = sample sd", t.name),
                plot.to_png((1000, 560))?,
            ));
        }
        // Along numeric grid keys: clean and robust accuracy per line.
        for g in &self.grids {
            let mut series = vec![];
            for l in &g.lines {
                for (metric, pick) in [("robust", 2), ("clean", 1)] {
                    let pts = l.points.iter().filter_map(|p| {
                        let s = if pick == 1 { &p.1 } else { &p.2 };
                        Some((p.0, 100.0 * s.as_ref()?.mean))
                    });
                    series.push(Series::new(format!("{}@{} {metric}", l.line, l.route), pts));
                }
            }
            let plot = LinePlot {
                title: format!("{}: accuracy over {}", g.evaluation, g.axis),
                x_label: g.axis.clone(),
                y_label: "accuracy (%), mean over seeds".into(),
                series,
                y_range: Some((0.0, 100.0)),
            };
            out.push((
                g.stem(),
                format!("{} over {}: mean over seeds", g.evaluation, g.axis),
                plot.to_png((900, 520))?,
            ));
        }
        // Curves.
        for c in &self.curves {
            let series = c
                .lines
                .iter()
                .map(|(cell, route, pts)| {
                    Series::new(
                        format!("{cell}@{route}"),
                        pts.iter().map(|(x, s)| (*x, 100.0 * s.mean)),
                    )
                })
                .collect();
            let plot = LinePlot {
                title: format!("{}: robust accuracy over {}", c.name, c.vary),
                x_label: c.vary.clone(),
                y_label: "robust accuracy (%), mean over seeds".into(),
                series,
                y_range: Some((0.0, 100.0)),
            };
            out.push((
                format!("curve-{}", c.name),
                format!("{}: mean over seeds", c.name),
                plot.to_png((900, 520))?,
            ));
        }
        Ok(out)
    }

    /// The analyses' figures of every run: (caption, PNG).
    fn analysis_figures(&self) -> Result<Vec<(Vec<u8>, String)>> {
        let mut out = vec![];
        for (cell, seed, dir) in &self.run_dirs {
            for (png, rel) in run_report::analysis_figures(dir)? {
                out.push((png, format!("{cell}-seed{seed}: {rel}")));
            }
        }
        Ok(out)
    }

    fn intro(&self) -> String {
        format!(
            "Study {} in {}: {} cells x seeds {:?} = {} run folders{}. Cells: mean ± sd over seeds, sd = {}; \
             accuracies in % of the evaluated test images.",
            self.study,
            self.dir.display(),
            self.cells.len(),
            self.seeds,
            self.runs.len(),
            if self.missing.is_empty() {
                String::new()
            } else {
                format!(" ({} listed runs have no folder yet: {})", self.missing.len(), self.missing.join(", "))
            },
            self.sd
        )
    }

    /// The report as an HTML page (figures embedded).
    pub fn page(&self) -> Result<Page> {
        let mut blocks = vec![Block::Paragraph(self.intro())];
        let figs = self.figures()?;
        let fig = |stem: &str| {
            figs.iter()
                .find(|f| f.0 == stem)
                .map(|f| (f.2.clone(), f.1.clone()))
        };
        for t in &self.evaluations {
            blocks.push(Block::Heading(2, format!("Evaluation {}", t.name)));
            blocks.push(Block::Table(Self::eval_table(t)));
            if let Some((png, caption)) = fig(&format!("bars-{}", t.name)) {
                blocks.push(Block::Image { png, caption });
            }
            for g in self.grids.iter().filter(|g| g.evaluation == t.name) {
                blocks.push(Block::Table(Self::grid_table(g)));
                if let Some((png, caption)) = fig(&g.stem()) {
                    blocks.push(Block::Image { png, caption });
                }
            }
        }
        for c in &self.curves {
            blocks.push(Block::Heading(2, format!("Curve {}", c.name)));
            if let Some((png, caption)) = fig(&format!("curve-{}", c.name)) {
                blocks.push(Block::Image { png, caption });
            }
        }
        if !self.differences.is_empty() {
            blocks.push(Block::Heading(2, "Paired differences".into()));
            blocks.push(Block::Table(self.diff_table()));
        }
        if let Some(p) = self.pending_text() {
            blocks.push(Block::Paragraph(p));
        }
        blocks.push(Block::Heading(2, "Training".into()));
        blocks.push(Block::Table(self.training_table()));
        let training: Vec<(Vec<u8>, String)> = figs
            .iter()
            .filter(|f| f.0.starts_with("training-"))
            .map(|f| (f.2.clone(), f.1.clone()))
            .collect();
        if !training.is_empty() {
            blocks.push(Block::Gallery(training));
        }
        let analyses = self.analysis_figures()?;
        if !analyses.is_empty() {
            blocks.push(Block::Heading(2, "Analyses".into()));
            blocks.push(Block::Gallery(analyses));
        }
        blocks.push(Block::Heading(2, "Runs".into()));
        let mut links = vec![];
        for (cell, seed, dir) in &self.run_dirs {
            let name = dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let text = format!("{cell}-seed{seed}: {}", dir.display());
            if dir.join("report.html").is_file() {
                links.push((
                    format!("{name}/report.html"),
                    format!("{text} (run report)"),
                ));
            } else {
                links.push((format!("{name}/"), text));
            }
        }
        blocks.push(Block::Links(links));
        Ok(Page {
            title: format!("Study {}", self.study),
            blocks,
        })
    }

    /// Markdown (figures referenced from `report-figures/`).
    pub fn markdown(&self, figures: &[(String, String)]) -> String {
        let mut s = format!("# Study {}\n\n{}\n", self.study, self.intro());
        let fig = |stem: &str| figures.iter().find(|f| f.0 == stem);
        for t in &self.evaluations {
            s.push_str(&format!(
                "\n## Evaluation {}\n\n{}",
                t.name,
                md_table(&Self::eval_table(t))
            ));
            s.push_str(&format!("\n{}: {}\n", t.name, t.attack));
            if let Some((stem, caption)) = fig(&format!("bars-{}", t.name)) {
                s.push_str(&format!("\n![{caption}](report-figures/{stem}.png)\n"));
            }
            for g in self.grids.iter().filter(|g| g.evaluation == t.name) {
                s.push_str(&format!(
                    "\n### {} over {}\n\n{}",
                    t.name,
                    g.axis,
                    md_table(&Self::grid_table(g))
                ));
                if let Some((stem, caption)) = fig(&g.stem()) {
                    s.push_str(&format!("\n![{caption}](report-figures/{stem}.png)\n"));
                }
            }
        }
        for c in &self.curves {
            if let Some((stem, caption)) = fig(&format!("curve-{}", c.name)) {
                s.push_str(&format!(
                    "\n## Curve {}\n\n![{caption}](report-figures/{stem}.png)\n",
                    c.name
                ));
            }
        }
        if !self.differences.is_empty() {
            s.push_str(&format!(
                "\n## Paired differences (a - b)\n\n{}",
                md_table(&self.diff_table())
            ));
        }
        if let Some(p) = self.pending_text() {
            s.push_str(&format!("\n{p}\n"));
        }
        s.push_str(&format!(
            "\n## Training\n\n{}",
            md_table(&self.training_table())
        ));
        for (stem, caption) in figures.iter().filter(|f| f.0.starts_with("training-")) {
            s.push_str(&format!("\n![{caption}](report-figures/{stem}.png)\n"));
        }
        s
    }

    /// The compared pairs that wait for results, as a sentence (none when none wait).
    fn pending_text(&self) -> Option<String> {
        let p = &self.pending_differences;
        (!p.is_empty()).then(|| {
            format!(
                "Not compared yet (a side has no results): {}.",
                p.join("; ")
            )
        })
    }

    /// One CSV row per table row (evaluations, then differences).
    pub fn csv(&self) -> Result<String> {
        let mut w = csv::Writer::from_writer(vec![]);
        w.write_record([
            "table",
            "evaluation",
            "cell",
            "route",
            "n",
            "clean_mean",
            "clean_sd",
            "robust_mean",
            "robust_sd",
            "clean_per_seed",
            "robust_per_seed",
        ])?;
        let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.6}"));
        let per = |s: &Option<Stat>| {
            s.as_ref().map_or(String::new(), |s| {
                s.values
                    .iter()
                    .map(|(k, v)| format!("{k}:{v:.6}"))
                    .collect::<Vec<_>>()
                    .join(";")
            })
        };
        for t in &self.evaluations {
            for r in &t.rows {
                let n = r.clean.as_ref().or(r.robust.as_ref()).map_or(0, |s| s.n);
                w.write_record([
                    "evaluation".to_string(),
                    t.name.clone(),
                    r.cell.clone(),
                    r.route.clone(),
                    n.to_string(),
                    f(r.clean.as_ref().map(|s| s.mean)),
                    f(r.clean.as_ref().and_then(|s| s.sd)),
                    f(r.robust.as_ref().map(|s| s.mean)),
                    f(r.robust.as_ref().and_then(|s| s.sd)),
                    per(&r.clean),
                    per(&r.robust),
                ])?;
            }
        }
        for d in &self.differences {
            let n = d.robust.as_ref().or(d.clean.as_ref()).map_or(0, |s| s.n);
            w.write_record([
                "difference".to_string(),
                d.evaluation.clone(),
                format!("{} - {}", d.a, d.b),
                String::new(),
                n.to_string(),
                f(d.clean.as_ref().map(|s| s.mean)),
                f(d.clean.as_ref().and_then(|s| s.sd)),
                f(d.robust.as_ref().map(|s| s.mean)),
                f(d.robust.as_ref().and_then(|s| s.sd)),
                per(&d.clean),
                per(&d.robust),
            ])?;
        }
        Ok(String::from_utf8(w.into_inner()?)?)
    }
}

/// One `--compare A,B` pair (each `cell` or `cell@route-tag`).
pub fn parse_compare(c: &str) -> Result<[String; 2]> {
    match c.split_once(',') {
        Some((x, y)) if !y.contains(',') => Ok([x.to_string(), y.to_string()]),
        _ => anyhow::bail!(
            "--compare {c}: expected A,B (two cells, each `cell` or `cell@route-tag` \
             such as e7-dual-bn@adv or e7-cross-bn@ns-clean-ap-adv)"
        ),
    }
}

/// Build the report of `dir` and write `report.{md,csv,json,html}` (and the Markdown's figures
/// in `report-figures/`) into it; returns the files written.
pub fn write_report(dir: &Path, extra: &[[String; 2]]) -> Result<Vec<PathBuf>> {
    let rep = StudyReport::build(dir, extra)?;
    let mut written = vec![];
    let figs = rep.figures()?;
    let fig_dir = dir.join("report-figures");
    std::fs::create_dir_all(&fig_dir)
        .with_context(|| format!("cannot create {}", fig_dir.display()))?;
    for (stem, _, png) in &figs {
        let p = fig_dir.join(format!("{stem}.png"));
        write_atomic(&p, png)?;
    }
    let captions: Vec<(String, String)> = figs.iter().map(|f| (f.0.clone(), f.1.clone())).collect();
    for (name, bytes) in [
        ("report.md", rep.markdown(&captions).into_bytes()),
        ("report.csv", rep.csv()?.into_bytes()),
        (
            "report.json",
            serde_json::to_string_pretty(&rep)?.into_bytes(),
        ),
        ("report.html", rep.page()?.to_html().into_bytes()),
    ] {
        let p = dir.join(name);
        write_atomic(&p, &bytes)?;
        written.push(p);
    }
    Ok(written)
}
