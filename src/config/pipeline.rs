//! A pipeline file (`/etc/visiond/pipelines/*.yaml`): its source, model, queue, overlay,
//! encoder, sinks and metadata.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::source::SourceConfig;

pub const PIPELINE_KEYS: &[&str] = &[
    "name", "source", "model", "queue", "overlay", "encoder", "sinks", "metadata",
];

/// The model name that means "no inference": record or restream the source as it is.
pub const NO_MODEL: &str = "none";

#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    pub name: String,
    pub source: SourceConfig,
    pub model: ModelRef,
    pub queue: QueueConfig,
    pub overlay: OverlayConfig,
    pub encoder: EncoderConfig,
    pub sinks: Vec<SinkConfig>,
    pub metadata: Vec<MetadataConfig>,
}

/// A pipeline's `model:`: a key of the daemon file's `models`, or `none`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelRef {
    /// No inference: the source is recorded or restreamed as it is.
    None,
    Named(String),
}

impl ModelRef {
    /// The model's name, `None` for `model: none`.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::None => None,
            Self::Named(name) => Some(name),
        }
    }
}

impl From<&str> for ModelRef {
    fn from(text: &str) -> Self {
        if text == NO_MODEL {
            Self::None
        } else {
            Self::Named(text.to_string())
        }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name().unwrap_or(NO_MODEL))
    }
}

impl<'de> Deserialize<'de> for ModelRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self::from(String::deserialize(deserializer)?.as_str()))
    }
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
    /// Any H.264 encoder element (x264enc, nvh264enc, nvv4l2h264enc, vah264enc, ...), or
    /// [`AUTO_ENCODER`]: the best this machine's GStreamer registry has.
    #[serde(default = "default_encoder_element")]
    pub element: String,
    /// The H.264 profile asked of the encoder (its default when absent).
    #[serde(default)]
    pub profile: Option<H264Profile>,
    /// The pixel format the encoder is given: 4:2:0 (the one the encoder takes, I420 or
    /// NV12) when absent, which every decoder plays.
    #[serde(default)]
    pub format: Option<PixelFormat>,
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
            profile: None,
            format: None,
            bitrate_kbps: default_bitrate_kbps(),
            keyframe_interval: default_keyframe_interval(),
            properties: BTreeMap::new(),
        }
    }
}

/// `encoder.element: auto`: NVENC, VA-API, V4L2 M2M or x264, whichever this machine has.
pub const AUTO_ENCODER: &str = "auto";

fn default_encoder_element() -> String {
    AUTO_ENCODER.to_string()
}

/// `encoder.profile`, spelled as GStreamer's `video/x-h264` caps spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum H264Profile {
    #[serde(rename = "constrained-baseline")]
    ConstrainedBaseline,
    #[serde(rename = "baseline")]
    Baseline,
    #[serde(rename = "main")]
    Main,
    #[serde(rename = "high")]
    High,
    #[serde(rename = "high-4:4:4")]
    High444,
}

impl H264Profile {
    pub fn caps_name(self) -> &'static str {
        match self {
            Self::ConstrainedBaseline => "constrained-baseline",
            Self::Baseline => "baseline",
            Self::Main => "main",
            Self::High => "high",
            Self::High444 => "high-4:4:4",
        }
    }
}

/// `encoder.format`: the raw format handed to the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelFormat {
    /// 4:2:0 planar (yuv420p).
    I420,
    /// 4:2:0 semi-planar, what hardware encoders take.
    Nv12,
    /// 4:4:4 planar: needs profile `high-4:4:4`, which many decoders refuse.
    Y444,
}

impl PixelFormat {
    /// The `format` field of GStreamer's raw video caps.
    pub fn caps_name(self) -> &'static str {
        match self {
            Self::I420 => "I420",
            Self::Nv12 => "NV12",
            Self::Y444 => "Y444",
        }
    }

    /// The 4:2:0 formats an encoder may be given when `format` is not set, in preference order.
    pub const DEFAULTS: [PixelFormat; 2] = [PixelFormat::I420, PixelFormat::Nv12];
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
    /// Whether any of `sinks` shows the annotated picture (`depth16` takes only the raw depth;
    /// without sinks a pipeline is metadata only).
    pub fn any_shows_pictures(sinks: &[SinkConfig]) -> bool {
        sinks.iter().any(|sink| !matches!(sink, Self::Depth16(_)))
    }

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
    /// Segments that started longer ago than this are deleted: seconds, or `"7d"`, `"12h"`.
    #[serde(default, deserialize_with = "age")]
    pub max_age: Option<Duration>,
    /// Segments beyond this many bytes in all are deleted, oldest first.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// A segment file name around its counter: `door-%05d.mp4` is `door-`, 5 digits, `.mp4`. A
/// name without a counter gets one before its extension (`door.mp4` as `door-%05d.mp4`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentCounter {
    pub before: String,
    pub width: usize,
    pub after: String,
}

/// The counter of a segmented recording's file name; `None` when the name holds a '%' that is
/// not one `%d` or `%0Nd`.
pub fn segment_counter(file_name: &str) -> Option<SegmentCounter> {
    let Some(start) = file_name.find('%') else {
        let (stem, extension) = match file_name.rfind('.') {
            Some(dot) if dot > 0 => file_name.split_at(dot),
            _ => (file_name, ""),
        };
        return Some(SegmentCounter {
            before: format!("{stem}-"),
            width: 5,
            after: extension.to_string(),
        });
    };
    let end = start + file_name[start..].find('d')?;
    let digits = &file_name[start + 1..end];
    let after = &file_name[end + 1..];
    if !digits.chars().all(|c| c.is_ascii_digit()) || after.contains('%') {
        return None;
    }
    Some(SegmentCounter {
        before: file_name[..start].to_string(),
        width: digits.parse().unwrap_or(0),
        after: after.to_string(),
    })
}

/// An age as seconds (`604800`) or as a number with units (`"7d"`, `"12h"`, `"1d 12h"`).
fn age<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let value = serde_yaml::Value::deserialize(deserializer)?;
    let parsed = match &value {
        serde_yaml::Value::Null => return Ok(None),
        serde_yaml::Value::Number(number) => number.as_u64().map(Duration::from_secs),
        serde_yaml::Value::String(text) => text
            .trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .ok()
            .or_else(|| humantime::parse_duration(text.trim()).ok()),
        _ => None,
    };
    parsed.map(Some).ok_or_else(|| {
        let text = match &value {
            serde_yaml::Value::String(text) => text.clone(),
            other => serde_yaml::to_string(other)
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        serde::de::Error::custom(format!(
            "'{}' is not an age: give seconds, or a number and a unit such as \"7d\", \"12h\" or \"30m\"",
            super::error::shown(&text)
        ))
    })
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

/// Per-frame results for machines: `- jsonl: { path: meta.jsonl }` or `{ stdout: true }`, or
/// published on a broker of the daemon file: `- mqtt: { broker: site }`, `- kafka: { broker: bus }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MetadataConfig {
    Jsonl(JsonlSink),
    Mqtt(MqttSink),
    Kafka(KafkaSink),
}

impl MetadataConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Jsonl(_) => "jsonl",
            Self::Mqtt(_) => "mqtt",
            Self::Kafka(_) => "kafka",
        }
    }

    /// The broker it publishes on, for the published kinds.
    pub fn broker(&self) -> Option<&str> {
        match self {
            Self::Jsonl(_) => None,
            Self::Mqtt(mqtt) => Some(&mqtt.broker),
            Self::Kafka(kafka) => Some(&kafka.broker),
        }
    }

    /// Which frames it takes, for the published kinds.
    pub fn sampling(&self) -> Option<Sampling> {
        match self {
            Self::Jsonl(_) => None,
            Self::Mqtt(mqtt) => Some(Sampling {
                every: mqtt.every,
                max_hz: mqtt.max_hz,
                on_change: mqtt.on_change,
            }),
            Self::Kafka(kafka) => Some(Sampling {
                every: kafka.every,
                max_hz: kafka.max_hz,
                on_change: kafka.on_change,
            }),
        }
    }

    /// How many messages wait for the broker at most, for the published kinds.
    pub fn buffer(&self) -> Option<usize> {
        match self {
            Self::Jsonl(_) => None,
            Self::Mqtt(mqtt) => Some(mqtt.buffer),
            Self::Kafka(kafka) => Some(kafka.buffer),
        }
    }
}

/// Which frames a published sink takes: every `every`th, at most `max_hz` a second, and with
/// `on_change` only those whose best class differs from the last one published.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub every: u32,
    pub max_hz: Option<f64>,
    pub on_change: bool,
}

/// `- mqtt: { broker, topic, qos, ... }`: one message per frame taken, the jsonl line's object.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSink {
    /// A key of the daemon file's `brokers`, an MQTT one.
    pub broker: String,
    /// A template: `{pipeline}` and `{daemon}` are filled in.
    #[serde(default = "default_mqtt_topic")]
    pub topic: String,
    /// 0: at most once; 1: at least once (kept and resent until the broker acknowledges it).
    #[serde(default)]
    pub qos: u8,
    /// The broker keeps the last message for subscribers that come later.
    #[serde(default)]
    pub retain: bool,
    #[serde(default = "default_every")]
    pub every: u32,
    #[serde(default)]
    pub max_hz: Option<f64>,
    #[serde(default)]
    pub on_change: bool,
    /// Messages kept while the broker is away; past it the oldest are dropped, and counted.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
}

/// `- kafka: { broker, topic, key, ... }`: one record per frame taken, the jsonl line's object.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSink {
    /// A key of the daemon file's `brokers`, a Kafka one.
    pub broker: String,
    /// A template, as for MQTT; the topic must exist (brokers rarely create them on demand).
    #[serde(default = "default_kafka_topic")]
    pub topic: String,
    /// The record key (a template): records with one key keep their order.
    #[serde(default = "default_kafka_key")]
    pub key: String,
    #[serde(default = "default_every")]
    pub every: u32,
    #[serde(default)]
    pub max_hz: Option<f64>,
    #[serde(default)]
    pub on_change: bool,
    #[serde(default = "default_buffer")]
    pub buffer: usize,
}

fn default_mqtt_topic() -> String {
    "visiond/{pipeline}/results".into()
}

fn default_kafka_topic() -> String {
    "visiond.results".into()
}

fn default_kafka_key() -> String {
    "{pipeline}".into()
}

fn default_every() -> u32 {
    1
}

fn default_buffer() -> usize {
    1000
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSink {
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub stdout: bool,
}
