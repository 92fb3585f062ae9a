//! Limits on what a configuration may hold, so that absurd input (a 20 MB name, 100 000 nested
//! brackets) is refused at once with a short message instead of being parsed for seconds,
//! echoed back in full, or handed to GStreamer.

use std::path::Path;

use super::error::FileErrors;
pub use super::error::shown;
use super::pipeline::{MetadataConfig, PipelineConfig, SinkConfig};
use super::source::SourceKind;

/// A configuration file larger than this is not read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Deepest nesting of mappings and lists (block or flow) a file may have.
pub const MAX_NESTING: usize = 32;
/// Pipeline names (they become thread names, log fields and metric labels).
pub const MAX_NAME: usize = 64;
/// RTSP mount paths.
pub const MAX_MOUNT: usize = 256;
/// Files and folders (Linux's PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Source URIs.
pub const MAX_URI: usize = 4096;
/// gst-launch fragments (`source.launch`, `sinks[].launch.pipeline`).
pub const MAX_LAUNCH: usize = 16 * 1024;

/// `value` at `key` is at most `max` characters, or the error says how long it is.
pub fn check_length(key: &str, value: &str, max: usize, errors: &mut FileErrors<'_>) -> bool {
    let length = value.chars().count();
    if length > max {
        errors.push(
            key,
            format!("is {length} characters long; at most {max} are allowed"),
        );
        return false;
    }
    true
}

fn check_path(key: &str, path: &Path, errors: &mut FileErrors<'_>) {
    check_length(key, &path.to_string_lossy(), MAX_PATH, errors);
}

/// The length of every name, path, URI and launch string of a pipeline.
pub fn check_pipeline(pipeline: &PipelineConfig, errors: &mut FileErrors<'_>) {
    check_length("name", &pipeline.name, MAX_NAME, errors);
    match &pipeline.source.kind {
        SourceKind::Uri(uri) => {
            check_length("source.uri", uri, MAX_URI, errors);
        }
        SourceKind::Launch(launch) => {
            check_length("source.launch", launch, MAX_LAUNCH, errors);
        }
        SourceKind::V4l2(v4l2) => check_path("source.v4l2.device", &v4l2.device, errors),
        SourceKind::Test(_) => {}
    }
    for (index, sink) in pipeline.sinks.iter().enumerate() {
        let key = format!("sinks[{index}].{}", sink.kind());
        match sink {
            SinkConfig::Rtsp(rtsp) => {
                check_length(&format!("{key}.mount"), &rtsp.mount, MAX_MOUNT, errors);
            }
            SinkConfig::File(file) => check_path(&format!("{key}.path"), &file.path, errors),
            SinkConfig::Depth16(depth) => check_path(&format!("{key}.path"), &depth.path, errors),
            SinkConfig::Launch(launch) => {
                check_length(
                    &format!("{key}.pipeline"),
                    &launch.pipeline,
                    MAX_LAUNCH,
                    errors,
                );
            }
            SinkConfig::Udp(udp) => {
                check_length(&format!("{key}.host"), &udp.host, MAX_MOUNT, errors);
            }
            SinkConfig::Display(_) => {}
        }
    }
    for (index, item) in pipeline.metadata.iter().enumerate() {
        let key = format!("metadata[{index}].{}", item.kind());
        match item {
            MetadataConfig::Jsonl(jsonl) => {
                if let Some(path) = &jsonl.path {
                    check_path(&format!("{key}.path"), path, errors);
                }
            }
            MetadataConfig::Mqtt(mqtt) => {
                check_length(&format!("{key}.broker"), &mqtt.broker, MAX_NAME, errors);
            }
            MetadataConfig::Kafka(kafka) => {
                check_length(&format!("{key}.broker"), &kafka.broker, MAX_NAME, errors);
                check_length(&format!("{key}.key"), &kafka.key, MAX_MOUNT, errors);
            }
        }
    }
}

/// The deepest nesting of `text` and the line where it is first reached, found in one pass
/// without parsing: flow brackets outside quotes and comments, plus the block indentation
/// levels open around them. YAML parsers recurse per level, so depth is what makes a small
/// file expensive.
pub fn nesting(text: &str) -> (usize, usize) {
    let mut deepest = (0, 0);
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    for (number, line) in text.lines().enumerate() {
        let body = line.trim_start_matches(' ');
        if flow == 0 && !body.is_empty() && !body.starts_with('#') {
            let indent = line.len() - body.len();
            while indents.last().is_some_and(|&open| open >= indent) {
                indents.pop();
            }
            indents.push(indent);
        }
        let mut quote: Option<char> = None;
        let mut previous = ' ';
        for c in body.chars() {
            match (quote, c) {
                (Some(q), c) if c == q && previous != '\\' => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') if previous == ' ' => break,
                (None, '[' | '{') => flow += 1,
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            let depth = indents.len() + flow;
            if depth > deepest.0 {
                deepest = (depth, number + 1);
            }
            previous = c;
        }
        // A `- ` or `key:` line opens a level even before its value.
        if indents.len() + flow > deepest.0 {
            deepest = (indents.len() + flow, number + 1);
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_counts_flow_and_block_levels() {
        assert_eq!(nesting("a: 1\nb: 2\n").0, 1);
        assert_eq!(nesting("a:\n  b:\n    c: [1, {d: 2}]\n").0, 5);
        assert_eq!(nesting("a: \"[[[[\" # {{{{\n").0, 1);
        let deep = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(nesting(&deep), (100_001, 1));
    }
}
