//! The per-epoch `metrics.csv` of a run.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// One row of `metrics.csv`. Accuracies are fractions; missing values are written as empty fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_clean_acc: Option<f64>,
    pub train_adv_acc: Option<f64>,
    pub val_clean_acc: Option<f64>,
    pub val_pgd_acc: Option<f64>,
    pub images_per_s: f64,
    pub epoch_time_s: f64,
}

pub const HEADER: &str =
    "epoch,lr,train_loss,train_clean_acc,train_adv_acc,val_clean_acc,val_pgd_acc,images_per_s,epoch_time_s";

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

impl EpochMetrics {
    pub fn csv_row(&self) -> String {
        format!(
            "{},{:.6e},{:.6},{},{},{},{},{:.1},{:.2}",
            self.epoch,
            self.lr,
            self.train_loss,
            opt(self.train_clean_acc),
            opt(self.train_adv_acc),
            opt(self.val_clean_acc),
            opt(self.val_pgd_acc),
            self.images_per_s,
            self.epoch_time_s
        )
    }
}

/// Append a row, writing the header first when the file is new.
pub fn append(path: &Path, m: &EpochMetrics) -> Result<()> {
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // One write per append, so a kill leaves a whole row or none (whole rows of epochs after
    // the last checkpoint are dropped by `truncate_after` on the next start).
    let mut text = String::new();
    if new {
        text.push_str(HEADER);
        text.push('\n');
    }
    text.push_str(&m.csv_row());
    text.push('\n');
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot append to {}", path.display()))
}

/// Keep the header and the rows of epochs `<= last_epoch` of a run's CSV file (`metrics.csv`,
/// `branches.csv`, `overfit_check.csv`; used when resuming). Rows are read with the `csv` crate
/// (a quoted field such as `"ns=clean,ap=adv"` is one field); a row is kept when it is whole
/// (as many fields as the header: a row torn by a kill is dropped) and its first field is an
/// epoch `<= last_epoch`. Kept rows are written back as they were; the file is rewritten only
/// when something is dropped.
pub fn truncate_after(path: &Path, last_epoch: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let Some(header) = text.lines().next() else {
        return Ok(());
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let fields = reader
        .headers()
        .with_context(|| format!("cannot read the header of {}", path.display()))?
        .len();
    // (start byte, kept) of every row; a row's text runs to the next row's start.
    let mut rows = vec![];
    for record in reader.records() {
        let r = record.with_context(|| format!("cannot read {}", path.display()))?;
        let start = r.position().map_or(text.len(), |p| p.byte() as usize);
        let epoch = r.get(0).and_then(|e| e.parse::<usize>().ok());
        rows.push((
            start,
            r.len() == fields && epoch.is_some_and(|e| e <= last_epoch),
        ));
    }
    let mut kept = vec![header];
    for (i, &(start, keep)) in rows.iter().enumerate() {
        if keep {
            let end = rows.get(i + 1).map_or(text.len(), |r| r.0);
            kept.push(text[start..end].trim_end_matches(['\n', '\r']));
        }
    }
    let new = kept.join("\n") + "\n";
    if new == text {
        return Ok(());
    }
    crate::fsio::write_atomic(path, new.as_bytes())
        .with_context(|| format!("cannot rewrite {}", path.display()))
}

/// Every row of a `metrics.csv` (as [`append`] writes it), in file order, read with the `csv`
/// crate into [`EpochMetrics`] by header name; empty fields are `None`. A missing file, a row that
/// does not parse (a torn or hand-edited line, a missing column) is an error naming the file and,
/// for a row, its line.
pub fn read(path: &Path) -> Result<Vec<EpochMetrics>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    reader
        .deserialize()
        .map(|row| {
            row.map_err(|e| match e.position() {
                Some(p) => anyhow::anyhow!("{} line {}: {e}", path.display(), p.line()),
                None => anyhow::anyhow!("cannot read {}: {e}", path.display()),
            })
        })
        .collect()
}
