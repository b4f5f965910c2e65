//! Device selection: `auto` = CUDA when available, else CPU.

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
            DeviceChoice::Auto | DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => cuda(n),
        }
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
