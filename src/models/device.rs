//! The config's device and precision as libtorch sees them.

use tch::{Device, Kind};

use crate::config::{DType, DeviceSpec};

/// The libtorch device, or why it cannot be used on this machine.
pub fn torch_device(spec: DeviceSpec) -> Result<Device, String> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => Ok(Device::cuda_if_available()),
        DeviceSpec::Cuda(index) => {
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

pub fn torch_kind(dtype: DType) -> Kind {
    match dtype {
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::Bf16 => Kind::BFloat16,
    }
}
