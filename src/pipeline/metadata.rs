//! Per-frame metadata as JSON lines, one object per output frame, flushed per line so a
//! reader (`tail -f`, a log shipper) never sees half a record.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::frames::{FrameResults, Processed};
use crate::publish::Sink;

/// Where a pipeline's metadata lines go: a file or stdout, written here; or a broker's sink,
/// whose spool takes the line without waiting (the broker connection sends it).
pub enum MetadataTarget {
    Jsonl(JsonlTarget),
    Published(Sink),
}

impl MetadataTarget {
    /// Writes (or spools) one frame's line; `results` decide a sink's `on_change`.
    pub fn write(&mut self, line: &str, results: Option<&FrameResults>) -> std::io::Result<()> {
        match self {
            Self::Jsonl(jsonl) => jsonl.write_line(line),
            Self::Published(sink) => {
                sink.offer(line, top_label(results));
                Ok(())
            }
        }
    }
}

/// The best class of a classification result (`None` without one above `min_score`, and for
/// other tasks).
fn top_label(results: Option<&FrameResults>) -> Option<&str> {
    match results? {
        FrameResults::Classes { top_k } => top_k.first().map(|(label, _)| label.as_str()),
        _ => None,
    }
}

/// Where lines go.
pub enum JsonlTarget {
    File(File),
    Stdout,
}

impl JsonlTarget {
    /// Opens `path` for appending: a restarted daemon adds to the record instead of erasing it.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Self::File)
    }

    pub fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            // One write per line: appends from one process never interleave mid-line.
            Self::File(file) => file.write_all(format!("{line}\n").as_bytes()),
            Self::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
                out.flush()
            }
        }
    }
}

/// Frames dropped at each hop since the previous line.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Drops {
    /// Between the source and the model (or the output, without a model).
    pub input: u64,
    /// Between the model and the output.
    pub output: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    pipeline: &'a str,
    seq: u64,
    /// Presentation timestamp in nanoseconds, as the source stamped it.
    pts_ns: Option<u64>,
    /// Wall-clock time the frame was written, RFC 3339 UTC.
    time: String,
    /// Source appsink to output, milliseconds.
    latency_ms: f64,
    model: &'a str,
    width: u32,
    height: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    results: Option<&'a FrameResults>,
    drops: Drops,
}

/// Renders the line for one output frame.
pub fn render(pipeline: &str, model: &str, processed: &Processed, drops: Drops) -> String {
    let frame = &processed.frame;
    let line = Line {
        pipeline,
        seq: frame.seq,
        pts_ns: frame.pts.map(|p| p.nseconds()),
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        latency_ms: frame.captured.elapsed().as_secs_f64() * 1e3,
        model,
        width: frame.width,
        height: frame.height,
        results: processed.results.as_ref(),
        drops,
    };
    serde_json::to_string(&line).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
