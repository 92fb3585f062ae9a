//! Reads the daemon file and every pipeline file into typed configs, collecting all errors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::error::{ConfigError, ConfigErrors, FileErrors};
use super::paths;
use super::reader::{Sections, parse_mapping};
use super::schema::*;
use super::validate;

/// A whole, validated configuration: the daemon file and its pipelines.
#[derive(Debug, Clone)]
pub struct Config {
    /// The daemon file as given.
    pub file: PathBuf,
    pub daemon: DaemonConfig,
    pub pipelines: Vec<PipelineFile>,
    /// Things that will work but probably were not meant (an unused model, say).
    pub warnings: Vec<ConfigError>,
}

#[derive(Debug, Clone)]
pub struct PipelineFile {
    pub file: PathBuf,
    pub config: PipelineConfig,
}

impl Config {
    /// Loads and validates `file` and the pipeline files its `pipelines_dir` holds. On failure
    /// the error lists every problem found in every file.
    pub fn load(file: &Path) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let file_name = paths::display(file);
        let daemon = read_daemon(
            file,
            &mut FileErrors {
                file: &file_name,
                errors: &mut errors,
            },
        );
        let mut pipelines = Vec::new();
        if let Some(daemon) = &daemon {
            for pipeline_file in list_pipeline_files(&daemon.pipelines_dir, &file_name, &mut errors)
            {
                let name = paths::display(&pipeline_file);
                let mut file_errors = FileErrors {
                    file: &name,
                    errors: &mut errors,
                };
                if let Some(config) = read_pipeline(&pipeline_file, &mut file_errors) {
                    pipelines.push(PipelineFile {
                        file: pipeline_file,
                        config,
                    });
                }
            }
        }
        let Some(daemon) = daemon else {
            return Err(ConfigErrors(errors));
        };
        let config = Config {
            file: file.to_path_buf(),
            daemon,
            pipelines,
            warnings: Vec::new(),
        };
        validate::validate(&config, &mut errors, &mut warnings);
        // Read order mixes files (a cross-file check runs last); group them for the reader,
        // daemon file first, keeping each file's own order.
        errors.sort_by_key(|error| (error.file != file_name, error.file.clone()));
        if errors.is_empty() {
            Ok(Config { warnings, ..config })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    pub fn pipeline(&self, name: &str) -> Option<&PipelineFile> {
        self.pipelines.iter().find(|p| p.config.name == name)
    }
}

fn read_text(file: &Path, errors: &mut FileErrors<'_>) -> Option<String> {
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
fn read_daemon(file: &Path, errors: &mut FileErrors<'_>) -> Option<DaemonConfig> {
    let text = read_text(file, errors)?;
    let mapping = parse_mapping(&text, errors)?;
    let base = paths::parent_dir(file);
    let mut sections = Sections::new(mapping, errors);
    let http = sections.optional::<HttpConfig>("http");
    let log = sections.optional::<LogConfig>("log");
    let rtsp = sections.optional::<RtspServerConfig>("rtsp");
    let shutdown = sections.optional::<ShutdownConfig>("shutdown");
    let pipelines_dir = sections.required::<PathBuf>("pipelines_dir");
    let (models, declared_models) = read_models(&mut sections, &base);
    sections.finish(DAEMON_KEYS);
    Some(DaemonConfig {
        http: http.unwrap_or_default(),
        log: log.unwrap_or_default(),
        rtsp: rtsp.unwrap_or_default(),
        shutdown: shutdown.unwrap_or_default(),
        pipelines_dir: paths::resolve(&base, &pipelines_dir?),
        models,
        declared_models,
    })
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
        if let Some(mut model) =
            super::reader::decode::<ModelConfig>(&key, value, sections.errors())
        {
            model.path = model.path.map(|path| paths::resolve(base, &path));
            model.labels = model.labels.map(|path| paths::resolve(base, &path));
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
pub fn read_pipeline(file: &Path, errors: &mut FileErrors<'_>) -> Option<PipelineConfig> {
    let text = read_text(file, errors)?;
    let mapping = parse_mapping(&text, errors)?;
    let base = paths::parent_dir(file);
    let mut sections = Sections::new(mapping, errors);
    let name = sections.required::<String>("name");
    let source = sections.required::<SourceConfig>("source");
    let model = sections.required::<String>("model");
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
        .map(|MetadataConfig::Jsonl(mut jsonl)| {
            jsonl.path = jsonl.path.map(|path| paths::resolve(&base, &path));
            MetadataConfig::Jsonl(jsonl)
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
        model: model.unwrap_or_else(|| NO_MODEL.to_string()),
        queue: queue.unwrap_or_default(),
        overlay: overlay.unwrap_or_default(),
        encoder: encoder.unwrap_or_default(),
        sinks,
        metadata,
    })
}
