//! The integration tests' shared builders (tests/it: one crate, one process): tiny synthetic IDX
//! data sets, recipes, architectures and models, tiny checkpoints and run folders, the CLI runner,
//! and the lock on torch's random generator.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

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

/// The tiny data (`n_train` / `n_test` images in `dir/data`) and [`tiny_recipe_toml`] over it
/// (`epochs` epochs) written to `dir/name`: the recipe file.
pub fn tiny_recipe_file(
    dir: &Path,
    name: &str,
    n_train: usize,
    n_test: usize,
    epochs: usize,
) -> PathBuf {
    write_tiny_mnist(&dir.join("data"), n_train, n_test);
    let file = dir.join(name);
    std::fs::write(&file, tiny_recipe_toml(&dir.join("data"), epochs)).unwrap();
    file
}

/// Write `text` to `file` and load it as a recipe (no overrides).
pub fn load_recipe(file: &Path, text: &str) -> advtrain::train::Recipe {
    std::fs::write(file, text).unwrap();
    advtrain::train::Recipe::load(file, &[]).unwrap()
}

/// A recipe in a new temporary folder holding 20 / 10 tiny images: small-cnn on the CPU, no
/// validation split, then `body` (the `[model.norm]`, `[train]`, ... sections). The data lives
/// as long as the returned folder.
pub fn small_recipe(body: &str) -> (tempfile::TempDir, advtrain::train::Recipe) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_mnist(dir.path(), 20, 10);
    let text = format!(
        r#"
name = "t"
device = "cpu"
channels_last = false
[data]
dataset = "mnist"
dir = "{}"
val_size = 0
[model]
name = "small-cnn"
num_classes = 10
in_channels = 1
{body}
"#,
        dir.path().display()
    );
    let r = load_recipe(&dir.path().join("r.toml"), &text);
    (dir, r)
}

/// torch's CPU random generator is one per process, and every test of the crate runs in this
/// process. A test whose result depends on the numbers drawn after a `tch::manual_seed` holds
/// [`rng_lock`] (exclusive) from the seed to its last draw; a test that only draws (builds or
/// loads a network, `Tensor::rand` for inputs whose values do not matter) holds [`rng_shared`].
/// So no draw ever lands inside a seeded section, and drawing tests still run side by side.
/// Never take one while holding the other (or `rng_shared` twice): that deadlocks.
pub static TORCH_RNG: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Hold [`TORCH_RNG`] alone (ignoring poisoning by an earlier failed test).
pub fn rng_lock() -> std::sync::RwLockWriteGuard<'static, ()> {
    TORCH_RNG.write().unwrap_or_else(|e| e.into_inner())
}

/// Hold [`TORCH_RNG`] shared with other tests that draw but do not depend on the values.
pub fn rng_shared() -> std::sync::RwLockReadGuard<'static, ()> {
    TORCH_RNG.read().unwrap_or_else(|e| e.into_inner())
}

/// The attack tests' model: small-cnn (seed 3) with non-trivial running statistics, so eval mode
/// is not the identity normalisation, and fc.weight x30, so logits are confident and attacks have
/// a loss to increase.
pub fn confident_small_cnn() -> advtrain::nn::Network {
    use advtrain::nn::{Ctx, Network};
    use tch::{Device, Kind, Tensor};
    tch::manual_seed(3);
    let arch = arch_spec("small-cnn", 1, None, None);
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

/// The architecture `name` for 10 classes: one head, no predictors, the default norm layers.
pub fn arch_spec(
    name: &str,
    in_channels: i64,
    depth: Option<i64>,
    width: Option<i64>,
) -> advtrain::nn::ArchSpec {
    advtrain::nn::ArchSpec {
        predictors: vec![],
        heads: 1,
        name: name.into(),
        num_classes: 10,
        in_channels,
        depth,
        width,
        norm: advtrain::nn::NormSpec::default(),
    }
}

/// The `small-cnn` architecture (10 classes, 1 channel) with `ns` statistics sets and `ap`
/// affine sets per norm layer.
pub fn small_cnn_arch(ns: usize, ap: usize) -> advtrain::nn::ArchSpec {
    advtrain::nn::ArchSpec {
        norm: advtrain::nn::NormSpec {
            ns_domains: ns,
            ap_domains: ap,
            ..advtrain::nn::NormSpec::default()
        },
        ..arch_spec("small-cnn", 1, None, None)
    }
}

/// The `advtrain` binary as a command (log level warn, one OpenMP thread). Settings of the
/// process (environment, threads, directory, signals) go to such a child, never to the tests'.
pub fn advtrain_cmd() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_advtrain"));
    c.env("RUST_LOG", "warn").env("OMP_NUM_THREADS", "1");
    c
}

/// Run the `advtrain` binary with `args` ([`advtrain_cmd`]).
pub fn advtrain(args: &[&str]) -> std::process::Output {
    advtrain_cmd().args(args).output().unwrap()
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
    std::fs::create_dir_all(run).unwrap();
    let mut recipe = load_recipe(&run.join("recipe.toml"), &tiny_recipe_toml(data, 1));
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

/// A tiny checkpoint: [`confident_small_cnn`] saved by [`save_run`] into `run` (holding
/// [`rng_lock`] while it is built); its `checkpoints/last.safetensors`.
pub fn confident_run(run: &Path, data: &Path) -> PathBuf {
    let _g = rng_lock();
    let net = confident_small_cnn();
    save_run(run, data, &net);
    run.join("checkpoints/last.safetensors")
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
