//! What training keeps in checkpoints beyond the file format ([`crate::checkpoint`]): the
//! sidecar of a run-written file, the typed (versioned) recipe read back from a sidecar, a
//! checkpoint loaded with its recipe ([`LoadedRun`]). (The restore of model + optimiser state
//! for `--resume` is [`crate::train::optim::restore`].)

use super::Recipe;
use crate::checkpoint::{self, LoadedCheckpoint, Sidecar};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The recipe format this code writes into sidecars ([`Sidecar::recipe_version`]).
pub const RECIPE_VERSION: u32 = 1;

/// The typed recipe of a sidecar read from `file` (named in errors). Versions older than
/// [`RECIPE_VERSION`] are migrated here; a newer one is refused (written by a newer advtrain).
pub fn recipe_of(side: &Sidecar, file: &Path) -> Result<Recipe> {
    anyhow::ensure!(
        side.recipe_version <= RECIPE_VERSION,
        "the sidecar of {} holds a recipe of format version {} (this advtrain reads up to {}): \
         use a newer advtrain",
        file.display(),
        side.recipe_version,
        RECIPE_VERSION
    );
    anyhow::ensure!(
        !side.recipe.is_null(),
        "the sidecar of {} holds no recipe (a file not written by a run, e.g. a foreign import)",
        file.display()
    );
    serde_json::from_value(side.recipe.clone()).with_context(|| {
        format!(
            "the sidecar of {} holds no valid recipe (format version {})",
            file.display(),
            side.recipe_version
        )
    })
}

/// A checkpoint loaded with the typed recipe of the run that wrote it.
pub struct LoadedRun {
    pub checkpoint: LoadedCheckpoint,
    pub recipe: Recipe,
}

impl LoadedRun {
    /// The file read (after any fallback to the previous complete set).
    pub fn file(&self) -> &PathBuf {
        &self.checkpoint.file
    }
}

/// Load `model_file` and its typed recipe ([`checkpoint::load`], [`recipe_of`]).
pub fn load_run(model_file: &Path, device: tch::Device) -> Result<LoadedRun> {
    let checkpoint = checkpoint::load(model_file, device)?;
    let recipe = recipe_of(&checkpoint.sidecar, &checkpoint.file)?;
    Ok(LoadedRun { checkpoint, recipe })
}

impl Sidecar {
    /// A sidecar for a file written by a run of `recipe` after `epoch` (sha256 fields are
    /// filled in by [`checkpoint::save`]).
    pub fn for_run(
        format: &str,
        recipe: &crate::train::Recipe,
        epoch: usize,
        metrics: serde_json::Value,
        best_metric: Option<f64>,
    ) -> Sidecar {
        Sidecar {
            format: format.into(),
            advtrain_version: env!("CARGO_PKG_VERSION").into(),
            architecture: recipe.model.clone(),
            recipe: serde_json::to_value(recipe).expect("serialisable"),
            recipe_version: RECIPE_VERSION,
            epoch,
            metrics,
            sha256: String::new(),
            optimizer_sha256: None,
            best_metric,
        }
    }
}
