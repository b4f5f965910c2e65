//! Device selection: `auto` = CUDA when available, else CPU (with a warning naming the likely
//! cause when an NVIDIA GPU is present but this torch build cannot use it), and the cuDNN
//! benchmark policy: on only where shapes are stable ([`cudnn_benchmark_for`]).

use anyhow::Result;
use tch::Device;

/// A device as asked for (`auto | cpu | cuda | cuda:N`), resolved when used ([`Self::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when available, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA device N (`cuda` = `cuda:0`).
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(n) => Ok(DeviceChoice::Cuda(n)),
                None => Err(format!(
                    "unknown device '{s}': expected auto, cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl serde::Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl DeviceChoice {
    /// The device: `auto` is CUDA 0 when available, else the CPU; a CUDA device that is not
    /// there is an error.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceChoice::Auto if tch::Cuda::is_available() => cuda(0),
            DeviceChoice::Auto => {
                if let Some(w) = gpu_unused_warning(&nvidia_devices(), nvidia_driver().as_deref()) {
                    log::warn!("{w}");
                }
                Ok(Device::Cpu)
            }
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => cuda(n),
        }
    }
}

/// NVIDIA device nodes present on this machine (`/dev/nvidia0`, `/dev/nvidia1`, ...).
pub fn nvidia_devices() -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.strip_prefix("nvidia")
                        .is_some_and(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_digit()))
                })
                .map(|n| format!("/dev/{n}"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// The kernel driver's version line (`/proc/driver/nvidia/version`), when loaded.
pub fn nvidia_driver() -> Option<String> {
    let t = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    t.lines().next().map(|l| l.trim().to_string())
}

/// The warning for `auto` resolving to the CPU while NVIDIA devices are present (`None` when
/// none is): the usual cause is a torch wheel built for a newer CUDA than the driver supports
/// (the default PyPI torch 2.11.0 wheel is built for CUDA 13.0 and needs driver >= 580).
pub fn gpu_unused_warning(devices: &[String], driver: Option<&str>) -> Option<String> {
    if devices.is_empty() {
        return None;
    }
    let driver = driver.map_or("the NVIDIA kernel driver is not loaded".to_string(), |d| {
        format!("driver: {d}")
    });
    Some(format!(
        "device auto: NVIDIA device(s) {} present but CUDA is not available to this torch build, \
         so running on the CPU ({driver}). Likely cause: the torch wheel's CUDA needs a newer \
         driver (the default torch 2.11.0 wheel is built for CUDA 13.0: driver >= 580). Fix: \
         reinstall torch for your driver's CUDA, e.g. ADVTRAIN_TORCH_INDEX=\
         https://download.pytorch.org/whl/cu126 scripts/setup (README 'GPU'), or pass \
         --device cpu to silence this",
        devices.join(", ")
    ))
}

/// Phases with a policy for cuDNN's algorithm search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Training: every step has the same shapes (the last batch aside), so the search pays.
    Training,
    /// Evaluation: attacks shrink batches to the points still robust (APGD/FAB subsets,
    /// AutoAttack's cascade, Square's k points), so every new size would re-run the search.
    Evaluation,
    /// An evaluation known to keep one batch shape (a benchmark's fixed-batch PGD-20).
    FixedShapes,
}

/// Whether cuDNN's benchmark mode (per-shape algorithm search) is used in `phase`:
/// on in training and fixed-shape work, off in evaluation.
pub fn cudnn_benchmark_for(phase: Phase) -> bool {
    phase != Phase::Evaluation
}

/// Set cuDNN's benchmark mode for `phase` on a CUDA `device` (nothing on the CPU); always off
/// under `deterministic` ([`crate::compute::apply_process_settings`]).
pub fn enter_phase(device: Device, phase: Phase) {
    if device.is_cuda() {
        let deterministic = crate::compute::process_settings().deterministic_cudnn;
        tch::Cuda::cudnn_set_benchmark(cudnn_benchmark_for(phase) && !deterministic);
    }
}

/// Parse `auto | cpu | cuda | cuda:N` into a device (auto resolves at call time).
pub fn parse_device(s: &str) -> Result<Device> {
    s.parse::<DeviceChoice>()
        .map_err(anyhow::Error::msg)?
        .resolve()
}

fn cuda(n: usize) -> Result<Device> {
    anyhow::ensure!(
        tch::Cuda::is_available() && n < tch::Cuda::device_count() as usize,
        "device cuda:{n} requested but CUDA is not available (devices: {})",
        tch::Cuda::device_count()
    );
    // Benchmark mode is set per phase (`enter_phase`): off until a phase says otherwise.
    tch::Cuda::cudnn_set_benchmark(false);
    Ok(Device::Cuda(n))
}

/// Human name of a device.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}"),
    }
}
