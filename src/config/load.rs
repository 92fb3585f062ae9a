//! Reads the daemon file and every pipeline file into typed configs, collecting all errors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::broker::BrokerConfig;
use super::daemon::*;
use super::error::{ConfigError, FileErrors, Unreadable};
use super::model::{ModelConfig, ModelSection};
use super::paths;
use super::pipeline::*;
use super::reader::{Sections, parse_mapping};
use super::shape;
use super::source::{SourceConfig, SourceSection};
use super::tree::{Config, PipelineFile, Reading};

/// Pipeline files as they would be after a change not yet written: a path's new text, or
/// `None` for a file about to be removed. Lets a change be validated with every other file
/// before anything on disk is touched.
pub type Overlay = BTreeMap<PathBuf, Option<String>>;

impl Config {
    /// Reads `file` and the pipeline files its `pipelines_dir` holds, parses every section and
    /// checks its shape (ranges, names, exactly-one-of, duplicates across files).
    pub fn read(file: &Path) -> Reading {
        Self::read_with(file, &Overlay::new())
    }

    /// [`Config::read`] with some pipeline files replaced, added or removed by `overlay`.
    pub fn read_with(file: &Path, overlay: &Overlay) -> Reading {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut unreadable = Unreadable::default();
        let file_name = paths::display(file);
        let daemon = read_daemon(
            file,
            &mut FileErrors {
                file: &file_name,
                errors: &mut errors,
            },
            &mut unreadable,
        );
        let mut pipelines = Vec::new();
        if let Some(daemon) = &daemon {
            let mut files = list_pipeline_files(&daemon.pipelines_dir, &file_name, &mut errors);
            files.retain(|path| !matches!(overlay.get(path), Some(None)));
            for (path, text) in overlay {
                if text.is_some() && !files.contains(path) {
                    files.push(path.clone());
                }
            }
            files.sort();
            for pipeline_file in files {
                let name = paths::display(&pipeline_file);
                let mut file_errors = FileErrors {
                    file: &name,
                    errors: &mut errors,
                };
                let text = match overlay.get(&pipeline_file) {
                    Some(Some(text)) => Some(text.clone()),
                    _ => read_text(&pipeline_file, &mut file_errors),
                };
                let config = text.and_then(|text| {
                    read_pipeline(&pipeline_file, &text, &mut file_errors, &mut unreadable)
                });
                if let Some(config) = config {
                    pipelines.push(PipelineFile {
                        file: pipeline_file,
                        config,
                    });
                }
            }
        }
        let config = daemon.map(|daemon| Config {
            file: file.to_path_buf(),
            daemon,
            pipelines,
            warnings: Vec::new(),
        });
        if let Some(config) = &config {
            shape::check(config, &mut errors, &mut warnings);
        }
        Reading {
            config,
            errors,
            warnings,
            unreadable,
        }
    }
}

fn read_text(file: &Path, errors: &mut FileErrors<'_>) -> Option<String> {
    if let Ok(meta) = std::fs::metadata(file)
        && meta.len() > super::limits::MAX_FILE_BYTES
    {
        errors.push(
            "",
            format!(
                "file is {} bytes; a configuration file may hold at most {} bytes",
                meta.len(),
                super::limits::MAX_FILE_BYTES
            ),
        );
        return None;
    }
    match std::fs::read_to_string(file) {
        Ok(text) => Some(text),
        Err(error) => {
            errors.push("", format!("cannot read file: {error}"));
            None
        }
    }
}

/// Reads the daemon file. `None` only when it cannot be read or parsed at all, or names no
/// pipelines directory; an invalid section is reported and replaced by its default so that the
/// pipeline files are still read and checked in the same run.
fn read_daemon(
    file: &Path,
    errors: &mut FileErrors<'_>,
    unreadable: &mut Unreadable,
) -> Option<DaemonConfig> {
    let text = read_text(file, errors)?;
    let mapping = parse_mapping(&text, errors)?;
    let base = paths::parent_dir(file);
    let mut sections = Sections::new(mapping, errors, unreadable);
    let name = sections.optional::<Option<String>>("name");
    let http = sections.optional::<HttpConfig>("http");
    let log = sections.optional::<LogConfig>("log");
    let rtsp = sections.optional::<RtspServerConfig>("rtsp");
    let shutdown = sections.optional::<ShutdownConfig>("shutdown");
    let outputs = sections.optional::<OutputsConfig>("outputs");
    let pipelines_dir = sections.required::<PathBuf>("pipelines_dir");
    let (models, declared_models) = read_models(&mut sections, &base);
    let (brokers, declared_brokers) = read_brokers(&mut sections, &base);
    sections.finish(DAEMON_KEYS);
    let mut http = http.unwrap_or_default();
    http.token_file = http.token_file.map(|path| paths::resolve(&base, &path));
    http.view_token_file = http
        .view_token_file
        .map(|path| paths::resolve(&base, &path));
    for dir in &mut http.writes.dirs {
        *dir = paths::resolve(&base, dir);
    }
    Some(DaemonConfig {
        name: name.flatten(),
        http,
        log: log.unwrap_or_default(),
        rtsp: rtsp.unwrap_or_default(),
        shutdown: shutdown.unwrap_or_default(),
        outputs: outputs.unwrap_or_default(),
        pipelines_dir: paths::resolve(&base, &pipelines_dir?),
        models,
        declared_models,
        brokers,
        declared_brokers,
    })
}

/// Brokers are decoded one by one, like models; their certificate files are resolved against
/// the daemon file's directory.
fn read_brokers(
    sections: &mut Sections<'_, '_>,
    base: &Path,
) -> (BTreeMap<String, BrokerConfig>, BTreeSet<String>) {
    let raw = sections
        .optional::<BTreeMap<String, serde_yaml::Value>>("brokers")
        .unwrap_or_default();
    let declared = raw.keys().cloned().collect();
    let mut brokers = BTreeMap::new();
    for (name, value) in raw {
        let key = format!("brokers.{name}");
        let Some(mut broker) = sections.decode::<BrokerConfig>(&key, value) else {
            continue;
        };
        if let BrokerConfig::Mqtt(mqtt) = &mut broker {
            for file in [
                &mut mqtt.ca_file,
                &mut mqtt.client_cert,
                &mut mqtt.client_key,
            ] {
                *file = file.take().map(|path| paths::resolve(base, &path));
            }
        }
        brokers.insert(name, broker);
    }
    (brokers, declared)
}

/// Models are decoded one by one, so that one bad model does not hide the next. Returns the
/// valid ones and the names of all, valid or not.
fn read_models(
    sections: &mut Sections<'_, '_>,
    base: &Path,
) -> (BTreeMap<String, ModelConfig>, BTreeSet<String>) {
    let raw = sections
        .optional::<BTreeMap<String, serde_yaml::Value>>("models")
        .unwrap_or_default();
    let declared = raw.keys().cloned().collect();
    let mut models = BTreeMap::new();
    for (name, value) in raw {
        let key = format!("models.{name}");
        let Some(mut section) = sections.decode::<ModelSection>(&key, value) else {
            continue;
        };
        section.path = section.path.map(|path| paths::resolve(base, &path));
        section.labels = section.labels.map(|path| paths::resolve(base, &path));
        if let Some(processor) = &mut section.processor {
            processor.path = processor
                .path
                .take()
                .map(|path| paths::resolve(base, &path));
        }
        if let Some(remote) = &mut section.remote {
            remote.token_file = remote.token_file.take().map(|p| paths::resolve(base, &p));
            if let Some(tls) = &mut remote.tls {
                for file in [&mut tls.ca_file, &mut tls.cert_file, &mut tls.key_file] {
                    *file = file.take().map(|p| paths::resolve(base, &p));
                }
            }
        }
        if let Some(model) = section.parse(&key, sections.errors()) {
            models.insert(name, model);
        }
    }
    (models, declared)
}

/// `*.yaml` and `*.yml` files, sorted, so start order and messages are stable.
fn list_pipeline_files(
    dir: &Path,
    daemon_file: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            errors.push(ConfigError {
                file: daemon_file.to_string(),
                key: "pipelines_dir".into(),
                message: format!("cannot read directory {}: {error}", dir.display()),
            });
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.is_file()
                && matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml")
                )
        })
        .collect();
    files.sort();
    files
}

/// Reads one pipeline file; relative output paths are resolved against its directory.
/// Like the daemon file, an invalid section is reported and replaced by a harmless default so
/// that the cross-file and file-system checks still run on the rest in the same pass.
pub fn read_pipeline(
    file: &Path,
    text: &str,
    errors: &mut FileErrors<'_>,
    unreadable: &mut Unreadable,
) -> Option<PipelineConfig> {
    let mapping = parse_mapping(text, errors)?;
    let base = paths::parent_dir(file);
    let mut sections = Sections::new(mapping, errors, unreadable);
    let name = sections.required::<String>("name");
    let source = sections
        .required::<SourceSection>("source")
        .map(|section| section.parse(sections.errors()));
    let model = sections.required::<ModelRef>("model");
    let queue = sections.optional::<QueueConfig>("queue");
    let overlay = sections.optional::<OverlayConfig>("overlay");
    let encoder = sections.optional::<EncoderConfig>("encoder");
    let sinks = sections.list::<SinkConfig>("sinks");
    let metadata = sections.list::<MetadataConfig>("metadata");
    sections.finish(PIPELINE_KEYS);
    // An item that failed to decode (already reported) becomes an output with nothing to
    // check, so that later items keep their written index in messages.
    let sinks = sinks
        .into_iter()
        .map(|sink| sink.unwrap_or_else(|| SinkConfig::Display(DisplaySink::default())))
        .map(|sink| match sink {
            SinkConfig::File(mut file) => {
                file.path = paths::resolve(&base, &file.path);
                SinkConfig::File(file)
            }
            SinkConfig::Depth16(mut depth) => {
                depth.path = paths::resolve(&base, &depth.path);
                SinkConfig::Depth16(depth)
            }
            SinkConfig::Rtsp(mut rtsp) => {
                rtsp.mount = normalize_mount(&rtsp.mount);
                SinkConfig::Rtsp(rtsp)
            }
            other => other,
        })
        .collect();
    let metadata = metadata
        .into_iter()
        .map(|item| {
            item.unwrap_or(MetadataConfig::Jsonl(JsonlSink {
                path: None,
                stdout: true,
            }))
        })
        .map(|item| match item {
            MetadataConfig::Jsonl(mut jsonl) => {
                jsonl.path = jsonl.path.map(|path| paths::resolve(&base, &path));
                MetadataConfig::Jsonl(jsonl)
            }
            other => other,
        })
        .collect();
    let fallback_name = || {
        file.file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    Some(PipelineConfig {
        name: name.unwrap_or_else(fallback_name),
        source: source.unwrap_or_else(SourceConfig::placeholder),
        model: model.unwrap_or(ModelRef::None),
        queue: queue.unwrap_or_default(),
        overlay: overlay.unwrap_or_default(),
        encoder: encoder.unwrap_or_default(),
        sinks,
        metadata,
    })
}

/// An RTSP mount as the server matches it: `/same/`, `//same` and `/same` are one mount, so
/// duplicates are found (and both pipelines cannot claim one URL).
pub fn normalize_mount(mount: &str) -> String {
    let parts: Vec<&str> = mount.split('/').filter(|part| !part.is_empty()).collect();
    if mount.starts_with('/') || parts.is_empty() {
        format!("/{}", parts.join("/"))
    } else {
        // Not a mount path at all: left as written for the shape check to report.
        mount.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_lose_trailing_and_duplicate_slashes() {
        assert_eq!(normalize_mount("/same/"), "/same");
        assert_eq!(normalize_mount("//a//b/"), "/a/b");
        assert_eq!(normalize_mount("/door"), "/door");
        assert_eq!(normalize_mount("door"), "door");
    }
}
