//! A pipeline's `source:` section: exactly one kind of source (uri, v4l2, test, launch) plus
//! the options every kind takes.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::error::FileErrors;
use super::redact;

/// Where a pipeline's frames come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    /// rtsp://, rtsps://, http(s)://, file://. Credentials may be inline (never logged) or
    /// given with `credentials`.
    Uri(String),
    V4l2(V4l2Source),
    Test(TestSource),
    /// A gst-launch fragment that yields raw video (e.g. an `nvv4l2decoder` chain on Jetson).
    Launch(String),
}

impl SourceKind {
    /// The key that selects this kind.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Uri(_) => "uri",
            Self::V4l2(_) => "v4l2",
            Self::Test(_) => "test",
            Self::Launch(_) => "launch",
        }
    }

    pub fn is_rtsp(&self) -> bool {
        matches!(self, Self::Uri(uri) if uri.starts_with("rtsp://") || uri.starts_with("rtsps://"))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub kind: SourceKind,
    pub rtsp: RtspSourceOptions,
    pub credentials: Option<Credentials>,
    /// Frame-rate cap applied upstream (videorate), so dropped frames are never processed.
    pub fps: Option<f64>,
    /// Longest side after an upstream downscale that keeps the aspect ratio.
    pub max_size: Option<u32>,
    /// Restart a finite source at its end instead of finishing the pipeline.
    pub looping: bool,
    pub reconnect: ReconnectConfig,
    /// A live source that delivers no frame for this long (or three of its frame intervals,
    /// when that is longer) is stalled, and is reconnected.
    pub stall_timeout_ms: u64,
}

impl SourceConfig {
    /// Stands in for a source section that failed to decode (already reported), so that the
    /// rest of the pipeline can still be checked.
    pub fn placeholder() -> Self {
        Self {
            kind: SourceKind::Test(TestSource::default()),
            rtsp: RtspSourceOptions::default(),
            credentials: None,
            fps: None,
            max_size: None,
            looping: false,
            reconnect: ReconnectConfig::default(),
            stall_timeout_ms: default_stall_timeout_ms(),
        }
    }

    /// Live sources default to dropping the oldest frame when full (latency stays bounded);
    /// finite ones to blocking (nothing is lost).
    pub fn is_live(&self) -> bool {
        match &self.kind {
            SourceKind::Uri(uri) => !uri.starts_with("file://"),
            SourceKind::Test(test) => test.frames.is_none() || self.looping,
            SourceKind::V4l2(_) | SourceKind::Launch(_) => true,
        }
    }

    /// Whether `loop: true` can seek back to the start; network streams cannot.
    pub fn can_rewind(&self) -> bool {
        match &self.kind {
            SourceKind::Uri(uri) => uri.starts_with("file://"),
            _ => true,
        }
    }
}

/// A short description for logs and the control plane, without credentials.
impl fmt::Display for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            SourceKind::Uri(uri) => f.write_str(&redact::uri(uri)),
            SourceKind::V4l2(v4l2) => write!(f, "v4l2 {}", v4l2.device.display()),
            SourceKind::Test(test) => {
                write!(f, "test {}x{}@{}", test.width, test.height, test.fps)
            }
            SourceKind::Launch(launch) => write!(f, "launch '{}'", redact::text(launch)),
        }
    }
}

/// The `source:` section as written; [`SourceSection::parse`] makes the [`SourceConfig`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub v4l2: Option<V4l2Source>,
    #[serde(default)]
    pub test: Option<TestSource>,
    #[serde(default)]
    pub launch: Option<String>,
    #[serde(default)]
    pub rtsp: RtspSourceOptions,
    #[serde(default)]
    pub credentials: Option<Credentials>,
    #[serde(default)]
    pub fps: Option<f64>,
    #[serde(default)]
    pub max_size: Option<u32>,
    #[serde(default, rename = "loop")]
    pub looping: bool,
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    #[serde(default = "default_stall_timeout_ms")]
    pub stall_timeout_ms: u64,
}

impl SourceSection {
    /// The typed source. Every kind present is checked, so a section naming two kinds gets
    /// both looked at in one run; such a section (or one naming none) is reported and replaced
    /// by [`SourceConfig::placeholder`].
    pub fn parse(self, errors: &mut FileErrors<'_>) -> SourceConfig {
        let kinds: Vec<SourceKind> = [
            self.uri.map(SourceKind::Uri),
            self.v4l2.map(SourceKind::V4l2),
            self.test.map(SourceKind::Test),
            self.launch.map(SourceKind::Launch),
        ]
        .into_iter()
        .flatten()
        .collect();
        match kinds.len() {
            0 => errors.push("source", "set one of `uri`, `v4l2`, `test` or `launch`"),
            1 => {}
            _ => errors.push(
                "source",
                format!(
                    "set only one of `uri`, `v4l2`, `test` or `launch` (found {})",
                    kinds
                        .iter()
                        .map(SourceKind::key)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
        let has_credentials = self.credentials.is_some();
        for kind in &kinds {
            check_kind(kind, has_credentials, errors);
        }
        if self.stall_timeout_ms < MIN_STALL_TIMEOUT_MS {
            errors.push(
                "source.stall_timeout_ms",
                format!("must be at least {MIN_STALL_TIMEOUT_MS}"),
            );
        }
        let kind = match <[SourceKind; 1]>::try_from(kinds) {
            Ok([kind]) => kind,
            Err(_) => SourceConfig::placeholder().kind,
        };
        SourceConfig {
            kind,
            rtsp: self.rtsp,
            credentials: self.credentials,
            fps: self.fps,
            max_size: self.max_size,
            looping: self.looping,
            reconnect: self.reconnect,
            stall_timeout_ms: self.stall_timeout_ms,
        }
    }
}

fn check_kind(kind: &SourceKind, has_credentials: bool, errors: &mut FileErrors<'_>) {
    match kind {
        SourceKind::Uri(uri) => check_uri(uri, has_credentials, errors),
        SourceKind::V4l2(v4l2) => {
            for (field, value) in [
                ("width", v4l2.width),
                ("height", v4l2.height),
                ("fps", v4l2.fps),
            ] {
                if value == Some(0) {
                    errors.push(format!("source.v4l2.{field}"), "must be positive");
                }
            }
        }
        SourceKind::Test(test) => {
            for (field, value) in [
                ("width", test.width),
                ("height", test.height),
                ("fps", test.fps),
            ] {
                if value == 0 {
                    errors.push(format!("source.test.{field}"), "must be positive");
                }
            }
            if test.frames == Some(0) {
                errors.push(
                    "source.test.frames",
                    "must be at least 1 (or absent for an endless source)",
                );
            }
        }
        SourceKind::Launch(launch) => {
            if launch.trim().is_empty() {
                errors.push("source.launch", "must not be empty");
            }
        }
    }
}

/// The URI's shape; whether a `file://` exists is for the preflight.
fn check_uri(uri: &str, has_credentials: bool, errors: &mut FileErrors<'_>) {
    let Some((scheme, rest)) = uri.split_once("://") else {
        errors.push(
            "source.uri",
            "not a URI; expected e.g. rtsp://camera.local/stream",
        );
        return;
    };
    match scheme {
        "rtsp" | "rtsps" | "http" | "https" => {
            let authority = rest.split('/').next().unwrap_or_default();
            if authority.rsplit('@').next().unwrap_or_default().is_empty() {
                errors.push("source.uri", format!("{scheme} URI has no host"));
            }
            if has_credentials && authority.contains('@') {
                errors.push(
                    "source.credentials",
                    "the URI already carries credentials; keep them in one place",
                );
            }
        }
        "file" => {
            if !rest.starts_with('/') {
                errors.push(
                    "source.uri",
                    "file:// URIs need an absolute path (file:///videos/a.mp4)",
                );
            }
        }
        other => errors.push(
            "source.uri",
            format!(
                "unsupported scheme '{}'; expected rtsp, rtsps, http, https or file",
                super::error::shown(other)
            ),
        ),
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

impl Default for TestSource {
    fn default() -> Self {
        Self {
            pattern: TestPattern::default(),
            width: default_test_width(),
            height: default_test_height(),
            fps: default_test_fps(),
            frames: None,
        }
    }
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

impl RtspTransport {
    /// rtspsrc's `protocols` value.
    pub fn gst_name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
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

/// Below this, a camera's ordinary jitter would count as a stall.
const MIN_STALL_TIMEOUT_MS: u64 = 100;

fn default_stall_timeout_ms() -> u64 {
    5_000
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_shown_without_its_credentials() {
        let shown = |kind| {
            SourceConfig {
                kind,
                ..SourceConfig::placeholder()
            }
            .to_string()
        };
        assert_eq!(
            shown(SourceKind::Uri(
                "rtsp://admin:pa/ss@wd@cam.local:554/s".into()
            )),
            "rtsp://admin:***@cam.local:554/s"
        );
        assert_eq!(
            shown(SourceKind::Launch(
                "rtspsrc location=rtsp://cam/s user-id=admin user-pw=pa/ss@wd ! decodebin".into()
            )),
            "launch 'rtspsrc location=rtsp://cam/s user-id=admin user-pw=*** ! decodebin'"
        );
    }
}
