//! Joining the reports of a sharded evaluation (`eval --shard i/n`, `advtrain merge`): check
//! that the shards belong to one evaluation (same model, data, attack and settings, same `n`)
//! and cover every point exactly once, then build the report the unsharded evaluation (with
//! blocked batching, which shards use) writes: counts summed, accuracies recomputed from them,
//! per-point flags concatenated, flags recomputed from the merged numbers. Only times differ
//! (summed over the shards).

use super::autoattack::{cascade_flags, AttackRecord, Preset};
use super::checks::{gradient_flags, GradientStats};
use super::plan::Shard;
use super::report::EvalReport;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// The shards' reports read from their JSON files (written by `eval --shard` or by launched
/// workers), each with its path: what [`merge`] takes.
pub fn read_shards(paths: &[PathBuf]) -> Result<Vec<(PathBuf, EvalReport)>> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the shard file {}", p.display()))?;
            let r: EvalReport = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not an eval JSON report (written by advtrain eval --shard)",
                    p.display()
                )
            })?;
            Ok((p.clone(), r))
        })
        .collect()
}

/// Flag codes raised while loading the model (the same in every shard: computed on the first
/// points of the whole selection).
pub const MODEL_FLAGS: &[&str] = &[
    "traced-in-train-mode",
    "batch-dependent-outputs",
    "frozen-mode",
];

/// The fields every shard of one evaluation shares.
const SHARED: &[&str] = &[
    "attack",
    "attack_config",
    "eps",
    "norm",
    "seed",
    "route",
    "route_requested",
    "bn_mode",
    "compute",
    "soup",
    "reestimate",
    "checkpoint",
    "checkpoint_sha256",
    "model_format",
    "data",
    "batch_size",
    "batching",
];

/// The merged report of `shards` (each with the file it was read from).
pub fn merge(shards: Vec<(PathBuf, EvalReport)>) -> Result<EvalReport> {
    anyhow::ensure!(!shards.is_empty(), "no shard files given");
    for (f, r) in &shards {
        if r.shard.is_none() {
            bail!(
                "{} is not the report of a shard (no `shard` field): it was written by an \
                 unsharded eval; give the files written by eval --shard i/n",
                f.display()
            );
        }
    }
    let info = |r: &EvalReport| r.shard.clone().expect("checked");
    let (f0, r0) = &shards[0];
    let i0 = info(r0);
    let v0 = serde_json::to_value(r0)?;
    for (f, r) in &shards[1..] {
        let v = serde_json::to_value(r)?;
        let i = info(r);
        let mut diffs = vec![];
        for field in SHARED {
            if v.get(field) != v0.get(field) {
                diffs.push(format!(
                    "{field} = {} vs {}",
                    v.get(field).unwrap_or(&serde_json::Value::Null),
                    v0.get(field).unwrap_or(&serde_json::Value::Null)
                ));
            }
        }
        if i.count != i0.count {
            diffs.push(format!("shard count {} vs {}", i.count, i0.count));
        }
        if i.n_total != i0.n_total {
            diffs.push(format!("points in all {} vs {}", i.n_total, i0.n_total));
        }
        if i.data_sha256_total != i0.data_sha256_total {
            diffs.push("the data (sha256 of the whole selection) differs".into());
        }
        if !diffs.is_empty() {
            bail!(
                "{} and {} are shards of different evaluations: {}",
                f.display(),
                f0.display(),
                diffs.join("; ")
            );
        }
    }
    // Every shard 0..count exactly once, each over exactly its points, complete.
    let count = i0.count;
    let mut by_index: Vec<Option<usize>> = vec![None; count];
    for (k, (f, r)) in shards.iter().enumerate() {
        let i = info(r);
        if i.index >= count {
            bail!("{}: shard index {} of {count}", f.display(), i.index);
        }
        if let Some(prev) = by_index[i.index] {
            bail!(
                "{} and {} are both shard {}/{count} (overlap): give each shard once",
                shards[prev].0.display(),
                f.display(),
                i.index
            );
        }
        by_index[i.index] = Some(k);
        let want = Shard::new(i.index, count)
            .and_then(|s| s.range(i.n_total, r.batch_size))
            .map_err(anyhow::Error::msg)?;
        if (i.start, i.end) != want || r.n != i.end - i.start {
            bail!(
                "{}: shard {}/{count} covers points {}..{} ({} evaluated), expected {}..{} \
                 (gap or overlap; was it edited?)",
                f.display(),
                i.index,
                i.start,
                i.end,
                r.n,
                want.0,
                want.1
            );
        }
        if !r.complete || r.flags.iter().any(|fl| fl.code == "incomplete") {
            bail!(
                "{}: shard {}/{count} stopped early; run it again to finish",
                f.display(),
                i.index
            );
        }
        if r.clean_points.len() != r.n || r.robust_points.len() != r.n {
            bail!(
                "{}: per-point flags for {} / {} points, expected {}",
                f.display(),
                r.clean_points.len(),
                r.robust_points.len(),
                r.n
            );
        }
        if r.per_attack.len() != r0.per_attack.len()
            || r.per_attack
                .iter()
                .zip(&r0.per_attack)
                .any(|(a, b)| a.attack != b.attack)
        {
            bail!(
                "{}: its attacks differ from those of {}",
                f.display(),
                f0.display()
            );
        }
    }
    let missing: Vec<String> = (0..count)
        .filter(|&i| by_index[i].is_none())
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing shard(s) {} (given {} of {count})",
            missing.join(", "),
            shards.len()
        );
    }
    let ordered: Vec<&EvalReport> = by_index
        .iter()
        .map(|k| &shards[k.expect("complete")].1)
        .collect();
    let first = ordered[0];
    let n = i0.n_total;
    let mut out = first.clone();
    out.n = n;
    out.shard = None;
    out.data_sha256 = i0.data_sha256_total.clone();
    out.clean_correct = ordered.iter().map(|r| r.clean_correct).sum();
    out.robust_correct = ordered.iter().map(|r| r.robust_correct).sum();
    out.clean_accuracy = out.clean_correct as f64 / n as f64;
    out.robust_accuracy = out.robust_correct as f64 / n as f64;
    out.elapsed_s = ordered.iter().map(|r| r.elapsed_s).sum();
    out.clean_points = ordered.iter().map(|r| r.clean_points.as_str()).collect();
    out.robust_points = ordered.iter().map(|r| r.robust_points.as_str()).collect();
    let mut devices: Vec<String> = vec![];
    for r in &ordered {
        if !devices.contains(&r.device) {
            devices.push(r.device.clone());
        }
    }
    out.device = devices.join(", ");
    for (k, p) in out.per_attack.iter_mut().enumerate() {
        p.robust_correct = ordered.iter().map(|r| r.per_attack[k].robust_correct).sum();
        p.robust_accuracy = p.robust_correct as f64 / n as f64;
        p.elapsed_s = ordered.iter().map(|r| r.per_attack[k].elapsed_s).sum();
    }
    out.max_perturbation = ordered
        .iter()
        .filter_map(|r| r.max_perturbation)
        .reduce(f64::max)
        .or(first.max_perturbation);
    out.gradient_checks = GradientStats {
        zero: ordered.iter().map(|r| r.gradient_checks.zero).sum(),
        non_finite: ordered.iter().map(|r| r.gradient_checks.non_finite).sum(),
        n: ordered.iter().map(|r| r.gradient_checks.n).sum(),
        // Measured on the first batch: the first shard's.
        randomized: first.gradient_checks.randomized,
        outputs_are_probabilities: first.gradient_checks.outputs_are_probabilities,
    };
    let mut flags: Vec<_> = first
        .flags
        .iter()
        .filter(|f| MODEL_FLAGS.contains(&f.code.as_str()))
        .cloned()
        .collect();
    flags.extend(gradient_flags(&out.gradient_checks));
    if out.attack_config.get("attack").and_then(|a| a.as_str()) == Some("autoattack") {
        let preset: Preset = out
            .attack_config
            .get("preset")
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{}: attack_config.preset: {e}", f0.display()))?;
        let records: Vec<AttackRecord> = out
            .per_attack
            .iter()
            .map(|p| AttackRecord {
                attack: p.attack.clone(),
                robust_accuracy: p.robust_accuracy,
                elapsed_s: p.elapsed_s,
                attacked: 0,
            })
            .collect();
        flags.extend(cascade_flags(
            preset,
            out.eps,
            preset.attacks().len(),
            &records,
            true,
            out.max_perturbation.unwrap_or(0.0),
        ));
    }
    out.flags = flags;
    Ok(out)
}
