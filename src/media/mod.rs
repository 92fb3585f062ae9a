//! GStreamer: sources that decode into appsinks, outputs that encode from appsrcs, the RTSP
//! server, bus handling, and still images (PNG/JPEG in, PNG out) for `visiond infer`.

pub mod bus;
pub mod output;
pub mod rtsp_server;
pub mod source;
pub mod still;
