//! The policy that keeps one pipeline's source alive: open a source session, turn what it
//! reports into the pipeline's state, reconnect a live source with backoff when it fails, ends
//! or stalls, finish a finite one, and drain on shutdown. The GStreamer side is
//! [`crate::media::source::SourceSession`]'s.
//!
//! A live source that delivers no frame for its stall limit ([`stall_limit`]) without failing
//! (a camera that stopped sending but keeps its connection open) is `stalled`: logged once,
//! and rebuilt through the same backoff as a failure. The backoff starts again only after a
//! session delivered frames steadily ([`Backoff::fail_after`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::backoff::Backoff;
use super::stats::{PipelineState, PipelineStats};
use super::stop::StopSignal;
use crate::config::SourceConfig;
use crate::frames::{Frame, FrameIdentity, PixelFormat};
use crate::media::source::{SourceEvent, SourceSession};

/// How often a playing source looks for shutdown, and for a stall, between bus messages.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);

/// A source is stalled after at least this many of its frame intervals without a frame.
const STALL_INTERVALS: u32 = 3;

/// How a session ended.
enum SessionEnd {
    /// The source reached its end (finite source) or was drained on shutdown.
    Finished,
    /// Something went wrong: retry a live source, fail a finite one.
    Failed(String),
    /// A live source delivered no frame for this long, past its stall limit.
    Stalled(Duration),
    /// The pipeline could not be built at all (bad description, missing element): retrying
    /// cannot help.
    Unbuildable(String),
}

/// How long a live source may deliver no frame before it is stalled: `stall_timeout`, but
/// at least [`STALL_INTERVALS`] of its frame intervals (a camera that sends a frame every 4 s
/// is not stalled after 5 s), and twice that before a session's first frame (connecting, and
/// waiting for a decoder's first keyframe, take time).
pub fn stall_limit(
    stall_timeout: Duration,
    interval: Option<Duration>,
    first_frame_came: bool,
) -> Duration {
    let floor = interval.map_or(Duration::ZERO, |i| i.saturating_mul(STALL_INTERVALS));
    let limit = stall_timeout.max(floor);
    if first_frame_came {
        limit
    } else {
        limit.saturating_mul(2)
    }
}

/// The time between frames a frame's caps declare (their frame rate, else its duration).
fn declared_interval(frame: &Frame) -> Option<Duration> {
    let (numer, denom) = (frame.fps.numer(), frame.fps.denom());
    if numer > 0 && denom > 0 {
        return Some(Duration::from_secs_f64(f64::from(denom) / f64::from(numer)));
    }
    frame
        .duration
        .map(|d| Duration::from_nanos(d.nseconds()))
        .filter(|d| !d.is_zero())
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
            let deliver = deliver.clone();
            let end = self.session(move |frame| deliver(frame));
            if self.is_shutting_down() {
                return self.settle(PipelineState::Finished, last_error);
            }
            let (error, silent) = match end {
                SessionEnd::Finished if !live => {
                    return self.settle(PipelineState::Finished, last_error);
                }
                SessionEnd::Finished => ("the live source ended its stream".to_string(), None),
                SessionEnd::Unbuildable(error) => {
                    tracing::error!(pipeline = %self.name, %error, "pipeline cannot be built");
                    return self.settle(PipelineState::Failed { error }, None);
                }
                SessionEnd::Failed(error) if !live => {
                    tracing::error!(pipeline = %self.name, %error, "pipeline failed");
                    return self.settle(PipelineState::Failed { error }, None);
                }
                SessionEnd::Failed(error) => (error, None),
                SessionEnd::Stalled(silent) => (
                    format!("stalled: no frame for {:.1} s", silent.as_secs_f64()),
                    Some(silent),
                ),
            };
            last_error = Some(error.clone());
            // Only a session that delivered frames steadily starts the backoff again: a
            // source that ends or stalls a moment after every start backs off all the same.
            let delay = backoff.fail_after(self.stats.source.session_span());
            let attempt = backoff.failures();
            if let Some(max) = self.source.reconnect.max_attempts
                && attempt > max
            {
                let error = format!("gave up after {max} reconnect attempts: {error}");
                tracing::error!(pipeline = %self.name, %error, "pipeline failed");
                return self.settle(PipelineState::Failed { error }, None);
            }
            let state = self.announce_retry(error, silent, attempt, delay);
            // The first attempt after the source was up (or starting) opens an outage.
            if !self.stats.state().is_outage() {
                self.stats.outages.fetch_add(1, Ordering::Relaxed);
            }
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            self.stats.set_state(state);
            if self.sleep_unless_shutdown(delay) {
                return self.settle(PipelineState::Finished, last_error);
            }
        }
    }

    /// Logs the reconnect about to be made (one line per attempt) and the state it puts the
    /// pipeline in: `stalled` after a silent session, else `reconnecting`.
    fn announce_retry(
        &self,
        error: String,
        silent: Option<Duration>,
        attempt: u32,
        delay: Duration,
    ) -> PipelineState {
        let delay_ms = delay.as_millis() as u64;
        match silent {
            Some(silent) => {
                tracing::warn!(
                    pipeline = %self.name,
                    source = %self.source,
                    attempt,
                    delay_ms,
                    silent_ms = silent.as_millis() as u64,
                    "source stalled (no frame, no error); reconnecting"
                );
                PipelineState::Stalled {
                    since: self.stats.source.silent_since(),
                    attempt,
                }
            }
            None => {
                tracing::warn!(
                    pipeline = %self.name,
                    source = %self.source,
                    attempt,
                    delay_ms,
                    %error,
                    "source lost; reconnecting"
                );
                PipelineState::Reconnecting {
                    attempt,
                    last_error: error,
                }
            }
        }
    }

    /// The state the pipeline ends in. One that never delivered a frame did not finish: it
    /// failed, with the last error its source gave (a camera that never connected), or because
    /// its finite source ended empty. A live source stopped while still starting cleanly is
    /// only stopped.
    fn settle(&self, state: PipelineState, last_error: Option<String>) -> PipelineState {
        // Stopped because something under the pipeline broke (its model's worker): failed.
        if let Some(error) = self.stop.fault() {
            tracing::error!(pipeline = %self.name, %error, "pipeline failed");
            return PipelineState::Failed { error };
        }
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

    /// One life of the source, from build to `Null` (when the session is dropped). The
    /// pipeline is `playing` from the session's first frame on.
    fn session(&self, deliver: impl Fn(Frame) + Send + Sync + 'static) -> SessionEnd {
        // The new session's timestamps resume after the outage's length (recordings keep it).
        self.identity.begin_session();
        let activity = self.stats.clone();
        activity.source.new_session();
        let deliver = move |frame: Frame| {
            activity.source.arrived(declared_interval(&frame));
            deliver(frame);
            activity.source.released();
        };
        let opened =
            SourceSession::open(&self.source, &self.formats, self.identity.clone(), deliver);
        let session = match opened {
            Ok(session) => session,
            Err(error) => return SessionEnd::Unbuildable(error.to_string()),
        };
        let started = Instant::now();
        if let Err(error) = session.play() {
            return SessionEnd::Failed(error.to_string());
        }
        let stall_timeout = Duration::from_millis(self.source.stall_timeout_ms);
        let mut playing = false;
        loop {
            if self.is_shutting_down() {
                if let Err(error) = session.drain(self.grace) {
                    tracing::warn!(pipeline = %self.name, %error, "source did not drain cleanly");
                }
                return SessionEnd::Finished;
            }
            let source = &self.stats.source;
            if !playing && source.session_first_frame().is_some() {
                playing = true;
                self.stats.set_state(PipelineState::Playing);
                tracing::info!(pipeline = %self.name, source = %self.source, "source playing");
            }
            // Only a live source can stall: a finite one is read as fast as it is taken.
            if self.source.is_live() {
                let limit = stall_limit(stall_timeout, source.interval(), playing);
                let silent = source.silence(started);
                if silent >= limit {
                    return SessionEnd::Stalled(silent);
                }
            }
            match session.next_event(SHUTDOWN_POLL) {
                None => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_stall_limit_is_the_timeout_or_three_frame_intervals_twice_before_the_first_frame() {
        let timeout = 5 * SECOND;
        // A camera at 25 fps: the timeout.
        let fast = Some(Duration::from_millis(40));
        assert_eq!(stall_limit(timeout, fast, true), timeout);
        assert_eq!(stall_limit(timeout, None, true), timeout);
        // One frame every 4 s: three of its intervals.
        assert_eq!(stall_limit(timeout, Some(4 * SECOND), true), 12 * SECOND);
        // Before the session's first frame: twice as long.
        assert_eq!(stall_limit(timeout, fast, false), 10 * SECOND);
        assert_eq!(stall_limit(timeout, Some(4 * SECOND), false), 24 * SECOND);
    }
}
