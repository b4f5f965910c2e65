//! MixACM's teacher in a run: loading it, measuring it once (`teacher.json`: file, sha256,
//! architecture, clean and PGD validation accuracy), and the student-side projections with
//! their own optimiser state (`checkpoints/projections.*`, saved each epoch, resumed exactly).
//! The run state of the MixACM objective (`objectives/mixacm.rs`), below the objectives: it
//! sees the recipe as [`Settings`].

use super::derive_seed;
use super::mixacm::{load_teacher, MixAcmSpec, Projections};
use super::optim::{restore, Sgd};
use super::settings::Settings;
use crate::attack::{Classifier, Pgd};
use crate::checkpoint::{self, Sidecar};
use crate::data::Splits;
use crate::eval::{clean_counts, robust_counts};
use crate::nn::{Ctx, Mode, Network, Route};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// The teacher as measured when the run started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherRecord {
    pub file: PathBuf,
    pub sha256: String,
    pub architecture: crate::nn::ArchSpec,
    /// Loaded by name mapping from a foreign (PyTorch) file.
    pub foreign: bool,
    pub val_clean_acc: Option<f64>,
    pub val_pgd_acc: Option<f64>,
    /// The PGD of `val_pgd_acc` (the recipe's validation attack) and its image count.
    pub pgd: Option<serde_json::Value>,
    pub pgd_images: usize,
}

pub struct Teacher {
    pub spec: MixAcmSpec,
    pub net: Network,
    pub projections: Projections,
    pub proj_sgd: Sgd,
    pub record: TeacherRecord,
}

const STREAM_TEACHER: u64 = 5;

impl Teacher {
    /// Load the teacher of `spec`, build the projections against `student`, and write (or, on
    /// resume, check against) `<out>/teacher.json`; only the run's `writer` writes it.
    pub fn setup(
        settings: &Settings,
        spec: &MixAcmSpec,
        student: &Network,
        data: &Splits,
        device: Device,
        out: &Path,
        writer: bool,
    ) -> Result<Teacher> {
        let net = load_teacher(spec, device)?;
        let file = spec
            .teacher
            .clone()
            .context("train.mixacm.teacher: no teacher file given")?;
        let sha256 = checkpoint::sha256_file(&file)?;
        let size = data.train.images.size();
        let hw = [size[size.len() - 2], size[size.len() - 1]];
        let projections = Projections::new(spec, student, &net, hw)?;
        let proj_sgd = Sgd::new(
            &projections.vs,
            settings.momentum,
            settings.weight_decay,
            settings.nesterov,
        );
        let json = out.join("teacher.json");
        let record = if json.exists() {
            let r: TeacherRecord = serde_json::from_str(
                &std::fs::read_to_string(&json)
                    .with_context(|| format!("cannot read {}", json.display()))?,
            )
            .with_context(|| format!("{} is not a teacher record", json.display()))?;
            anyhow::ensure!(
                r.sha256 == sha256,
                "train.mixacm.teacher {} changed since the run started (sha256 {} in {}, now {})",
                file.display(),
                r.sha256,
                json.display(),
                sha256
            );
            r
        } else {
            let r = measure(settings, &net, &file, sha256, spec, data, device);
            if writer {
                crate::fsio::write_atomic(&json, serde_json::to_string_pretty(&r)?.as_bytes())
                    .with_context(|| format!("cannot write {}", json.display()))?;
            }
            r
        };
        let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{:.2}%", 100.0 * x));
        eprintln!(
            "teacher {} ({}, sha256 {}): val clean {} pgd {} | projections: {} of {} pairs",
            file.display(),
            record.architecture.name,
            &record.sha256[..12],
            f(record.val_clean_acc),
            f(record.val_pgd_acc),
            projections.per_pair.iter().filter(|p| p.is_some()).count(),
            projections.per_pair.len()
        );
        Ok(Teacher {
            spec: spec.clone(),
            net,
            projections,
            proj_sgd,
            record,
        })
    }

    fn has_projections(&self) -> bool {
        !self.projections.vs.variables().is_empty()
    }

    fn named_projections(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = self.projections.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Save the projections and their optimiser state into the checkpoint set `ckdir` (when
    /// there are any), with the sidecar `sidecar(format)` of the run's files after this epoch.
    pub fn save(&self, ckdir: &Path, sidecar: &dyn Fn(&str) -> Sidecar) -> Result<()> {
        if !self.has_projections() {
            return Ok(());
        }
        let side = sidecar("advtrain-mixacm-projections-v1");
        checkpoint::save(
            &ckdir.join("projections.safetensors"),
            &self.named_projections(),
            Some(&self.proj_sgd.state()),
            side,
        )
    }

    /// Restore the projections saved after `epoch` (resume).
    pub fn resume(&mut self, ckdir: &Path, epoch: usize) -> Result<()> {
        if !self.has_projections() {
            return Ok(());
        }
        let file = ckdir.join("projections.safetensors");
        let side = restore(&file, &self.projections.vs.variables(), &mut self.proj_sgd)?;
        anyhow::ensure!(
            side.epoch == epoch,
            "{}: the projections are from epoch {} but the run resumes after epoch {epoch}",
            file.display(),
            side.epoch
        );
        Ok(())
    }
}

/// Clean accuracy of the teacher on the validation split and PGD accuracy on its first
/// `validation.pgd_limit` images (the recipe's validation attack), eval mode.
fn measure(
    settings: &Settings,
    net: &Network,
    file: &Path,
    sha256: String,
    spec: &MixAcmSpec,
    data: &Splits,
    device: Device,
) -> TeacherRecord {
    let f = Classifier::new(net.model.as_ref(), Ctx::new(Route::default(), Mode::Eval))
        .with_compute(settings.compute);
    let bs = settings.validation_batch_size;
    let val = &data.val;
    let clean = (!val.is_empty()).then(|| clean_counts(&f, val, bs, device).clean_accuracy());
    let cfg = settings.validation_attack.clone();
    let n = settings.validation_pgd_limit.min(val.len());
    let pgd = match (&cfg, n > 0) {
        (Some(c), true) => {
            tch::manual_seed(derive_seed(settings.seed, 0, STREAM_TEACHER) as i64);
            let subset = val.take(n);
            Some(robust_counts(&f, &Pgd::new(c.clone()), &subset, bs, device).robust_accuracy())
        }
        _ => None,
    };
    TeacherRecord {
        file: file.to_path_buf(),
        sha256,
        architecture: net.arch.clone(),
        foreign: spec.teacher_arch.is_some(),
        val_clean_acc: clean,
        val_pgd_acc: pgd,
        pgd: cfg.and_then(|c| serde_json::to_value(c).ok()),
        pgd_images: if pgd.is_some() { n } else { 0 },
    }
}
