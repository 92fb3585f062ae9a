//! Reading a pipeline's bus: errors as people need them (element path, message, debug
//! string) and waiting for the end of a stream.

use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::error::{BusError, MediaError};

/// The first error waiting on the bus, if any, without blocking.
pub fn take_error(pipeline: &gst::Pipeline) -> Option<BusError> {
    let bus = pipeline.bus()?;
    while let Some(message) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(error) = message.view() {
            return Some(BusError::from_message(error));
        }
    }
    None
}

/// Waits until EOS reaches every sink, an error is posted, or `timeout` passes.
pub fn wait_for_eos(pipeline: &gst::Pipeline, timeout: Duration) -> Result<(), MediaError> {
    let Some(bus) = pipeline.bus() else {
        return Err(MediaError::Timeout(Duration::ZERO));
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(MediaError::Timeout(timeout));
        }
        let wait = gst::ClockTime::from_mseconds(left.as_millis().min(100) as u64);
        match bus.timed_pop_filtered(wait, &[gst::MessageType::Eos, gst::MessageType::Error]) {
            Some(message) => match message.view() {
                gst::MessageView::Eos(_) => return Ok(()),
                gst::MessageView::Error(error) => {
                    return Err(BusError::from_message(error).into());
                }
                _ => {}
            },
            None => continue,
        }
    }
}
