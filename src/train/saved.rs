//! What training keeps in checkpoints beyond the file format ([`crate::checkpoint`]): the
//! sidecar of a run-written file and the restore of model + optimiser state for `--resume`.

use crate::checkpoint::{self, read_sidecar, read_tensors, verify, Sidecar};
use anyhow::Result;
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

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
            epoch,
            metrics,
            sha256: String::new(),
            optimizer_sha256: None,
            best_metric,
        }
    }
}


/// Load a checkpoint written with optimiser state (`save(.., Some(state), ..)`) into `vars`
/// and `sgd`, both files verified against the sidecar's sha256; returns the sidecar (resume).
pub fn restore(
    file: &Path,
    vars: &HashMap<String, Tensor>,
    sgd: &mut crate::train::optim::Sgd,
) -> Result<Sidecar> {
    let side = read_sidecar(file)?;
    let (mpath, opath, _) = checkpoint::paths(file);
    verify(&mpath, &side.sha256)?;
    checkpoint::load_into(vars, &read_tensors(&mpath)?, &mpath)?;
    let osha = side
        .optimizer_sha256
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{}: sidecar has no optimizer state", file.display()))?;
    verify(&opath, osha)?;
    let state: Vec<(String, Tensor)> = read_tensors(&opath)?.into_iter().collect();
    sgd.load_state(&state, &opath.display().to_string())?;
    Ok(side)
}
