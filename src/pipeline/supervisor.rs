//! Keeps one pipeline's source alive: builds it, watches its bus, rebuilds it with
//! exponential backoff when a live source fails or ends, and drains it on shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use gstreamer as gst;
use gstreamer::prelude::*;

use super::frame::{Frame, PtsContinuity};
use super::stats::{PipelineState, PipelineStats};
use crate::config::{ReconnectConfig, SourceConfig};
use crate::media::{bus, source};

/// How a source session ended.
enum SessionEnd {
    /// The source reached its end (finite source) or was drained on shutdown.
    Finished,
    /// Something went wrong: retry a live source, fail a finite one.
    Failed(String),
    /// The pipeline could not be built at all (bad description, missing element): retrying
    /// cannot help.
    Unbuildable(String),
}

/// Everything the supervisor thread needs.
pub struct Supervisor {
    pub index: usize,
    pub name: String,
    pub source: SourceConfig,
    pub stats: Arc<PipelineStats>,
    /// Closed (all senders dropped) when the daemon shuts down.
    pub shutdown: Receiver<()>,
    pub grace: Duration,
}

impl Supervisor {
    /// Runs until the source is finished, has failed for good, or shutdown has drained it.
    /// `deliver` is called for every frame; it is dropped on return, which closes the
    /// pipeline's first hop so the stages after it drain and stop.
    pub fn run(self, deliver: impl Fn(Frame) + Send + Sync + 'static) -> PipelineState {
        let deliver = Arc::new(deliver);
        let next_seq = Arc::new(AtomicU64::new(0));
        let continuity = Arc::new(Mutex::new(PtsContinuity::default()));
        let live = self.source.is_live();
        let mut attempt: u32 = 0;
        loop {
            let frames_before = self.stats.frames_in();
            let deliver = deliver.clone();
            let end = self.session(next_seq.clone(), continuity.clone(), move |frame| {
                deliver(frame)
            });
            if self.is_shutting_down() {
                return self.settle(PipelineState::Finished);
            }
            let error = match end {
                SessionEnd::Finished if !live => {
                    return self.settle(PipelineState::Finished);
                }
                SessionEnd::Finished => "the live source ended its stream".to_string(),
                SessionEnd::Unbuildable(error) => {
                    tracing::error!(pipeline = %self.name, %error, "pipeline cannot be built");
                    return self.settle(PipelineState::Failed { error });
                }
                SessionEnd::Failed(error) if !live => {
                    tracing::error!(pipeline = %self.name, %error, "pipeline failed");
                    return self.settle(PipelineState::Failed { error });
                }
                SessionEnd::Failed(error) => error,
            };
            // A session that delivered frames was a success: the next failure starts the
            // backoff from the beginning.
            if self.stats.frames_in() > frames_before {
                attempt = 0;
            }
            attempt += 1;
            let policy = &self.source.reconnect;
            if policy.max_attempts.is_some_and(|max| attempt > max) {
                let error = format!("gave up after {} reconnect attempts: {error}", attempt - 1);
                tracing::error!(pipeline = %self.name, %error, "pipeline failed");
                return self.settle(PipelineState::Failed { error });
            }
            let delay = backoff(policy, attempt);
            tracing::warn!(
                pipeline = %self.name,
                source = %source::describe(&self.source),
                attempt,
                delay_ms = delay.as_millis() as u64,
                %error,
                "source lost; reconnecting"
            );
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            self.stats.set_state(PipelineState::Reconnecting {
                attempt,
                last_error: error,
            });
            if self.sleep_unless_shutdown(delay) {
                return self.settle(PipelineState::Finished);
            }
        }
    }

    fn settle(&self, state: PipelineState) -> PipelineState {
        if state == PipelineState::Finished {
            tracing::info!(pipeline = %self.name, "source finished");
        }
        state
    }

    fn is_shutting_down(&self) -> bool {
        matches!(
            self.shutdown.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// Sleeps `delay`, waking early on shutdown; returns whether shutdown came.
    fn sleep_unless_shutdown(&self, delay: Duration) -> bool {
        matches!(
            self.shutdown.recv_timeout(delay),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        )
    }

    /// One life of the source pipeline, from build to Null.
    fn session(
        &self,
        next_seq: Arc<AtomicU64>,
        continuity: Arc<Mutex<PtsContinuity>>,
        deliver: impl Fn(Frame) + Send + Sync + 'static,
    ) -> SessionEnd {
        let pipeline = match source::build(&self.source, self.index, next_seq, continuity, deliver)
        {
            Ok(pipeline) => pipeline,
            Err(error) => return SessionEnd::Unbuildable(error),
        };
        let end = self.play(&pipeline);
        let _ = pipeline.set_state(gst::State::Null);
        end
    }

    fn play(&self, pipeline: &gst::Pipeline) -> SessionEnd {
        if pipeline.set_state(gst::State::Playing).is_err() {
            return SessionEnd::Failed(format!(
                "source would not start{}",
                bus::pending_error(pipeline)
            ));
        }
        let Some(bus) = pipeline.bus() else {
            return SessionEnd::Failed("source pipeline has no bus".into());
        };
        let mut playing_reported = false;
        loop {
            if self.is_shutting_down() {
                return self.drain(pipeline);
            }
            let message = bus.timed_pop_filtered(
                gst::ClockTime::from_mseconds(100),
                &[
                    gst::MessageType::Eos,
                    gst::MessageType::Error,
                    gst::MessageType::StateChanged,
                ],
            );
            let Some(message) = message else {
                continue;
            };
            match message.view() {
                gst::MessageView::Eos(_) => {
                    let rewindable = self
                        .source
                        .uri
                        .as_deref()
                        .is_none_or(|u| u.starts_with("file://"));
                    if self.source.looping && rewindable {
                        if self.rewind(pipeline) {
                            continue;
                        }
                        return SessionEnd::Failed("cannot rewind the looping source".into());
                    }
                    return SessionEnd::Finished;
                }
                gst::MessageView::Error(error) => {
                    return SessionEnd::Failed(bus::describe_error(error));
                }
                gst::MessageView::StateChanged(change)
                    if !playing_reported
                        && change.src() == Some(pipeline.upcast_ref::<gst::Object>())
                        && change.current() == gst::State::Playing =>
                {
                    playing_reported = true;
                    self.stats.set_state(PipelineState::Playing);
                    tracing::info!(
                        pipeline = %self.name,
                        source = %source::describe(&self.source),
                        "source playing"
                    );
                }
                _ => {}
            }
        }
    }

    /// Restarts a finite source from its beginning (`loop: true`).
    fn rewind(&self, pipeline: &gst::Pipeline) -> bool {
        pipeline
            .seek_simple(
                gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                gst::ClockTime::ZERO,
            )
            .is_ok()
    }

    /// Shutdown: let what the source has produced flow out (EOS), bounded by the grace period.
    fn drain(&self, pipeline: &gst::Pipeline) -> SessionEnd {
        let deadline = Instant::now() + self.grace;
        // Let a state change still in progress (the source starting, its first frame
        // prerolling) settle first: `send_event` holds the pipeline's state lock while the
        // source takes its live lock, which the streaming thread holds while it waits for
        // preroll to end, which needs that same state lock: a deadlock no grace period ends.
        let _ = pipeline.state(gst::ClockTime::from_nseconds(self.grace.as_nanos() as u64));
        pipeline.send_event(gst::event::Eos::new());
        if let Err(error) = bus::wait_for_eos(pipeline, deadline - Instant::now()) {
            tracing::warn!(pipeline = %self.name, %error, "source did not drain cleanly");
        }
        SessionEnd::Finished
    }
}

/// Delay before reconnect `attempt` (1-based): doubling from `initial_ms` up to `max_ms`,
/// spread by ±`jitter`.
pub fn backoff(policy: &ReconnectConfig, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30);
    let base = (policy.initial_ms as f64 * 2f64.powi(doublings as i32)).min(policy.max_ms as f64);
    let spread = 1.0 + policy.jitter * (fastrand::f64() * 2.0 - 1.0);
    Duration::from_millis((base * spread).max(1.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_within_jitter() {
        let policy = ReconnectConfig {
            initial_ms: 100,
            max_ms: 1000,
            jitter: 0.2,
            max_attempts: None,
        };
        for (attempt, base) in [
            (1, 100.0),
            (2, 200.0),
            (3, 400.0),
            (4, 800.0),
            (5, 1000.0),
            (40, 1000.0),
        ] {
            for _ in 0..50 {
                let ms = backoff(&policy, attempt).as_millis() as f64;
                assert!(
                    (base * 0.8 - 1.0..=base * 1.2 + 1.0).contains(&ms),
                    "attempt {attempt}: {ms}"
                );
            }
        }
    }
}
