//! The report of one run folder: `curves.png` (training curves, redrawn after every epoch) and
//! `report.html` (`advtrain report RUN`, and at the end of `train`): the training curves, every
//! evaluation JSON of `<run>/eval/` as a table (curves as figures), the analyses' figures, the
//! gradient-masking flags, the checkpoint provenance (sidecars' epochs and sha256) and the
//! resolved recipe. Run data is only read; the report files are written atomically.

use super::html::{Block, Page, Table};
use super::plot::{grid_png, Figure, LinePlot, Series};
use crate::fsio::write_atomic;
use crate::train::metrics::{self, EpochMetrics};
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Size of each of the stacked panels of `curves.png`.
const PANEL: (u32, u32) = (1000, 380);

/// Percent of an optional fraction (NaN for none: no point).
fn pct(v: Option<f64>) -> f64 {
    v.map_or(f64::NAN, |x| 100.0 * x)
}

/// `0.4567` as `45.67` (`-` for none).
fn pct_text(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{:.2}", 100.0 * x))
}

/// The training curves of `rows` as one PNG: accuracies (%), training loss and learning rate
/// stacked, each over the epochs.
pub fn curves_png(rows: &[EpochMetrics], title: &str) -> Result<Vec<u8>> {
    anyhow::ensure!(!rows.is_empty(), "no epochs to plot");
    let ep = |f: fn(&EpochMetrics) -> f64| {
        rows.iter()
            .map(|m| (m.epoch as f64, f(m)))
            .collect::<Vec<_>>()
    };
    let acc: [(&str, fn(&EpochMetrics) -> f64); 4] = [
        ("train clean", |m| pct(m.train_clean_acc)),
        ("train adversarial", |m| pct(m.train_adv_acc)),
        ("val clean", |m| pct(m.val_clean_acc)),
        ("val PGD", |m| pct(m.val_pgd_acc)),
    ];
    let acc = acc.iter().map(|(name, f)| Series::new(*name, ep(*f)));
    let plot = |what: &str, y: &str, series: Vec<Series>| LinePlot {
        title: format!("{title}: {what}"),
        x_label: "epoch".into(),
        y_label: y.into(),
        series,
        y_range: None,
    };
    let acc: Vec<Series> = acc
        .filter(|s| s.points.iter().any(|p| p.1.is_finite()))
        .collect();
    let mut plots = vec![];
    if !acc.is_empty() {
        plots.push(plot("accuracy", "accuracy (%)", acc));
    }
    plots.push(plot(
        "training loss",
        "loss",
        vec![Series::new("train loss", ep(|m| m.train_loss))],
    ));
    plots.push(plot(
        "learning rate (end of epoch)",
        "lr",
        vec![Series::new("lr", ep(|m| m.lr))],
    ));
    let figs: Vec<Figure> = plots.iter().map(Figure::LinePlot).collect();
    grid_png(&figs, 1, (PANEL.0, PANEL.1 * figs.len() as u32))
}

/// The run's name for titles: its folder name.
fn run_name(dir: &Path) -> String {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    name.unwrap_or_else(|| dir.display().to_string())
}

/// Redraw `<run>/curves.png` from its `metrics.csv` (atomically).
pub fn write_curves(dir: &Path) -> Result<PathBuf> {
    let png = curves_png(&metrics::read(&dir.join("metrics.csv"))?, &run_name(dir))?;
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
    files(dir, &format!("*.{ext}"))
}

/// The files matching the glob `pattern` under `dir`, each folder's files (sorted) before its
/// subfolders' (in order).
fn files(dir: &Path, pattern: &str) -> Vec<PathBuf> {
    let pattern = format!(
        "{}/{pattern}",
        glob::Pattern::escape(&dir.to_string_lossy())
    );
    let found = glob::glob(&pattern).into_iter().flatten().flatten();
    let mut out: Vec<PathBuf> = found.filter(|p| p.is_file()).collect();
    out.sort_by_key(|p| (p.parent().map(Path::to_path_buf), p.clone()));
    out
}

/// Whether an eval JSON is a curve (`eval --curve`) rather than one evaluation.
pub fn is_curve(v: &Value) -> bool {
    v.get("points").is_some_and(Value::is_array)
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// `v[key]` of every element of the array `v` as text, joined by `, ` (`none` for none).
fn list(v: &Value, f: impl Fn(&Value) -> String, none: &str) -> String {
    let items: Vec<String> = v.as_array().into_iter().flatten().map(f).collect();
    if items.is_empty() {
        none.into()
    } else {
        items.join(", ")
    }
}

/// The evaluations of a run as a table and the curves as figures; and every flag raised.
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
    let (mut flags, mut figs) = (vec![], vec![]);
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
        flags.extend(
            v["flags"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|fl| (name.clone(), fl.clone())),
        );
        if is_curve(&v) {
            let title = format!("{name} (n={})", text(&v["n"]));
            if let Ok(png) = curve_plot(title, &v).to_png((800, 500)) {
                figs.push((
                    png,
                    format!("{name}: {} over {}", text(&v["attack"]), text(&v["vary"])),
                ));
            }
            continue;
        }
        let stages = match v["per_attack"].as_array() {
            Some(s) if s.len() > 1 => list(
                &v["per_attack"],
                |s| {
                    format!(
                        "{} {}",
                        text(&s["attack"]),
                        pct_text(s["robust_accuracy"].as_f64())
                    )
                },
                "-",
            ),
            _ => "-".into(),
        };
        let cells = ["attack", "eps", "norm", "route", "bn_mode", "n"].map(|k| text(&v[k]));
        t.row(
            [name].into_iter().chain(cells).chain([
                pct_text(v["clean_accuracy"].as_f64()),
                pct_text(v["robust_accuracy"].as_f64()),
                stages,
                list(&v["flags"], |f| text(&f["code"]), "none"),
                v["elapsed_s"]
                    .as_f64()
                    .map_or("-".into(), |s| format!("{s:.1}")),
            ]),
        );
    }
    let mut blocks = vec![Block::Heading(2, "Evaluations".into())];
    let eval_dir = dir.join("eval").display().to_string();
    if t.rows.is_empty() && figs.is_empty() {
        blocks.push(Block::Paragraph(format!(
            "No evaluation yet ({eval_dir} holds no JSON)."
        )));
    } else if !t.rows.is_empty() {
        t.caption = Some(format!("every JSON in {eval_dir}"));
        blocks.push(Block::Table(t));
    }
    if !figs.is_empty() {
        blocks.extend([Block::Heading(3, "Curves".into()), Block::Gallery(figs)]);
    }
    Ok((blocks, flags))
}

/// Robust accuracy (%) over the varied setting of an `eval --curve` JSON (and the clean line
/// over eps), titled `title`.
pub fn curve_plot(title: String, v: &Value) -> LinePlot {
    let steps = v["vary"].as_str() == Some("steps");
    let x = if steps { "steps" } else { "eps" };
    let points = v["points"].as_array().into_iter().flatten();
    let pts: Vec<(f64, f64)> = points
        .map(|p| {
            (
                p[x].as_f64().unwrap_or(f64::NAN),
                pct(p["robust_accuracy"].as_f64()),
            )
        })
        .collect();
    let clean = pct(v["clean_accuracy"].as_f64());
    let mut series = vec![Series::new(
        format!("{} robust", text(&v["attack"])),
        pts.clone(),
    )];
    if !steps {
        series.push(Series::new("clean", pts.iter().map(|p| (p.0, clean))));
    }
    LinePlot {
        title,
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
    let read = |p: PathBuf| {
        let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        Ok((
            bytes,
            p.strip_prefix(dir).unwrap_or(&p).display().to_string(),
        ))
    };
    files(&dir.join("analysis"), "**/*.png")
        .into_iter()
        .map(read)
        .collect()
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
        if v.get("sha256").is_some() {
            let name = side
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let best = v["best_metric"]
                .as_f64()
                .map_or("-".into(), |b| format!("{b:.4}"));
            let [format, version, epoch, sha] =
                ["format", "advtrain_version", "epoch", "sha256"].map(|k| text(&v[k]));
            t.row([name, format, version, epoch, best, sha]);
        }
    }
    t
}

/// The per-epoch rows as a table.
fn metrics_table(rows: &[EpochMetrics]) -> Table {
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
    let state = match summary.is_file() {
        true => {
            let s = read_json(&summary)?;
            let [e, p, d] = ["epochs", "parameters", "device"].map(|k| text(&s[k]));
            format!("finished: {e} epochs, {p} parameters, device {d}")
        }
        false => format!("not finished: {} epoch(s) done so far", rows.len()),
    };
    let mut blocks = vec![
        Block::Paragraph(format!("Run folder {}; {state}.", dir.display())),
        Block::Heading(2, "Training".into()),
    ];
    if rows.is_empty() {
        blocks.push(Block::Paragraph("No epoch finished yet.".into()));
    } else {
        let caption = "training curves (metrics.csv): accuracy, loss, learning rate".into();
        blocks.push(Block::Image {
            png: curves_png(&rows, &run_name(dir))?,
            caption,
        });
        let table = vec![Block::Table(metrics_table(&rows))];
        blocks.push(Block::Details {
            summary: "per-epoch metrics".into(),
            blocks: table,
        });
    }
    let (evals, flags) = eval_blocks(dir)?;
    blocks.extend(evals);
    let figs = analysis_figures(dir)?;
    if !figs.is_empty() {
        blocks.extend([Block::Heading(2, "Analyses".into()), Block::Gallery(figs)]);
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
    blocks.extend([
        Block::Heading(2, "Checkpoint provenance".into()),
        Block::Table(provenance(dir)),
        Block::Heading(2, "Resolved recipe".into()),
        Block::Pre(recipe),
    ]);
    Ok(Page {
        title: format!("Run {}", run_name(dir)),
        blocks,
    })
}

/// Write `<run>/report.html` (atomically); returns its path.
pub fn write_run_report(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("report.html");
    write_atomic(&path, run_page(dir)?.to_html().as_bytes())?;
    Ok(path)
}
