//! Evaluation points from a safetensors file (`eval --data FILE.safetensors`): the tensor `x`
//! (N, C, H, W; uint8 in 0..=255, or float in [0, 1]) and `y` (N; int64 labels in
//! 0..num_classes). Written from Python with
//! `safetensors.torch.save_file({"x": x, "y": y}, "points.safetensors")`. Every error names the
//! file, the tensor and what was expected.

use super::Dataset;
use anyhow::{Context, Result};
use std::path::Path;
use tch::{Kind, Tensor};

/// How to write a valid file, appended to the errors.
const HOW: &str = "expected a safetensors file with x: (N, C, H, W) uint8 0..255 or float in \
                   [0, 1] and y: (N,) int64; from Python: \
                   safetensors.torch.save_file({'x': x, 'y': y.long()}, FILE)";

/// Whether `path` names a points file (`.safetensors`) rather than a built-in data set.
pub fn is_points_file(path: &str) -> bool {
    path.ends_with(".safetensors")
}

/// Read `file` and check it (module doc). `num_classes`: the model's classes (labels must be
/// below it); `None` takes `max(y) + 1`, at least 2. Float images stay float (no quantisation);
/// uint8 images stay uint8.
pub fn load_points(file: &Path, num_classes: Option<usize>) -> Result<Dataset> {
    let f = file.display();
    anyhow::ensure!(file.is_file(), "--data {f}: no such file");
    let tensors = Tensor::read_safetensors(file)
        .with_context(|| format!("--data {f}: cannot read it as safetensors ({HOW})"))?;
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    let get = |name: &str| {
        tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .ok_or_else(|| {
                anyhow::anyhow!("--data {f}: no tensor '{name}' (found {names:?}); {HOW}")
            })
    };
    let (x, y) = (get("x")?, get("y")?);
    let xs = x.size();
    anyhow::ensure!(
        xs.len() == 4 && xs[1..].iter().all(|&d| d > 0),
        "--data {f}: tensor 'x' has shape {xs:?}, expected (N, C, H, W); {HOW}"
    );
    let n = xs[0];
    anyhow::ensure!(n > 0, "--data {f}: tensor 'x' holds no images (N = 0)");
    let images = match x.kind() {
        Kind::Uint8 => x.contiguous(),
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => {
            let x = x.to_kind(Kind::Float).contiguous();
            let finite = x.isfinite().all().int64_value(&[]) != 0;
            anyhow::ensure!(
                finite,
                "--data {f}: tensor 'x' holds NaN or infinite values; expected floats in [0, 1]"
            );
            let (lo, hi) = (x.min().double_value(&[]), x.max().double_value(&[]));
            anyhow::ensure!(
                lo >= 0.0 && hi <= 1.0,
                "--data {f}: tensor 'x' has values in [{lo}, {hi}], expected [0, 1] (pixels, no \
                 normalisation: divide 0..255 images by 255, and keep mean/std normalisation \
                 inside the model)"
            );
            x
        }
        k => {
            anyhow::bail!("--data {f}: tensor 'x' has dtype {k:?}, expected uint8 or float; {HOW}")
        }
    };
    anyhow::ensure!(
        y.kind() == Kind::Int64,
        "--data {f}: tensor 'y' has dtype {:?}, expected int64 (y.long() in Python)",
        y.kind()
    );
    anyhow::ensure!(
        y.size() == [n],
        "--data {f}: tensor 'y' has shape {:?}, expected ({n},): one label per image of 'x'",
        y.size()
    );
    let (lo, hi) = (y.min().int64_value(&[]), y.max().int64_value(&[]));
    anyhow::ensure!(
        lo >= 0,
        "--data {f}: tensor 'y' holds the label {lo}, expected >= 0"
    );
    let classes = num_classes.unwrap_or((hi + 1).max(2) as usize);
    anyhow::ensure!(
        (hi as usize) < classes,
        "--data {f}: tensor 'y' holds the label {hi}, but the model has {classes} classes \
         (labels 0..{})",
        classes - 1
    );
    Ok(Dataset {
        images,
        labels: y.contiguous(),
        num_classes: classes,
    })
}

/// The shape of the tensor `x` of a points file, from its safetensors header (nothing else is
/// read).
pub fn points_shape(file: &Path) -> Result<Vec<i64>> {
    use std::io::Read;
    let f = file.display();
    let mut h = std::fs::File::open(file).with_context(|| format!("--data {f}: cannot open it"))?;
    let mut len = [0u8; 8];
    h.read_exact(&mut len)
        .with_context(|| format!("--data {f}: too short for safetensors ({HOW})"))?;
    let len = u64::from_le_bytes(len);
    anyhow::ensure!(
        len < 100_000_000,
        "--data {f}: not a safetensors file (header length {len}); {HOW}"
    );
    let mut header = vec![0u8; len as usize];
    h.read_exact(&mut header)
        .with_context(|| format!("--data {f}: truncated safetensors header ({HOW})"))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .with_context(|| format!("--data {f}: not a safetensors header ({HOW})"))?;
    let shape: Vec<i64> = v
        .get("x")
        .and_then(|x| x.get("shape"))
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .ok_or_else(|| anyhow::anyhow!("--data {f}: no tensor 'x'; {HOW}"))?;
    anyhow::ensure!(
        shape.len() == 4,
        "--data {f}: tensor 'x' has shape {shape:?}, expected (N, C, H, W); {HOW}"
    );
    Ok(shape)
}
