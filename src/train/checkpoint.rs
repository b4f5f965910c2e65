//! Checkpoints: `<stem>.safetensors` (model, PyTorch parameter names), `<stem>.optim.safetensors`
//! (optimizer state) and `<stem>.json` (sidecar: architecture, recipe, metrics, sha256).
//! Every file is written to a temporary name, synced and renamed; the sidecar goes last and
//! holds the sha256 of the other two, so a torn write is detected on load.

use crate::nn::ArchSpec;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The JSON sidecar of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sidecar {
    pub format: String,
    pub advtrain_version: String,
    pub architecture: ArchSpec,
    /// The resolved recipe (as a JSON value so any later recipe fields round-trip).
    pub recipe: serde_json::Value,
    /// Epochs completed.
    pub epoch: usize,
    pub metrics: serde_json::Value,
    pub sha256: String,
    #[serde(default)]
    pub optimizer_sha256: Option<String>,
    /// Best validation metric seen so far (for resuming best-checkpoint selection).
    #[serde(default)]
    pub best_metric: Option<f64>,
}

impl Sidecar {
    /// A sidecar for a file written by a run of `recipe` after `epoch` (sha256 fields are
    /// filled in by [`save`]).
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

/// Paths of the three files of a checkpoint `stem` (e.g. `run/checkpoints/last`).
pub fn paths(model_file: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let stem = model_file.with_extension("");
    (
        stem.with_extension("safetensors"),
        stem.with_extension("optim.safetensors"),
        stem.with_extension("json"),
    )
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

fn sync_rename(tmp: &Path, dst: &Path) -> Result<()> {
    std::fs::File::open(tmp)?.sync_all()?;
    std::fs::rename(tmp, dst)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dst.display()))
}

/// Named tensors moved to the CPU, contiguous (as safetensors needs).
fn host(named: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    named
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.detach().to_device(tch::Device::Cpu).contiguous(),
            )
        })
        .collect()
}

/// Write a checkpoint atomically. `sidecar.sha256` fields are filled in here.
pub fn save(
    model_file: &Path,
    model: &[(String, Tensor)],
    optim: Option<&[(String, Tensor)]>,
    mut sidecar: Sidecar,
) -> Result<()> {
    let (mpath, opath, jpath) = paths(model_file);
    if let Some(dir) = mpath.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mtmp = tmp_name(&mpath);
    Tensor::write_safetensors(&host(model), &mtmp)
        .with_context(|| format!("cannot write {}", mtmp.display()))?;
    sidecar.sha256 = sha256_file(&mtmp)?;
    let otmp = tmp_name(&opath);
    if let Some(o) = optim {
        Tensor::write_safetensors(&host(o), &otmp)
            .with_context(|| format!("cannot write {}", otmp.display()))?;
        sidecar.optimizer_sha256 = Some(sha256_file(&otmp)?);
    }
    let jtmp = tmp_name(&jpath);
    {
        let mut f = std::fs::File::create(&jtmp)
            .with_context(|| format!("cannot write {}", jtmp.display()))?;
        f.write_all(serde_json::to_string_pretty(&sidecar)?.as_bytes())?;
    }
    sync_rename(&mtmp, &mpath)?;
    if optim.is_some() {
        sync_rename(&otmp, &opath)?;
    }
    sync_rename(&jtmp, &jpath)
}

/// Read a sidecar.
pub fn read_sidecar(model_file: &Path) -> Result<Sidecar> {
    let (_, _, jpath) = paths(model_file);
    let text = std::fs::read_to_string(&jpath).with_context(|| {
        format!(
            "cannot read checkpoint sidecar {} (expected next to {})",
            jpath.display(),
            model_file.display()
        )
    })?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid checkpoint sidecar", jpath.display()))
}

/// Read a safetensors file into a name -> tensor map.
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    anyhow::ensure!(
        path.exists(),
        "checkpoint file {} does not exist",
        path.display()
    );
    let v = Tensor::read_safetensors(path).map_err(|e| {
        anyhow::anyhow!("{} is not a readable safetensors file: {e}", path.display())
    })?;
    Ok(v.into_iter().collect())
}

/// Verify a file's sha256 against the sidecar's.
pub fn verify(path: &Path, expected: &str) -> Result<()> {
    let got = sha256_file(path)?;
    anyhow::ensure!(
        got == expected,
        "{}: sha256 {got} does not match the sidecar's {expected} (torn or modified checkpoint)",
        path.display()
    );
    Ok(())
}

/// Copy `src` tensors into the variables `dst` by name, strictly: every variable present with its
/// shape, no unexpected names. Errors list what is missing, unexpected or mis-shaped.
pub fn load_into(
    dst: &HashMap<String, Tensor>,
    src: &HashMap<String, Tensor>,
    file: &Path,
) -> Result<()> {
    let mut missing: Vec<&str> = dst
        .keys()
        .filter(|k| !src.contains_key(*k))
        .map(String::as_str)
        .collect();
    let mut unexpected: Vec<&str> = src
        .keys()
        .filter(|k| !dst.contains_key(*k))
        .map(String::as_str)
        .collect();
    let mut mismatched: Vec<String> = dst
        .iter()
        .filter_map(|(k, t)| {
            src.get(k)
                .filter(|s| s.size() != t.size())
                .map(|s| format!("{k}: file {:?}, model {:?}", s.size(), t.size()))
        })
        .collect();
    missing.sort_unstable();
    unexpected.sort_unstable();
    mismatched.sort_unstable();
    if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
        anyhow::bail!(
            "checkpoint {} does not match the architecture: {} missing [{}], {} unexpected [{}], {} with wrong shape [{}]",
            file.display(),
            missing.len(),
            preview(&missing),
            unexpected.len(),
            preview(&unexpected),
            mismatched.len(),
            mismatched.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        );
    }
    tch::no_grad(|| {
        for (k, t) in dst {
            let mut t = t.shallow_clone();
            t.f_copy_(&src[k].to_device(t.device()).to_kind(t.kind()))?;
        }
        Ok::<_, tch::TchError>(())
    })?;
    Ok(())
}

fn preview(v: &[&str]) -> String {
    let mut s = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > 5 {
        s.push_str(", ...");
    }
    s
}

/// Load a checkpoint written with optimiser state (`save(.., Some(state), ..)`) into `vars`
/// and `sgd`, both files verified against the sidecar's sha256; returns the sidecar (resume).
pub fn restore(
    file: &Path,
    vars: &HashMap<String, Tensor>,
    sgd: &mut crate::train::optim::Sgd,
) -> Result<Sidecar> {
    let side = read_sidecar(file)?;
    let (mpath, opath, _) = paths(file);
    verify(&mpath, &side.sha256)?;
    load_into(vars, &read_tensors(&mpath)?, &mpath)?;
    let osha = side
        .optimizer_sha256
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{}: sidecar has no optimizer state", file.display()))?;
    verify(&opath, osha)?;
    let state: Vec<(String, Tensor)> = read_tensors(&opath)?.into_iter().collect();
    sgd.load_state(&state, &opath.display().to_string())?;
    Ok(side)
}
