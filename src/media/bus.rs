//! Reading a pipeline's bus: errors as people need them (element path, message, debug
//! string) and waiting for the end of a stream.

use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

/// One bus error as a sentence: `/GstPipeline:pipeline0/GstRTSPSrc:src: Could not open
/// resource for reading (debug: ...)`.
pub fn describe_error(error: &gst::message::Error) -> String {
    let path = error
        .src()
        .map(|s| s.path_string().to_string())
        .unwrap_or_else(|| "unknown element".into());
    match error.debug() {
        Some(debug) => format!("{path}: {} (debug: {debug})", error.error()),
        None => format!("{path}: {}", error.error()),
    }
}

/// The first error waiting on the bus, if any, without blocking.
pub fn take_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    while let Some(message) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(error) = message.view() {
            return Some(describe_error(error));
        }
    }
    None
}

/// `": <error>"` when a state change failed and the bus says why, for appending to a message.
pub fn pending_error(pipeline: &gst::Pipeline) -> String {
    take_error(pipeline)
        .map(|e| format!(": {e}"))
        .unwrap_or_default()
}

/// Waits until EOS reaches every sink, an error is posted, or `timeout` passes.
pub fn wait_for_eos(pipeline: &gst::Pipeline, timeout: Duration) -> Result<(), String> {
    let Some(bus) = pipeline.bus() else {
        return Err("pipeline has no bus".into());
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "did not finish within {} ms; stopped anyway",
                timeout.as_millis()
            ));
        }
        let wait = gst::ClockTime::from_mseconds(left.as_millis().min(100) as u64);
        match bus.timed_pop_filtered(wait, &[gst::MessageType::Eos, gst::MessageType::Error]) {
            Some(message) => match message.view() {
                gst::MessageView::Eos(_) => return Ok(()),
                gst::MessageView::Error(error) => return Err(describe_error(error)),
                _ => {}
            },
            None => continue,
        }
    }
}
