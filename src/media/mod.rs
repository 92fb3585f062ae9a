//! GStreamer: sources that decode into appsinks, outputs that encode from appsrcs, the RTSP
//! server, and bus handling.

pub mod bus;
pub mod output;
pub mod rtsp_server;
pub mod source;
