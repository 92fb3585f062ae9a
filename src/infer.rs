//! `visiond infer`: one model, one input (an image or a preprocessed tensor), a human summary,
//! optionally the tensors saved and the annotated frame written as a PNG.
//!
//! The check a person runs before wiring a model into a pipeline: does the checkpoint load on
//! this box, does it accept this input size, does its output look sane. An `--image` takes the
//! daemon's own path (GStreamer decode to RGB, the checkpoint's image processor on the device,
//! the forward, and with `--overlay` the daemon's annotation). With `--save` the exact input and
//! output are written as safetensors, to compare against transformers.

use std::io::Write;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::config::{Colormap, DType, DepthRange, DeviceSpec, OverlayConfig, OverlayMode, Task};
use crate::frames::RgbImage;
use crate::media::still::{self, StillError};
use crate::models::ModelError;
use crate::models::checkpoint::{self, LoadOptions, LoadedModel, ModelInfo};
use crate::models::device::torch_kind;
use crate::processing::{Annotator, ProcessingError};
use crate::runtime::tensors::{self, ForwardError};
use crate::runtime::{Execution, ModelRunner, apply_tf32};

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
    /// An image file (PNG, JPEG, anything GStreamer decodes), decoded to RGB and preprocessed
    /// as the daemon preprocesses a frame: the model folder's preprocessor_config.json, else the
    /// architecture's published settings.
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
    /// Run the forward eagerly; by default a CUDA device replays it from a CUDA graph.
    #[arg(long)]
    pub eager: bool,
    /// f32 on CUDA: let matrix products and convolutions use TF32 (the config's `allow_tf32`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub allow_tf32: bool,
    /// How many classes to list (classification: top scores; segmentation: largest areas).
    #[arg(long, default_value_t = 5, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: u32,
    /// Write `pixel_values` and the output (`predicted_depth` or `logits`, f32) here.
    #[arg(long, value_name = "FILE.safetensors")]
    pub save: Option<PathBuf>,
    /// TorchScript models only: depth, segmentation or classification.
    #[arg(long, value_name = "TASK")]
    pub task: Option<Task>,
    /// TorchScript models only: class names, one per line (or a JSON list / id2label).
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// With --image: write the frame the daemon would publish as a PNG (depth colour map,
    /// segmentation palette, or the image with the classification label drawn on it).
    // `requires` alone lets --pixel-values through (it conflicts with --image in the input group,
    // which clap counts as an excuse), hence the explicit conflict.
    #[arg(
        long,
        value_name = "OUT.png",
        requires = "image",
        conflicts_with = "pixel_values"
    )]
    pub overlay: Option<PathBuf>,
    /// --overlay: how the map is shown (side_by_side doubles the width).
    #[arg(long, value_enum, value_name = "MODE", requires = "overlay",
          default_value_t = OverlayConfig::default().mode)]
    pub mode: OverlayMode,
    /// --overlay: depth colour map.
    #[arg(long, value_enum, value_name = "COLORMAP", requires = "overlay",
          default_value_t = OverlayConfig::default().colormap)]
    pub colormap: Colormap,
    /// --overlay: weight of the map in blend mode, 0 to 1.
    #[arg(long, value_name = "A", requires = "overlay", value_parser = parse_alpha,
          default_value_t = OverlayConfig::default().alpha)]
    pub alpha: f64,
    /// --overlay: depth values mapped onto the colour map: per_frame (min..max), ema (on one
    /// image the same as per_frame) or LO,HI (fixed, for metric depth).
    #[arg(long, value_name = "per_frame|ema|LO,HI", requires = "overlay",
          value_parser = parse_range, default_value = "ema")]
    pub range: DepthRange,
    /// --overlay: show depth instead of relative inverse depth (reverses the colour map).
    #[arg(long, requires = "overlay")]
    pub invert: bool,
}

impl InferArgs {
    /// The pipeline `overlay:` section these flags stand for.
    pub fn overlay_config(&self) -> OverlayConfig {
        OverlayConfig {
            mode: self.mode,
            colormap: self.colormap,
            alpha: self.alpha,
            range: self.range,
            invert: self.invert,
            ..OverlayConfig::default()
        }
    }
}

fn parse_alpha(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(alpha) if (0.0..=1.0).contains(&alpha) => Ok(alpha),
        _ => Err(format!("'{text}' is not a number between 0 and 1")),
    }
}

/// `per_frame`, `ema` or `LO,HI` (the config's `range: {fixed: [lo, hi]}`).
fn parse_range(text: &str) -> Result<DepthRange, String> {
    match text {
        "per_frame" => return Ok(DepthRange::PerFrame),
        "ema" => return Ok(DepthRange::Ema),
        _ => {}
    }
    let expected = "expected per_frame, ema or LO,HI (two numbers, LO below HI, e.g. 0,10)";
    let Some((lo, hi)) = text.split_once(',') else {
        return Err(format!("'{text}': {expected}"));
    };
    let number = |s: &str| s.trim().parse::<f64>().ok().filter(|x| x.is_finite());
    match (number(lo), number(hi)) {
        (Some(lo), Some(hi)) if lo < hi => Ok(DepthRange::Fixed([lo, hi])),
        (Some(lo), Some(hi)) => Err(format!(
            "'{text}': lower bound {lo} must be below upper bound {hi}"
        )),
        _ => Err(format!("'{text}': {expected}")),
    }
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

/// What the model is run on, read before the model is loaded (a bad file should not cost a
/// model load).
enum Input {
    /// `--pixel-values`: f32 on the CPU, fed as it is.
    PixelValues { file: PathBuf, tensor: Tensor },
    /// `--image`: packed RGB, preprocessed once the model (and so its processor) is known.
    Image { file: PathBuf, image: RgbImage },
}

/// One forward's tensors.
struct Ran {
    /// The input as fed to the model, f32 on the CPU.
    pixel_values: Tensor,
    /// The model output, f32 on the model's device.
    output: Tensor,
    /// `--image`: the frame as uint8 [H, W, 3] on the model's device.
    frame: Option<Tensor>,
    /// `--image`: where the processor settings came from.
    processor: Option<String>,
}

/// Runs `visiond infer`, writing the summary to `out`.
pub fn run(args: &InferArgs, out: &mut dyn Write) -> Result<(), InferError> {
    let source = checkpoint::source_from_spec(&args.model, args.revision.as_deref())
        .map_err(|e| InferError::Input(format!("--model {e}")))?;
    if let Some(save) = &args.save {
        check_target("--save", save, "out.safetensors")?;
    }
    if let Some(overlay) = &args.overlay {
        if args.image.is_none() {
            // clap makes --overlay require --image; this is for library callers.
            return Err(InferError::Input(
                "--overlay needs --image: there is no frame to annotate".to_owned(),
            ));
        }
        check_target("--overlay", overlay, "out.png")?;
        let extension = overlay.extension().and_then(|e| e.to_str());
        if !extension.is_some_and(|e| e.eq_ignore_ascii_case("png")) {
            return Err(InferError::Input(format!(
                "--overlay {}: the overlay is written as PNG; give a file name ending in .png",
                overlay.display()
            )));
        }
    }
    let input = match (&args.image, &args.pixel_values) {
        (Some(file), _) => Input::Image {
            file: file.clone(),
            image: read_image(file)?,
        },
        (None, Some(file)) => Input::PixelValues {
            file: file.clone(),
            tensor: read_pixel_values(file)?,
        },
        // clap's ArgGroup makes one of the two required; this is for library callers.
        (None, None) => {
            return Err(InferError::Input(
                "one of --image or --pixel-values is required".to_owned(),
            ));
        }
    };

    let options = LoadOptions {
        device: args.device,
        dtype: args.dtype,
        task: args.task,
        labels: args.labels.clone(),
    };
    let LoadedModel { model, info } = checkpoint::open(&source, &options)?;
    apply_tf32(&info.name, info.device, info.dtype, args.allow_tf32);
    let execution = if args.eager {
        Execution::Eager
    } else {
        Execution::for_device(&info.name, info.device, true)
    };
    let mut runner = ModelRunner::for_model(model, &info, execution);
    let ran = match &input {
        Input::PixelValues { tensor, .. } => run_pixel_values(&mut runner, &info, tensor)?,
        Input::Image { file, image } => run_image(&mut runner, &info, file, image)?,
    };
    // Summaries and files are f32 on the CPU whatever the model ran in.
    let output = ran
        .output
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();

    let write_err = |e: std::io::Error| InferError::Runtime(format!("writing the summary: {e}"));
    write_header(out, &info, &input, &ran).map_err(write_err)?;
    let summary = match info.task {
        Task::Depth => summarize_depth(out, &output),
        Task::Classification => summarize_classification(out, &info, &output, args.top_k),
        Task::Segmentation => summarize_segmentation(out, &info, &output, args.top_k),
    };
    summary.map_err(|e| match e {
        SummaryError::Io(e) => write_err(e),
        SummaryError::Torch(e) => InferError::Model(ModelError::Torch(e)),
    })?;

    if let (Some(file), Some(frame)) = (&args.overlay, &ran.frame) {
        let written = write_overlay(file, &args.overlay_config(), &info, frame, &ran.output)?;
        writeln!(out, "{written}").map_err(write_err)?;
    }
    if let Some(save) = &args.save {
        let output_name = info.output_name();
        // A center crop leaves the pixel values a strided view; safetensors wants them packed.
        let pixel_values = ran.pixel_values.to_device(tch::Device::Cpu).contiguous();
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

/// `--pixel-values`: the tensor as it is, on the model's device and dtype.
fn run_pixel_values(
    model: &mut ModelRunner,
    info: &ModelInfo,
    pixel_values: &Tensor,
) -> Result<Ran, InferError> {
    let input = pixel_values
        .to_device(info.device)
        .to_kind(torch_kind(info.dtype));
    let output = model
        .forward(&input)?
        .f_to_kind(Kind::Float)
        .map_err(ModelError::from)?;
    Ok(Ran {
        pixel_values: pixel_values.shallow_clone(),
        output,
        frame: None,
        processor: None,
    })
}

/// `--image`: the daemon's path for one frame: upload, the checkpoint's processor on the
/// device, forward.
fn run_image(
    model: &mut ModelRunner,
    info: &ModelInfo,
    file: &Path,
    image: &RgbImage,
) -> Result<Ran, InferError> {
    let preprocessor = tensors::preprocessor_for(info, None).map_err(|e| match e {
        ProcessingError::NoProcessor { .. } => InferError::Input(format!(
            "{e}; or pass an already preprocessed tensor with --pixel-values"
        )),
        e => InferError::Input(e.to_string()),
    })?;
    let frame = tensors::upload_rgb(&image.data, image.height, image.width, info.device)
        .map_err(|e| InferError::Runtime(format!("--image {}: {e}", file.display())))?;
    let (pixel_values, output) = tensors::preprocess_and_forward(
        model,
        &preprocessor,
        torch_kind(info.dtype),
        std::slice::from_ref(&frame),
    )
    .map_err(|e| match e {
        ForwardError::Preprocessing(e) => {
            InferError::Input(format!("--image {}: preprocessing: {e}", file.display()))
        }
        ForwardError::Model(e) => InferError::Model(e),
    })?;
    let pixel_values = pixel_values
        .f_to_device(tch::Device::Cpu)
        .and_then(|t| t.f_to_kind(Kind::Float))
        .map_err(ModelError::from)?;
    Ok(Ran {
        pixel_values,
        output,
        frame: Some(frame),
        processor: Some(preprocessor.config().source.clone()),
    })
}

/// Annotates the frame as the daemon does and writes it as a PNG (the classification label
/// drawn as the output bin draws it). Returns the line that reports it.
fn write_overlay(
    file: &Path,
    overlay: &OverlayConfig,
    info: &ModelInfo,
    frame: &Tensor,
    output: &Tensor,
) -> Result<String, InferError> {
    let fail = |e: String| InferError::Runtime(format!("--overlay {}: {e}", file.display()));
    let mut annotator = Annotator::new(overlay, info.task, info.id2label.clone());
    let first = output.f_get(0).map_err(ModelError::from)?;
    let annotated = tch::no_grad(|| annotator.annotate(frame, &first))
        .map_err(|e| fail(format!("post-processing: {e}")))?;
    let label = annotated.results.label();
    let picture = tensors::download(&annotated.frame).map_err(fail)?;
    still::encode_png(&picture, file, label.as_deref()).map_err(|e| fail(e.to_string()))?;
    let what = match &label {
        Some(text) => format!("label \"{text}\""),
        // The flag's spelling, which is the YAML's.
        None => clap::ValueEnum::to_possible_value(&overlay.mode)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default(),
    };
    Ok(format!(
        "overlay: {what}, {}x{} PNG written to {}",
        picture.width,
        picture.height,
        file.display()
    ))
}

/// Fails early when an output file cannot be written, so a model is not run for nothing.
fn check_target(flag: &str, file: &Path, example: &str) -> Result<(), InferError> {
    let parent = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(InferError::Input(format!(
            "{flag} {}: folder {} does not exist",
            file.display(),
            parent.display()
        )));
    }
    if file.is_dir() {
        return Err(InferError::Input(format!(
            "{flag} {}: is a folder; give a file name such as {example}",
            file.display()
        )));
    }
    Ok(())
}

/// An image file decoded by GStreamer to packed RGB.
pub fn read_image(file: &Path) -> Result<RgbImage, InferError> {
    let flag = || format!("--image {}", file.display());
    if file.is_dir() {
        return Err(InferError::Input(format!(
            "{}: is a folder, not an image file",
            flag()
        )));
    }
    if !file.is_file() {
        return Err(InferError::Input(format!("{}: no such file", flag())));
    }
    if let Err(e) = std::fs::File::open(file) {
        return Err(InferError::Input(format!(
            "{}: cannot be read: {e}",
            flag()
        )));
    }
    still::decode_rgb(file).map_err(|e| match e {
        StillError::Undecodable(reason) => InferError::Input(format!(
            "{}: cannot be decoded as an image: {reason}",
            flag()
        )),
        StillError::Failed(reason) => InferError::Runtime(format!("{}: {reason}", flag())),
    })
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
    input: &Input,
    ran: &Ran,
) -> std::io::Result<()> {
    writeln!(
        out,
        "model: {} ({}, {}) on {} {}",
        info.name,
        info.architecture,
        info.task,
        device_name(info.device),
        info.dtype
    )?;
    let shape = ran.pixel_values.size();
    match input {
        Input::PixelValues { file, .. } => {
            writeln!(
                out,
                "input: {PIXEL_VALUES} {shape:?} from {}",
                file.display()
            )
        }
        Input::Image { file, image } => writeln!(
            out,
            "input: {PIXEL_VALUES} {shape:?} from {} ({}x{} RGB, processor: {})",
            file.display(),
            image.width,
            image.height,
            ran.processor.as_deref().unwrap_or("?")
        ),
    }
}

fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cpu => "cpu".to_owned(),
        tch::Device::Cuda(index) => format!("cuda:{index}"),
        other => format!("{other:?}").to_lowercase(),
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: InferArgs,
    }

    fn parse(extra: &[&str]) -> Result<InferArgs, clap::Error> {
        let mut argv = vec!["visiond", "--model", "m", "--image", "a.png"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|cli| cli.args)
    }

    #[test]
    fn overlay_defaults_are_the_pipeline_defaults() {
        let args = parse(&["--overlay", "o.png"]).unwrap();
        assert_eq!(args.overlay_config(), OverlayConfig::default());
        // Defaults do not count as given: no --overlay needed without the flags.
        assert!(parse(&[]).unwrap().overlay.is_none());
    }

    #[test]
    fn overlay_flags_build_the_config() {
        let args = parse(&[
            "--overlay",
            "o.png",
            "--mode",
            "side_by_side",
            "--colormap",
            "grayscale",
            "--alpha",
            "0.25",
            "--range",
            "0.5,10",
            "--invert",
        ])
        .unwrap();
        let config = args.overlay_config();
        assert_eq!(config.mode, OverlayMode::SideBySide);
        assert_eq!(config.colormap, Colormap::Grayscale);
        assert_eq!(config.alpha, 0.25);
        assert_eq!(config.range, DepthRange::Fixed([0.5, 10.0]));
        assert!(config.invert);
        assert_eq!(parse_range("per_frame"), Ok(DepthRange::PerFrame));
        assert_eq!(parse_range(" -1 , 2"), Ok(DepthRange::Fixed([-1.0, 2.0])));
    }

    #[test]
    fn bad_overlay_flags_are_refused() {
        for bad in [
            &["--mode", "blend"][..],
            &["--overlay", "o.png", "--alpha", "-0.1"],
            &["--overlay", "o.png", "--alpha", "x"],
            &["--overlay", "o.png", "--range", "1,1"],
            &["--overlay", "o.png", "--range", "1,inf"],
            &["--overlay", "o.png", "--range", "1"],
            &["--overlay", "o.png", "--colormap", "jet"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let e = Cli::try_parse_from([
            "visiond",
            "--model",
            "m",
            "--pixel-values",
            "p",
            "--overlay",
            "o.png",
        ]);
        assert!(e.is_err());
    }
}
