//! Checks that need more than one key, the file system, or GStreamer's registry.
//!
//! Each check pushes every problem it finds; nothing returns early, so one run of
//! `visiond check` lists all that needs fixing.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use gstreamer::prelude::*;

use super::error::{ConfigError, FileErrors};
use super::load::Config;
use super::paths;
use super::schema::*;
use crate::models::checkpoint::{self, CheckpointFormat};
use crate::models::hub;

pub fn validate(config: &Config, errors: &mut Vec<ConfigError>, warnings: &mut Vec<ConfigError>) {
    let daemon_file = paths::display(&config.file);
    validate_daemon(
        &config.daemon,
        &mut FileErrors {
            file: &daemon_file,
            errors,
        },
        warnings,
    );
    let gst_ready = gstreamer::init().map_err(|error| error.to_string());
    let mut seen = Seen::default();
    for pipeline in &config.pipelines {
        let file = paths::display(&pipeline.file);
        let mut file_errors = FileErrors {
            file: &file,
            errors,
        };
        validate_pipeline(
            &pipeline.config,
            &config.daemon,
            &daemon_file,
            gst_ready.as_ref().err(),
            &mut file_errors,
        );
        seen.record(&pipeline.config, &file, &config.daemon, &mut file_errors);
    }
    for name in config.daemon.models.keys() {
        if !config.pipelines.iter().any(|p| &p.config.model == name) {
            warnings.push(ConfigError {
                file: daemon_file.clone(),
                key: format!("models.{name}"),
                message: "no pipeline uses this model; it will not be loaded".into(),
            });
        }
    }
}

fn validate_daemon(
    daemon: &DaemonConfig,
    errors: &mut FileErrors<'_>,
    warnings: &mut Vec<ConfigError>,
) {
    let http_port = daemon.http.listen.port();
    if http_port != 0 && http_port == daemon.rtsp.port {
        errors.push(
            "rtsp.port",
            format!("port {http_port} is also used by http.listen"),
        );
    }
    if let Some(auth) = &daemon.rtsp.auth {
        check_env_name("rtsp.auth.password_env", &auth.password_env, errors);
    }
    match std::fs::metadata(&daemon.pipelines_dir) {
        Ok(meta) if !meta.is_dir() => errors.push(
            "pipelines_dir",
            format!("{} is not a directory", daemon.pipelines_dir.display()),
        ),
        // A missing directory is reported when listing it.
        _ => {}
    }
    for (name, model) in &daemon.models {
        validate_model(name, model, errors, warnings);
    }
}

fn validate_model(
    name: &str,
    model: &ModelConfig,
    errors: &mut FileErrors<'_>,
    warnings: &mut Vec<ConfigError>,
) {
    let key = format!("models.{name}");
    if name == NO_MODEL {
        errors.push(
            key.as_str(),
            format!("'{NO_MODEL}' is reserved for pipelines without inference; pick another name"),
        );
    }
    match (&model.path, &model.hub) {
        (Some(_), Some(_)) => errors.push(key.as_str(), "set either `path` or `hub`, not both"),
        (None, None) => errors.push(
            key.as_str(),
            "set `path` (a checkpoint folder) or `hub` (a Hugging Face id such as Intel/dpt-large)",
        ),
        (Some(path), None) => {
            if let Err(message) = check_model_files(path, model.task.is_some()) {
                errors.push(format!("{key}.path"), message);
            }
        }
        (None, Some(repo)) => {
            let revision = model.revision.as_deref().unwrap_or("main");
            if !hub::is_repo_id(repo) {
                errors.push(
                    format!("{key}.hub"),
                    format!("'{repo}' is not a hub id; expected org/name, e.g. Intel/dpt-large"),
                );
            } else if !hub::is_valid_revision(revision) {
                errors.push(
                    format!("{key}.revision"),
                    format!("'{revision}' is not a revision name"),
                );
            } else {
                check_hub_model(&key, repo, revision, model.task.is_some(), errors, warnings);
            }
        }
    }
    if model.revision.is_some() && model.hub.is_none() {
        errors.push(format!("{key}.revision"), "only meaningful with `hub`");
    }
    if model.batch.max_size == 0 {
        errors.push(format!("{key}.batch.max_size"), "must be at least 1");
    }
    if let Some([height, width]) = model.input_size
        && (height == 0 || width == 0)
    {
        errors.push(
            format!("{key}.input_size"),
            "height and width must be positive",
        );
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

/// What a model path must hold, checked with the loader's own inspection (config.json parses,
/// the architecture is supported, every weight file is there) without reading any tensor.
fn check_model_files(path: &Path, task_declared: bool) -> Result<(), String> {
    let files = checkpoint::inspect(path).map_err(|e| e.to_string())?;
    match files.format {
        CheckpointFormat::TorchScript { module } if !task_declared => Err(format!(
            "{} is a TorchScript model: set `task` (depth, segmentation or classification)",
            module.display()
        )),
        _ => Ok(()),
    }
}

/// A hub model is checked in the local cache only: `check` never downloads. A miss is an
/// error when offline (the daemon could not start it), otherwise a warning.
fn check_hub_model(
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
            if let Err(message) = check_model_files(&dir, task_declared) {
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

fn check_env_name(key: &str, name: &str, errors: &mut FileErrors<'_>) {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        errors.push(key, format!("'{name}' is not an environment variable name"));
    }
}

fn validate_pipeline(
    pipeline: &PipelineConfig,
    daemon: &DaemonConfig,
    daemon_file: &str,
    gst_error: Option<&String>,
    errors: &mut FileErrors<'_>,
) {
    let name = &pipeline.name;
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid_name {
        errors.push(
            "name",
            format!("'{name}' is not a valid pipeline name: use letters, digits, '-', '_' and '.'"),
        );
    }
    if pipeline.model != NO_MODEL && !daemon.declared_models.contains(&pipeline.model) {
        let defined: Vec<&str> = daemon.declared_models.iter().map(String::as_str).collect();
        errors.push(
            "model",
            format!(
                "model '{}' is not defined in {daemon_file} (defined: {}; or '{NO_MODEL}' for no inference)",
                pipeline.model,
                if defined.is_empty() { "none".to_string() } else { defined.join(", ") }
            ),
        );
    }
    validate_source(&pipeline.source, gst_error, errors);
    if pipeline.queue.capacity == 0 {
        errors.push("queue.capacity", "must be at least 1");
    }
    validate_overlay(&pipeline.overlay, errors);
    validate_encoder(&pipeline.encoder, gst_error, errors);
    if pipeline.sinks.is_empty() && pipeline.metadata.is_empty() {
        errors.push(
            "sinks",
            "the pipeline has no sinks and no metadata, so its results would go nowhere",
        );
    }
    for (index, sink) in pipeline.sinks.iter().enumerate() {
        let key = format!("sinks[{index}].{}", sink.kind());
        match sink {
            SinkConfig::Rtsp(rtsp) => {
                let valid = rtsp.mount.starts_with('/')
                    && rtsp.mount.len() > 1
                    && !rtsp.mount.contains(char::is_whitespace);
                if !valid {
                    errors.push(
                        format!("{key}.mount"),
                        format!(
                            "'{}' is not a mount path; expected e.g. /front-door",
                            rtsp.mount
                        ),
                    );
                }
            }
            SinkConfig::File(file) => {
                if let Err(message) = paths::check_writable_parent(&file.path) {
                    errors.push(format!("{key}.path"), message);
                }
                if file.format.is_none() {
                    let extension = file.path.extension().and_then(|e| e.to_str());
                    if !matches!(extension, Some("mp4" | "mkv")) {
                        errors.push(
                            format!("{key}.path"),
                            "cannot tell the container from the extension: use .mp4 or .mkv, or set `format`",
                        );
                    }
                }
                if file.segment_s == Some(0) {
                    errors.push(format!("{key}.segment_s"), "must be at least 1 second");
                }
            }
            SinkConfig::Udp(udp) => {
                if udp.host.trim().is_empty() {
                    errors.push(format!("{key}.host"), "must not be empty");
                }
                if udp.port == 0 {
                    errors.push(format!("{key}.port"), "must be a port between 1 and 65535");
                }
            }
            SinkConfig::Launch(launch) => {
                check_launch(
                    &format!("{key}.pipeline"),
                    &launch.pipeline,
                    gst_error,
                    errors,
                );
            }
            SinkConfig::Display(_) => {}
            SinkConfig::Depth16(depth) => {
                if let Err(message) = paths::check_writable_parent(&depth.path) {
                    errors.push(format!("{key}.path"), message);
                }
                if depth.path.extension().and_then(|e| e.to_str()) != Some("mkv") {
                    errors.push(
                        format!("{key}.path"),
                        "16-bit depth is written as Matroska: use a .mkv path",
                    );
                }
                if pipeline.model == NO_MODEL {
                    errors.push(key, "needs a depth model (the pipeline's model is 'none')");
                }
            }
        }
    }
    for (index, MetadataConfig::Jsonl(jsonl)) in pipeline.metadata.iter().enumerate() {
        let key = format!("metadata[{index}].jsonl");
        match (&jsonl.path, jsonl.stdout) {
            (Some(_), true) | (None, false) => {
                errors.push(key, "set exactly one of `path` and `stdout: true`");
            }
            (Some(path), false) => {
                if let Err(message) = paths::check_writable_parent(path) {
                    errors.push(format!("{key}.path"), message);
                }
            }
            (None, true) => {}
        }
    }
}

fn validate_source(source: &SourceConfig, gst_error: Option<&String>, errors: &mut FileErrors<'_>) {
    let kinds = source.kinds();
    match kinds.len() {
        0 => errors.push("source", "set one of `uri`, `v4l2`, `test` or `launch`"),
        1 => {}
        _ => errors.push(
            "source",
            format!(
                "set only one of `uri`, `v4l2`, `test` or `launch` (found {})",
                kinds.join(", ")
            ),
        ),
    }
    if let Some(uri) = &source.uri {
        validate_uri(uri, source.credentials.is_some(), errors);
    }
    if let Some(v4l2) = &source.v4l2 {
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
    if let Some(test) = &source.test {
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
    if let Some(launch) = &source.launch {
        check_launch("source.launch", launch, gst_error, errors);
    }
    if let Some(credentials) = &source.credentials {
        check_env_name(
            "source.credentials.password_env",
            &credentials.password_env,
            errors,
        );
    }
    if let Some(fps) = source.fps
        && !(fps > 0.0 && fps.is_finite())
    {
        errors.push(
            "source.fps",
            "must be a positive number of frames per second",
        );
    }
    if let Some(max_size) = source.max_size
        && max_size < 16
    {
        errors.push("source.max_size", "must be at least 16 pixels");
    }
    let reconnect = &source.reconnect;
    if reconnect.initial_ms == 0 {
        errors.push("source.reconnect.initial_ms", "must be at least 1");
    }
    if reconnect.max_ms < reconnect.initial_ms {
        errors.push(
            "source.reconnect.max_ms",
            format!("must not be below initial_ms ({})", reconnect.initial_ms),
        );
    }
    if !(0.0..1.0).contains(&reconnect.jitter) {
        errors.push("source.reconnect.jitter", "must be a fraction in [0, 1)");
    }
}

fn validate_uri(uri: &str, has_credentials: bool, errors: &mut FileErrors<'_>) {
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
            let path = Path::new(rest);
            if !path.is_absolute() {
                errors.push(
                    "source.uri",
                    "file:// URIs need an absolute path (file:///videos/a.mp4)",
                );
            } else if !path.is_file() {
                errors.push(
                    "source.uri",
                    format!("file {} does not exist", path.display()),
                );
            }
        }
        other => errors.push(
            "source.uri",
            format!("unsupported scheme '{other}'; expected rtsp, rtsps, http, https or file"),
        ),
    }
}

fn validate_overlay(overlay: &OverlayConfig, errors: &mut FileErrors<'_>) {
    if !(0.0..=1.0).contains(&overlay.alpha) {
        errors.push("overlay.alpha", "must be between 0 and 1");
    }
    if let DepthRange::Fixed([lo, hi]) = overlay.range
        && lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less)
    {
        errors.push(
            "overlay.range.fixed",
            format!("lower bound {lo} must be below upper bound {hi}"),
        );
    }
    if overlay.smoothing_frames == 0 {
        errors.push("overlay.smoothing_frames", "must be at least 1");
    }
    if overlay.top_k == 0 {
        errors.push("overlay.top_k", "must be at least 1");
    }
    if !(0.0..=1.0).contains(&overlay.min_score) {
        errors.push("overlay.min_score", "must be between 0 and 1");
    }
}

fn validate_encoder(
    encoder: &EncoderConfig,
    gst_error: Option<&String>,
    errors: &mut FileErrors<'_>,
) {
    if encoder.keyframe_interval == 0 {
        errors.push("encoder.keyframe_interval", "must be at least 1 frame");
    }
    if encoder.bitrate_kbps == 0 {
        errors.push("encoder.bitrate_kbps", "must be positive");
    }
    if let Some(error) = gst_error {
        errors.push(
            "encoder.element",
            format!("GStreamer could not start: {error}"),
        );
        return;
    }
    match gstreamer::ElementFactory::find(&encoder.element) {
        None => errors.push(
            "encoder.element",
            format!(
                "no GStreamer element '{}' on this machine (gst-inspect-1.0 {} tells which plugin provides it)",
                encoder.element, encoder.element
            ),
        ),
        Some(factory) => {
            if let Ok(element) = factory.create().build() {
                for property in encoder.properties.keys() {
                    if element.find_property(property).is_none() {
                        errors.push(
                            format!("encoder.properties.{property}"),
                            format!("element '{}' has no property '{property}'", encoder.element),
                        );
                    }
                }
            }
        }
    }
}

/// Parses a gst-launch fragment the way the engine will, so syntax errors and missing elements
/// show up at check time with GStreamer's own message.
fn check_launch(
    key: &str,
    description: &str,
    gst_error: Option<&String>,
    errors: &mut FileErrors<'_>,
) {
    if description.trim().is_empty() {
        errors.push(key, "must not be empty");
        return;
    }
    if gst_error.is_some() {
        return;
    }
    if let Err(error) = gstreamer::parse::bin_from_description(description, true) {
        errors.push(
            key,
            format!("GStreamer cannot build '{description}': {error}"),
        );
    }
}

/// Names that must be unique across all pipelines, with where each was first seen.
#[derive(Default)]
struct Seen {
    names: HashMap<String, String>,
    mounts: HashMap<String, String>,
    udp: HashMap<(String, u16), String>,
    outputs: BTreeMap<std::path::PathBuf, String>,
}

impl Seen {
    fn record(
        &mut self,
        pipeline: &PipelineConfig,
        file: &str,
        daemon: &DaemonConfig,
        errors: &mut FileErrors<'_>,
    ) {
        if let Some(first) = self.names.get(&pipeline.name) {
            errors.push(
                "name",
                format!(
                    "pipeline name '{}' is already used by {first}",
                    pipeline.name
                ),
            );
        } else {
            self.names.insert(pipeline.name.clone(), file.to_string());
        }
        for (index, sink) in pipeline.sinks.iter().enumerate() {
            match sink {
                SinkConfig::Rtsp(rtsp) => {
                    let key = format!("sinks[{index}].rtsp.mount");
                    match self.mounts.get(&rtsp.mount) {
                        Some(first) => errors.push(
                            key,
                            format!("mount {} is already served by {first}", rtsp.mount),
                        ),
                        None => {
                            self.mounts
                                .insert(rtsp.mount.clone(), format!("{file} {key}"));
                        }
                    }
                }
                SinkConfig::Udp(udp) => {
                    let key = format!("sinks[{index}].udp.port");
                    let target = (udp.host.clone(), udp.port);
                    match self.udp.get(&target) {
                        Some(first) => errors.push(
                            key.as_str(),
                            format!("{}:{} is already a target of {first}", udp.host, udp.port),
                        ),
                        None => {
                            self.udp.insert(target, format!("{file} {key}"));
                        }
                    }
                    if is_local(&udp.host)
                        && (udp.port == daemon.rtsp.port || udp.port == daemon.http.listen.port())
                    {
                        errors.push(
                            key,
                            format!(
                                "port {} is used by the daemon's own RTSP or HTTP server",
                                udp.port
                            ),
                        );
                    }
                }
                SinkConfig::File(sink) => self.output(
                    &sink.path,
                    format!("sinks[{index}].file.path"),
                    file,
                    errors,
                ),
                SinkConfig::Depth16(sink) => self.output(
                    &sink.path,
                    format!("sinks[{index}].depth16.path"),
                    file,
                    errors,
                ),
                _ => {}
            }
        }
        for (index, MetadataConfig::Jsonl(jsonl)) in pipeline.metadata.iter().enumerate() {
            if let Some(path) = &jsonl.path {
                self.output(path, format!("metadata[{index}].jsonl.path"), file, errors);
            }
        }
    }

    fn output(&mut self, path: &Path, key: String, file: &str, errors: &mut FileErrors<'_>) {
        match self.outputs.get(path) {
            Some(first) => errors.push(
                key,
                format!("{} is already written by {first}", path.display()),
            ),
            None => {
                self.outputs
                    .insert(path.to_path_buf(), format!("{file} {key}"));
            }
        }
    }
}

fn is_local(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "::1" | "0.0.0.0")
}
