//! What travels the frame path, shared by the GStreamer side (`media`), the pipelines
//! (`pipeline`) and the model runtime (`runtime`): the decoded frame with the identity it keeps
//! end to end, what comes out of the model for it, and the bounded hops between stages.

mod frame;
pub mod hop;
mod results;

pub use frame::{
    Frame, FrameIdentity, FrameTooSmall, Processed, PtsContinuity, RgbImage, pack_rgb_rows,
};
pub use hop::{DropCounter, HopSender, SendOutcome, hop};
pub use results::FrameResults;
