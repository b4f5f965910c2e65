//! AutoAttack (Croce & Hein 2020): a cascade of attacks, each run only on the points every
//! earlier attack failed on, with per-point worst case (a point is robust when no attack fooled
//! it). The `standard` preset is the reference protocol (`AutoAttack(version='standard')` of
//! `fra31/auto-attack`): APGD-CE (100 iterations, 1 restart) -> APGD-T (9 target classes x 100
//! iterations) -> FAB-T (9 target classes, 100 iterations) -> Square (5000 queries, p_init 0.8),
//! torch's generator seeded with the seed before every batch of every attack, as the reference's
//! attacks do at the start of each `perturb` call. Batches are taken in data order over the
//! points still robust when an attack starts.
//!
//! The evaluation is resumable: after every batch the state (robust flags, position, elapsed
//! time) is written atomically to a JSON state file; a re-run with the same settings, checkpoint
//! and data continues from there, and a state file written for other settings is refused with
//! the field that differs.

use super::checks::{perturbation_flag, square_beats_white_box, Flag};
use super::plan::Batching;
pub use super::plan::Preset;
use crate::attack::{
    correct, per_sample_l2, ApgdConfig, Attack, AttackName, AttackSpec, Classifier, FabConfig,
    SquareConfig, ThreatNorm,
};
use crate::data::Dataset;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The attacks of a preset (here, beside [`preset`], its cascade).
impl Preset {
    /// The names of the preset's attacks, in cascade order.
    pub fn attacks(self) -> Vec<AttackName> {
        preset(self, ThreatNorm::Linf, 0.0, 0, 10)
            .iter()
            .map(AttackSpec::kind)
            .collect()
    }
}

/// The attacks of `p` at `eps` in `norm`, in cascade order, with the reference's standard
/// hyperparameters, `seed` for the attacks that reseed per batch, and
/// `min(9, num_classes - 1)` target classes for the targeted ones (9 for 10-class data, as
/// the reference).
pub fn preset(
    p: Preset,
    norm: ThreatNorm,
    eps: f64,
    seed: u64,
    num_classes: usize,
) -> Vec<AttackSpec> {
    let targets = 9.min(num_classes.saturating_sub(1)).max(1);
    let apgd_ce = AttackSpec::ApgdCe(ApgdConfig {
        seed: Some(seed),
        ..ApgdConfig::ce(norm, eps)
    });
    let apgd_t = AttackSpec::ApgdT(ApgdConfig {
        seed: Some(seed),
        n_target_classes: targets,
        ..ApgdConfig::targeted(norm, eps)
    });
    let fab_t = AttackSpec::FabT(FabConfig {
        seed: Some(seed),
        n_target_classes: targets,
        ..FabConfig::targeted(norm, eps)
    });
    let square = AttackSpec::Square(SquareConfig::new(norm, eps));
    match p {
        Preset::Standard => vec![apgd_ce, apgd_t, fab_t, square],
        Preset::Fast => vec![apgd_ce, apgd_t],
    }
}

/// Robust accuracy after one attack of the cascade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackRecord {
    pub attack: String,
    /// Fraction of all points still robust after this attack (and every earlier one).
    pub robust_accuracy: f64,
    /// Wall time of this attack, summed over resumed runs.
    pub elapsed_s: f64,
    /// Points this attack was run on.
    pub attacked: usize,
}

/// Everything that must match for a state file to be continued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateKey {
    pub preset: String,
    pub norm: ThreatNorm,
    pub eps: f64,
    pub seed: u64,
    pub batch_size: usize,
    pub route: String,
    pub bn_mode: String,
    pub checkpoint_sha256: String,
    /// sha256 of the evaluated images and labels.
    pub data_sha256: String,
    pub n: usize,
    /// How the points are batched ([`Batching`]).
    #[serde(default)]
    pub batching: Batching,
}

/// The attack in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InProgress {
    /// Index into the preset's attacks.
    pub attack: usize,
    /// Points robust when the attack started (its batches are taken over these, in order).
    pub todo: Vec<usize>,
    pub batches_done: usize,
    pub elapsed_s: f64,
}

/// The resumable state of an evaluation, written after every batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub key: StateKey,
    pub clean: Vec<bool>,
    pub robust: Vec<bool>,
    pub clean_elapsed_s: f64,
    pub done: Vec<AttackRecord>,
    pub current: Option<InProgress>,
    /// Largest perturbation norm among counted adversarial examples.
    pub max_perturbation: f64,
}

/// What a finished cascade reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoAttackResult {
    pub clean_accuracy: f64,
    pub robust_accuracy: f64,
    pub n: usize,
    pub per_attack: Vec<AttackRecord>,
    pub flags: Vec<Flag>,
    pub max_perturbation: f64,
    /// Per point: classified correctly on the clean input.
    pub clean: Vec<bool>,
    /// Per point: robust after the whole cascade.
    pub robust: Vec<bool>,
    /// True when this run continued a state file.
    pub resumed: bool,
    /// False when the run stopped early (`max_batches`); the numbers are then partial.
    pub complete: bool,
}

/// sha256 over the images' and labels' bytes.
pub fn data_fingerprint(data: &Dataset) -> Result<String> {
    let mut h = Sha256::new();
    let img = data.images.contiguous().flatten(0, -1);
    if img.kind() == Kind::Uint8 {
        h.update(Vec::<u8>::try_from(img).context("images are not uint8")?);
    } else {
        // Float images (points files): their float32 bytes, tagged so they never equal uint8 ones.
        h.update(b"f32");
        for v in Vec::<f32>::try_from(img.to_kind(Kind::Float))? {
            h.update(v.to_le_bytes());
        }
    }
    let labels = Vec::<i64>::try_from(&data.labels)?;
    for l in labels {
        h.update(l.to_le_bytes());
    }
    Ok(format!("{:x}", h.finalize()))
}

fn write_atomic(path: &Path, state: &State) -> Result<()> {
    crate::fsio::write_atomic(path, &serde_json::to_vec(state)?)
        .with_context(|| format!("cannot write the AutoAttack state file {}", path.display()))
}

/// Read a state file and check that it was written for `key`.
pub fn read_state(path: &Path, key: &StateKey) -> Result<State> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the AutoAttack state file {}", path.display()))?;
    let state: State = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not an AutoAttack state file (corrupt or from another version); remove it to \
             start over",
            path.display()
        )
    })?;
    let (a, b) = (
        serde_json::to_value(&state.key)?,
        serde_json::to_value(key)?,
    );
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (field, want) in b {
            let got = a.get(field).unwrap_or(&serde_json::Value::Null);
            if got != want {
                bail!(
                    "the AutoAttack state file {} was written for {field} = {got}, this \
                     evaluation has {field} = {want}; remove the file or give another --state",
                    path.display()
                );
            }
        }
    }
    check_state(&state, key).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (corrupt state file; remove it to start over)",
            path.display()
        )
    })?;
    Ok(state)
}

/// What [`AutoAttack::run`] needs of a state it continues (the key already matches): flags of
/// length n with every robust point clean; records of the preset's attacks in order; an attack
/// in progress that is the next one, over sorted in-range points, with no more batches done
/// than it has; finite non-negative times, accuracies in [0, 1] and perturbation norm.
fn check_state(s: &State, key: &StateKey) -> std::result::Result<(), String> {
    let n = key.n;
    if s.clean.len() != n || s.robust.len() != n {
        return Err(format!(
            "flags of the wrong length: {} clean and {} robust flags for {n} points",
            s.clean.len(),
            s.robust.len()
        ));
    }
    if let Some(i) = (0..n).find(|&i| s.robust[i] && !s.clean[i]) {
        return Err(format!("point {i} is robust but not clean"));
    }
    let attacks: Vec<String> = key
        .preset
        .parse::<Preset>()?
        .attacks()
        .iter()
        .map(|a| a.to_string())
        .collect();
    if s.done.len() > attacks.len() {
        return Err(format!(
            "{} finished attacks recorded, preset '{}' has {}",
            s.done.len(),
            key.preset,
            attacks.len()
        ));
    }
    let finite = |v: f64| v.is_finite() && v >= 0.0;
    for (k, r) in s.done.iter().enumerate() {
        if r.attack != attacks[k] {
            return Err(format!(
                "finished attack {k} is '{}', preset '{}' runs '{}' there",
                r.attack, key.preset, attacks[k]
            ));
        }
        if !(finite(r.robust_accuracy) && r.robust_accuracy <= 1.0)
            || !finite(r.elapsed_s)
            || r.attacked > n
        {
            return Err(format!(
                "finished attack {k} ({}) has robust_accuracy {}, elapsed_s {}, attacked {} \
                 (expected a fraction, seconds >= 0 and at most {n} points)",
                r.attack, r.robust_accuracy, r.elapsed_s, r.attacked
            ));
        }
    }
    if let Some(c) = &s.current {
        if c.attack != s.done.len() || c.attack >= attacks.len() {
            return Err(format!(
                "attack {} is in progress after {} finished ones of preset '{}' ({} attacks)",
                c.attack,
                s.done.len(),
                key.preset,
                attacks.len()
            ));
        }
        if let Some(&i) = c.todo.iter().find(|&&i| i >= n) {
            return Err(format!("the attack in progress lists point {i} of {n}"));
        }
        if c.todo.windows(2).any(|w| w[0] >= w[1]) {
            return Err("the points of the attack in progress are not in increasing order".into());
        }
        let batches = batch_lists(&c.todo, key.batch_size, key.batching).len();
        if c.batches_done > batches || !finite(c.elapsed_s) {
            return Err(format!(
                "the attack in progress has {} of {batches} batches done in {} s",
                c.batches_done, c.elapsed_s
            ));
        }
    }
    if !finite(s.clean_elapsed_s) || !finite(s.max_perturbation) {
        return Err(format!(
            "clean_elapsed_s {} and max_perturbation {} must be finite and >= 0",
            s.clean_elapsed_s, s.max_perturbation
        ));
    }
    Ok(())
}

/// Settings of one cascade.
pub struct AutoAttack {
    pub preset: Preset,
    pub norm: ThreatNorm,
    pub eps: f64,
    pub seed: u64,
    pub batch_size: usize,
    /// The cascade ([`preset`]).
    pub specs: Vec<AttackSpec>,
    pub attacks: Vec<Box<dyn Attack>>,
    /// Stop after this many attack batches in one call (the state file keeps the progress and
    /// a later call continues): time-boxed evaluation in pieces.
    pub max_batches: Option<usize>,
    /// How each attack batches the points still robust ([`Batching`]).
    pub batching: Batching,
}

/// The batches of an attack over the points `todo` (increasing): consecutive chunks of
/// `batch_size` (pooled), or per block of `batch_size` consecutive point indices (blocked).
pub fn batch_lists(todo: &[usize], batch_size: usize, batching: Batching) -> Vec<Vec<usize>> {
    let bs = batch_size.max(1);
    match batching {
        Batching::Pooled => todo.chunks(bs).map(|c| c.to_vec()).collect(),
        Batching::Blocked => {
            let mut out: Vec<Vec<usize>> = vec![];
            let mut block = usize::MAX;
            for &i in todo {
                if i / bs != block || out.is_empty() {
                    block = i / bs;
                    out.push(vec![]);
                }
                out.last_mut().expect("pushed").push(i);
            }
            out
        }
    }
}

/// The flags of a cascade's outcome: stopped early, Square beating the white-box attacks,
/// perturbations beyond eps, a preset that is not the standard one.
pub fn cascade_flags(
    preset: Preset,
    eps: f64,
    attacks: usize,
    done: &[AttackRecord],
    complete: bool,
    max_perturbation: f64,
) -> Vec<Flag> {
    let mut flags = Vec::new();
    if !complete {
        flags.push(Flag::new(
            "incomplete",
            format!(
                "the cascade stopped early after {} of {attacks} attacks: the robust accuracy is \
                 an upper bound; run again with the same state file to finish",
                done.len(),
            ),
        ));
    }
    let acc: Vec<(String, f64)> = done
        .iter()
        .map(|r| (r.attack.clone(), r.robust_accuracy))
        .collect();
    flags.extend(square_beats_white_box(&acc));
    flags.extend(perturbation_flag(max_perturbation, eps));
    if !preset.standard() {
        flags.push(Flag::new(
            "non-standard-autoattack",
            format!(
                "preset '{preset}' is not the standard AutoAttack: {}",
                preset.description()
            ),
        ));
    }
    flags
}

impl AutoAttack {
    pub fn new(
        preset: Preset,
        norm: ThreatNorm,
        eps: f64,
        seed: u64,
        batch_size: usize,
        num_classes: usize,
    ) -> Result<Self> {
        anyhow::ensure!(
            eps >= 0.0 && eps.is_finite(),
            "eps must be a finite number >= 0, got {eps}"
        );
        let specs = self::preset(preset, norm, eps, seed, num_classes);
        Ok(AutoAttack {
            preset,
            norm,
            eps,
            seed,
            batch_size: batch_size.max(1),
            attacks: specs.iter().map(AttackSpec::build).collect(),
            specs,
            max_batches: None,
            batching: Batching::Pooled,
        })
    }

    /// `autoattack-<preset>`.
    pub fn name(&self) -> String {
        format!("autoattack-{}", self.preset)
    }

    /// The preset and every component's hyperparameters.
    pub fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "attack": "autoattack",
            "preset": self.preset,
            "standard": self.preset.standard(),
            "description": self.preset.description(),
            "norm": self.norm,
            "eps": self.eps,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "components": self.attacks.iter().map(|a| {
                serde_json::json!({"name": a.name(), "config": a.config()})
            }).collect::<Vec<_>>(),
        })
    }

    /// Run (or continue, when `state_path` holds a matching state) the cascade on `data`.
    /// `key` identifies the evaluation for the state file. `log` receives progress lines.
    pub fn run(
        &self,
        f: &Classifier,
        data: &Dataset,
        device: Device,
        key: StateKey,
        state_path: Option<&Path>,
        mut log: impl FnMut(&str),
    ) -> Result<AutoAttackResult> {
        let n = data.len();
        anyhow::ensure!(n > 0, "the evaluation set is empty");
        let mut resumed = false;
        // One writer per state file (a second evaluation on the same --state is refused).
        let _lock = match state_path {
            Some(p) => Some(crate::fsio::DirLock::acquire(
                &PathBuf::from(format!("{}.lock", p.display())),
                &format!("the AutoAttack state file {}", p.display()),
            )?),
            None => None,
        };
        let mut state = match state_path.filter(|p| p.exists()) {
            Some(p) => {
                let s = read_state(p, &key)?;
                resumed = true;
                log(&format!(
                    "continuing {} from {} ({} of {} attacks done)",
                    self.name(),
                    p.display(),
                    s.done.len(),
                    self.attacks.len()
                ));
                s
            }
            None => {
                let t = Instant::now();
                let clean = self.clean_flags(f, data, device);
                let acc = clean.iter().filter(|&&c| c).count() as f64 / n as f64;
                log(&format!("clean accuracy: {:.2}%", 100.0 * acc));
                State {
                    key,
                    robust: clean.clone(),
                    clean,
                    clean_elapsed_s: t.elapsed().as_secs_f64(),
                    done: Vec::new(),
                    current: None,
                    max_perturbation: 0.0,
                }
            }
        };
        if let Some(p) = state_path {
            write_atomic(p, &state)?;
        }
        let mut batches_run = 0usize;
        let mut complete = true;
        'attacks: for (k, attack) in self.attacks.iter().enumerate().skip(state.done.len()) {
            let mut cur = match state.current.take() {
                Some(c) if c.attack == k => c,
                _ => InProgress {
                    attack: k,
                    todo: (0..n).filter(|&i| state.robust[i]).collect(),
                    batches_done: 0,
                    elapsed_s: 0.0,
                },
            };
            let batches = batch_lists(&cur.todo, self.batch_size, self.batching);
            for b in cur.batches_done..batches.len() {
                if self.max_batches.is_some_and(|m| batches_run >= m) {
                    complete = false;
                    log(&format!(
                        "stopping after {batches_run} batches ({} batch {b} of {} next); \
                         run again to continue",
                        attack.name(),
                        batches.len()
                    ));
                    break 'attacks;
                }
                batches_run += 1;
                let t = Instant::now();
                let idx: Vec<i64> = batches[b].iter().map(|&i| i as i64).collect();
                let (x, y) = select(data, &idx, device);
                tch::manual_seed(self.seed as i64);
                let x_adv = attack.perturb(f, &x, &y);
                let fooled = tch::no_grad(|| correct(&f.predict(&x_adv), &y).logical_not());
                let norms = self.norms(&x_adv, &x);
                let fooled_v = Vec::<bool>::try_from(&fooled)?;
                let norms_v = Vec::<f64>::try_from(&norms.to_kind(Kind::Double))?;
                for (j, &i) in batches[b].iter().enumerate() {
                    if fooled_v[j] {
                        state.max_perturbation = state.max_perturbation.max(norms_v[j]);
                        state.robust[i] = false;
                    }
                }
                cur.batches_done = b + 1;
                cur.elapsed_s += t.elapsed().as_secs_f64();
                state.current = Some(cur.clone());
                if let Some(p) = state_path {
                    write_atomic(p, &state)?;
                }
            }
            let robust = state.robust.iter().filter(|&&r| r).count();
            let rec = AttackRecord {
                attack: self.specs[k].kind().to_string(),
                robust_accuracy: robust as f64 / n as f64,
                elapsed_s: cur.elapsed_s,
                attacked: cur.todo.len(),
            };
            log(&format!(
                "after {:<8} robust accuracy {:6.2}%  ({} points attacked, {:.1} s)",
                rec.attack,
                100.0 * rec.robust_accuracy,
                rec.attacked,
                rec.elapsed_s
            ));
            state.done.push(rec);
            state.current = None;
            if let Some(p) = state_path {
                write_atomic(p, &state)?;
            }
        }
        let flags = cascade_flags(
            self.preset,
            self.eps,
            self.attacks.len(),
            &state.done,
            complete,
            state.max_perturbation,
        );
        let count = |v: &[bool]| v.iter().filter(|&&b| b).count();
        Ok(AutoAttackResult {
            clean_accuracy: count(&state.clean) as f64 / n as f64,
            robust_accuracy: count(&state.robust) as f64 / n as f64,
            n,
            per_attack: state.done.clone(),
            flags,
            max_perturbation: state.max_perturbation,
            clean: state.clean.clone(),
            robust: state.robust.clone(),
            resumed,
            complete,
        })
    }

    fn clean_flags(&self, f: &Classifier, data: &Dataset, device: Device) -> Vec<bool> {
        let mut out = Vec::with_capacity(data.len());
        tch::no_grad(|| {
            for (x, y) in data.batches(
                self.batch_size,
                None,
                crate::data::Augment::default(),
                device,
            ) {
                out.extend(Vec::<bool>::try_from(&correct(&f.predict(&x), &y)).unwrap());
            }
        });
        out
    }

    /// Per-point perturbation norm in the threat norm.
    fn norms(&self, x_adv: &Tensor, x: &Tensor) -> Tensor {
        let d = (x_adv - x).flatten(1, -1);
        match self.norm {
            ThreatNorm::Linf => d.abs().amax([1i64].as_slice(), false),
            ThreatNorm::L2 => per_sample_l2(&d).flatten(0, -1),
        }
    }
}

/// Images (float in [0,1]) and labels of the points `idx`, on `device`.
fn select(data: &Dataset, idx: &[i64], device: Device) -> (Tensor, Tensor) {
    let i = Tensor::from_slice(idx);
    let x = crate::data::loader::to_unit(&data.images.index_select(0, &i).to_device(device));
    let y = data.labels.index_select(0, &i).to_device(device);
    (x, y)
}
