//! Models: the checkpoint a `path:` names, or the hub snapshot in the local cache (never
//! downloaded here), inspected by the loader itself without reading a tensor; label files; and
//! whether the device asked for exists on this machine.

use std::path::Path;

use tch::Device;

use crate::config::{ConfigError, DType, FileErrors, ModelConfig, ModelSource};
use crate::models::checkpoint::{self, CheckpointFormat, hub};
use crate::models::device;
use crate::runtime::native::{self, SideStreams};

pub fn check(
    name: &str,
    model: &ModelConfig,
    errors: &mut FileErrors<'_>,
    warnings: &mut Vec<ConfigError>,
) {
    let key = format!("models.{name}");
    if let Some(remote) = &model.remote {
        check_remote(&key, model, remote, errors, warnings);
        return;
    }
    let task_declared = model.task.is_some();
    match &model.source {
        ModelSource::Path(path) => {
            if let Err(message) = check_files(path, task_declared) {
                errors.push(format!("{key}.path"), message);
            }
        }
        ModelSource::Hub { repo, revision } => {
            check_hub(&key, repo, revision, task_declared, errors, warnings);
        }
    }
    if let Err(message) = device::torch_device(model.device) {
        errors.push(format!("{key}.device"), message);
    }
    if let Some(labels) = &model.labels
        && !labels.is_file()
    {
        errors.push(
            format!("{key}.labels"),
            format!("label file {} does not exist", labels.display()),
        );
    }
}

/// A served model: its processor's files (config.json, preprocessor_config.json) read as
/// `run` reads them, the device for its processing, and the files of its TLS and token.
fn check_remote(
    key: &str,
    model: &ModelConfig,
    remote: &crate::config::RemoteConfig,
    errors: &mut FileErrors<'_>,
    warnings: &mut Vec<ConfigError>,
) {
    use crate::runtime::remote::processor;
    let processor_key = match &model.source {
        ModelSource::Path(_) => format!("{key}.processor.path"),
        ModelSource::Hub { .. } => format!("{key}.processor.hub"),
    };
    match processor::folder(&model.source, hub::Fetch::CacheOnly) {
        Ok(dir) => {
            if let Err(error) = processor::read(&dir, model) {
                errors.push(processor_key, error.to_string());
            }
        }
        Err(error) => match &model.source {
            ModelSource::Hub { repo, revision } if !hub::HubSettings::from_env().offline => {
                warnings.push(ConfigError {
                    file: errors.file.to_string(),
                    key: processor_key,
                    message: format!(
                        "{repo}@{revision}'s processor is not in the Hugging Face cache; its config.json and preprocessor_config.json will be downloaded at start"
                    ),
                })
            }
            _ => errors.push(processor_key, error.to_string()),
        },
    }
    if let Err(message) = device::torch_device(model.device) {
        errors.push(format!("{key}.device"), message);
    }
    if let Some(file) = &remote.token_file {
        match std::fs::read_to_string(file) {
            Ok(token) if token.trim().is_empty() => errors.push(
                format!("{key}.remote.token_file"),
                format!("{} is empty", file.display()),
            ),
            Ok(_) => {}
            Err(error) => errors.push(
                format!("{key}.remote.token_file"),
                format!("cannot read {}: {error}", file.display()),
            ),
        }
    }
    if let Some(tls) = &remote.tls {
        for (name, file) in [
            ("ca_file", &tls.ca_file),
            ("cert_file", &tls.cert_file),
            ("key_file", &tls.key_file),
        ] {
            if let Some(file) = file
                && let Err(error) = std::fs::metadata(file)
            {
                errors.push(
                    format!("{key}.remote.tls.{name}"),
                    format!("cannot read {}: {error}", file.display()),
                );
            }
        }
    }
}

/// What a model path must hold: config.json parses, the architecture is supported, every
/// weight file is there.
fn check_files(path: &Path, task_declared: bool) -> Result<(), String> {
    let files = checkpoint::inspect(path).map_err(|e| e.to_string())?;
    match files.format {
        CheckpointFormat::TorchScript { module } if !task_declared => Err(format!(
            "{} is a TorchScript model: set `task` (depth, segmentation or classification)",
            module.display()
        )),
        CheckpointFormat::Safetensors { weights, .. } => weights
            .files()
            .iter()
            .try_for_each(|file| check_safetensors(file)),
        CheckpointFormat::TorchScript { .. } => Ok(()),
    }
}

/// A safetensors file's header parses, its tensors' offsets follow one another with the sizes
/// their shapes and dtypes give, and the file is exactly as long as they say: a truncated or
/// corrupt download is caught here rather than when `run` loads it. Only the header is read.
pub fn check_safetensors(file: &Path) -> Result<(), String> {
    let fail = |what: String| format!("{}: {what}", file.display());
    let handle = std::fs::File::open(file).map_err(|e| fail(format!("cannot open: {e}")))?;
    let length = handle
        .metadata()
        .map_err(|e| fail(format!("cannot read: {e}")))?
        .len();
    if length < 8 {
        return Err(fail(format!(
            "{length} bytes is too short for a safetensors file"
        )));
    }
    let length = usize::try_from(length).map_err(|_| fail("too large to map".into()))?;
    let map = ReadOnlyMap::new(&handle, length).map_err(|e| fail(format!("cannot map: {e}")))?;
    match safetensors::SafeTensors::read_metadata(map.bytes()) {
        Ok(_) => Ok(()),
        Err(safetensors::SafeTensorError::MetadataIncompleteBuffer) => Err(fail(format!(
            "the file is {length} bytes but its header describes another size: truncated or damaged (download it again)"
        ))),
        Err(error) => Err(fail(format!(
            "not a valid safetensors file ({error:?}); download it again"
        ))),
    }
}

/// A file mapped read-only: the header pages are read when touched, the tensors never.
struct ReadOnlyMap {
    address: *mut libc::c_void,
    length: usize,
}

impl ReadOnlyMap {
    fn new(file: &std::fs::File, length: usize) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: a private read-only mapping of an open file of `length` (> 0) bytes; it is
        // unmapped in Drop and only read through `bytes()` while `self` lives.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { address, length })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `length` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.address.cast::<u8>(), self.length) }
    }
}

impl Drop for ReadOnlyMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe {
            libc::munmap(self.address, self.length);
        }
    }
}

/// A hub model is checked in the local cache only. A miss is an error when offline (the
/// daemon could not start it), otherwise a warning (it is downloaded at start).
fn check_hub(
    key: &str,
    repo: &str,
    revision: &str,
    task_declared: bool,
    errors: &mut FileErrors<'_>,
    warnings: &mut Vec<ConfigError>,
) {
    let settings = hub::HubSettings::from_env();
    match hub::resolve(&settings, repo, revision, hub::Fetch::CacheOnly) {
        Ok(dir) => {
            if let Err(message) = check_files(&dir, task_declared) {
                errors.push(format!("{key}.hub"), message);
            }
        }
        Err(error) if settings.offline => errors.push(format!("{key}.hub"), error.to_string()),
        Err(_) => warnings.push(ConfigError {
            file: errors.file.to_string(),
            key: format!("{key}.hub"),
            message: format!(
                "{repo}@{revision} is not in the Hugging Face cache ({}); it will be downloaded at start ({})",
                settings.cache_dir.display(),
                hub::fetch_command(repo, revision)
            ),
        }),
    }
}

/// One line for `visiond check`: where and how the model will run on this machine, with the
/// precision choices stated (dtype, TF32) and whether its forwards replay CUDA graphs.
pub fn summary(name: &str, model: &ModelConfig) -> String {
    let resolved = device::torch_device(model.device);
    if let Some(remote) = &model.remote {
        return format!(
            "  model {name}: served by {} at {} (max_in_flight {}, timeout {} ms), sends {} {}, processing on {}",
            remote.served_name(),
            remote.url,
            remote.max_in_flight,
            remote.timeout_ms,
            remote.input,
            model.dtype,
            match (&model.device, &resolved) {
                (crate::config::DeviceSpec::Auto, Ok(Device::Cpu)) => "auto (cpu here)".to_owned(),
                (crate::config::DeviceSpec::Auto, Ok(Device::Cuda(i))) =>
                    format!("auto (cuda:{i} here)"),
                (spec, _) => spec.to_string(),
            }
        );
    }
    let device = match (&model.device, &resolved) {
        (crate::config::DeviceSpec::Auto, Ok(Device::Cpu)) => "auto (cpu here)".to_owned(),
        (crate::config::DeviceSpec::Auto, Ok(Device::Cuda(i))) => format!("auto (cuda:{i} here)"),
        (spec, _) => spec.to_string(),
    };
    let on_cuda = matches!(resolved, Ok(Device::Cuda(_)));
    let tf32 = match (model.dtype, model.allow_tf32, on_cuda) {
        (DType::F32, true, true) => "TF32 on (f32 matrix products and convolutions)".to_owned(),
        (DType::F32, false, true) => "TF32 off (allow_tf32: false): full f32".to_owned(),
        (DType::F32, allow, false) => format!(
            "TF32 {} (applies on CUDA only)",
            if allow { "on" } else { "off" }
        ),
        (dtype, _, _) => format!("TF32 n/a ({dtype} weights and activations)"),
    };
    let graphs = match (model.cuda_graphs, &resolved) {
        (false, _) => "CUDA graphs off".to_owned(),
        (true, Ok(Device::Cuda(index))) => match native::cuda_graphs_available(*index) {
            Ok(()) => "CUDA graphs on".to_owned(),
            Err(why) => format!("CUDA graphs unavailable ({why}): eager"),
        },
        (true, _) => "CUDA graphs on (applies on CUDA only)".to_owned(),
    };
    // On CUDA: whether frames will be converted by the fused kernels (NVRTC compiles and loads
    // them here, as the first frame would) or by tensor ops, and why.
    let conversions = match resolved {
        Ok(Device::Cuda(_)) if !crate::runtime::fused::enabled() => {
            ", colour conversions as tensor ops (VISIOND_FUSED_KERNELS=off)".to_owned()
        }
        Ok(Device::Cuda(index)) => match native::load_kernels(index) {
            Ok(()) => ", colour conversions by fused kernels (NVRTC)".to_owned(),
            Err(why) => format!(", colour conversions as tensor ops ({why})"),
        },
        _ => String::new(),
    };
    // On CUDA: whether frames are staged and copied back on side streams, or why not.
    let streams = match resolved {
        Ok(device @ Device::Cuda(_)) => format!(", {}", SideStreams::for_device(device)),
        _ => String::new(),
    };
    format!(
        "  model {name}: {device}, {}, {tf32}, {graphs}{conversions}{streams}",
        model.dtype
    )
}

/// libtorch's TF32 switches are process-wide: f32 CUDA models that disagree all get IEEE f32.
pub fn tf32_conflict(models: &[(&str, &ModelConfig)]) -> Option<String> {
    let f32_cuda: Vec<&(&str, &ModelConfig)> = models
        .iter()
        .filter(|(_, m)| {
            m.remote.is_none()
                && m.dtype == DType::F32
                && matches!(device::torch_device(m.device), Ok(Device::Cuda(_)))
        })
        .collect();
    let off: Vec<&str> = f32_cuda
        .iter()
        .filter(|(_, m)| !m.allow_tf32)
        .map(|(n, _)| *n)
        .collect();
    let on: Vec<&str> = f32_cuda
        .iter()
        .filter(|(_, m)| m.allow_tf32)
        .map(|(n, _)| *n)
        .collect();
    (!off.is_empty() && !on.is_empty()).then(|| {
        format!(
            "allow_tf32 is false for {} but true for {}: libtorch's TF32 switch is process-wide, so all of them run full f32",
            off.join(", "),
            on.join(", ")
        )
    })
}
