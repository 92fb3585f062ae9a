//! The shape of the daemon file and of each pipeline file.
//!
//! Every struct rejects unknown keys, and every closed set is an enum, so a typo is an error
//! at `visiond check` time rather than a silently ignored setting. Top-level sections are read
//! one by one (see `reader.rs`) so that all of a file's errors are reported together.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use crate::models::Task;
use crate::models::device::{DType, DeviceSpec};

// ---------------------------------------------------------------------------------------------
// Daemon file (`/etc/visiond/visiond.yaml`)

/// Keys of the daemon file, in the order they are documented.
pub const DAEMON_KEYS: &[&str] = &["http", "log", "rtsp", "shutdown", "pipelines_dir", "models"];

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub http: HttpConfig,
    pub log: LogConfig,
    pub rtsp: RtspServerConfig,
    pub shutdown: ShutdownConfig,
    /// Resolved against the daemon file's directory.
    pub pipelines_dir: PathBuf,
    pub models: BTreeMap<String, ModelConfig>,
    /// Every name under `models`, including ones whose settings are invalid (already reported),
    /// so a pipeline naming them is not reported a second time as naming an undefined model.
    pub declared_models: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Control plane: /healthz, /readyz, /metrics, /api/pipelines.
    #[serde(default = "default_http_listen", deserialize_with = "socket_address")]
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
        }
    }
}

/// Accepts any scalar so that `listen: 9090` gets a message that says what is wanted.
fn socket_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let value = serde_yaml::Value::deserialize(deserializer)?;
    let text = match &value {
        serde_yaml::Value::String(text) => text.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "'{text}' is not an address:port such as 127.0.0.1:9090 or [::1]:9090"
        ))
    })
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090)
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    #[serde(default)]
    pub level: LogLevel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines for a terminal or journald.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// The daemon's one RTSP server; pipelines add mounts to it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtspServerConfig {
    #[serde(default = "default_rtsp_address")]
    pub address: IpAddr,
    #[serde(default = "default_rtsp_port")]
    pub port: u16,
    /// Basic authentication for every mount; the password comes from the environment so that
    /// it never sits in a world-readable file or a log line.
    #[serde(default)]
    pub auth: Option<BasicAuth>,
}

impl Default for RtspServerConfig {
    fn default() -> Self {
        Self {
            address: default_rtsp_address(),
            port: default_rtsp_port(),
            auth: None,
        }
    }
}

fn default_rtsp_address() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

fn default_rtsp_port() -> u16 {
    8554
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    /// Name of the environment variable holding the password.
    pub password_env: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long SIGINT/SIGTERM waits for queued frames to drain and files to finalize.
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_ms: default_grace_ms(),
        }
    }
}

fn default_grace_ms() -> u64 {
    5000
}

/// A model shared by every pipeline that names it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A checkpoint folder (config.json + model.safetensors) or a TorchScript `model.pt`,
    /// resolved against the daemon file's directory. Exactly one of `path` and `hub`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A Hugging Face hub id (`Intel/dpt-large`), looked up in the standard HF cache.
    #[serde(default)]
    pub hub: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(default)]
    pub dtype: DType,
    #[serde(default)]
    pub batch: BatchConfig,
    /// Required for TorchScript models, which carry no config.json to say what they compute.
    #[serde(default)]
    pub task: Option<Task>,
    /// Optional label file (one per line) for TorchScript classifiers and segmenters.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// Overrides the processor's input size, `[height, width]` (e.g. run DPT at 512).
    #[serde(default)]
    pub input_size: Option<[u32; 2]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    #[serde(default = "default_batch_size")]
    pub max_size: usize,
    #[serde(default = "default_batch_wait_ms")]
    pub max_wait_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_size: default_batch_size(),
            max_wait_ms: default_batch_wait_ms(),
        }
    }
}

fn default_batch_size() -> usize {
    4
}

fn default_batch_wait_ms() -> u64 {
    5
}

// ---------------------------------------------------------------------------------------------
// Pipeline file (`/etc/visiond/pipelines/*.yaml`)

pub const PIPELINE_KEYS: &[&str] = &[
    "name", "source", "model", "queue", "overlay", "encoder", "sinks", "metadata",
];

/// The model name that means "no inference": record or restream the source as it is.
pub const NO_MODEL: &str = "none";

#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    pub name: String,
    pub source: SourceConfig,
    /// A key of the daemon file's `models`, or `none`.
    pub model: String,
    pub queue: QueueConfig,
    pub overlay: OverlayConfig,
    pub encoder: EncoderConfig,
    pub sinks: Vec<SinkConfig>,
    pub metadata: Vec<MetadataConfig>,
}

/// Exactly one of `uri`, `v4l2`, `test`, `launch`, plus options common to all.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// rtsp://, rtsps://, http(s)://, file://. Credentials may be inline (never logged) or
    /// given with `credentials`.
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub v4l2: Option<V4l2Source>,
    #[serde(default)]
    pub test: Option<TestSource>,
    /// A gst-launch fragment that yields raw video (e.g. an `nvv4l2decoder` chain on Jetson).
    #[serde(default)]
    pub launch: Option<String>,
    #[serde(default)]
    pub rtsp: RtspSourceOptions,
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// Frame-rate cap applied upstream (videorate), so dropped frames are never processed.
    #[serde(default)]
    pub fps: Option<f64>,
    /// Longest side after an upstream downscale that keeps the aspect ratio.
    #[serde(default)]
    pub max_size: Option<u32>,
    /// Restart a finite source at its end instead of finishing the pipeline.
    #[serde(default, rename = "loop")]
    pub looping: bool,
    #[serde(default)]
    pub reconnect: ReconnectConfig,
}

impl SourceConfig {
    /// Stands in for a source section that failed to decode (already reported), so that the
    /// rest of the pipeline can still be checked.
    pub fn placeholder() -> Self {
        Self {
            uri: None,
            v4l2: None,
            test: Some(TestSource {
                pattern: TestPattern::default(),
                width: default_test_width(),
                height: default_test_height(),
                fps: default_test_fps(),
                frames: None,
            }),
            launch: None,
            rtsp: RtspSourceOptions::default(),
            credentials: None,
            fps: None,
            max_size: None,
            looping: false,
            reconnect: ReconnectConfig::default(),
        }
    }

    /// Which of the exclusive source kinds are set, by key name.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if self.uri.is_some() {
            kinds.push("uri");
        }
        if self.v4l2.is_some() {
            kinds.push("v4l2");
        }
        if self.test.is_some() {
            kinds.push("test");
        }
        if self.launch.is_some() {
            kinds.push("launch");
        }
        kinds
    }

    /// Live sources default to dropping the oldest frame when full (latency stays bounded);
    /// finite ones to blocking (nothing is lost).
    pub fn is_live(&self) -> bool {
        match (&self.uri, &self.test) {
            (Some(uri), _) => !uri.starts_with("file://"),
            (None, Some(test)) => test.frames.is_none() || self.looping,
            (None, None) => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V4l2Source {
    pub device: PathBuf,
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    #[serde(default)]
    pub fps: Option<u32>,
    #[serde(default)]
    pub format: Option<V4l2Format>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum V4l2Format {
    Raw,
    /// Decoded with jpegdec before the frame reaches the model.
    Mjpeg,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSource {
    #[serde(default)]
    pub pattern: TestPattern,
    #[serde(default = "default_test_width")]
    pub width: u32,
    #[serde(default = "default_test_height")]
    pub height: u32,
    #[serde(default = "default_test_fps")]
    pub fps: u32,
    /// Ends the stream (EOS) after this many frames; endless when absent.
    #[serde(default)]
    pub frames: Option<u64>,
}

fn default_test_width() -> u32 {
    640
}

fn default_test_height() -> u32 {
    480
}

fn default_test_fps() -> u32 {
    30
}

/// The videotestsrc patterns worth having in a vision test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestPattern {
    Smpte,
    #[default]
    Ball,
    Snow,
    Gradient,
    Pinwheel,
    Checkers,
}

impl TestPattern {
    /// The name videotestsrc's `pattern` property knows.
    pub fn gst_name(self) -> &'static str {
        match self {
            Self::Smpte => "smpte",
            Self::Ball => "ball",
            Self::Snow => "snow",
            Self::Gradient => "gradient",
            Self::Pinwheel => "pinwheel",
            Self::Checkers => "checkers-8",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtspSourceOptions {
    #[serde(default)]
    pub transport: RtspTransport,
    /// rtspsrc jitterbuffer latency.
    #[serde(default = "default_rtsp_latency_ms")]
    pub latency_ms: u32,
}

impl Default for RtspSourceOptions {
    fn default() -> Self {
        Self {
            transport: RtspTransport::default(),
            latency_ms: default_rtsp_latency_ms(),
        }
    }
}

fn default_rtsp_latency_ms() -> u32 {
    200
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RtspTransport {
    /// Survives NAT and lossy Wi-Fi; the usual choice for cameras.
    #[default]
    Tcp,
    Udp,
}

/// Camera credentials kept out of the URI (and so out of every log line).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    /// Name of the environment variable holding the password.
    pub password_env: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectConfig {
    #[serde(default = "default_reconnect_initial_ms")]
    pub initial_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub max_ms: u64,
    /// Random spread of each delay, as a fraction (0.2 = ±20%), so cameras behind one switch
    /// that rebooted together are not all retried in the same instant.
    #[serde(default = "default_reconnect_jitter")]
    pub jitter: f64,
    /// Give up (state `failed`) after this many attempts; forever when absent.
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            initial_ms: default_reconnect_initial_ms(),
            max_ms: default_reconnect_max_ms(),
            jitter: default_reconnect_jitter(),
            max_attempts: None,
        }
    }
}

fn default_reconnect_initial_ms() -> u64 {
    500
}

fn default_reconnect_max_ms() -> u64 {
    30_000
}

fn default_reconnect_jitter() -> f64 {
    0.2
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(default = "default_queue_capacity")]
    pub capacity: usize,
    /// Defaults by source: `drop_oldest` for live sources, `block` for finite ones.
    #[serde(default)]
    pub when_full: Option<WhenFull>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: default_queue_capacity(),
            when_full: None,
        }
    }
}

fn default_queue_capacity() -> usize {
    4
}

/// What a bounded hop does when the stage after it is slower than the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Evict the oldest queued frame: latency stays bounded on live video.
    DropOldest,
    /// Discard the incoming frame.
    DropNewest,
    /// Wait for room: nothing is lost, the source is slowed (finite sources).
    Block,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayConfig {
    #[serde(default)]
    pub mode: OverlayMode,
    #[serde(default)]
    pub colormap: Colormap,
    /// Weight of the map in `blend` mode.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub range: DepthRange,
    /// Show depth instead of relative inverse depth (near = dark in `turbo` becomes far = dark).
    #[serde(default)]
    pub invert: bool,
    /// Classification: frames over which scores are averaged before the label is drawn.
    #[serde(default = "default_smoothing")]
    pub smoothing_frames: u32,
    /// Classification: labels under this score are not drawn.
    #[serde(default)]
    pub min_score: f64,
    #[serde(default = "default_top_k")]
    pub top_k: u32,
    /// Also compute the raw 16-bit depth (GRAY16_LE). Not a YAML key: set by the engine when
    /// the pipeline has a `depth16` sink.
    #[serde(skip)]
    pub raw_depth: bool,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        Self {
            mode: OverlayMode::default(),
            colormap: Colormap::default(),
            alpha: default_alpha(),
            range: DepthRange::default(),
            invert: false,
            smoothing_frames: default_smoothing(),
            min_score: 0.0,
            top_k: default_top_k(),
            raw_depth: false,
        }
    }
}

fn default_alpha() -> f64 {
    0.6
}

fn default_smoothing() -> u32 {
    1
}

fn default_top_k() -> u32 {
    3
}

/// `overlay.mode`, and `visiond infer --mode` (same spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum OverlayMode {
    /// The map over the frame, weighted by `alpha`.
    #[default]
    Blend,
    /// Frame and map next to each other, doubling the width.
    SideBySide,
    /// The map alone.
    MapOnly,
}

/// `overlay.colormap`, and `visiond infer --colormap` (same spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Colormap {
    #[default]
    Turbo,
    Inferno,
    Magma,
    Viridis,
    Grayscale,
}

/// How depth values are mapped onto the colormap's 0..255 range.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepthRange {
    /// Each frame's own min/max: most contrast, flickers on live video.
    PerFrame,
    /// Exponentially smoothed min/max: no flicker.
    #[default]
    Ema,
    /// A fixed `[lo, hi]`, for metric depth.
    Fixed([f64; 2]),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderConfig {
    /// Any H.264 encoder element: x264enc, nvh264enc, nvv4l2h264enc, vah264enc, ...
    #[serde(default = "default_encoder_element")]
    pub element: String,
    #[serde(default = "default_bitrate_kbps")]
    pub bitrate_kbps: u32,
    /// Frames between keyframes: a late RTSP client waits at most this long for a picture.
    #[serde(default = "default_keyframe_interval")]
    pub keyframe_interval: u32,
    /// Extra element properties, set by name (`speed-preset: ultrafast`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            element: default_encoder_element(),
            bitrate_kbps: default_bitrate_kbps(),
            keyframe_interval: default_keyframe_interval(),
            properties: BTreeMap::new(),
        }
    }
}

fn default_encoder_element() -> String {
    "x264enc".to_string()
}

fn default_bitrate_kbps() -> u32 {
    2000
}

fn default_keyframe_interval() -> u32 {
    30
}

/// Where the annotated video goes. Written as a one-key map: `- rtsp: { mount: /door }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    Rtsp(RtspSink),
    File(FileSink),
    Udp(UdpSink),
    Launch(LaunchSink),
    Display(DisplaySink),
    /// The raw depth map as 16-bit video (GRAY16_LE), losslessly (FFV1 in Matroska), for
    /// downstream tools that want numbers rather than colours. Depth models only.
    Depth16(Depth16Sink),
}

impl SinkConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Rtsp(_) => "rtsp",
            Self::File(_) => "file",
            Self::Udp(_) => "udp",
            Self::Launch(_) => "launch",
            Self::Display(_) => "display",
            Self::Depth16(_) => "depth16",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtspSink {
    /// Path on the daemon's RTSP server, e.g. `/front-door`.
    pub mount: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSink {
    /// Resolved against the pipeline file's directory.
    pub path: PathBuf,
    /// Container; taken from the extension when absent.
    #[serde(default)]
    pub format: Option<Container>,
    /// Start a new file every this many seconds (splitmuxsink); `path` may hold `%05d`.
    #[serde(default)]
    pub segment_s: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Container {
    Mp4,
    Mkv,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpSink {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchSink {
    /// A gst-launch fragment taking H.264 byte-stream (HLS, SRT, WebRTC, ...).
    pub pipeline: String,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisplaySink {
    /// Show frames at their timestamps instead of as soon as they arrive.
    #[serde(default)]
    pub sync: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Depth16Sink {
    /// A `.mkv` file, resolved against the pipeline file's directory.
    pub path: PathBuf,
}

/// Per-frame results for machines: `- jsonl: { path: meta.jsonl }` or `{ stdout: true }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MetadataConfig {
    Jsonl(JsonlSink),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSink {
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub stdout: bool,
}
