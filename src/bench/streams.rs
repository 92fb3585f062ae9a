//! `visiond bench --streams N`: N synthetic streams through the daemon's whole frame path (a
//! GStreamer source per stream, the model's batching worker, an output per stream), the way
//! `visiond run` runs them, and what it cost: per-stream and total frames/s, drops, latency
//! p50/p99, CPU, resident memory and GPU memory.
//!
//! The streams are `videotestsrc` in the format a decoder produces (NV12 or I420 by default), so
//! the numbers are those of the frame path, not of a decoder. With `--model none` they are the
//! frame path's own cost; with a checkpoint, what the model leaves of it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use tch::{Device, Kind, Tensor};

use crate::config::{DType, DeviceSpec, ModelSource};
use crate::frames::DropCounter;
use crate::models::checkpoint::{self, LoadOptions};
use crate::models::device::torch_kind;
use crate::pipeline::engine::Engine;
use crate::pipeline::stats::{HistogramSnapshot, LatencyHistogram, PipelineState, PipelineStats};
use crate::pipeline::worker::WorkerStats;
use crate::preflight;
use crate::runtime::native::Trace;
use crate::runtime::{self, FrameFormats, FrameStager, LoadError, ModelRuntime};

/// The flags only `--streams` takes (`visiond bench`'s other flags are shared with `--model`).
#[derive(Debug, Clone, clap::Args)]
pub struct StreamOptions {
    /// Frame size of every stream.
    #[arg(
        long,
        default_value = "1920x1080",
        value_name = "WxH",
        requires = "streams"
    )]
    pub resolution: FrameSize,
    /// Frame rate of every stream (live streams are paced at it).
    #[arg(long, default_value_t = 30, value_name = "FPS", requires = "streams")]
    pub fps: u32,
    /// Pace the streams at --fps like cameras (frames are dropped when the path falls behind)
    /// for --seconds, instead of pushing --frames as fast as possible (nothing dropped).
    #[arg(long, requires = "streams")]
    pub live: bool,
    /// Frames per stream, as fast as possible (without --live).
    #[arg(long, default_value_t = 300, value_name = "N", requires = "streams")]
    pub frames: u64,
    /// How long live streams are measured, after --warmup-s.
    #[arg(long, default_value_t = 10, value_name = "S", requires = "streams")]
    pub seconds: u64,
    /// Live streams: seconds run before measuring (model warm-up, queues filling).
    #[arg(long, default_value_t = 3, value_name = "S", requires = "streams")]
    pub warmup_s: u64,
    /// Pixel format the streams are made in: nv12 (NVDEC, most hardware decoders), i420
    /// (software decoders) or rgb.
    #[arg(
        long,
        default_value = "nv12",
        value_name = "FORMAT",
        requires = "streams"
    )]
    pub format: StreamFormat,
    /// videotestsrc pattern (what the model sees).
    #[arg(
        long,
        default_value = "smpte",
        value_name = "PATTERN",
        requires = "streams"
    )]
    pub pattern: String,
    /// Where frames go: `null` (metadata written to /dev/null, no video), or `encode` (the
    /// pipeline's H.264 encoder, then a fakesink).
    #[arg(
        long,
        default_value = "null",
        value_name = "SINK",
        requires = "streams"
    )]
    pub sink: SinkKind,
    /// How long the worker waits to fill a batch.
    #[arg(long, default_value_t = 10, value_name = "MS", requires = "streams")]
    pub batch_wait_ms: u64,
    /// Where decoded frames become RGB for the model: `device` (NV12/I420 uploaded and
    /// converted by the model's runtime), `gstreamer` (videoconvert in the source), or `auto`
    /// (the daemon's choice for the device).
    #[arg(
        long,
        default_value = "auto",
        value_name = "WHERE",
        requires = "streams"
    )]
    pub convert: Conversion,
    /// Capacity of each pipeline's queues.
    #[arg(long, default_value_t = 4, value_name = "N", requires = "streams")]
    pub queue: u32,
    /// Also time the model alone at --batch on frames of this size (its forward, nothing
    /// else), to see what share of it the streams get.
    #[arg(long, requires = "streams")]
    pub model_baseline: bool,
}

/// `visiond bench --streams COUNT` with the shared flags of `args`: runs and writes the report
/// (a table, or one JSON object with --json) to `out`.
pub fn run_from(
    count: u32,
    args: &super::BenchArgs,
    out: &mut dyn std::io::Write,
) -> Result<(), super::BenchError> {
    use super::BenchError;
    let [dtype] = args.dtype[..] else {
        return Err(BenchError::Input(
            "--streams runs one precision: give one --dtype".to_owned(),
        ));
    };
    let batch = match args.batch[..] {
        [] => 8,
        [batch] => batch,
        _ => {
            return Err(BenchError::Input(
                "--streams takes one --batch (the largest batch the worker gathers)".to_owned(),
            ));
        }
    };
    let options = &args.stream;
    let streams = StreamsArgs {
        streams: count,
        model: args.model.clone().unwrap_or_else(|| "none".to_owned()),
        size: options.resolution,
        fps: options.fps,
        live: options.live,
        frames: options.frames,
        seconds: options.seconds,
        warmup: options.warmup_s,
        format: options.format,
        pattern: options.pattern.clone(),
        sink: options.sink,
        device: args.device,
        dtype,
        batch,
        batch_wait_ms: options.batch_wait_ms,
        convert: options.convert,
        queue: options.queue,
        model_baseline: options.model_baseline,
        json: args.json,
        trace: args.trace.clone(),
    };
    let write = |e: std::io::Error| BenchError::Runtime(format!("writing results: {e}"));
    let report = run(&streams).map_err(|e| BenchError::Runtime(e.to_string()))?;
    if streams.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| BenchError::Runtime(e.to_string()))?;
        writeln!(out, "{json}").map_err(write)
    } else {
        write!(out, "{}", render(&streams, &report)).map_err(write)
    }
}

/// The arguments of `visiond bench --streams`.
#[derive(Debug, Clone)]
pub struct StreamsArgs {
    /// A Chrome trace of one second of the measured window.
    pub trace: Option<PathBuf>,
    /// How many synthetic streams run at once.
    pub streams: u32,
    /// A checkpoint folder (as `models.<name>.path`), or `none` for no model: then the numbers
    /// are the frame path's own cost.
    pub model: String,
    /// Frame size of every stream.
    pub size: FrameSize,
    /// Frame rate of every stream (live streams are paced at it).
    pub fps: u32,
    /// Pace the streams at --fps like cameras (frames are dropped when the path falls behind)
    /// for --seconds, instead of pushing --frames as fast as possible (nothing dropped).
    pub live: bool,
    /// Frames per stream, as fast as possible (without --live).
    pub frames: u64,
    /// How long live streams are measured, after --warmup.
    pub seconds: u64,
    /// Live streams: seconds run before measuring (model warm-up, queues filling).
    pub warmup: u64,
    /// Pixel format the streams are made in: nv12 (NVDEC, most hardware decoders), i420
    /// (software decoders) or rgb.
    pub format: StreamFormat,
    /// videotestsrc pattern (what the model sees).
    pub pattern: String,
    /// Where frames go: `null` (metadata written to /dev/null, no video), or `encode` (the
    /// pipeline's H.264 encoder, then a fakesink).
    pub sink: SinkKind,
    /// The model's device: cpu, cuda, cuda:N or auto.
    pub device: DeviceSpec,
    /// The model's precision: f32, f16 or bf16.
    pub dtype: DType,
    /// Largest batch the model's worker gathers.
    pub batch: u32,
    /// How long the worker waits to fill a batch.
    pub batch_wait_ms: u64,
    /// Where decoded frames become RGB for the model: `device` (NV12/I420 uploaded and
    /// converted by the model's runtime), `gstreamer` (videoconvert in the source), or `auto`
    /// (the daemon's choice for the device).
    pub convert: Conversion,
    /// Capacity of each pipeline's queues.
    pub queue: u32,
    /// Also time the model alone at --batch on frames of this size (its forward, nothing
    /// else), to see what share of it the streams get.
    pub model_baseline: bool,
    /// Print one JSON object instead of the table.
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSize {
    pub width: u32,
    pub height: u32,
}

impl FromStr for FrameSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("'{text}' is not a frame size like 1920x1080");
        let (w, h) = text.split_once('x').ok_or_else(bad)?;
        let (width, height) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
        if width < 16 || height < 16 {
            return Err(format!("frame size {text} is too small (at least 16x16)"));
        }
        Ok(Self { width, height })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamFormat {
    Nv12,
    I420,
    Rgb,
}

impl StreamFormat {
    fn caps_name(self) -> &'static str {
        match self {
            Self::Nv12 => "NV12",
            Self::I420 => "I420",
            Self::Rgb => "RGB",
        }
    }
}

impl FromStr for StreamFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(text, true)
            .map_err(|_| format!("unknown format '{text}': expected nv12, i420 or rgb"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Conversion {
    Auto,
    Device,
    Gstreamer,
}

impl Conversion {
    fn formats(self) -> FrameFormats {
        match self {
            Self::Auto => FrameFormats::Auto,
            Self::Device => FrameFormats::Native,
            Self::Gstreamer => FrameFormats::Rgb,
        }
    }
}

impl FromStr for Conversion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(text, true)
            .map_err(|_| format!("unknown conversion '{text}': expected auto, device or gstreamer"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Null,
    Encode,
}

impl FromStr for SinkKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(text, true)
            .map_err(|_| format!("unknown sink '{text}': expected null or encode"))
    }
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot write the benchmark's configuration under {}: {reason}", dir.display())]
    Files { dir: PathBuf, reason: String },
    #[error("the benchmark's configuration is not valid:\n{0}")]
    Config(String),
    #[error("cannot start: {0}")]
    Start(String),
    #[error("stream {name} failed: {error}")]
    Stream { name: String, error: String },
    #[error("--trace: {0}")]
    Trace(String),
}

/// One stream's figures.
#[derive(Debug, Clone, Serialize)]
pub struct StreamFigures {
    pub name: String,
    pub frames_in: u64,
    pub frames_out: u64,
    pub dropped: u64,
    pub fps: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub streams: Vec<StreamFigures>,
    /// Frames out of every stream per second of the measured window.
    pub total_fps: f64,
    pub total_frames_out: u64,
    pub total_dropped: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Seconds measured.
    pub seconds: f64,
    /// Process CPU time over the window, in percent of one core.
    pub cpu_percent: f64,
    /// Process CPU time per frame out: the frame path's cost per frame.
    pub cpu_ms_per_frame: f64,
    pub rss_mb: f64,
    pub peak_rss_mb: f64,
    /// This process's GPU memory as `nvidia-smi` reports it (peak seen), when there is one.
    pub gpu_memory_mb: Option<f64>,
    /// Host-side copies of a frame's bytes on its way to the model's device, per frame staged
    /// (0 on the CPU, 1 on CUDA: into page-locked memory); `None` without a model.
    pub host_copies_per_frame: Option<f64>,
    /// With `--model-baseline`: the model's forward alone at the batch size, images/s.
    pub model_only_fps: Option<f64>,
    /// As fast as possible: frames/s from the moment every stream delivered its first
    /// [`steady_after`] frames to the end, leaving out the start (CUDA graphs captured per batch
    /// size met, queues filling).
    pub steady_fps: Option<f64>,
    /// Frames per batch the model's worker ran, on average over the window.
    pub mean_batch: Option<f64>,
    /// Share of the window the model's worker thread spent running batches (launching work,
    /// and waiting for the device where it must): near 100 %, that thread is the limit.
    pub worker_busy_percent: Option<f64>,
    /// The GPU's own utilisation (`nvidia-smi`: time a kernel ran), mean of 1 s samples.
    pub gpu_busy_percent: Option<f64>,
    /// Colour conversions on CUDA during the run (frames to RGB, pictures to I420): by the
    /// fused kernels, and by tensor ops (`VISIOND_FUSED_KERNELS=off`, a kernel's first frame
    /// while it proves itself, or a kernel refused). `None` where nothing was converted on CUDA.
    pub fused_conversions: Option<u64>,
    pub tensor_op_conversions: Option<u64>,
}

/// Frames each stream delivers before a finite run's steady rate is measured.
pub fn steady_after(frames: u64) -> u64 {
    (frames / 4).min(30)
}

/// Runs the benchmark and returns its figures.
pub fn run(args: &StreamsArgs) -> Result<BenchReport, BenchError> {
    let baseline = if args.model_baseline && uses_model(args) {
        Some(model_only(args)?)
    } else {
        None
    };
    let dir = std::env::temp_dir().join(format!("visiond-bench-{}", std::process::id()));
    let result = write_tree(&dir, args).and_then(|file| measure(&file, args));
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|report| BenchReport {
        model_only_fps: baseline,
        ..report
    })
}

/// The model's forward alone: images/s at --batch on the input size the streams' frames
/// process to, after a warm-up, waiting for the device after each batch.
fn model_only(args: &StreamsArgs) -> Result<f64, BenchError> {
    let fail = |e: String| BenchError::Start(format!("model baseline: {e}"));
    let options = LoadOptions {
        device: args.device,
        dtype: args.dtype,
        ..LoadOptions::default()
    };
    let loaded = checkpoint::open(&ModelSource::Path(PathBuf::from(&args.model)), &options)
        .map_err(|e| fail(e.to_string()))?;
    let preprocessor =
        runtime::tensors::preprocessor_for(&loaded.info, None).map_err(|e| fail(e.to_string()))?;
    let (height, width) =
        preprocessor.output_size(i64::from(args.size.height), i64::from(args.size.width));
    let device = loaded.info.device;
    let batch = i64::from(args.batch.max(1));
    let pixels = Tensor::randn([batch, 3, height, width], (Kind::Float, device))
        .to_kind(torch_kind(args.dtype));
    let wait = || {
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
    };
    let _no_grad = tch::no_grad_guard();
    let run = |times: usize| -> Result<Duration, BenchError> {
        let start = Instant::now();
        for _ in 0..times {
            let output = loaded
                .model
                .forward(&pixels)
                .map_err(|e| fail(e.to_string()))?;
            wait();
            drop(output);
        }
        Ok(start.elapsed())
    };
    run(3)?;
    let iterations = 20;
    let elapsed = run(iterations)?;
    Ok((iterations as i64 * batch) as f64 / elapsed.as_secs_f64())
}

fn write_tree(dir: &Path, args: &StreamsArgs) -> Result<PathBuf, BenchError> {
    let io = |e: std::io::Error| BenchError::Files {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir.join("pipelines")).map_err(io)?;
    let file = dir.join("visiond.yaml");
    std::fs::write(&file, daemon_yaml(args)).map_err(io)?;
    for index in 0..args.streams {
        let name = format!("s{index}");
        std::fs::write(
            dir.join("pipelines").join(format!("{name}.yaml")),
            pipeline_yaml(dir, &name, args),
        )
        .map_err(io)?;
    }
    Ok(file)
}

/// JSON strings are YAML double-quoted scalars: any path goes in as it is.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

/// The model's name in the benchmark's configuration.
const MODEL: &str = "bench";

fn uses_model(args: &StreamsArgs) -> bool {
    args.model != "none"
}

fn daemon_yaml(args: &StreamsArgs) -> String {
    let mut text = String::from(
        "pipelines_dir: pipelines\nhttp: { listen: \"127.0.0.1:0\" }\nlog: { level: warn }\n",
    );
    if uses_model(args) {
        let path =
            std::fs::canonicalize(&args.model).unwrap_or_else(|_| PathBuf::from(&args.model));
        let _ = write!(
            text,
            "models:\n  {MODEL}: {{ path: {}, device: {}, dtype: {}, batch: {{ max_size: {}, max_wait_ms: {} }} }}\n",
            quoted(&path.display().to_string()),
            args.device,
            args.dtype,
            args.batch,
            args.batch_wait_ms
        );
    }
    text
}

fn pipeline_yaml(dir: &Path, name: &str, args: &StreamsArgs) -> String {
    let count = if args.live {
        String::new()
    } else {
        format!(" num-buffers={}", args.frames)
    };
    let source = format!(
        "videotestsrc pattern={} is-live={}{count} ! capsfilter caps=video/x-raw,format={},width={},height={},framerate={}/1",
        args.pattern,
        args.live,
        args.format.caps_name(),
        args.size.width,
        args.size.height,
        args.fps
    );
    let policy = if args.live { "drop_oldest" } else { "block" };
    // A `launch:` source counts as live, so a finite one would be restarted at its end: without
    // reconnects it simply ends (the run is over once every stream delivered its frames).
    let reconnect = if args.live {
        ""
    } else {
        ", reconnect: { max_attempts: 0 }"
    };
    let mut text = format!(
        "name: {name}\nsource: {{ launch: {}{reconnect} }}\nmodel: {}\nqueue: {{ capacity: {}, when_full: {policy} }}\n",
        quoted(&source),
        if uses_model(args) { MODEL } else { "none" },
        args.queue
    );
    match args.sink {
        // A metadata line per frame and no video: each pipeline needs a file of its own.
        SinkKind::Null => {
            let meta = dir.join(format!("{name}.jsonl"));
            let _ = write!(
                text,
                "metadata:\n  - jsonl: {{ path: {} }}\n",
                quoted(&meta.display().to_string())
            );
        }
        SinkKind::Encode => {
            text.push_str("sinks:\n  - launch: { pipeline: \"fakesink sync=false\" }\n")
        }
    }
    text
}

/// Counters read at one moment, so that a window's figures are differences.
struct Reading {
    at: Instant,
    cpu: Duration,
    /// The model's worker: (batches, frames, busy time) so far.
    worker: Option<(u64, u64, Duration)>,
    frames_out: Vec<u64>,
    dropped: Vec<u64>,
    latency: Vec<HistogramSnapshot>,
}

/// One stream's counters, kept after the engine is gone.
struct Counters {
    stats: Arc<PipelineStats>,
    input_drops: Arc<DropCounter>,
    output_drops: Arc<DropCounter>,
}

impl Counters {
    fn dropped(&self) -> u64 {
        self.input_drops.get() + self.output_drops.get()
    }
}

fn read(streams: &[Counters], worker: Option<&WorkerStats>) -> Reading {
    Reading {
        at: Instant::now(),
        cpu: process_cpu(),
        worker: worker.map(|w| {
            (
                w.batches.load(Ordering::Relaxed),
                w.frames.load(Ordering::Relaxed),
                w.busy_total(),
            )
        }),
        frames_out: streams.iter().map(|c| c.stats.frames_out()).collect(),
        dropped: streams.iter().map(Counters::dropped).collect(),
        latency: streams.iter().map(|c| c.stats.latency.snapshot()).collect(),
    }
}

fn measure(file: &Path, args: &StreamsArgs) -> Result<BenchReport, BenchError> {
    let config = preflight::load(file).map_err(|e| BenchError::Config(e.to_string()))?;
    let conversions_before = crate::runtime::fused::conversion_counts();
    let stagers: Mutex<Vec<Arc<dyn FrameStager>>> = Mutex::new(Vec::new());
    let loader = |name: &str| -> Result<ModelRuntime, LoadError> {
        let model = config
            .daemon
            .models
            .get(name)
            .ok_or_else(|| LoadError::Undefined(name.to_string()))?;
        let runtime = runtime::load_with(name, model, args.convert.formats())?;
        if let Ok(mut stagers) = stagers.lock() {
            stagers.push(runtime.stager.clone());
        }
        Ok(runtime)
    };
    let engine = Engine::start(&config, &loader).map_err(|e| BenchError::Start(e.to_string()))?;
    let names: Vec<String> = engine.pipelines().iter().map(|p| p.name.clone()).collect();
    let stats: Vec<Counters> = engine
        .pipelines()
        .iter()
        .map(|p| Counters {
            stats: p.stats.clone(),
            input_drops: p.input_drops.clone(),
            output_drops: p.output_drops.clone(),
        })
        .collect();
    let worker = engine.worker_stats(MODEL);
    let worker = worker.as_deref();
    let mut gpu = GpuSampler::default();
    let mut steady = None;
    let mut trace = TraceWindow::new(args);
    let (first, last) = if args.live {
        sleep_sampling(Duration::from_secs(args.warmup), &mut gpu);
        gpu.restart();
        let first = read(&stats, worker);
        let window = Duration::from_secs(args.seconds);
        trace.open();
        sleep_sampling(window.min(TraceWindow::LENGTH), &mut gpu);
        trace.close();
        sleep_sampling(window.saturating_sub(TraceWindow::LENGTH), &mut gpu);
        (first, read(&stats, worker))
    } else {
        // As fast as possible: from the engine's start (models loaded) until every stream has
        // delivered its frames (or one failed before it could).
        let first = read(&stats, worker);
        let skip = steady_after(args.frames);
        loop {
            if steady.is_none() && stats.iter().all(|c| c.stats.frames_out() >= skip) {
                steady = Some(read(&stats, worker));
                trace.open();
            }
            trace.close_after_length();
            let done = stats.iter().all(|c| {
                c.stats.frames_out() + c.dropped() >= args.frames
                    || matches!(c.stats.state(), PipelineState::Failed { .. })
            });
            if done {
                break;
            }
            sleep_sampling(Duration::from_millis(50), &mut gpu);
        }
        (first, read(&stats, worker))
    };
    trace.close();
    engine.shutdown_handle().trigger();
    let reports = engine.wait();
    for (report, frames_out) in reports.iter().zip(&last.frames_out) {
        // A finite stream ends as `failed` (it may not reconnect); only one that failed before
        // delivering its frames is an error.
        if let PipelineState::Failed { error } = &report.state
            && (args.live || *frames_out + report.dropped < args.frames)
        {
            return Err(BenchError::Stream {
                name: report.name.clone(),
                error: error.clone(),
            });
        }
    }
    let (fused_after, reference_after) = crate::runtime::fused::conversion_counts();
    let staged = stagers
        .lock()
        .map(|s| s.iter().map(|s| s.counters()).collect::<Vec<_>>())
        .unwrap_or_default();
    trace.result()?;
    let mut report = figures(&names, &first, &last, &gpu);
    if let Some(steady) = steady.filter(|s| last.at > s.at) {
        let out = |r: &Reading| r.frames_out.iter().sum::<u64>();
        let seconds = last.at.duration_since(steady.at).as_secs_f64();
        report.steady_fps = Some((out(&last) - out(&steady)) as f64 / seconds);
    }
    if !staged.is_empty() {
        let frames: u64 = staged.iter().map(|c| c.frames).sum();
        let copies: u64 = staged.iter().map(|c| c.host_copies).sum();
        report.host_copies_per_frame = Some(copies as f64 / frames.max(1) as f64);
    }
    let (fused, reference) = (
        fused_after - conversions_before.0,
        reference_after - conversions_before.1,
    );
    if fused + reference > 0 {
        report.fused_conversions = Some(fused);
        report.tensor_op_conversions = Some(reference);
    }
    Ok(report)
}

fn empty_histogram() -> HistogramSnapshot {
    HistogramSnapshot {
        counts: vec![0; LatencyHistogram::BUCKETS],
        sum: Duration::ZERO,
    }
}

fn difference(a: &HistogramSnapshot, b: &HistogramSnapshot) -> HistogramSnapshot {
    HistogramSnapshot {
        counts: b
            .counts
            .iter()
            .zip(&a.counts)
            .map(|(b, a)| b.saturating_sub(*a))
            .collect(),
        sum: b.sum.saturating_sub(a.sum),
    }
}

fn figures(names: &[String], first: &Reading, last: &Reading, gpu: &GpuSampler) -> BenchReport {
    let seconds = last.at.duration_since(first.at).as_secs_f64().max(1e-9);
    let ms = |h: &HistogramSnapshot, q: f64| h.quantile(q).map(|d| d.as_secs_f64() * 1e3);
    let mut all = empty_histogram();
    let mut streams = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let latency = difference(&first.latency[i], &last.latency[i]);
        for (total, count) in all.counts.iter_mut().zip(&latency.counts) {
            *total += count;
        }
        let frames_out = last.frames_out[i] - first.frames_out[i];
        streams.push(StreamFigures {
            name: name.clone(),
            frames_in: frames_out + last.dropped[i] - first.dropped[i],
            frames_out,
            dropped: last.dropped[i] - first.dropped[i],
            fps: frames_out as f64 / seconds,
            latency_p50_ms: ms(&latency, 0.5),
            latency_p99_ms: ms(&latency, 0.99),
        });
    }
    let total_frames_out: u64 = streams.iter().map(|s| s.frames_out).sum();
    let worker = first.worker.zip(last.worker).map(|(a, b)| {
        (
            b.0.saturating_sub(a.0),
            b.1.saturating_sub(a.1),
            b.2.saturating_sub(a.2),
        )
    });
    let cpu = last.cpu.saturating_sub(first.cpu).as_secs_f64();
    let (rss_mb, peak_rss_mb) = resident_memory();
    BenchReport {
        total_fps: total_frames_out as f64 / seconds,
        total_frames_out,
        total_dropped: streams.iter().map(|s| s.dropped).sum(),
        latency_p50_ms: ms(&all, 0.5),
        latency_p99_ms: ms(&all, 0.99),
        streams,
        seconds,
        cpu_percent: cpu / seconds * 100.0,
        cpu_ms_per_frame: cpu * 1e3 / total_frames_out.max(1) as f64,
        rss_mb,
        peak_rss_mb,
        gpu_memory_mb: gpu.peak_mb,
        host_copies_per_frame: None,
        model_only_fps: None,
        steady_fps: None,
        mean_batch: worker.map(|(batches, frames, _)| frames as f64 / batches.max(1) as f64),
        worker_busy_percent: worker.map(|(_, _, busy)| busy.as_secs_f64() / seconds * 100.0),
        gpu_busy_percent: gpu.mean_busy(),
        fused_conversions: None,
        tensor_op_conversions: None,
    }
}

/// This process's CPU time (user + system), from /proc/self/stat (clock ticks of 1/100 s).
fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces, inside parentheses).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Current and peak resident memory in MB, from /proc/self/status.
fn resident_memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// `--trace`: the profiler over [`TraceWindow::LENGTH`] of the measured window.
struct TraceWindow {
    path: Option<PathBuf>,
    cuda: bool,
    running: Option<(Trace, Instant)>,
    error: Option<String>,
}

impl TraceWindow {
    const LENGTH: Duration = Duration::from_secs(1);

    fn new(args: &StreamsArgs) -> Self {
        Self {
            path: args.trace.clone(),
            cuda: !matches!(args.device, DeviceSpec::Cpu) && tch::Cuda::is_available(),
            running: None,
            error: None,
        }
    }

    /// Starts the trace (once).
    fn open(&mut self) {
        if self.path.is_some() && self.running.is_none() && self.error.is_none() {
            match Trace::start(self.cuda) {
                Ok(trace) => self.running = Some((trace, Instant::now())),
                Err(e) => self.error = Some(format!("cannot start the profiler: {e}")),
            }
        }
    }

    fn close_after_length(&mut self) {
        if self
            .running
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() >= Self::LENGTH)
        {
            self.close();
        }
    }

    /// Stops the trace and writes it; later calls do nothing.
    fn close(&mut self) {
        if let (Some((trace, _)), Some(path)) = (self.running.take(), self.path.take())
            && let Err(e) = trace.stop(&path)
        {
            self.error = Some(format!("writing {}: {e}", path.display()));
        }
    }

    fn result(&self) -> Result<(), BenchError> {
        match (&self.error, &self.path) {
            (Some(e), _) => Err(BenchError::Trace(e.clone())),
            // Asked for, never started: the run ended before its window opened.
            (None, Some(path)) => Err(BenchError::Trace(format!(
                "{}: the run ended before the traced window opened",
                path.display()
            ))),
            (None, None) => Ok(()),
        }
    }
}

/// What `nvidia-smi` reports while the run goes, sampled once a second: this process's peak
/// GPU memory and the GPU's utilisation.
#[derive(Default)]
struct GpuSampler {
    peak_mb: Option<f64>,
    busy_samples: Vec<f64>,
    unavailable: bool,
    sampled: Option<Instant>,
}

impl GpuSampler {
    /// Forgets the utilisation seen so far (the warm-up's).
    fn restart(&mut self) {
        self.busy_samples.clear();
    }

    fn mean_busy(&self) -> Option<f64> {
        (!self.busy_samples.is_empty())
            .then(|| self.busy_samples.iter().sum::<f64>() / self.busy_samples.len() as f64)
    }

    fn sample(&mut self) {
        if self.unavailable
            || self
                .sampled
                .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.sampled = Some(Instant::now());
        let output = std::process::Command::new("nvidia-smi")
            .args([
                "--query-compute-apps=pid,used_memory",
                "--format=csv,noheader,nounits",
            ])
            .output();
        let Some(output) = output.ok().filter(|o| o.status.success()) else {
            self.unavailable = true;
            return;
        };
        let pid = std::process::id().to_string();
        // Every GPU's utilisation; the one this process uses is the busiest while it runs.
        let busy = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
            ])
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.trim().parse::<f64>().ok())
                    .reduce(f64::max)
            });
        self.busy_samples.extend(busy);
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let mut fields = line.split(',').map(str::trim);
            if fields.next() == Some(pid.as_str())
                && let Some(mb) = fields.next().and_then(|v| v.parse::<f64>().ok())
            {
                self.peak_mb = Some(self.peak_mb.map_or(mb, |p| p.max(mb)));
            }
        }
    }
}

fn sleep_sampling(duration: Duration, gpu: &mut GpuSampler) {
    let end = Instant::now() + duration;
    loop {
        gpu.sample();
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_secs(1)));
    }
}

/// The human table.
pub fn render(args: &StreamsArgs, report: &BenchReport) -> String {
    let mut out = String::new();
    let mode = if args.live {
        format!("live at {} fps, {} s measured", args.fps, args.seconds)
    } else {
        format!("{} frames each, as fast as possible", args.frames)
    };
    let _ = writeln!(
        out,
        "{} stream(s) of {}x{} {} ({mode}); model {} (conversion: {:?}); sink {}",
        args.streams,
        args.size.width,
        args.size.height,
        args.format.caps_name(),
        args.model,
        args.convert,
        match args.sink {
            SinkKind::Null => "null",
            SinkKind::Encode => "encode",
        }
    );
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    let _ = writeln!(
        out,
        "{:<8} {:>9} {:>9} {:>8} {:>9} {:>8} {:>8}",
        "stream", "frames in", "out", "dropped", "frames/s", "p50 ms", "p99 ms"
    );
    for s in &report.streams {
        let _ = writeln!(
            out,
            "{:<8} {:>9} {:>9} {:>8} {:>9.1} {:>8} {:>8}",
            s.name,
            s.frames_in,
            s.frames_out,
            s.dropped,
            s.fps,
            ms(s.latency_p50_ms),
            ms(s.latency_p99_ms)
        );
    }
    let _ = writeln!(
        out,
        "{:<8} {:>9} {:>9} {:>8} {:>9.1} {:>8} {:>8}",
        "total",
        report.total_frames_out + report.total_dropped,
        report.total_frames_out,
        report.total_dropped,
        report.total_fps,
        ms(report.latency_p50_ms),
        ms(report.latency_p99_ms)
    );
    let _ = writeln!(
        out,
        "cpu {:.0}% of one core, {:.2} ms of CPU per frame; resident memory {:.0} MB (peak {:.0} MB); gpu memory {}",
        report.cpu_percent,
        report.cpu_ms_per_frame,
        report.rss_mb,
        report.peak_rss_mb,
        report
            .gpu_memory_mb
            .map_or("n/a".to_string(), |mb| format!("{mb:.0} MB"))
    );
    if let Some(model) = report.model_only_fps {
        let _ = writeln!(
            out,
            "model alone at batch {}: {model:.1} frames/s; the streams got {:.0}% of it",
            args.batch,
            report.total_fps / model * 100.0
        );
    }
    if let Some(steady) = report.steady_fps {
        let _ = writeln!(
            out,
            "steady: {steady:.1} frames/s once every stream delivered {} frames",
            steady_after(args.frames)
        );
    }
    if let (Some(batch), Some(busy)) = (report.mean_batch, report.worker_busy_percent) {
        let _ = writeln!(
            out,
            "model worker: {batch:.1} frames per batch, busy {busy:.0}% of the time; gpu busy {}",
            report
                .gpu_busy_percent
                .map_or("n/a".to_string(), |b| format!("{b:.0}%"))
        );
    }
    if let Some(copies) = report.host_copies_per_frame {
        let _ = writeln!(
            out,
            "host copies per frame on the way to the model: {copies:.2}"
        );
    }
    if let (Some(fused), Some(reference)) = (report.fused_conversions, report.tensor_op_conversions)
    {
        let _ = writeln!(
            out,
            "colour conversions on the device: {fused} by fused kernels, {reference} by tensor ops"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_parse_and_reject() {
        assert_eq!(
            "1920x1080".parse::<FrameSize>(),
            Ok(FrameSize {
                width: 1920,
                height: 1080
            })
        );
        assert!(
            "1920"
                .parse::<FrameSize>()
                .unwrap_err()
                .contains("1920x1080")
        );
        assert!(
            "8x8"
                .parse::<FrameSize>()
                .unwrap_err()
                .contains("too small")
        );
    }
}
