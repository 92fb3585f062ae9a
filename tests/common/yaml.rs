//! Pipeline files for tests, built section by section instead of typed out with `format!` and
//! doubled braces.
//!
//! Only what a test sets is written, so every default stays the daemon's own. Strings that come
//! from a test (names, paths, URIs, gst-launch text) are written quoted; small settings without
//! strings (`queue`, `overlay`, `encoder`) are taken as YAML flow mappings, as the docs show them.
//! Broken files on purpose belong in `tests/config_check.rs`, as raw text.

use std::path::Path;

/// A YAML double-quoted scalar. JSON's string syntax is a subset of it, so any temp path, URI
/// or gst-launch description goes in as it is, whatever characters it holds.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

fn quoted_path(path: &Path) -> String {
    quoted(&path.display().to_string())
}

/// One entry under the daemon file's `models:`: the model `name`, loaded from the checkpoint
/// in `tests/fixtures/models/FIXTURE_NAME`, with `extra` (`"device: cpu, batch: { max_size: 1 }"`,
/// or `""`) beside its path.
pub fn model_yaml(name: &str, fixture_name: &str, extra: &str) -> String {
    let path = quoted_path(&super::fixture(fixture_name));
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!("  {name}: {{ path: {path}{extra} }}\n")
}

/// A pipeline's `source:` section: one kind (`test`, `uri`, `launch`) and its options.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// The fields of a `test:` kind; empty for the other kinds.
    test: Vec<String>,
    /// `kind: value` for the other kinds, then the options beside the kind, as `key: yaml`.
    entries: Vec<String>,
}

impl Source {
    /// `test: { width, height }`: videotestsrc, endless (a live source) unless given `frames`.
    pub fn test(width: u32, height: u32) -> Self {
        Source {
            test: vec![format!("width: {width}"), format!("height: {height}")],
            ..Self::default()
        }
    }

    /// `uri: "..."`, e.g. an `rtsp://` camera.
    pub fn uri(uri: &str) -> Self {
        Self::default().option("uri", &quoted(uri))
    }

    /// `uri: "file://PATH"`: a finite source that plays the file once (unless `looping`).
    pub fn file(path: &Path) -> Self {
        Self::uri(&format!("file://{}", path.display()))
    }

    /// `launch: "..."`: a gst-launch description that yields raw video.
    pub fn launch(description: &str) -> Self {
        Self::default().option("launch", &quoted(description))
    }

    fn test_field(mut self, key: &str, value: String) -> Self {
        assert!(!self.test.is_empty(), "`{key}` is a field of test sources");
        self.test.push(format!("{key}: {value}"));
        self
    }

    /// `test.fps`: the rate the pattern is generated at (not the rate cap, see `max_fps`).
    pub fn fps(self, fps: u32) -> Self {
        self.test_field("fps", fps.to_string())
    }

    /// `test.frames`: ends the stream after this many frames, making the source finite.
    pub fn frames(self, frames: u64) -> Self {
        self.test_field("frames", frames.to_string())
    }

    /// `test.pattern`, e.g. `ball`.
    pub fn pattern(self, pattern: &str) -> Self {
        self.test_field("pattern", pattern.to_string())
    }

    /// Any option beside the kind, as YAML: `.option("rtsp", "{ latency_ms: 0 }")`.
    pub fn option(mut self, key: &str, yaml: &str) -> Self {
        self.entries.push(format!("{key}: {yaml}"));
        self
    }

    /// `fps`: the rate cap applied upstream of the pipeline.
    pub fn max_fps(self, fps: u32) -> Self {
        self.option("fps", &fps.to_string())
    }

    /// `max_size`: the longest side after an upstream downscale.
    pub fn max_size(self, pixels: u32) -> Self {
        self.option("max_size", &pixels.to_string())
    }

    /// `loop: true`: a finite source starts again at its end.
    pub fn looping(self) -> Self {
        self.option("loop", "true")
    }

    /// `reconnect: { initial_ms, max_ms }`.
    pub fn reconnect(self, initial_ms: u64, max_ms: u64) -> Self {
        self.option(
            "reconnect",
            &format!("{{ initial_ms: {initial_ms}, max_ms: {max_ms} }}"),
        )
    }

    /// The flow mapping after `source: `.
    fn yaml(&self) -> String {
        let mut entries = self.entries.clone();
        if !self.test.is_empty() {
            entries.insert(0, format!("test: {{ {} }}", self.test.join(", ")));
        }
        format!("{{ {} }}", entries.join(", "))
    }
}

/// A pipeline file. `write_tree` and friends write it as `pipelines/NAME.yaml`.
#[derive(Clone, Debug, Default)]
pub struct Pipeline {
    name: String,
    // Each one-line section as the text after its key; unset ones are not written.
    source: Option<String>,
    model: Option<String>,
    queue: Option<String>,
    overlay: Option<String>,
    encoder: Option<String>,
    /// One flow mapping per `sinks:` item.
    sinks: Vec<String>,
    /// One flow mapping per `metadata:` item.
    metadata: Vec<String>,
}

impl Pipeline {
    pub fn new(name: &str) -> Self {
        Pipeline {
            name: name.to_string(),
            ..Self::default()
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn source(mut self, source: Source) -> Self {
        self.source = Some(source.yaml());
        self
    }

    /// A key of the daemon file's `models:`, or `none`.
    pub fn model(mut self, model: &str) -> Self {
        self.model = Some(quoted(model));
        self
    }

    /// `queue:` as a flow mapping: `"{ capacity: 2, when_full: block }"`.
    pub fn queue(mut self, flow: &str) -> Self {
        self.queue = Some(flow.to_string());
        self
    }

    /// `overlay:` as a flow mapping: `"{ mode: side_by_side }"`.
    pub fn overlay(mut self, flow: &str) -> Self {
        self.overlay = Some(flow.to_string());
        self
    }

    /// `encoder:` as a flow mapping: `"{ keyframe_interval: 10 }"`.
    pub fn encoder(mut self, flow: &str) -> Self {
        self.encoder = Some(flow.to_string());
        self
    }

    fn sink(mut self, kind: &str, fields: String) -> Self {
        self.sinks.push(format!("{kind}: {{ {fields} }}"));
        self
    }

    /// `- file: { path }`: the container follows the extension.
    pub fn file_sink(self, path: &Path) -> Self {
        self.sink("file", format!("path: {}", quoted_path(path)))
    }

    /// `- file: { path, EXTRA }`, with `extra` such as `"segment_s: 1"` or `"format: mkv"`.
    pub fn file_sink_with(self, path: &Path, extra: &str) -> Self {
        self.sink("file", format!("path: {}, {extra}", quoted_path(path)))
    }

    /// `- rtsp: { mount }` on the daemon's RTSP server.
    pub fn rtsp_sink(self, mount: &str) -> Self {
        self.sink("rtsp", format!("mount: {}", quoted(mount)))
    }

    /// `- udp: { host, port }`: RTP/H.264 to one receiver.
    pub fn udp_sink(self, host: &str, port: u16) -> Self {
        self.sink("udp", format!("host: {}, port: {port}", quoted(host)))
    }

    /// `- launch: { pipeline }`: a gst-launch description fed H.264.
    pub fn launch_sink(self, description: &str) -> Self {
        self.sink("launch", format!("pipeline: {}", quoted(description)))
    }

    /// `- depth16: { path }`: the raw depth map, losslessly.
    pub fn depth16_sink(self, path: &Path) -> Self {
        self.sink("depth16", format!("path: {}", quoted_path(path)))
    }

    /// `- jsonl: { path }` under `metadata:`.
    pub fn jsonl(mut self, path: &Path) -> Self {
        self.metadata
            .push(format!("jsonl: {{ path: {} }}", quoted_path(path)));
        self
    }

    /// Any other `metadata:` item, as a flow mapping: `"mqtt: { broker: site, qos: 1 }"`.
    pub fn metadata(mut self, item: &str) -> Self {
        self.metadata.push(item.to_string());
        self
    }

    /// `- jsonl: { stdout: true }` under `metadata:`.
    pub fn jsonl_stdout(mut self) -> Self {
        self.metadata.push("jsonl: { stdout: true }".to_string());
        self
    }

    /// The file's text.
    pub fn yaml(&self) -> String {
        let mut text = format!("name: {}\n", quoted(&self.name));
        let sections = [
            ("source", &self.source),
            ("model", &self.model),
            ("queue", &self.queue),
            ("overlay", &self.overlay),
            ("encoder", &self.encoder),
        ];
        for (key, value) in sections {
            if let Some(value) = value {
                text += &format!("{key}: {value}\n");
            }
        }
        for (key, items) in [("sinks", &self.sinks), ("metadata", &self.metadata)] {
            if !items.is_empty() {
                text += &format!("{key}:\n");
                for item in items {
                    text += &format!("  - {item}\n");
                }
            }
        }
        text
    }
}
