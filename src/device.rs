//! Device selection: `auto` = CUDA when available, else CPU.

use anyhow::Result;
use tch::Device;

/// Parse `auto | cpu | cuda | cuda:N` into a device (auto resolves at call time).
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "auto" if tch::Cuda::is_available() => cuda(0),
        "auto" => Ok(Device::Cpu),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => cuda(n),
            None => anyhow::bail!("unknown device '{s}': expected auto, cpu, cuda or cuda:N"),
        },
    }
}

fn cuda(n: usize) -> Result<Device> {
    anyhow::ensure!(
        tch::Cuda::is_available() && n < tch::Cuda::device_count() as usize,
        "device cuda:{n} requested but CUDA is not available (devices: {})",
        tch::Cuda::device_count()
    );
    // cuDNN picks the fastest convolution algorithm per shape (shapes repeat every step).
    tch::Cuda::cudnn_set_benchmark(true);
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
