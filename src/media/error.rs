//! Errors of the GStreamer side, with the pipeline, element and file they concern.

use std::fmt;

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::config::redact;

/// Why something on the GStreamer side failed, with the pipeline, element and file involved.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MediaError {
    #[error("GStreamer could not start: {0}")]
    Init(String),
    /// A description GStreamer could not turn into a pipeline.
    #[error("cannot build {what}: {reason}")]
    Build { what: String, reason: String },
    /// An element the description names is missing or of another type (a defect of ours).
    #[error("{what} has no {element} element of the expected type")]
    Element { what: String, element: String },
    /// A state change to playing was refused.
    #[error("{what} would not start{}", .cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    Start {
        what: String,
        cause: Option<BusError>,
    },
    /// An error posted on a pipeline's bus.
    #[error("{0}")]
    Bus(#[from] BusError),
    #[error("environment variable {variable} ({key}) is not set")]
    Secret { variable: String, key: String },
    #[error("{key}: element '{element}' has no such property")]
    Property { key: String, element: String },
    #[error("did not finish within {} ms; stopped anyway", .0.as_millis())]
    Timeout(std::time::Duration),
    #[error("{what} refused a frame: {reason}")]
    Refused { what: String, reason: String },
    /// A frame the output cannot describe or carry (sizes, depth samples).
    #[error("{0}")]
    Frame(String),
    #[error("RTSP server: {0}")]
    Rtsp(String),
    #[error("cannot start thread {name}: {reason}")]
    Thread { name: String, reason: String },
    /// Frames waited in an output's queue with none taken, and no error said why.
    #[error("{what} took no frame for {} s; taken for stuck", .waited.as_secs())]
    Stalled {
        what: String,
        waited: std::time::Duration,
    },
}

impl MediaError {
    /// Why an output failed, in the words an operator counts by: `disk full`, `permission
    /// denied`, `cannot open file`, `write error`, `frame refused`, `not writing`, `cannot start`,
    /// `cannot build`, or `sink error` for the rest.
    pub fn reason(&self) -> &'static str {
        let text = self.to_string();
        if text.contains("No space left") {
            "disk full"
        } else if text.contains("Permission denied") {
            "permission denied"
        } else if text.contains("Could not open file") || text.contains("for writing") {
            "cannot open file"
        } else if text.contains("writing to file") || text.contains("Could not write") {
            "write error"
        } else {
            match self {
                Self::Refused { .. } => "frame refused",
                Self::Stalled { .. } => "not writing",
                Self::Start { .. } => "cannot start",
                Self::Build { .. } | Self::Element { .. } | Self::Property { .. } => "cannot build",
                _ => "sink error",
            }
        }
    }
}

/// One error posted on a bus: `/GstPipeline:pipeline0/GstRTSPSrc:src: Could not open resource
/// for reading (debug: ...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusError {
    /// The posting element's path in its pipeline.
    pub element: String,
    pub message: String,
    /// GStreamer's debug string: the details a bug report needs.
    pub debug: Option<String>,
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.debug {
            Some(debug) => write!(f, "{}: {} (debug: {debug})", self.element, self.message),
            None => write!(f, "{}: {}", self.element, self.message),
        }
    }
}

impl std::error::Error for BusError {}

impl BusError {
    /// The error as people may read it: elements echo their properties and URIs (souphttpsrc's
    /// debug string carries its whole `location`), so credentials are masked here, before the
    /// error reaches a log line, a pipeline's `last_error` or the summary.
    pub fn from_message(error: &gst::message::Error) -> Self {
        Self {
            element: error
                .src()
                .map(|s| s.path_string().to_string())
                .unwrap_or_else(|| "unknown element".into()),
            message: redact::text(&error.error().to_string()),
            debug: error.debug().map(|d| redact::text(&d)),
        }
    }
}
