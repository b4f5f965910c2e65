//! What every analysis plan shares, typed: the checkpoint and where the report goes
//! ([`AnalysisSetup`]), the test images ([`TestImages`]), and the loaded checkpoint with the
//! recipe that trained it ([`Subject`], loaded like `eval` loads one: [`crate::checkpoint::load`]
//! and [`crate::train::saved::recipe_of`]). Each analysis module holds its own `Plan`, its
//! `Report` and `run` / `run_on`; `advtrain analyze <kind>` parses its flags into the plan.

use crate::checkpoint::LoadedCheckpoint;
use crate::compute::Compute;
use crate::data::{DataSpec, Dataset};
use crate::device::DeviceChoice;
use crate::eval::{Progress, Threat};
use crate::nn::Network;
use crate::train::Recipe;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What every analysis of a checkpoint shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisSetup {
    /// The checkpoint file (`.safetensors` with its `.json` sidecar); reports name it as given.
    pub checkpoint: PathBuf,
    /// Seeds torch's generator before the analysis' random draws (noise, PGD starts,
    /// re-estimation batches).
    pub seed: u64,
    pub device: DeviceChoice,
    /// Precision, BN folding and micro-batching of the attacks ([`crate::compute`]).
    pub compute: Compute,
    /// The output folder: the report names `<out>/<kind>.png` as its plot.
    pub out: PathBuf,
}

/// The analysed checkpoint as a caller names it (the `analyze` flags, which its errors name).
#[derive(Debug, Clone, Default)]
pub struct SubjectRequest {
    /// A run folder (`checkpoints/best`, else `checkpoints/last`).
    pub run: Option<PathBuf>,
    /// An advtrain checkpoint (`.safetensors` with its `.json` sidecar).
    pub checkpoint: Option<PathBuf>,
    /// Refused with the reason: the analyses read advtrain's Norm layer.
    pub torchscript: Option<PathBuf>,
    /// The output folder (default: `<run>/analysis`, else [`default_out`] of the checkpoint).
    pub out: Option<PathBuf>,
}

impl AnalysisSetup {
    /// The setup of `r` (the checkpoint checked to exist, a pickle or a TorchScript module
    /// refused with the reason) with `seed`, `device` and `compute`.
    pub fn locate(
        r: &SubjectRequest,
        seed: u64,
        device: DeviceChoice,
        compute: Compute,
    ) -> Result<AnalysisSetup> {
        if let Some(t) = &r.torchscript {
            anyhow::bail!(
                "--torchscript {}: the analyses (domain-gap, bn-divergence, bn-swap, \
                 grad-conflict) read and switch advtrain's Norm layer (routes, statistics and \
                 affine sets), which a TorchScript module does not expose; run them on an \
                 advtrain checkpoint (advtrain eval --torchscript evaluates the module)",
                t.display()
            );
        }
        if let Some(f) = r.checkpoint.as_ref().filter(|f| f.is_file()) {
            crate::checkpoint::import::refuse_pickle(f, "--checkpoint")?;
        }
        let checkpoint = crate::checkpoint::locate(r.checkpoint.as_ref(), r.run.as_ref())?;
        Ok(AnalysisSetup {
            out: match (&r.out, &r.run) {
                (Some(o), _) => o.clone(),
                (None, Some(run)) => run.join("analysis"),
                (None, None) => default_out(&checkpoint),
            },
            checkpoint,
            seed,
            device,
            compute,
        })
    }

    /// `<out>/<kind>.json` and `<out>/<kind>.png`.
    pub fn paths(&self, kind: &str) -> (PathBuf, PathBuf) {
        (
            self.out.join(format!("{kind}.json")),
            self.out.join(format!("{kind}.png")),
        )
    }
}

/// The default output folder of an analysis of the checkpoint `file`: for
/// `<dir>/checkpoints/x.safetensors` the run folder's `<dir>/analysis`, else
/// `<folder of file>/analysis`.
pub fn default_out(file: &Path) -> PathBuf {
    let folder = |p: &Path| {
        p.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    };
    let parent = folder(file);
    let base = if parent.file_name().is_some_and(|n| n == "checkpoints") {
        folder(&parent)
    } else {
        parent
    };
    base.join("analysis")
}

/// The test images of an analysis: the first `n` of the test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestImages {
    /// The data set; `None`: the `[data]` of the recipe that trained the checkpoint.
    pub spec: Option<DataSpec>,
    /// The first N test images (fewer when the split holds fewer; a note says so).
    pub n: usize,
    /// The data folder, instead of the spec's.
    pub data_dir: Option<PathBuf>,
}

/// The L-inf budget of an analysis in [0, 1] pixel units (the seeds' protocol): the shared
/// check, with no override (an eps above 1 is a budget in 0..255 units). The analyses attack
/// in L-inf only.
pub fn check_threat(t: &Threat) -> Result<()> {
    use crate::attack::ThreatNorm;
    anyhow::ensure!(
        t.norm == ThreatNorm::Linf,
        "threat norm {}: the analyses attack in L-inf only (eps in [0, 1] pixel units)",
        t.norm
    );
    crate::attack::check_eps(
        "--eps",
        ThreatNorm::Linf,
        t.eps,
        false,
        "give it in [0, 1] units (analyses have no --allow-large-eps)",
    )
    .map_err(anyhow::Error::msg)
}

/// A checkpoint loaded for an analysis, with the typed recipe of the run that wrote it.
pub struct Subject {
    pub loaded: LoadedCheckpoint,
    /// `None` when the sidecar holds no recipe (e.g. a foreign import).
    pub recipe: Option<Recipe>,
    /// The file as named by the plan (what reports give as `checkpoint`).
    pub file: PathBuf,
}

/// What every report starts with: the kind and the checkpoint analysed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Provenance {
    pub kind: &'static str,
    pub checkpoint: String,
    pub sha256: String,
    pub architecture: String,
    /// The objective of the recipe that trained it (null without a recipe).
    pub objective: serde_json::Value,
}

impl Subject {
    /// Load the checkpoint of `setup` on its device ([`crate::checkpoint::load`]) and its
    /// recipe when it has one ([`crate::train::saved::recipe_of`]).
    pub fn load(setup: &AnalysisSetup) -> Result<Subject> {
        let device = setup.device.resolve().context("--device")?;
        let file = setup.checkpoint.clone();
        let loaded = crate::checkpoint::load(&file, device)
            .with_context(|| format!("cannot load checkpoint {}", file.display()))?;
        let recipe = crate::train::saved::recipe_of(&loaded.sidecar, &file).ok();
        Ok(Subject {
            loaded,
            recipe,
            file,
        })
    }

    pub fn net(&self) -> &Network {
        &self.loaded.net
    }

    pub fn device(&self) -> tch::Device {
        self.loaded.net.vs.device()
    }

    /// The report header of `kind`.
    pub fn provenance(&self, kind: &'static str) -> Provenance {
        Provenance {
            kind,
            checkpoint: self.file.display().to_string(),
            sha256: self.loaded.sha256.clone(),
            architecture: self.loaded.net.arch.name.clone(),
            objective: self
                .recipe
                .as_ref()
                .map(|r| serde_json::json!(r.train.objective.name()))
                .unwrap_or(serde_json::Value::Null),
        }
    }

    /// The data set of `images` (the recipe's unless given), with its folder applied.
    pub fn data_spec(&self, images: &TestImages) -> Result<DataSpec> {
        let mut spec = match (&images.spec, &self.recipe) {
            (Some(s), _) => s.clone(),
            (None, Some(r)) => r.data.clone(),
            // No recipe: say why (the sidecar holds none, or none this advtrain reads).
            (None, None) => {
                crate::train::saved::recipe_of(&self.loaded.sidecar, &self.file)
                    .context("its data set is unknown")?
                    .data
            }
        };
        if let Some(d) = &images.data_dir {
            spec.dir = Some(d.clone());
        }
        Ok(spec)
    }

    /// Say the compute settings when they are not the defaults (the attacks use them).
    pub fn say_compute(&self, c: &Compute, out: &mut dyn Progress) {
        if *c != Compute::default() {
            out.info(&format!("compute: {}", c.describe()));
        }
    }

    /// The first `images.n` test images.
    pub fn test(&self, images: &TestImages, out: &mut dyn Progress) -> Result<Dataset> {
        let mut spec = self.data_spec(images)?;
        spec.test_limit = Some(images.n);
        let test = spec
            .load_test()
            .context("loading the test images (set --data-dir if the data moved)")?;
        anyhow::ensure!(!test.is_empty(), "the test set is empty");
        if test.len() < images.n {
            out.info(&format!(
                "note: --n {} but the test set has {} images; using all",
                images.n,
                test.len()
            ));
        }
        Ok(test)
    }

    /// The test images as one batch on the model's device.
    pub fn test_batch(
        &self,
        images: &TestImages,
        out: &mut dyn Progress,
    ) -> Result<(Dataset, tch::Tensor, tch::Tensor)> {
        let test = self.test(images, out)?;
        let (x, y) = test
            .batches(
                test.len(),
                None,
                crate::data::Augment::default(),
                self.device(),
            )
            .next()
            .context("the test set is empty")?;
        Ok((test, x, y))
    }

    /// Error unless the model has a BatchNorm layer (running statistics to analyse).
    pub fn check_has_bn(&self, kind: &str) -> Result<()> {
        let net = self.net();
        anyhow::ensure!(
            !super::bn_layers(net.model.as_ref()).is_empty(),
            "{kind}: the model of {} has no BatchNorm layer (norm.kind = {:?}), so it has no \
             running statistics to analyse",
            self.file.display(),
            net.arch.norm.kind
        );
        Ok(())
    }
}

/// `n` (of `--n`) is at least 1.
pub fn check_n(n: usize) -> Result<()> {
    anyhow::ensure!(n >= 1, "--n must be >= 1");
    Ok(())
}

/// Create the folder `dir` (named as `--out` in errors).
pub fn prepare_out(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--out {}: cannot create the folder", dir.display()))
}
