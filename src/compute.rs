//! Compute settings: how (not what) attacks and training compute, recorded with every run,
//! evaluation and benchmark.
//!
//! - `precision_attack`, `precision_train`: `fp32` (default) or `bf16` autocast (PyTorch's
//!   autocast op lists: convolutions and matmuls in bfloat16, reductions and losses in float32)
//!   for the forward/backward passes of attack generation and of the training loss.
//! - `fold_bn`: eval-mode BatchNorm folded into the convolution before it for attacks
//!   (`nn::fold`); the same function to float rounding.
//! - `attack_chunk`: rows per forward/backward micro-batch of eval-mode attacks on CPU (0 = the
//!   whole batch). In eval mode every row is computed independently, so splitting a step's
//!   forward/backward changes nothing but cache use; the attack's own batch, random draws and
//!   iterations are those of the whole batch.
//! - `tf32`: TensorFloat-32 on CUDA (Ampere and later): `pytorch` (the default, as PyTorch:
//!   cuDNN convolutions in TF32, cuBLAS matmuls in full fp32), `on` (both), `off` (neither:
//!   fp32 really is fp32). No effect on the CPU.
//! - `deterministic`: deterministic algorithms (libtorch's `use_deterministic_algorithms`, warning
//!   for ops without one), deterministic cuDNN with its benchmark search off, and
//!   `CUBLAS_WORKSPACE_CONFIG=:4096:8`. On the CPU a seeded run is already exact (and resumes
//!   exactly); on CUDA it is not without this switch (atomics in backward kernels, cuDNN's
//!   algorithm choice), and with it only as far as every op has a deterministic kernel.
//!
//! `tf32` and `deterministic` are libtorch process settings: they are applied once per command
//! ([`apply_process_settings`]) and recorded like the others.
//!
//! The settings are a value: a run's (its recipe's `[compute]`), an evaluation's
//! (`eval::EvalSetup::compute`) or a benchmark's, given to each attacked function with
//! `attack::Classifier::with_compute`. There is no process-wide state.

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

/// Floating-point precision of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 throughout.
    #[default]
    #[value(name = "fp32", alias = "float32")]
    Fp32,
    /// bfloat16 autocast (CPU and CUDA).
    #[value(name = "bf16", alias = "bfloat16")]
    Bf16,
}

crate::choice::value_enum_text!(Precision => "precision");

/// TensorFloat-32 use on CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tf32 {
    /// PyTorch's default: cuDNN convolutions in TF32, cuBLAS matmuls in fp32.
    #[default]
    Pytorch,
    /// Convolutions and matmuls in TF32.
    On,
    /// Neither: full fp32.
    Off,
}

crate::choice::value_enum_text!(Tf32 => "tf32");

impl Tf32 {
    /// (cuDNN convolutions, cuBLAS matmuls) in TF32.
    pub fn flags(self) -> (bool, bool) {
        match self {
            Tf32::Pytorch => (true, false),
            Tf32::On => (true, true),
            Tf32::Off => (false, false),
        }
    }
}

/// Default rows per attack micro-batch on CPU (measured best of 64/128/250/whole for small-cnn on
/// the project's 2-core machines; docs/BENCHMARKS.md).
pub const DEFAULT_ATTACK_CHUNK: usize = 128;

/// The compute settings (recipe table `[compute]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compute {
    #[serde(default)]
    pub precision_attack: Precision,
    #[serde(default)]
    pub precision_train: Precision,
    #[serde(default = "yes")]
    pub fold_bn: bool,
    #[serde(default = "default_chunk")]
    pub attack_chunk: usize,
    #[serde(default)]
    pub tf32: Tf32,
    #[serde(default)]
    pub deterministic: bool,
}

fn yes() -> bool {
    true
}
fn default_chunk() -> usize {
    DEFAULT_ATTACK_CHUNK
}

/// The defaults: fp32 everywhere, BN folding on, micro-batches of [`DEFAULT_ATTACK_CHUNK`].
const DEFAULTS: Compute = Compute {
    precision_attack: Precision::Fp32,
    precision_train: Precision::Fp32,
    fold_bn: true,
    attack_chunk: DEFAULT_ATTACK_CHUNK,
    tf32: Tf32::Pytorch,
    deterministic: false,
};

impl Default for Compute {
    fn default() -> Self {
        DEFAULTS
    }
}

impl Compute {
    /// One line for the start-of-run printout.
    pub fn describe(&self) -> String {
        format!(
            "precision attack {} / train {}, fold_bn {}, attack_chunk {} (CPU only), tf32 {}, deterministic {}",
            self.precision_attack,
            self.precision_train,
            self.fold_bn,
            if self.attack_chunk == 0 {
                "off".to_string()
            } else {
                self.attack_chunk.to_string()
            },
            self.tf32,
            self.deterministic
        )
    }
}

/// Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo). Without
/// either, torch's bf16 kernels convert to and from float32 and run slower than fp32.
pub fn cpu_has_native_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| {
            t.lines().filter(|l| l.starts_with("flags")).any(|l| {
                l.split_whitespace()
                    .any(|f| f == "avx512_bf16" || f == "amx_bf16")
            })
        })
        .unwrap_or(false)
}

/// Why bf16 on this CPU is a poor choice, when it is (`None` on a CPU with native bf16).
pub fn bf16_warning() -> Option<&'static str> {
    (!cpu_has_native_bf16()).then_some(
        "bf16 requested but this CPU has no native bf16 (no avx512_bf16 / amx_bf16 flag): on the \
         CPU it runs emulated and slower than fp32 (CUDA devices are unaffected)",
    )
}

/// Log [`bf16_warning`] once per process, the first time bf16 autocast runs on the CPU (so a
/// bf16 command on a CUDA device never shows it).
fn warn_bf16_on_cpu_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Some(w) = bf16_warning() {
            log::warn!("{w}");
        }
    });
}

/// libtorch's process-wide numerics switches as they are now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSettings {
    pub tf32_cudnn: bool,
    pub tf32_cublas: bool,
    pub deterministic_algorithms: bool,
    pub deterministic_cudnn: bool,
}

/// Read libtorch's TF32 and determinism switches.
pub fn process_settings() -> ProcessSettings {
    let t = unsafe { advtrain_tf32_state() };
    let d = unsafe { advtrain_deterministic_state() };
    ProcessSettings {
        tf32_cudnn: t & 1 != 0,
        tf32_cublas: t & 2 != 0,
        deterministic_algorithms: d & 1 != 0,
        deterministic_cudnn: d & 2 != 0,
    }
}

/// Apply `c.tf32` and `c.deterministic` to libtorch's process settings (with `deterministic`,
/// also `CUBLAS_WORKSPACE_CONFIG=:4096:8` unless set, and cuDNN's benchmark search stays off:
/// `device::enter_phase` reads it). Call once per command, before the first CUDA operation.
pub fn apply_process_settings(c: &Compute) -> anyhow::Result<()> {
    let (cudnn, cublas) = c.tf32.flags();
    anyhow::ensure!(
        unsafe { advtrain_set_tf32(cudnn as i32, cublas as i32) } == 0,
        "setting tf32 = {} failed",
        c.tf32
    );
    if c.deterministic && std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        // Read by cuBLAS when its first handle is made; no CUDA work has run yet.
        std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8");
    }
    anyhow::ensure!(
        unsafe { advtrain_set_deterministic(c.deterministic as i32) } == 0,
        "setting deterministic = {} failed",
        c.deterministic
    );
    if c.tf32 != Tf32::Pytorch || c.deterministic {
        // Read back from libtorch, so the log shows what is in force, not what was asked.
        eprintln!("libtorch numerics: {:?}", process_settings());
    }
    Ok(())
}

extern "C" {
    fn advtrain_set_tf32(cudnn: i32, cublas: i32) -> i32;
    fn advtrain_tf32_state() -> i32;
    fn advtrain_set_deterministic(on: i32) -> i32;
    fn advtrain_deterministic_state() -> i32;
    fn advtrain_autocast_set(device: i32, enabled: i32, dtype: i32) -> i32;
    fn advtrain_autocast_enabled(device: i32) -> i32;
    fn advtrain_autocast_clear_cache();
    fn advtrain_autocast_cast(t: *const std::ffi::c_void, device: i32) -> *mut std::ffi::c_void;
    fn advtrain_grad_enabled() -> i32;
}

fn autocast_device(device: Device) -> i32 {
    if device.is_cuda() {
        1
    } else {
        0
    }
}

/// Whether autograd records operations (false inside `tch::no_grad`).
pub fn grad_enabled() -> bool {
    unsafe { advtrain_grad_enabled() != 0 }
}

/// Whether autocast is on for `device`'s type.
pub fn autocast_enabled(device: Device) -> bool {
    unsafe { advtrain_autocast_enabled(autocast_device(device)) != 0 }
}

thread_local! {
    /// Open [`with_precision`] regions on this thread (autocast state and cache are
    /// thread-local in libtorch too).
    static REGIONS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Restores the autocast state of a [`with_precision`] region on exit (also on unwinding) and
/// clears the cast cache when the outermost region closes.
struct Region {
    device: i32,
    restore: Option<bool>,
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Some(before) = self.restore {
            unsafe { advtrain_autocast_set(self.device, before as i32, 0) };
        }
        let depth = REGIONS.with(|r| {
            r.set(r.get() - 1);
            r.get()
        });
        if depth == 0 {
            unsafe { advtrain_autocast_clear_cache() };
        }
    }
}

/// Run `f` with autocast on `device` set for `precision` (on for bf16, off for fp32, so an fp32
/// attack inside a bf16 training step runs in fp32); the previous state is restored afterwards.
///
/// Regions nest, as PyTorch's `torch.autocast` contexts: autocast's cast cache lives until the
/// outermost region closes, so one region around a whole attack (as every attack's `perturb`
/// opens, `Classifier::region` in the attack layer) casts each cacheable weight once per attack,
/// not once per forward; an fp32 verdict inside it switches autocast off and on without
/// dropping the cache. libtorch caches only the casts of float32 leaf tensors that require grad
/// (`cached_cast` in ATen's autocast_mode.cpp): the live parameters of our models (trainable in
/// training and in evaluation); not frozen parameters (TorchScript modules, a MixACM teacher),
/// nor the BN-folded convolution weights, which are recomputed every forward
/// ([`autocast_cast`] tells). A cached cast is the same bits as a fresh one, so results do not
/// change; the weights must not change inside a region (no region spans an optimiser step).
pub fn with_precision<T>(precision: Precision, device: Device, f: impl FnOnce() -> T) -> T {
    let d = autocast_device(device);
    let on = precision == Precision::Bf16;
    if on && device == Device::Cpu {
        warn_bf16_on_cpu_once();
    }
    let before = unsafe { advtrain_autocast_enabled(d) != 0 };
    REGIONS.with(|r| r.set(r.get() + 1));
    let mut region = Region {
        device: d,
        restore: None,
    };
    if before != on {
        let r = unsafe { advtrain_autocast_set(d, on as i32, 0) };
        assert!(r >= 0, "setting {precision} autocast failed on {device:?}");
        region.restore = Some(before);
    }
    let out = f();
    drop(region);
    out
}

/// The bfloat16 cast autocast makes of `t` on `device` inside a region: the cached one when the
/// cache holds it (a diagnostic for tests: two calls give the same storage exactly when `t` is
/// cacheable; a first call fills the cache as a forward would).
pub fn autocast_cast(t: &Tensor, device: Device) -> Tensor {
    let p = unsafe {
        advtrain_autocast_cast(
            t.as_ptr() as *const std::ffi::c_void,
            autocast_device(device),
        )
    };
    assert!(!p.is_null(), "autocast cast failed");
    unsafe { Tensor::from_ptr(p as *mut torch_sys::C_tensor) }
}
