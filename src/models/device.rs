//! Where and in which precision a model runs, as written in the config (`cuda:1`, `f16`).

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind};

/// `cpu`, `cuda` (= `cuda:0`), `cuda:N`, or `auto` (the first GPU when CUDA works, else CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let unparsable =
            || format!("unparsable device '{text}': expected cpu, cuda, cuda:N or auto");
        match text {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => {
                let index = other.strip_prefix("cuda:").ok_or_else(unparsable)?;
                index.parse().map(Self::Cuda).map_err(|_| unparsable())
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl DeviceSpec {
    /// The libtorch device, or why it cannot be used on this machine.
    pub fn resolve(self) -> Result<Device, String> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => Ok(Device::cuda_if_available()),
            Self::Cuda(index) => {
                let count = tch::Cuda::device_count();
                if (index as i64) < count {
                    Ok(Device::Cuda(index))
                } else if count == 0 {
                    Err(format!(
                        "device cuda:{index} requested but CUDA is not available (libtorch sees no GPU)"
                    ))
                } else {
                    Err(format!(
                        "device cuda:{index} requested but only {count} GPU(s) are visible"
                    ))
                }
            }
        }
    }
}

/// Numeric precision of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    #[default]
    F32,
    F16,
    Bf16,
}

impl DType {
    pub fn kind(self) -> Kind {
        match self {
            Self::F32 => Kind::Float,
            Self::F16 => Kind::Half,
            Self::Bf16 => Kind::BFloat16,
        }
    }
}

impl FromStr for DType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!("unknown dtype '{text}': expected f32, f16 or bf16")),
        }
    }
}
