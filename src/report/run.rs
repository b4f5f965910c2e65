//! The report of one run folder: `curves.png` (training curves, redrawn after every epoch) and
//! `report.html` (`advtrain report RUN`, and at the end of `train`): the training curves, every
//! evaluation JSON of `<run>/eval/` as a table (curves as figures), the analyses' figures, the
//! gradient-masking flags, the checkpoint provenance (sidecars' epochs and sha256) and the
//! resolved recipe. Run data is only read; the report files are written atomically.

use super::html::{stack_png, Block, Page, Table};
use super::plot::{LinePlot, Series};
use crate::fsio::write_atomic;
use crate::train::metrics::{self, EpochMetrics};
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Size of each of the stacked panels of `curves.png`.
pub const PANEL: (u32, u32) = (1000, 380);

/// Percent of an optional fraction.
fn pct(v: Option<f64>) -> f64 {
    v.map_or(f64::NAN, |x| 100.0 * x)
}

/// The three panels of a run's training curves: accuracies (%), training loss, learning rate.
pub fn training_plots(rows: &[EpochMetrics], title: &str) -> Vec<LinePlot> {
    let ep = |f: &dyn Fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> {
        rows.iter().map(|m| (m.epoch as f64, f(m))).collect()
    };
    let mut acc = vec![];
    for (name, get) in [
        (
            "train clean",
            (|m: &EpochMetrics| pct(m.train_clean_acc)) as fn(&EpochMetrics) -> f64,
        ),
        ("train adversarial", |m| pct(m.train_adv_acc)),
        ("val clean", |m| pct(m.val_clean_acc)),
        ("val PGD", |m| pct(m.val_pgd_acc)),
    ] {
        let pts = ep(&get);
        if pts.iter().any(|p| p.1.is_finite()) {
            acc.push(Series::new(name, pts));
        }
    }
    let mut plots = vec![];
    if !acc.is_empty() {
        plots.push(LinePlot {
            title: format!("{title}: accuracy"),
            x_label: "epoch".into(),
            y_label: "accuracy (%)".into(),
            series: acc,
            y_range: None,
        });
    }
    plots.push(LinePlot {
        title: format!("{title}: training loss"),
        x_label: "epoch".into(),
        y_label: "loss".into(),
        series: vec![Series::new("train loss", ep(&|m| m.train_loss))],
        y_range: None,
    });
    plots.push(LinePlot {
        title: format!("{title}: learning rate (end of epoch)"),
        x_label: "epoch".into(),
        y_label: "lr".into(),
        series: vec![Series::new("lr", ep(&|m| m.lr))],
        y_range: None,
    });
    plots
}

/// The training curves of `rows` as one PNG (the panels of [`training_plots`] stacked).
pub fn curves_png(rows: &[EpochMetrics], title: &str) -> Result<Vec<u8>> {
    anyhow::ensure!(!rows.is_empty(), "no epochs to plot");
    let pngs = training_plots(rows, title)
        .iter()
        .map(|p| p.to_png(PANEL))
        .collect::<Result<Vec<_>>>()?;
    stack_png(&pngs)
}

/// The run's name for titles: its folder name.
fn run_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Redraw `<run>/curves.png` from its `metrics.csv` (atomically).
pub fn write_curves(dir: &Path) -> Result<PathBuf> {
    let rows = metrics::read(&dir.join("metrics.csv"))?;
    let png = curves_png(&rows, &run_name(dir))?;
    let path = dir.join("curves.png");
    write_atomic(&path, &png)?;
    Ok(path)
}

/// Read a JSON file.
pub fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Files in `dir` with extension `ext`, sorted (none when `dir` does not exist).
pub fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == ext))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Files with extension `ext` anywhere under `dir`, sorted.
pub fn files_under(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = files_with(dir, ext);
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut subs: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        subs.sort();
        for s in subs {
            out.extend(files_under(&s, ext));
        }
    }
    out
}

/// `0.4567` as `45.67`.
pub fn pct_text(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{:.2}", 100.0 * x))
}

/// Whether an eval JSON is a curve (`eval --curve`) rather than one evaluation.
pub fn is_curve(v: &Value) -> bool {
    v.get("points").is_some_and(Value::is_array)
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// The evaluations of a run as a table (file, attack, eps, route, BN mode, n, clean, robust,
/// stages, flags) and the curves as figures.
fn eval_blocks(dir: &Path) -> Result<(Vec<Block>, Vec<(String, Value)>)> {
    let mut t = Table::new([
        "evaluation",
        "attack",
        "eps",
        "norm",
        "route",
        "BN mode",
        "n",
        "clean %",
        "robust %",
        "stages (robust %)",
        "flags",
        "time (s)",
    ]);
    let mut blocks = vec![];
    let mut flags = vec![];
    let mut curves = vec![];
    for f in files_with(&dir.join("eval"), "json") {
        let name = f
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".state") {
            continue;
        }
        let v = read_json(&f)?;
        for fl in v["flags"].as_array().into_iter().flatten() {
            flags.push((name.clone(), fl.clone()));
        }
        if is_curve(&v) {
            curves.push((name, v));
            continue;
        }
        let stages: Vec<String> = v["per_attack"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|_| v["per_attack"].as_array().map_or(0, Vec::len) > 1)
            .map(|s| {
                format!(
                    "{} {}",
                    text(&s["attack"]),
                    pct_text(s["robust_accuracy"].as_f64())
                )
            })
            .collect();
        let codes: Vec<String> = v["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| text(&f["code"]))
            .collect();
        t.row([
            name,
            text(&v["attack"]),
            text(&v["eps"]),
            text(&v["norm"]),
            text(&v["route"]),
            text(&v["bn_mode"]),
            text(&v["n"]),
            pct_text(v["clean_accuracy"].as_f64()),
            pct_text(v["robust_accuracy"].as_f64()),
            if stages.is_empty() {
                "-".into()
            } else {
                stages.join(", ")
            },
            if codes.is_empty() {
                "none".into()
            } else {
                codes.join(", ")
            },
            v["elapsed_s"]
                .as_f64()
                .map_or("-".into(), |s| format!("{s:.1}")),
        ]);
    }
    blocks.push(Block::Heading(2, "Evaluations".into()));
    if t.rows.is_empty() && curves.is_empty() {
        blocks.push(Block::Paragraph(format!(
            "No evaluation yet ({} holds no JSON).",
            dir.join("eval").display()
        )));
    } else if !t.rows.is_empty() {
        t.caption = Some(format!("every JSON in {}", dir.join("eval").display()));
        blocks.push(Block::Table(t));
    }
    let mut figs = vec![];
    for (name, v) in &curves {
        let plot = curve_plot(name, v);
        if let Ok(png) = plot.to_png((800, 500)) {
            figs.push((
                png,
                format!("{name}: {} over {}", text(&v["attack"]), text(&v["vary"])),
            ));
        }
    }
    if !figs.is_empty() {
        blocks.push(Block::Heading(3, "Curves".into()));
        blocks.push(Block::Gallery(figs));
    }
    Ok((blocks, flags))
}

/// Robust accuracy (%) over the varied setting of an `eval --curve` JSON (and the clean line
/// over eps).
pub fn curve_plot(name: &str, v: &Value) -> LinePlot {
    let steps = v["vary"].as_str() == Some("steps");
    let pts: Vec<(f64, f64)> = v["points"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let x = if steps {
                p["steps"].as_f64()
            } else {
                p["eps"].as_f64()
            };
            (x.unwrap_or(f64::NAN), pct(p["robust_accuracy"].as_f64()))
        })
        .collect();
    let mut series = vec![Series::new(
        format!("{} robust", text(&v["attack"])),
        pts.clone(),
    )];
    if !steps {
        let c = pct(v["clean_accuracy"].as_f64());
        series.push(Series::new("clean", pts.iter().map(|p| (p.0, c))));
    }
    LinePlot {
        title: format!("{name} (n={})", text(&v["n"])),
        x_label: if steps {
            "steps".into()
        } else {
            format!("eps ({})", text(&v["norm"]))
        },
        y_label: "accuracy (%)".into(),
        series,
        y_range: Some((0.0, 100.0)),
    }
}

/// Every PNG under `<run>/analysis/` with its path as caption.
pub fn analysis_figures(dir: &Path) -> Result<Vec<(Vec<u8>, String)>> {
    let root = dir.join("analysis");
    let mut out = vec![];
    for p in files_under(&root, "png") {
        let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
        out.push((bytes, rel));
    }
    Ok(out)
}

/// The checkpoint provenance of a run: every sidecar under `checkpoints/`.
fn provenance(dir: &Path) -> Table {
    let mut t = Table::new([
        "checkpoint",
        "format",
        "advtrain",
        "epoch",
        "best metric",
        "sha256",
    ]);
    for side in files_with(&dir.join("checkpoints"), "json") {
        let Ok(v) = read_json(&side) else { continue };
        if v.get("sha256").is_none() {
            continue;
        }
        t.row([
            side.file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            text(&v["format"]),
            text(&v["advtrain_version"]),
            text(&v["epoch"]),
            v["best_metric"]
                .as_f64()
                .map_or("-".into(), |b| format!("{b:.4}")),
            text(&v["sha256"]),
        ]);
    }
    t
}

/// The per-epoch rows as a table.
pub fn metrics_table(rows: &[EpochMetrics]) -> Table {
    let mut t = Table::new([
        "epoch",
        "lr",
        "train loss",
        "train clean %",
        "train adv %",
        "val clean %",
        "val PGD %",
        "images/s",
        "time (s)",
    ]);
    for m in rows {
        t.row([
            m.epoch.to_string(),
            format!("{:.4}", m.lr),
            format!("{:.4}", m.train_loss),
            pct_text(m.train_clean_acc),
            pct_text(m.train_adv_acc),
            pct_text(m.val_clean_acc),
            pct_text(m.val_pgd_acc),
            format!("{:.0}", m.images_per_s),
            format!("{:.1}", m.epoch_time_s),
        ]);
    }
    t
}

/// The report page of one run folder.
pub fn run_page(dir: &Path) -> Result<Page> {
    anyhow::ensure!(dir.is_dir(), "{}: no such run folder", dir.display());
    let recipe_file = dir.join("recipe.toml");
    anyhow::ensure!(
        recipe_file.is_file(),
        "{} is not a run folder (no recipe.toml)",
        dir.display()
    );
    let recipe = std::fs::read_to_string(&recipe_file)
        .with_context(|| format!("cannot read {}", recipe_file.display()))?;
    let csv = dir.join("metrics.csv");
    let rows = if csv.exists() {
        metrics::read(&csv)?
    } else {
        vec![]
    };
    let summary = dir.join("summary.json");
    let state = if summary.is_file() {
        let s = read_json(&summary)?;
        format!(
            "finished: {} epochs, {} parameters, device {}",
            text(&s["epochs"]),
            text(&s["parameters"]),
            text(&s["device"])
        )
    } else {
        format!("not finished: {} epoch(s) done so far", rows.len())
    };
    let mut blocks = vec![Block::Paragraph(format!(
        "Run folder {}; {state}.",
        dir.display()
    ))];
    blocks.push(Block::Heading(2, "Training".into()));
    if rows.is_empty() {
        blocks.push(Block::Paragraph("No epoch finished yet.".into()));
    } else {
        blocks.push(Block::Image {
            png: curves_png(&rows, &run_name(dir))?,
            caption: "training curves (metrics.csv): accuracy, loss, learning rate".into(),
        });
        blocks.push(Block::Details {
            summary: "per-epoch metrics".into(),
            blocks: vec![Block::Table(metrics_table(&rows))],
        });
    }
    let (evals, flags) = eval_blocks(dir)?;
    blocks.extend(evals);
    let figs = analysis_figures(dir)?;
    if !figs.is_empty() {
        blocks.push(Block::Heading(2, "Analyses".into()));
        blocks.push(Block::Gallery(figs));
    }
    blocks.push(Block::Heading(2, "Flags".into()));
    if flags.is_empty() {
        blocks.push(Block::Paragraph(
            "No evaluation raised a gradient-masking or sanity flag.".into(),
        ));
    } else {
        let mut t = Table::new(["evaluation", "code", "message"]);
        for (name, f) in flags {
            t.row([name, text(&f["code"]), text(&f["message"])]);
        }
        blocks.push(Block::Table(t));
    }
    blocks.push(Block::Heading(2, "Checkpoint provenance".into()));
    blocks.push(Block::Table(provenance(dir)));
    blocks.push(Block::Heading(2, "Resolved recipe".into()));
    blocks.push(Block::Pre(recipe));
    Ok(Page {
        title: format!("Run {}", run_name(dir)),
        blocks,
    })
}

/// Write `<run>/report.html` (atomically); returns its path.
pub fn write_run_report(dir: &Path) -> Result<PathBuf> {
    let page = run_page(dir)?;
    let path = dir.join("report.html");
    write_atomic(&path, page.to_html().as_bytes())?;
    Ok(path)
}
