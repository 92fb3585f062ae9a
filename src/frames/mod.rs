//! What travels the frame path, shared by the GStreamer side (`media`), the pipelines
//! (`pipeline`) and the model runtime (`runtime`): the decoded frame with the identity it keeps
//! end to end (its pixels in GStreamer's buffer or, opaquely, on the model's device), what comes
//! out of the model for it, and the bounded hops between stages.

mod frame;
pub mod hop;
mod pixels;
mod results;

pub use frame::{
    Downloaded, Frame, FrameIdentity, FrameTooSmall, PendingResult, Processed, PtsContinuity,
    RgbImage, Stamp, pack_rgb_rows,
};
pub use hop::{DropCounter, GiveUp, HopReceiver, HopSender, SendOutcome, hop};
pub use pixels::{
    DevicePixels, FrameLayout, HostBytes, LayoutError, PixelFormat, Pixels, Plane, VideoImage,
    YuvColour,
};
pub use results::FrameResults;
