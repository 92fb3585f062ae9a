//! `visiond infer`: one model, one input tensor, a human summary, optionally the tensors saved.
//!
//! The check a person runs before wiring a model into a pipeline: does the checkpoint load on
//! this box, does it accept this input size, does its output look sane. With `--save` the
//! exact input and output are written as safetensors, to compare against transformers.

use std::io::Write;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::models::ModelError;
use crate::models::checkpoint::{self, LoadOptions, LoadedModel, ModelInfo, ModelSource};
use crate::models::device::{DType, DeviceSpec};
use crate::models::{Task, checkpoint::parse_task};

/// The tensor `--pixel-values` must hold (and `--save` writes back).
pub const PIXEL_VALUES: &str = "pixel_values";

#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["image", "pixel_values"])))]
pub struct InferArgs {
    /// Model folder (config.json + model.safetensors, or model.pt) or Hugging Face hub id
    /// (org/name, looked up in the local HF cache, downloaded unless HF_HUB_OFFLINE=1).
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub model: String,
    /// Hub revision: branch, tag, refs/pr/N or commit hash [default: main].
    #[arg(long, value_name = "REVISION")]
    pub revision: Option<String>,
    /// An image file (PNG/JPEG). Not available yet: image preprocessing is a later step, use
    /// --pixel-values.
    #[arg(long, value_name = "PNG/JPEG")]
    pub image: Option<PathBuf>,
    /// A safetensors file holding `pixel_values` [B, 3, H, W] (already preprocessed), fed to
    /// the model as it is.
    #[arg(long, value_name = "FILE.safetensors")]
    pub pixel_values: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: DeviceSpec,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32", value_name = "DTYPE")]
    pub dtype: DType,
    /// How many classes to list (classification: top scores; segmentation: largest areas).
    #[arg(long, default_value_t = 5, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: u32,
    /// Write `pixel_values` and the output (`predicted_depth` or `logits`, f32) here.
    #[arg(long, value_name = "FILE.safetensors")]
    pub save: Option<PathBuf>,
    /// TorchScript models only: depth, segmentation or classification.
    #[arg(long, value_name = "TASK", value_parser = parse_task)]
    pub task: Option<Task>,
    /// TorchScript models only: class names, one per line (or a JSON list / id2label).
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// Something the person passed is wrong: a flag, a file, the model, the input size.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A failure while running that the flags cannot fix (libtorch, writing results).
    #[error("{0}")]
    Runtime(String),
}

impl InferError {
    /// 2 for bad input (the command line or the files it names need fixing), 1 for failures
    /// at run time.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Input(_) => 2,
            Self::Runtime(_) | Self::Model(ModelError::Torch(_)) => 1,
            Self::Model(_) => 2,
        }
    }
}

/// Runs `visiond infer`, writing the summary to `out`.
pub fn run(args: &InferArgs, out: &mut dyn Write) -> Result<(), InferError> {
    if let Some(image) = &args.image {
        return Err(InferError::Input(format!(
            "--image {}: image preprocessing is not available yet; pass an already preprocessed tensor with --pixel-values FILE.safetensors (tensor `{PIXEL_VALUES}`, [B, 3, H, W] float32)",
            image.display()
        )));
    }
    let Some(pixel_file) = &args.pixel_values else {
        // clap's ArgGroup makes one of the two required; this is for library callers.
        return Err(InferError::Input(
            "one of --image or --pixel-values is required".to_owned(),
        ));
    };
    let source = ModelSource::parse(&args.model, args.revision.as_deref())
        .map_err(|e| InferError::Input(format!("--model {e}")))?;
    if let Some(save) = &args.save {
        check_save_target(save)?;
    }
    // Read the input before loading the model: a bad file should not cost a model load.
    let pixel_values = read_pixel_values(pixel_file)?;

    let options = LoadOptions {
        device: args.device,
        dtype: args.dtype,
        task: args.task,
        labels: args.labels.clone(),
    };
    let LoadedModel { model, info } = checkpoint::open(&source, &options)?;
    let input = pixel_values
        .to_device(info.device)
        .to_kind(info.dtype.kind());
    let output = tch::no_grad(|| model.forward(&input))?;
    // Summaries and files are f32 on the CPU whatever the model ran in.
    let output = output
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();

    let write_err = |e: std::io::Error| InferError::Runtime(format!("writing the summary: {e}"));
    write_header(out, &info, pixel_file, &pixel_values).map_err(write_err)?;
    let summary = match info.task {
        Task::Depth => summarize_depth(out, &output),
        Task::Classification => summarize_classification(out, &info, &output, args.top_k),
        Task::Segmentation => summarize_segmentation(out, &info, &output, args.top_k),
    };
    summary.map_err(|e| match e {
        SummaryError::Io(e) => write_err(e),
        SummaryError::Torch(e) => InferError::Model(ModelError::Torch(e)),
    })?;

    if let Some(save) = &args.save {
        let output_name = info.output_name();
        Tensor::write_safetensors(
            &[(PIXEL_VALUES, &pixel_values), (output_name, &output)],
            save,
        )
        .map_err(|e| InferError::Runtime(format!("--save {}: {e}", save.display())))?;
        writeln!(
            out,
            "saved {PIXEL_VALUES} and {output_name} to {}",
            save.display()
        )
        .map_err(write_err)?;
    }
    Ok(())
}

/// Fails early when `--save` cannot be written, so a model is not run for nothing.
fn check_save_target(save: &Path) -> Result<(), InferError> {
    let parent = match save.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(InferError::Input(format!(
            "--save {}: folder {} does not exist",
            save.display(),
            parent.display()
        )));
    }
    if save.is_dir() {
        return Err(InferError::Input(format!(
            "--save {}: is a folder; give a file name such as out.safetensors",
            save.display()
        )));
    }
    Ok(())
}

/// `pixel_values` from a safetensors file, as f32 on the CPU, checked to be [B, 3, H, W].
pub fn read_pixel_values(file: &Path) -> Result<Tensor, InferError> {
    let flag = || format!("--pixel-values {}", file.display());
    if !file.is_file() {
        return Err(InferError::Input(format!("{}: no such file", flag())));
    }
    let tensors = Tensor::read_safetensors(file).map_err(|e| {
        InferError::Input(format!("{}: not a readable safetensors file: {e}", flag()))
    })?;
    let names: Vec<&str> = tensors.iter().map(|(name, _)| name.as_str()).collect();
    let Some((_, tensor)) = tensors.iter().find(|(name, _)| name == PIXEL_VALUES) else {
        return Err(InferError::Input(format!(
            "{}: no tensor named {PIXEL_VALUES} (found: {})",
            flag(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    };
    let shape = tensor.size();
    if shape.len() != 4 || shape[1] != 3 || shape.iter().any(|&d| d < 1) {
        return Err(InferError::Input(format!(
            "{}: {PIXEL_VALUES} has shape {shape:?}; expected [B, 3, H, W]",
            flag()
        )));
    }
    if !tensor.is_floating_point() {
        return Err(InferError::Input(format!(
            "{}: {PIXEL_VALUES} holds {:?} values; expected preprocessed floats (float32)",
            flag(),
            tensor.kind()
        )));
    }
    Ok(tensor.to_kind(Kind::Float).contiguous())
}

fn write_header(
    out: &mut dyn Write,
    info: &ModelInfo,
    pixel_file: &Path,
    pixel_values: &Tensor,
) -> std::io::Result<()> {
    writeln!(
        out,
        "model: {} ({}, {}) on {} {}",
        info.name,
        info.architecture,
        checkpoint::task_name(info.task),
        device_name(info.device),
        dtype_name(info.dtype)
    )?;
    writeln!(
        out,
        "input: {PIXEL_VALUES} {:?} from {}",
        pixel_values.size(),
        pixel_file.display()
    )
}

fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cpu => "cpu".to_owned(),
        tch::Device::Cuda(index) => format!("cuda:{index}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::Bf16 => "bf16",
    }
}

#[derive(Debug)]
enum SummaryError {
    Io(std::io::Error),
    Torch(tch::TchError),
}

impl From<std::io::Error> for SummaryError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<tch::TchError> for SummaryError {
    fn from(e: tch::TchError) -> Self {
        Self::Torch(e)
    }
}

fn scalar(t: &Tensor) -> Result<f64, SummaryError> {
    Ok(t.f_double_value(&[])?)
}

/// `predicted_depth [B, H, W]`, then min/mean/max per image.
fn summarize_depth(out: &mut dyn Write, depth: &Tensor) -> Result<(), SummaryError> {
    let shape = depth.size();
    writeln!(out, "predicted_depth {shape:?}")?;
    let batch = shape.first().copied().unwrap_or(0);
    for b in 0..batch {
        let item = depth.f_get(b)?;
        writeln!(
            out,
            "  image {b}: {}x{} min {:.4} mean {:.4} max {:.4}",
            shape.get(1).copied().unwrap_or(0),
            shape.get(2).copied().unwrap_or(0),
            scalar(&item.f_min()?)?,
            scalar(&item.f_mean(Kind::Float)?)?,
            scalar(&item.f_max()?)?,
        )?;
    }
    Ok(())
}

/// `logits [B, C]`, then the top-k classes per image with softmax scores.
fn summarize_classification(
    out: &mut dyn Write,
    info: &ModelInfo,
    logits: &Tensor,
    top_k: u32,
) -> Result<(), SummaryError> {
    let shape = logits.size();
    let classes = shape.get(1).copied().unwrap_or(0);
    let k = i64::from(top_k).min(classes);
    writeln!(
        out,
        "logits {shape:?}: top {k} of {classes} classes (softmax)"
    )?;
    let probabilities = logits.f_softmax(-1, Kind::Float)?;
    let (scores, ids) = probabilities.f_topk(k, -1, true, true)?;
    for b in 0..shape.first().copied().unwrap_or(0) {
        writeln!(out, "  image {b}:")?;
        for rank in 0..k {
            let score = scores.f_double_value(&[b, rank])?;
            let id = ids.f_int64_value(&[b, rank])?;
            writeln!(
                out,
                "    {score:.4}  {} ({id})",
                info.label(usize::try_from(id).unwrap_or(usize::MAX))
            )?;
        }
    }
    Ok(())
}

/// `logits [B, C, H, W]`, then per image the k classes covering most pixels after argmax.
fn summarize_segmentation(
    out: &mut dyn Write,
    info: &ModelInfo,
    logits: &Tensor,
    top_k: u32,
) -> Result<(), SummaryError> {
    let shape = logits.size();
    let classes = shape.get(1).copied().unwrap_or(0);
    let (height, width) = (
        shape.get(2).copied().unwrap_or(0),
        shape.get(3).copied().unwrap_or(0),
    );
    writeln!(
        out,
        "logits {shape:?}: {classes} classes, class map {height}x{width}; top {top_k} classes by pixel share"
    )?;
    let class_map = logits.f_argmax(1, false)?;
    let pixels = (height * width).max(1) as f64;
    for b in 0..shape.first().copied().unwrap_or(0) {
        writeln!(out, "  image {b}:")?;
        let counts = class_map
            .f_get(b)?
            .f_flatten(0, -1)?
            .f_bincount::<Tensor>(None, classes)?;
        let k = i64::from(top_k).min(classes);
        let (top_counts, ids) = counts.f_topk(k, -1, true, true)?;
        for rank in 0..k {
            let count = top_counts.f_int64_value(&[rank])?;
            if count == 0 {
                break;
            }
            let id = ids.f_int64_value(&[rank])?;
            writeln!(
                out,
                "    {:5.1}%  {} ({id})",
                100.0 * count as f64 / pixels,
                info.label(usize::try_from(id).unwrap_or(usize::MAX))
            )?;
        }
    }
    Ok(())
}
