//! What a pipeline written over HTTP (`PUT /api/pipelines/<name>`) may use, as the daemon
//! file's `http.writes` says. A pipeline file the operator writes can do anything the daemon
//! can; one that arrives with a bearer token may not, unless allowed:
//!
//! - GStreamer text to run (a `launch` source or sink, `encoder.properties`, an
//!   `encoder.element` that is not a video encoder): it can read and write any file the daemon
//!   can (`filesrc location=secret ! filesink location=copy`, x264enc's `option-string`).
//!   Refused unless `http.writes.allow_launch`.
//! - Files (recordings, `depth16`, `jsonl`, a `file://` source): each must lie inside one of
//!   `http.writes.dirs`, judged where it really is (symbolic links followed, `..` folded), so
//!   neither `dirs/../etc` nor a link inside a directory to a file outside gets through.
//!
//! - Secrets: `credentials.password_env` sends the variable's value to the source's server, so
//!   only the variables `http.writes.password_envs` lists may be named.
//!
//! These checks run before anything else looks at the pipeline (the preflight probes the
//! directories it writes into), so a refused pipeline touches nothing.

use std::path::{Path, PathBuf};

use gstreamer as gst;

use crate::config::{
    AUTO_ENCODER, FileErrors, MetadataConfig, PipelineConfig, SinkConfig, SourceKind, WritesConfig,
};

/// Pushes, key by key, what in `pipeline` a write over HTTP may not use under `writes`.
pub fn check(pipeline: &PipelineConfig, writes: &WritesConfig, errors: &mut FileErrors<'_>) {
    if !writes.allow_launch {
        check_gstreamer_text(pipeline, errors);
    }
    if let Some(credentials) = &pipeline.source.credentials
        && !writes.password_envs.contains(&credentials.password_env)
    {
        errors.push(
            "source.credentials.password_env",
            format!(
                "a pipeline written over HTTP may name only the environment variables listed in `http.writes.password_envs` (it would send the variable's value to the source's server); add {} there to allow it",
                credentials.password_env
            ),
        );
    }
    let allowed = Allowed::new(&writes.dirs);
    if let SourceKind::Uri(uri) = &pipeline.source.kind
        && uri.starts_with("file:")
    {
        match gst::glib::filename_from_uri(uri) {
            Ok((path, None)) => allowed.check("source.uri", &path, errors),
            _ => errors.push(
                "source.uri",
                "a file:// URI must name a local absolute path (file:///dir/video.mp4)",
            ),
        }
    }
    for (index, sink) in pipeline.sinks.iter().enumerate() {
        let path = match sink {
            SinkConfig::File(file) => &file.path,
            SinkConfig::Depth16(depth) => &depth.path,
            _ => continue,
        };
        allowed.check(
            &format!("sinks[{index}].{}.path", sink.kind()),
            path,
            errors,
        );
    }
    // Published sinks (mqtt, kafka) reach only the brokers the daemon file names: nothing to
    // hold back here.
    for (index, item) in pipeline.metadata.iter().enumerate() {
        if let MetadataConfig::Jsonl(jsonl) = item
            && let Some(path) = &jsonl.path
        {
            allowed.check(&format!("metadata[{index}].jsonl.path"), path, errors);
        }
    }
}

const ALLOW_LAUNCH: &str = "allow it with `http.writes: { allow_launch: true }` in the daemon file";

fn check_gstreamer_text(pipeline: &PipelineConfig, errors: &mut FileErrors<'_>) {
    if let SourceKind::Launch(_) = &pipeline.source.kind {
        errors.push(
            "source.launch",
            format!(
                "a pipeline written over HTTP may not use a launch source (it can read any file the daemon can); {ALLOW_LAUNCH}"
            ),
        );
    }
    for (index, sink) in pipeline.sinks.iter().enumerate() {
        if let SinkConfig::Launch(_) = sink {
            errors.push(
                format!("sinks[{index}].launch"),
                format!(
                    "a pipeline written over HTTP may not use a launch sink (it can write any file the daemon can); {ALLOW_LAUNCH}"
                ),
            );
        }
    }
    let encoder = &pipeline.encoder;
    if !encoder.properties.is_empty() {
        errors.push(
            "encoder.properties",
            format!(
                "a pipeline written over HTTP may not set encoder properties (some name files the encoder writes, such as x264enc's option-string); {ALLOW_LAUNCH}"
            ),
        );
    }
    if encoder.element != AUTO_ENCODER && !is_video_encoder(&encoder.element) {
        errors.push(
            "encoder.element",
            format!(
                "'{}' is not a video encoder on this machine; a pipeline written over HTTP may only name one (or auto); {ALLOW_LAUNCH}",
                crate::config::shown(&encoder.element)
            ),
        );
    }
}

/// Whether GStreamer's registry lists `element` as a video encoder.
fn is_video_encoder(element: &str) -> bool {
    gst::init().is_ok()
        && gst::ElementFactory::find(element).is_some_and(|factory| {
            let klass = factory.metadata(gst::ELEMENT_METADATA_KLASS).unwrap_or("");
            klass.contains("Encoder") && klass.contains("Video")
        })
}

/// The directories files may be named in, where they really are.
struct Allowed<'a> {
    configured: &'a [PathBuf],
    /// Those that exist, symbolic links resolved.
    real: Vec<PathBuf>,
}

impl<'a> Allowed<'a> {
    fn new(configured: &'a [PathBuf]) -> Self {
        let real = configured
            .iter()
            .filter_map(|dir| dir.canonicalize().ok())
            .collect();
        Self { configured, real }
    }

    fn check(&self, key: &str, path: &Path, errors: &mut FileErrors<'_>) {
        if self.configured.is_empty() {
            errors.push(
                key,
                "a pipeline written over HTTP may name no file: list the directories it may use in `http.writes.dirs` in the daemon file",
            );
            return;
        }
        let listed = || {
            self.configured
                .iter()
                .map(|dir| dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match real_location(path) {
            Ok(real) if self.real.iter().any(|dir| real.starts_with(dir)) => {}
            Ok(real) => {
                let resolved = if real == path {
                    String::new()
                } else {
                    format!(" (it resolves to {})", real.display())
                };
                errors.push(
                    key,
                    format!(
                        "{}{resolved} is outside the directories a pipeline written over HTTP may use (http.writes.dirs: {})",
                        path.display(),
                        listed()
                    ),
                );
            }
            Err(reason) => errors.push(key, reason),
        }
    }
}

/// Where `path` really is: `..` folded and symbolic links followed in the part that exists;
/// the missing rest (a file about to be created) appended as written.
fn real_location(path: &Path) -> Result<PathBuf, String> {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|error| format!("cannot resolve {}: {error}", path.display()))?
            .join(path)
    };
    let path = crate::config::paths::normalize(&path);
    let mut missing = Vec::new();
    let mut existing = path.as_path();
    loop {
        if std::fs::symlink_metadata(existing).is_ok() {
            let Ok(mut real) = existing.canonicalize() else {
                return Err(format!(
                    "{} is a symbolic link to nothing; name the file itself",
                    existing.display()
                ));
            };
            real.extend(missing.iter().rev());
            return Ok(real);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                existing = parent;
            }
            _ => return Ok(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_locations_fold_dots_and_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("inside")).unwrap();
        std::os::unix::fs::symlink("/etc", real.join("inside/link")).unwrap();
        std::os::unix::fs::symlink(real.join("nowhere"), real.join("inside/dangling")).unwrap();
        assert_eq!(
            real_location(&real.join("inside/new/a.mp4")).unwrap(),
            real.join("inside/new/a.mp4")
        );
        assert_eq!(
            real_location(&real.join("inside/../escape.mp4")).unwrap(),
            real.join("escape.mp4")
        );
        assert_eq!(
            real_location(&real.join("inside/link/x.jsonl")).unwrap(),
            Path::new("/etc").canonicalize().unwrap().join("x.jsonl")
        );
        assert!(
            real_location(&real.join("inside/dangling"))
                .unwrap_err()
                .contains("symbolic link to nothing")
        );
    }
}
