//! Checkpoint files (the layer between models and everything that reads or writes them:
//! training, evaluation, analyses, export, bench, the MixACM teacher; it depends only on
//! `nn` and `fsio`). [`import`] reads foreign (PyTorch-named) state dicts.
//!
//! Checkpoints: `<stem>.safetensors` (model, PyTorch parameter names), `<stem>.optim.safetensors`
//! (optimizer state) and `<stem>.json` (sidecar: architecture, recipe, metrics, sha256).
//! Every file is written to a temporary name, synced and renamed; the sidecar goes last and
//! holds the sha256 of the other two, so a torn write is detected on load.
//!
//! A run's checkpoints form atomic *sets* ([`CheckpointStore`]): `run/checkpoints` is a symbolic
//! link to a generation folder `run/.checkpoints/gNNNNNN/` holding every file of one moment
//! (`last.*`, `best.*`, `swa_avg.*`, `projections.*`, `swa.*`). A new generation is staged beside
//! it (unchanged files hard-linked from the current one), synced, marked `COMPLETE`, and made
//! current by renaming a new link over `checkpoints`: one rename, so a reader, a resume or a
//! process started after `kill -9` sees the old set or the new one, never a mix. The previous
//! complete generation is kept as a fallback for a damaged current set.

use crate::nn::{ArchSpec, Network};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

pub mod import;
pub mod torchscript;

/// The JSON sidecar of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sidecar {
    pub format: String,
    pub advtrain_version: String,
    pub architecture: ArchSpec,
    /// The resolved recipe of the run that wrote the file, in the recipe format
    /// `recipe_version`. Stored as JSON at this layer (below `train`); read it typed with
    /// `train::saved::recipe_of` / `load_run`, which migrate older versions.
    pub recipe: serde_json::Value,
    /// Version of the recipe format in `recipe` (1 = the first; sidecars without the field).
    #[serde(default = "first_recipe_version")]
    pub recipe_version: u32,
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

fn first_recipe_version() -> u32 {
    1
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

/// The checkpoint named by `--checkpoint FILE` (checked to exist with its sidecar) or by `--run
/// DIR` (`checkpoints/best`, else `checkpoints/last`).
pub fn locate(checkpoint: Option<&PathBuf>, run: Option<&PathBuf>) -> Result<PathBuf> {
    match (checkpoint, run) {
        (Some(f), _) => {
            let (model, _, side) = paths(f);
            anyhow::ensure!(
                model.is_file(),
                "--checkpoint {}: no such checkpoint file ({} does not exist)",
                f.display(),
                model.display()
            );
            anyhow::ensure!(
                side.is_file(),
                "--checkpoint {}: its sidecar {} does not exist",
                f.display(),
                side.display()
            );
            Ok(f.clone())
        }
        (None, Some(r)) => {
            anyhow::ensure!(r.is_dir(), "--run {}: no such directory", r.display());
            let best = r.join("checkpoints/best.safetensors");
            let last = r.join("checkpoints/last.safetensors");
            if best.is_file() {
                Ok(best)
            } else if last.is_file() {
                Ok(last)
            } else {
                anyhow::bail!(
                    "--run {}: no checkpoint (neither {} nor {} exists, with its .json sidecar)",
                    r.display(),
                    best.display(),
                    last.display()
                )
            }
        }
        (None, None) => anyhow::bail!("give --run DIR or --checkpoint FILE"),
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

use crate::fsio::{commit_tmp as sync_rename, test_delay, tmp_path as tmp_name};

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
    let (mtmp, otmp, jtmp) = (tmp_name(&mpath), tmp_name(&opath), tmp_name(&jpath));
    let written = (|| -> Result<()> {
        Tensor::write_safetensors(&host(model), &mtmp)
            .with_context(|| format!("cannot write {}", mtmp.display()))?;
        sidecar.sha256 = sha256_file(&mtmp)?;
        test_delay();
        if let Some(o) = optim {
            Tensor::write_safetensors(&host(o), &otmp)
                .with_context(|| format!("cannot write {}", otmp.display()))?;
            sidecar.optimizer_sha256 = Some(sha256_file(&otmp)?);
            test_delay();
        }
        {
            let mut f = std::fs::File::create(&jtmp)
                .with_context(|| format!("cannot write {}", jtmp.display()))?;
            f.write_all(serde_json::to_string_pretty(&sidecar)?.as_bytes())
                .with_context(|| format!("cannot write {}", jtmp.display()))?;
        }
        sync_rename(&mtmp, &mpath)?;
        test_delay();
        if optim.is_some() {
            sync_rename(&otmp, &opath)?;
            test_delay();
        }
        sync_rename(&jtmp, &jpath)
    })();
    if written.is_err() {
        for t in [&mtmp, &otmp, &jtmp] {
            let _ = std::fs::remove_file(t);
        }
    }
    written
}

/// Refuse to checkpoint parameters or buffers that hold NaN or infinity (a diverged run):
/// the error names the tensor; the last complete checkpoint set stays current.
pub fn check_finite(tensors: &[(String, Tensor)], epoch: usize) -> Result<()> {
    for (name, t) in tensors {
        if t.is_floating_point() && !bool::try_from(t.isfinite().all()).unwrap_or(false) {
            anyhow::bail!(
                "training diverged: {name} holds NaN or infinite values after epoch {epoch}; \
                 not saved (the last complete checkpoint set is kept): lower train.lr or \
                 check the data"
            );
        }
    }
    Ok(())
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

/// Bytes per element of a safetensors dtype name (None for names this crate does not know).
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Check a safetensors file's header against its length before handing it to the reader:
/// the header fits, parses, and every tensor's byte range lies in the file and holds exactly
/// `prod(shape) * size(dtype)` bytes. Errors name the file, the tensor, its shape, dtype and
/// both byte counts.
pub fn check_safetensors_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file_len = f.metadata()?.len();
    let bad =
        |why: String| anyhow::anyhow!("{} is not a valid safetensors file: {why}", path.display());
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8).map_err(|_| {
        bad(format!(
            "{file_len} bytes, shorter than the 8-byte header length"
        ))
    })?;
    let n = u64::from_le_bytes(len8);
    if n > file_len - 8 {
        return Err(bad(format!(
            "the header claims {n} bytes but the file has {} after the length field",
            file_len - 8
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("cannot read the {n}-byte header: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("the header is not JSON: {e}")))?;
    let entries = json
        .as_object()
        .ok_or_else(|| bad("the header is not a JSON object".into()))?;
    let data_len = file_len - 8 - n;
    for (name, e) in entries {
        if name == "__metadata__" {
            continue;
        }
        let dtype = e["dtype"].as_str().unwrap_or("?");
        let shape: Option<Vec<u64>> = e["shape"]
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let offsets: Option<Vec<u64>> = e["data_offsets"]
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let (Some(shape), Some(offsets)) = (shape, offsets) else {
            return Err(bad(format!(
                "tensor {name}: shape and data_offsets must be lists of non-negative integers"
            )));
        };
        let size = dtype_size(dtype)
            .ok_or_else(|| bad(format!("tensor {name}: unknown dtype {dtype:?}")))?;
        if offsets.len() != 2 || offsets[0] > offsets[1] || offsets[1] > data_len {
            return Err(bad(format!(
                "tensor {name}: data_offsets {offsets:?} outside the {data_len} data bytes"
            )));
        }
        let want = shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("tensor {name}: shape {shape:?} overflows")))?;
        let got = offsets[1] - offsets[0];
        if want != got {
            return Err(bad(format!(
                "tensor {name} of shape {shape:?} and dtype {dtype} needs {want} bytes, its \
                 data_offsets hold {got}"
            )));
        }
    }
    Ok(())
}

/// Read a safetensors file into a name -> tensor map.
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    anyhow::ensure!(
        path.exists(),
        "checkpoint file {} does not exist",
        path.display()
    );
    check_safetensors_header(path)?;
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
    check_kinds_and_values(dst, src, file)?;
    tch::no_grad(|| {
        for (k, t) in dst {
            let mut t = t.shallow_clone();
            t.f_copy_(&src[k].to_device(t.device()).to_kind(t.kind()))?;
        }
        Ok::<_, tch::TchError>(())
    })?;
    Ok(())
}

/// Floating kinds a float32 variable may be loaded from (converted, with a message).
fn convertible_float(k: tch::Kind) -> bool {
    matches!(k, tch::Kind::Double | tch::Kind::Half | tch::Kind::BFloat16)
}

/// Every tensor of `src` has its variable's dtype (float64/float16/bfloat16 into float32 are
/// converted with a message; anything else is refused) and holds only finite values.
fn check_kinds_and_values(
    dst: &HashMap<String, Tensor>,
    src: &HashMap<String, Tensor>,
    file: &Path,
) -> Result<()> {
    let mut names: Vec<&String> = dst.keys().collect();
    names.sort();
    let mut converted: Vec<String> = Vec::new();
    for k in names {
        let (want, got) = (dst[k].kind(), src[k].kind());
        if want != got {
            if want == tch::Kind::Float && convertible_float(got) {
                converted.push(format!("{k} ({got:?})"));
            } else {
                anyhow::bail!(
                    "checkpoint {}: tensor {k} has dtype {got:?}, the architecture expects \
                     {want:?} (convert the file in PyTorch, e.g. t.float(), if this is intended)",
                    file.display()
                );
            }
        }
        let s = &src[k];
        if s.is_floating_point() && !bool::try_from(s.isfinite().all()).unwrap_or(false) {
            anyhow::bail!(
                "checkpoint {}: tensor {k} holds NaN or infinite values; refusing to evaluate or \
                 train from it",
                file.display()
            );
        }
    }
    if !converted.is_empty() {
        log::warn!(
            "checkpoint {}: converting {} tensors to Float (float32): {}",
            file.display(),
            converted.len(),
            preview(&converted.iter().map(String::as_str).collect::<Vec<_>>())
        );
    }
    Ok(())
}

fn preview(v: &[&str]) -> String {
    let mut s = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > 5 {
        s.push_str(", ...");
    }
    s
}

/// Name of the link to the current generation inside a run directory.
pub const CURRENT: &str = "checkpoints";
/// Folder of the generations inside a run directory.
pub const GENERATIONS: &str = ".checkpoints";
/// Marker written last into a generation: its files are all written and synced.
const COMPLETE: &str = "COMPLETE";

/// The atomic checkpoint sets of one run directory (see the module comment).
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    run: PathBuf,
}

/// A generation being written: files go into [`Stage::dir`]; [`CheckpointStore::commit`] makes
/// it current.
#[derive(Debug)]
pub struct Stage {
    dir: PathBuf,
}

impl Stage {
    /// The folder to write this generation's files into.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn generation_number(name: &str) -> Option<u64> {
    name.strip_prefix('g')?.parse().ok()
}

impl CheckpointStore {
    /// Open the store of `run` and recover from an interrupted write: remove incomplete
    /// generations and leftover `*.tmp` files, re-point a missing `checkpoints` link at the
    /// newest complete generation. Messages say what was cleaned up.
    pub fn open(run: &Path) -> Result<CheckpointStore> {
        let store = CheckpointStore {
            run: run.to_path_buf(),
        };
        let gens = store.gen_root();
        let current = store.current_generation();
        if gens.is_dir() {
            for (n, dir) in store.generations()? {
                let keep =
                    current.as_deref() == Some(dir.as_path()) || dir.join(COMPLETE).is_file();
                if !keep {
                    log::warn!(
                        "removing the incomplete checkpoint generation {} (an interrupted save, g{n:06})",
                        dir.display()
                    );
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("cannot remove {}", dir.display()))?;
                }
            }
            for t in crate::fsio::remove_leftover_tmp(&gens) {
                log::warn!(
                    "removed the leftover temporary file {}",
                    gens.join(t).display()
                );
            }
        }
        let link = store.link();
        if std::fs::symlink_metadata(&link).is_err() || !link.exists() {
            if let Some((n, dir)) = store.complete_generations()?.pop() {
                log::warn!(
                    "{} is missing: pointing it at the newest complete checkpoint set {} (g{n:06})",
                    link.display(),
                    dir.display()
                );
                store.point_at(&dir)?;
            }
        }
        if link.is_dir() {
            for t in crate::fsio::remove_leftover_tmp(&link) {
                log::warn!(
                    "removed the leftover temporary file {}",
                    link.join(t).display()
                );
            }
        }
        for t in crate::fsio::remove_leftover_tmp(run) {
            log::warn!(
                "removed the leftover temporary file {}",
                run.join(t).display()
            );
        }
        Ok(store)
    }

    /// `run/checkpoints`: the current set as readers see it.
    pub fn link(&self) -> PathBuf {
        self.run.join(CURRENT)
    }

    fn gen_root(&self) -> PathBuf {
        self.run.join(GENERATIONS)
    }

    /// The generation folder `checkpoints` points at (None for a missing link or a run of the
    /// old layout, where `checkpoints` is a plain folder).
    pub fn current_generation(&self) -> Option<PathBuf> {
        let target = std::fs::read_link(self.link()).ok()?;
        let dir = self.run.join(target);
        dir.is_dir().then_some(dir)
    }

    /// Every generation folder, oldest first.
    fn generations(&self) -> Result<Vec<(u64, PathBuf)>> {
        let root = self.gen_root();
        if !root.is_dir() {
            return Ok(Vec::new());
        }
        let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(&root)
            .with_context(|| format!("cannot list {}", root.display()))?
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| {
                Some((
                    generation_number(&e.file_name().to_string_lossy())?,
                    e.path(),
                ))
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// Complete generations, oldest first.
    pub fn complete_generations(&self) -> Result<Vec<(u64, PathBuf)>> {
        Ok(self
            .generations()?
            .into_iter()
            .filter(|(_, d)| d.join(COMPLETE).is_file())
            .collect())
    }

    /// Start a new generation: a fresh folder holding hard links to every file of the current
    /// set (so files not rewritten this time, e.g. `best.*` when the epoch was not the best,
    /// carry over without copying).
    pub fn stage(&self) -> Result<Stage> {
        let root = self.gen_root();
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create {}", root.display()))?;
        let next = self.generations()?.last().map_or(1, |(n, _)| n + 1);
        let dir = root.join(format!("g{next:06}"));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let link = self.link();
        if link.is_dir() {
            for e in std::fs::read_dir(&link)
                .with_context(|| format!("cannot list {}", link.display()))?
                .flatten()
            {
                let name = e.file_name();
                let is_file = e.file_type().map(|t| t.is_file()).unwrap_or(false);
                if !is_file || name == COMPLETE || name.to_string_lossy().ends_with(".tmp") {
                    continue;
                }
                let dst = dir.join(&name);
                if std::fs::hard_link(e.path(), &dst).is_err() {
                    std::fs::copy(e.path(), &dst).with_context(|| {
                        format!("cannot copy {} to {}", e.path().display(), dst.display())
                    })?;
                }
            }
        }
        Ok(Stage { dir })
    }

    /// Make `stage` the current set: sync its files, write `COMPLETE`, swap the link with one
    /// rename, then remove generations older than the previous one.
    pub fn commit(&self, stage: Stage) -> Result<()> {
        for e in std::fs::read_dir(&stage.dir)?.flatten() {
            std::fs::File::open(e.path())
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot sync {}", e.path().display()))?;
        }
        test_delay();
        crate::fsio::write_atomic(&stage.dir.join(COMPLETE), b"complete\n")?;
        test_delay();
        let link = self.link();
        if link.is_dir() && self.current_generation().is_none() {
            // A run of the old layout: `checkpoints` is a plain folder. Move it aside as
            // generation 0 (complete as far as it goes); `open` re-points a missing link.
            let legacy = self.gen_root().join(format!("g{:06}", 0));
            crate::fsio::write_atomic(&link.join(COMPLETE), b"complete (previous layout)\n")?;
            std::fs::rename(&link, &legacy).with_context(|| {
                format!("cannot move {} to {}", link.display(), legacy.display())
            })?;
            test_delay();
        }
        self.point_at(&stage.dir)?;
        test_delay();
        let gens = self.complete_generations()?;
        let keep_from = gens.len().saturating_sub(2);
        for (_, dir) in &gens[..keep_from] {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    }

    /// Point `checkpoints` at the generation folder `dir` (one rename of a new link).
    fn point_at(&self, dir: &Path) -> Result<()> {
        let rel = Path::new(GENERATIONS).join(
            dir.file_name()
                .ok_or_else(|| anyhow::anyhow!("{} has no name", dir.display()))?,
        );
        let tmp = self.run.join(format!("{CURRENT}.link.tmp"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&rel, &tmp)
            .with_context(|| format!("cannot create the link {}", tmp.display()))?;
        std::fs::rename(&tmp, self.link()).with_context(|| {
            format!(
                "cannot point {} at {}",
                self.link().display(),
                rel.display()
            )
        })?;
        crate::fsio::sync_dir(&self.run);
        Ok(())
    }

    /// Make the current set one that holds a verified `file` (e.g. `last.safetensors`): the
    /// current one when it verifies, else the newest earlier complete generation that does,
    /// re-pointing `checkpoints` at it with a message. Used by `--resume`.
    pub fn ensure_verified(&self, file: &str) -> Result<()> {
        let current = self.link().join(file);
        let err = match verify_checkpoint(&current) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let cur_gen = self.current_generation();
        for (n, dir) in self.complete_generations()?.into_iter().rev() {
            if Some(&dir) == cur_gen.as_ref() {
                continue;
            }
            let candidate = dir.join(file);
            if candidate.exists() && verify_checkpoint(&candidate).is_ok() {
                let epoch = read_sidecar(&candidate).map(|s| s.epoch).unwrap_or(0);
                log::warn!(
                    "{} is damaged ({err:#}); falling back to the previous complete checkpoint set \
                     {} (g{n:06}, epoch {epoch})",
                    current.display(),
                    dir.display()
                );
                self.point_at(&dir)?;
                return Ok(());
            }
        }
        Err(err)
    }
}

/// Verify a checkpoint's files (model, and optimiser state when the sidecar names one) against
/// its sidecar's sha256.
pub fn verify_checkpoint(model_file: &Path) -> Result<()> {
    let side = read_sidecar(model_file)?;
    let (mpath, opath, _) = paths(model_file);
    verify(&mpath, &side.sha256)?;
    if let Some(o) = &side.optimizer_sha256 {
        verify(&opath, o)?;
    }
    Ok(())
}

/// The checkpoint to read for `model_file`: itself when it verifies; else, when it lies in a
/// run's `checkpoints` set, the same file of the newest earlier complete set that verifies (with
/// a message; read-only: the run is not changed). Errors with the original failure otherwise.
pub fn resolve_verified(model_file: &Path) -> Result<PathBuf> {
    let err = match verify_checkpoint(model_file) {
        Ok(()) => return Ok(model_file.to_path_buf()),
        Err(e) => e,
    };
    let (Some(dir), Some(name)) = (model_file.parent(), model_file.file_name()) else {
        return Err(err);
    };
    if dir.file_name().is_none_or(|n| n != CURRENT) {
        return Err(err);
    }
    let Some(run) = dir.parent() else {
        return Err(err);
    };
    let store = CheckpointStore {
        run: run.to_path_buf(),
    };
    let cur_gen = store.current_generation();
    for (n, gen) in store
        .complete_generations()
        .unwrap_or_default()
        .into_iter()
        .rev()
    {
        if Some(&gen) == cur_gen.as_ref() {
            continue;
        }
        let candidate = gen.join(name);
        if candidate.exists() && verify_checkpoint(&candidate).is_ok() {
            log::warn!(
                "{} is damaged ({err:#}); using the previous complete checkpoint set {} (g{n:06})",
                model_file.display(),
                candidate.display()
            );
            return Ok(candidate);
        }
    }
    Err(err)
}

/// A checkpoint loaded for use: the network built from its sidecar's architecture with the
/// verified weights, the sidecar, the file actually read (after a fallback to the previous
/// complete set) and its sha256. What eval, analyze, export, bench and the teacher load.
pub struct LoadedCheckpoint {
    pub net: Network,
    pub sidecar: Sidecar,
    pub file: PathBuf,
    pub sha256: String,
}

/// Load `model_file` (sha256 verified against its sidecar; a damaged file of a run's current
/// set falls back to the previous complete set, with a message).
pub fn load(model_file: &Path, device: Device) -> Result<LoadedCheckpoint> {
    let (mpath, _, _) = paths(model_file);
    anyhow::ensure!(
        mpath.exists(),
        "checkpoint file {} does not exist",
        mpath.display()
    );
    let mpath = resolve_verified(&mpath)?;
    let sidecar = read_sidecar(&mpath)?;
    let net = Network::new(&sidecar.architecture, device).with_context(|| {
        format!(
            "the architecture in the sidecar {}",
            paths(&mpath).2.display()
        )
    })?;
    load_weights(&net, &mpath)?;
    Ok(LoadedCheckpoint {
        net,
        sha256: sidecar.sha256.clone(),
        sidecar,
        file: mpath,
    })
}

/// Load weights from a safetensors file with PyTorch names into `net` (strict: names, shapes,
/// dtypes, finite values).
pub fn load_weights(net: &Network, path: &Path) -> Result<()> {
    let src = read_tensors(path)?;
    load_into(&net.vs.variables(), &src, path)
}

impl Network {
    /// Build from a checkpoint's sidecar and load its weights ([`load`]).
    pub fn from_checkpoint(model_file: &Path, device: Device) -> Result<(Network, Sidecar)> {
        let c = load(model_file, device)?;
        Ok((c.net, c.sidecar))
    }

    /// Load weights from a safetensors file with PyTorch names (strict; [`load_weights`]).
    pub fn load_weights(&self, path: &Path) -> Result<()> {
        load_weights(self, path)
    }
}
