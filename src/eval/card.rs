//! RobustBench-style model cards (`eval --model-card card.json`): the fields of RobustBench's
//! `ModelInfo` (`robustbench/utils.py`: link, name, authors, additional_data,
//! number_forward_passes, dataset, venue, architecture, eps, clean_acc, reported, corruptions
//! fields, autoattack_acc, footnote; accuracies as percentage strings with 2 decimals, as its
//! `update_json` writes them), what advtrain knows filled in and the rest left `null` for the
//! user, plus our provenance under `advtrain`.

use super::checks::Flag;
use super::plan::{DataSource, EvalAttack, EvalPlan, ModelFormat};
use super::report::{EvalReport, PerAttack};
use serde::{Deserialize, Serialize};

/// The `ModelInfo` field names, in RobustBench's order.
pub const MODEL_INFO_FIELDS: &[&str] = &[
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "corruptions_acc",
    "corruptions_acc_3d",
    "corruptions_mce",
    "corruptions_mce_3d",
    "autoattack_acc",
    "footnote",
];

/// A model card: RobustBench's `ModelInfo` fields, the threat model, and our provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Paper or code link (for the user).
    pub link: Option<String>,
    /// The model's name: the file name without extension (the user may put the paper title).
    pub name: Option<String>,
    pub authors: Option<String>,
    /// Extra training data beyond the data set: false for advtrain checkpoints (their recipe
    /// names the data), unknown (null) for foreign models.
    pub additional_data: Option<bool>,
    /// Forward passes per prediction (1: a deterministic classifier).
    pub number_forward_passes: Option<u32>,
    /// `cifar10`, `fashion-mnist`, ... or the points file.
    pub dataset: Option<String>,
    pub venue: Option<String>,
    pub architecture: Option<String>,
    /// The budget as RobustBench writes it (`8/255`) when it is a whole number of 1/255 steps,
    /// else the number.
    pub eps: Option<String>,
    /// Clean accuracy in percent, 2 decimals (`"84.20"`).
    pub clean_acc: Option<String>,
    /// The robust accuracy reported in the paper (for the user).
    pub reported: Option<String>,
    pub corruptions_acc: Option<String>,
    pub corruptions_acc_3d: Option<String>,
    pub corruptions_mce: Option<String>,
    pub corruptions_mce_3d: Option<String>,
    /// Robust accuracy under standard AutoAttack, percent with 2 decimals (null for another
    /// attack: see `advtrain.robust_accuracy`).
    pub autoattack_acc: Option<String>,
    pub footnote: Option<String>,
    /// `Linf` or `L2` (RobustBench's threat-model names).
    pub threat_model: String,
    pub advtrain: Provenance,
}

/// How the card's numbers were measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub version: String,
    pub attack: String,
    pub attack_config: serde_json::Value,
    /// Robust accuracy under `attack` (fraction).
    pub robust_accuracy: f64,
    pub clean_accuracy: f64,
    pub n: usize,
    pub seed: u64,
    pub per_attack: Vec<PerAttack>,
    pub flags: Vec<Flag>,
    pub model_file: String,
    pub model_format: String,
    pub model_sha256: String,
    pub data: String,
    pub data_sha256: String,
    pub device: String,
    pub compute: crate::compute::Compute,
    /// When the card was written (UTC, RFC 3339).
    pub written_utc: String,
}

/// Percent with 2 decimals, as RobustBench's `str(round(acc * 100, 2))` (but always 2 digits).
pub fn percent(acc: f64) -> String {
    format!("{:.2}", 100.0 * acc)
}

/// `k/255` when `eps * 255` is a whole number `k`, else the number.
pub fn eps_text(eps: f64) -> String {
    let k = eps * 255.0;
    if eps > 0.0 && (k - k.round()).abs() < 1e-9 {
        format!("{}/255", k.round() as i64)
    } else {
        format!("{eps}")
    }
}

/// UTC time of `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, Howard
/// Hinnant's algorithm).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl ModelCard {
    /// The card of `report` (the result of `plan`).
    pub fn new(plan: &EvalPlan, report: &EvalReport) -> ModelCard {
        let s = &plan.setup;
        let standard_aa = matches!(&plan.attack, EvalAttack::AutoAttack(p) if p.preset.standard());
        let architecture = match &s.format {
            ModelFormat::StateDict(a) => Some(a.name.clone()),
            _ => None,
        };
        let dataset = match &s.data.source {
            DataSource::Dataset(spec) => spec.dataset.to_string(),
            DataSource::Points(p) => p.display().to_string(),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        ModelCard {
            link: None,
            name: s
                .checkpoint
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned()),
            authors: None,
            additional_data: (s.format == ModelFormat::Advtrain).then_some(false),
            number_forward_passes: Some(1),
            dataset: Some(dataset),
            venue: None,
            architecture,
            eps: Some(eps_text(report.eps)),
            clean_acc: Some(percent(report.clean_accuracy)),
            reported: None,
            corruptions_acc: None,
            corruptions_acc_3d: None,
            corruptions_mce: None,
            corruptions_mce_3d: None,
            autoattack_acc: standard_aa.then(|| percent(report.robust_accuracy)),
            footnote: None,
            threat_model: match report.norm {
                crate::attack::ThreatNorm::Linf => "Linf".into(),
                crate::attack::ThreatNorm::L2 => "L2".into(),
            },
            advtrain: Provenance {
                version: env!("CARGO_PKG_VERSION").into(),
                attack: report.attack.clone(),
                attack_config: report.attack_config.clone(),
                robust_accuracy: report.robust_accuracy,
                clean_accuracy: report.clean_accuracy,
                n: report.n,
                seed: report.seed,
                per_attack: report.per_attack.clone(),
                flags: report.flags.clone(),
                model_file: report.checkpoint.clone(),
                model_format: report.model_format.clone(),
                model_sha256: report.checkpoint_sha256.clone(),
                data: report.data.clone(),
                data_sha256: report.data_sha256.clone(),
                device: report.device.clone(),
                compute: report.compute,
                written_utc: rfc3339(now),
            },
        }
    }
}
