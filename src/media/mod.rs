//! GStreamer: the source session that decodes a pipeline's input into frames, the output that
//! encodes and publishes them, the RTSP server, bus handling, what the registry can build,
//! still images (PNG/JPEG in, PNG out) for `visiond infer`, and fragmented MP4 of H.264 for
//! browsers (Media Source Extensions).

pub mod bus;
mod error;
pub mod flow;
pub mod fmp4;
pub mod glib_log;
pub mod live;
pub mod output;
pub mod recorder;
pub mod registry;
pub mod rtsp_server;
pub mod segments;
pub mod snapshot;
pub mod source;
pub mod still;
pub mod webrtc;

pub use error::{BusError, MediaError};

/// A value quoted for a gst-launch description.
pub(crate) fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A password from the environment variable the config names at `key`: secrets never sit in a
/// world-readable file, and never in a message either (only the variable's name is shown).
pub(crate) fn secret(variable: &str, key: &str) -> Result<String, MediaError> {
    std::env::var(variable).map_err(|_| MediaError::Secret {
        variable: variable.to_string(),
        key: key.to_string(),
    })
}
