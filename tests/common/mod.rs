//! Shared test helpers: tiny synthetic IDX data sets and recipes.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

/// Write an IDX image file (magic 0x803) with `n` images of `h` x `w`.
pub fn write_idx_images(path: &Path, n: usize, h: usize, w: usize, pixels: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    for v in [0x803u32, n as u32, h as u32, w as u32] {
        f.write_all(&v.to_be_bytes()).unwrap();
    }
    f.write_all(pixels).unwrap();
}

/// Write an IDX label file (magic 0x801).
pub fn write_idx_labels(path: &Path, labels: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    for v in [0x801u32, labels.len() as u32] {
        f.write_all(&v.to_be_bytes()).unwrap();
    }
    f.write_all(labels).unwrap();
}

/// A learnable 10-class 28x28 data set: class k lights a bright 7x7 block at position k of a
/// 4x3 grid (plus noise from a fixed LCG). Writes MNIST-named IDX files into `dir`.
pub fn write_tiny_mnist(dir: &Path, n_train: usize, n_test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut state = 12345u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let mut pixels = vec![0u8; n * 784];
        let mut labels = vec![0u8; n];
        for i in 0..n {
            let k = (next() % 10) as usize;
            labels[i] = k as u8;
            let (by, bx) = ((k / 4) * 7 + 3, (k % 4) * 7);
            for y in 0..28 {
                for x in 0..28 {
                    let inside = y >= by && y < by + 7 && x >= bx && x < bx + 7;
                    let noise = (next() % 60) as u8;
                    pixels[i * 784 + y * 28 + x] = if inside { 190 + noise } else { noise };
                }
            }
        }
        write_idx_images(
            &dir.join(format!("{prefix}-images-idx3-ubyte")),
            n,
            28,
            28,
            &pixels,
        );
        write_idx_labels(&dir.join(format!("{prefix}-labels-idx1-ubyte")), &labels);
    }
}

/// A small PGD-AT recipe on the tiny data in `dir`.
pub fn tiny_recipe_toml(dir: &Path, epochs: usize) -> String {
    format!(
        r#"
name = "tiny"
seed = 7
device = "cpu"
[data]
dataset = "mnist"
dir = "{}"
val_size = 40
[model]
name = "small-cnn"
num_classes = 10
in_channels = 1
[train]
objective = "pgd-at"
epochs = {epochs}
batch_size = 32
lr = 0.05
weight_decay = 5e-4
schedule = "cosine"
[train.attack]
eps = 0.1
step_size = 0.05
steps = 2
[validation]
pgd_limit = 40
batch_size = 20
"#,
        dir.display()
    )
}

/// torch's random generator is global to the process: tests of one file that seed it and
/// compare results hold this lock so parallel test threads do not interleave their draws.
pub static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Hold [`TORCH_RNG`] (ignoring poisoning by an earlier failed test).
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// The attack tests' model: small-cnn (seed 3) with non-trivial running statistics, so eval mode
/// is not the identity normalisation, and fc.weight x30, so logits are confident and attacks have
/// a loss to increase.
pub fn confident_small_cnn() -> advtrain::nn::Network {
    use advtrain::nn::{ArchSpec, Ctx, Network, NormSpec};
    use tch::{Device, Kind, Tensor};
    tch::manual_seed(3);
    let arch = ArchSpec {
        predictors: vec![],
        heads: 1,
        name: "small-cnn".into(),
        num_classes: 10,
        in_channels: 1,
        depth: None,
        width: None,
        norm: NormSpec::default(),
    };
    let net = Network::new(&arch, Device::Cpu).unwrap();
    let x = Tensor::rand([64, 1, 28, 28], (Kind::Float, Device::Cpu));
    let _ = tch::no_grad(|| net.model.forward(&x, &Ctx::train()));
    tch::no_grad(|| {
        let mut w = net.variables()["fc.weight"].shallow_clone();
        let _ = w.g_mul_scalar_(30.0);
    });
    net
}
