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

/// `|a - b| <= tol * (1 + |b|)`.
pub fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

/// The `small-cnn` architecture (10 classes, 1 channel) with `ns` statistics sets and `ap`
/// affine sets per norm layer.
pub fn small_cnn_arch(ns: usize, ap: usize) -> advtrain::nn::ArchSpec {
    advtrain::nn::ArchSpec {
        predictors: vec![],
        heads: 1,
        name: "small-cnn".into(),
        num_classes: 10,
        in_channels: 1,
        depth: None,
        width: None,
        norm: advtrain::nn::NormSpec {
            ns_domains: ns,
            ap_domains: ap,
            ..advtrain::nn::NormSpec::default()
        },
    }
}

/// Run the `advtrain` binary with `args` (log level warn, one OpenMP thread).
pub fn advtrain(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_advtrain"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap()
}

/// `advtrain --threads 1 analyze ARGS`.
pub fn analyze(args: &[&str]) -> std::process::Output {
    let mut full = vec!["--threads", "1", "analyze"];
    full.extend_from_slice(args);
    advtrain(&full)
}

/// A command's stderr as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A JSON file's contents.
pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Save `net` as `<run>/checkpoints/last` with the tiny recipe of `data` in its sidecar.
pub fn save_run(run: &Path, data: &Path, net: &advtrain::nn::Network) {
    use advtrain::checkpoint;
    let file = run.join("recipe.toml");
    std::fs::create_dir_all(run).unwrap();
    std::fs::write(&file, tiny_recipe_toml(data, 1)).unwrap();
    let mut recipe = advtrain::train::Recipe::load(&file, &[]).unwrap();
    recipe.model = net.arch.clone();
    let side = checkpoint::Sidecar {
        format: "advtrain-checkpoint-v1".into(),
        advtrain_version: "test".into(),
        architecture: net.arch.clone(),
        recipe: serde_json::to_value(&recipe).unwrap(),
        recipe_version: 1,
        epoch: 1,
        metrics: serde_json::Value::Null,
        sha256: String::new(),
        optimizer_sha256: None,
        best_metric: None,
    };
    checkpoint::save(
        &run.join("checkpoints/last.safetensors"),
        &net.named_tensors(),
        None,
        side,
    )
    .unwrap();
}

/// A Dual-BN small-cnn whose branches hold different statistics (clean: x, adv: 0.5 x + 0.3),
/// with confident logits.
pub fn dual_bn_model() -> advtrain::nn::Network {
    use advtrain::nn::{Ctx, Mode, Network, Route, ADV, CLEAN};
    use tch::{Device, Kind, Tensor};
    tch::manual_seed(21);
    let net = Network::new(&small_cnn_arch(2, 2), Device::Cpu).unwrap();
    let x = Tensor::rand([48, 1, 28, 28], (Kind::Float, Device::Cpu));
    for _ in 0..3 {
        let _ = tch::no_grad(|| {
            net.model
                .forward(&x, &Ctx::new(Route::domain(CLEAN), Mode::Train))
        });
        let z = &x * 0.5 + 0.3;
        let _ = tch::no_grad(|| {
            net.model
                .forward(&z, &Ctx::new(Route::domain(ADV), Mode::Train))
        });
    }
    for (_, n) in net.model.norms() {
        let w = &n.affine[ADV].weight;
        tch::no_grad(|| w.shallow_clone().copy_(&(w.rand_like() + 0.5)));
    }
    tch::no_grad(|| {
        let mut w = net.variables()["fc.weight"].shallow_clone();
        let _ = w.g_mul_scalar_(30.0);
    });
    net
}
