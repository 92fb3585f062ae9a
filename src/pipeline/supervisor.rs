//! The policy that keeps one pipeline's source alive: open a source session, turn what it
//! reports into the pipeline's state, reconnect a live source with backoff when it fails or
//! ends, finish a finite one, and drain on shutdown. The GStreamer side is
//! [`crate::media::source::SourceSession`]'s.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::backoff::Backoff;
use super::stats::{PipelineState, PipelineStats};
use super::stop::StopSignal;
use crate::config::SourceConfig;
use crate::frames::{Frame, FrameIdentity, PixelFormat};
use crate::media::source::{SourceEvent, SourceSession};

/// How often a playing source looks for shutdown between bus messages.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);

/// How a session ended.
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
    pub name: String,
    pub source: SourceConfig,
    /// The formats the frames' consumer takes (the model's runtime, or the output).
    pub formats: Vec<PixelFormat>,
    pub identity: Arc<FrameIdentity>,
    pub stats: Arc<PipelineStats>,
    /// Set when the daemon shuts down or a reload stops this pipeline.
    pub stop: StopSignal,
    pub grace: Duration,
}

impl Supervisor {
    /// Runs until the source is finished, has failed for good, or shutdown has drained it.
    /// `deliver` is called for every frame; it is dropped on return, which closes the
    /// pipeline's first hop so the stages after it drain and stop.
    pub fn run(self, deliver: impl Fn(Frame) + Send + Sync + 'static) -> PipelineState {
        let deliver = Arc::new(deliver);
        let live = self.source.is_live();
        let mut backoff = Backoff::reconnect(&self.source.reconnect);
        let mut last_error: Option<String> = None;
        loop {
            let frames_before = self.stats.frames_in();
            let deliver = deliver.clone();
            let end = self.session(move |frame| deliver(frame));
            if self.is_shutting_down() {
                return self.settle(PipelineState::Finished, last_error);
            }
            let error = match end {
                SessionEnd::Finished if !live => {
                    return self.settle(PipelineState::Finished, last_error);
                }
                SessionEnd::Finished => "the live source ended its stream".to_string(),
                SessionEnd::Unbuildable(error) => {
                    tracing::error!(pipeline = %self.name, %error, "pipeline cannot be built");
                    return self.settle(PipelineState::Failed { error }, None);
                }
                SessionEnd::Failed(error) if !live => {
                    tracing::error!(pipeline = %self.name, %error, "pipeline failed");
                    return self.settle(PipelineState::Failed { error }, None);
                }
                SessionEnd::Failed(error) => error,
            };
            last_error = Some(error.clone());
            // A session that delivered frames was a success: the next failure starts the
            // backoff from the beginning.
            if self.stats.frames_in() > frames_before {
                backoff.reset();
            }
            let delay = backoff.fail();
            let attempt = backoff.failures();
            if let Some(max) = self.source.reconnect.max_attempts
                && attempt > max
            {
                let error = format!("gave up after {max} reconnect attempts: {error}");
                tracing::error!(pipeline = %self.name, %error, "pipeline failed");
                return self.settle(PipelineState::Failed { error }, None);
            }
            tracing::warn!(
                pipeline = %self.name,
                source = %self.source,
                attempt,
                delay_ms = delay.as_millis() as u64,
                %error,
                "source lost; reconnecting"
            );
            // The first attempt after the source was up (or starting) opens an outage.
            if !matches!(self.stats.state(), PipelineState::Reconnecting { .. }) {
                self.stats.outages.fetch_add(1, Ordering::Relaxed);
            }
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            self.stats.set_state(PipelineState::Reconnecting {
                attempt,
                last_error: error,
            });
            if self.sleep_unless_shutdown(delay) {
                return self.settle(PipelineState::Finished, last_error);
            }
        }
    }

    /// The state the pipeline ends in. One that never delivered a frame did not finish: it
    /// failed, with the last error its source gave (a camera that never connected), or because
    /// its finite source ended empty. A live source stopped while still starting cleanly is
    /// only stopped.
    fn settle(&self, state: PipelineState, last_error: Option<String>) -> PipelineState {
        if state != PipelineState::Finished {
            return state;
        }
        if self.stats.frames_in() == 0 {
            let error = match last_error {
                Some(error) => Some(format!("no frame was ever received; last error: {error}")),
                None if !self.source.is_live() => {
                    Some("the source ended without a single frame".to_string())
                }
                None => None,
            };
            if let Some(error) = error {
                tracing::error!(pipeline = %self.name, %error, "pipeline failed");
                return PipelineState::Failed { error };
            }
        }
        tracing::info!(pipeline = %self.name, "source finished");
        state
    }

    /// Warns when a finite source ended well before the length it announced.
    fn check_complete(&self, session: &SourceSession) {
        let Some(progress) = session.progress().filter(|p| p.is_truncated()) else {
            return;
        };
        let note = format!(
            "input truncated: it ended at {:.1} s of its {:.1} s; {} frames were read",
            progress.reached.as_secs_f64(),
            progress.length.as_secs_f64(),
            self.stats.frames_in()
        );
        tracing::warn!(pipeline = %self.name, source = %self.source, "{note}");
        self.stats.add_note(note);
    }

    fn is_shutting_down(&self) -> bool {
        self.stop.is_set()
    }

    /// Sleeps `delay`, waking early on shutdown; returns whether shutdown came.
    fn sleep_unless_shutdown(&self, delay: Duration) -> bool {
        self.stop.wait(delay)
    }

    /// One life of the source, from build to `Null` (when the session is dropped).
    fn session(&self, deliver: impl Fn(Frame) + Send + Sync + 'static) -> SessionEnd {
        // The new session's timestamps resume after the outage's length (recordings keep it).
        self.identity.begin_session();
        let opened =
            SourceSession::open(&self.source, &self.formats, self.identity.clone(), deliver);
        let mut session = match opened {
            Ok(session) => session,
            Err(error) => return SessionEnd::Unbuildable(error.to_string()),
        };
        if let Err(error) = session.play() {
            return SessionEnd::Failed(error.to_string());
        }
        loop {
            if self.is_shutting_down() {
                if let Err(error) = session.drain(self.grace) {
                    tracing::warn!(pipeline = %self.name, %error, "source did not drain cleanly");
                }
                return SessionEnd::Finished;
            }
            match session.next_event(SHUTDOWN_POLL) {
                None => {}
                Some(SourceEvent::Playing) => {
                    self.stats.set_state(PipelineState::Playing);
                    tracing::info!(pipeline = %self.name, source = %self.source, "source playing");
                }
                Some(SourceEvent::Ended) if self.source.looping && self.source.can_rewind() => {
                    if let Err(error) = session.rewind() {
                        return SessionEnd::Failed(format!(
                            "cannot rewind the looping source: {error}"
                        ));
                    }
                }
                Some(SourceEvent::Ended) => {
                    if !self.source.is_live() {
                        self.check_complete(&session);
                    }
                    return SessionEnd::Finished;
                }
                Some(SourceEvent::Failed(error)) => return SessionEnd::Failed(error.to_string()),
            }
        }
    }
}
