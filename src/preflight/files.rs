//! Files a pipeline reads (a `file://` source, a V4L2 device) and the directories it writes
//! into.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::config::{FileErrors, MetadataConfig, PipelineConfig, SinkConfig, SourceKind, paths};

pub fn check_pipeline(pipeline: &PipelineConfig, errors: &mut FileErrors<'_>) {
    if let SourceKind::Uri(uri) = &pipeline.source.kind
        && let Some(path) = uri.strip_prefix("file://").map(Path::new)
        && path.is_absolute()
        && !path.is_file()
    {
        errors.push(
            "source.uri",
            format!("file {} does not exist", path.display()),
        );
    }
    if let SourceKind::V4l2(v4l2) = &pipeline.source.kind
        && let Err(message) = check_video_device(&v4l2.device)
    {
        errors.push("source.v4l2.device", message);
    }
    for (index, sink) in pipeline.sinks.iter().enumerate() {
        let path = match sink {
            SinkConfig::File(file) => &file.path,
            SinkConfig::Depth16(depth) => &depth.path,
            _ => continue,
        };
        if let Err(message) = check_writable_parent(path) {
            errors.push(format!("sinks[{index}].{}.path", sink.kind()), message);
        }
    }
    for (index, item) in pipeline.metadata.iter().enumerate() {
        if let MetadataConfig::Jsonl(jsonl) = item
            && let Some(path) = &jsonl.path
            && let Err(message) = check_writable_parent(path)
        {
            errors.push(format!("metadata[{index}].jsonl.path"), message);
        }
    }
}

/// A V4L2 device is a character device node (`/dev/video0`); a camera unplugged, or a path
/// that names something else, fails here rather than at the pipeline's first start.
fn check_video_device(device: &Path) -> Result<(), String> {
    match std::fs::metadata(device) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{} does not exist (is the camera plugged in? `v4l2-ctl --list-devices` lists the devices)",
            device.display()
        )),
        Err(error) => Err(format!("cannot look at {}: {error}", device.display())),
        Ok(meta) if !meta.file_type().is_char_device() => Err(format!(
            "{} is not a video device (not a character device)",
            device.display()
        )),
        Ok(_) => Ok(()),
    }
}

/// Checks that a file can be created at `path`: its directory exists, is a directory, and
/// accepts a new file (tried for real, since permission bits say nothing about read-only
/// mounts or a root user).
pub fn check_writable_parent(path: &Path) -> Result<(), String> {
    let dir = paths::parent_dir(path);
    match std::fs::metadata(&dir) {
        Err(_) => return Err(format!("parent directory {} does not exist", dir.display())),
        Ok(meta) if !meta.is_dir() => {
            return Err(format!("parent {} is not a directory", dir.display()));
        }
        Ok(_) => {}
    }
    let probe = dir.join(format!(".visiond-write-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(error) => Err(format!(
            "directory {} is not writable: {error}",
            dir.display()
        )),
    }
}

/// The bearer token in `path`: its first line, trimmed; a missing, unreadable or empty file
/// is an error (the write endpoints would refuse every request).
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read the token file {}: {error}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.len() < 16 {
        return Err(format!(
            "the token in {} must be at least 16 characters (e.g. `openssl rand -hex 32 > {}`)",
            path.display(),
            path.display()
        ));
    }
    Ok(token)
}
