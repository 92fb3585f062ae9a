//! One pipeline's published sink (`- mqtt: {...}` or `- kafka: {...}` under `metadata:`): the
//! handle its output thread writes through, and what it shares with the broker connection
//! that sends its messages.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::link::Link;
use super::spool::Spool;
use crate::config::Sampling;

/// Why a message was not delivered: the labels of `visiond_metadata_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The spool was full (the broker away or too slow): the oldest message made room.
    BufferFull,
    /// The broker refused it (an unknown topic, a message too large).
    Rejected,
    /// Still waiting when the daemon stopped and its grace period ran out.
    Shutdown,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [Self::BufferFull, Self::Rejected, Self::Shutdown];

    pub fn label(self) -> &'static str {
        match self {
            Self::BufferFull => "buffer_full",
            Self::Rejected => "rejected",
            Self::Shutdown => "shutdown",
        }
    }
}

/// What a sink and its broker connection share: the spool, where the messages go, and what
/// became of them.
pub struct SinkShared {
    pub pipeline: String,
    /// The sink's name in metrics and the API: `mqtt:site` (with `#N` when a pipeline has two
    /// sinks on one broker).
    pub name: String,
    pub kind: &'static str,
    /// The topic and key with their placeholders filled in.
    pub topic: Arc<str>,
    pub key: Option<Arc<str>>,
    pub qos: u8,
    pub retain: bool,
    pub spool: Spool<Bytes>,
    /// The connection it publishes through.
    pub link: Arc<Link>,
    published: AtomicU64,
    rejected: AtomicU64,
    abandoned: AtomicU64,
    /// Why the broker last refused one of its messages.
    last_error: Mutex<Option<String>>,
    /// The pipeline stopped: the connection sends what is left, then forgets the sink.
    closed: AtomicBool,
}

/// Where a sink publishes, with its placeholders filled in.
pub struct SinkTarget {
    pub pipeline: String,
    pub name: String,
    pub kind: &'static str,
    pub topic: String,
    pub key: Option<String>,
    pub qos: u8,
    pub retain: bool,
    pub buffer: usize,
}

impl SinkShared {
    pub fn new(target: SinkTarget, link: Arc<Link>) -> Self {
        Self {
            spool: Spool::new(target.buffer, link.wake.clone()),
            pipeline: target.pipeline,
            name: target.name,
            kind: target.kind,
            topic: target.topic.into(),
            key: target.key.map(Into::into),
            qos: target.qos,
            retain: target.retain,
            link,
            published: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            last_error: Mutex::new(None),
            closed: AtomicBool::new(false),
        }
    }

    pub fn delivered(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `count` messages dropped for `reason`; `error` says why the broker refused one.
    pub fn dropped(&self, reason: DropReason, count: u64, error: Option<String>) {
        match reason {
            DropReason::BufferFull => {} // counted by the spool itself
            DropReason::Rejected => {
                self.rejected.fetch_add(count, Ordering::Relaxed);
            }
            DropReason::Shutdown => {
                self.abandoned.fetch_add(count, Ordering::Relaxed);
            }
        }
        if let Some(error) = error
            && let Ok(mut last) = self.last_error.lock()
        {
            *last = Some(error);
        }
    }

    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::BufferFull => self.spool.overflowed(),
            DropReason::Rejected => self.rejected.load(Ordering::Relaxed),
            DropReason::Shutdown => self.abandoned.load(Ordering::Relaxed),
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.link.wake.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// The output thread's handle on a published sink: it picks the frames the sink takes and
/// spools their lines. Dropping it (the pipeline stopped) lets the connection finish sending.
pub struct Sink {
    shared: Arc<SinkShared>,
    sampler: Sampler,
}

impl Sink {
    pub fn new(shared: Arc<SinkShared>, sampling: Sampling) -> Self {
        Self {
            shared,
            sampler: Sampler::new(sampling),
        }
    }

    /// Spools `line` if the sink takes this frame (`label`: its best class, for `on_change`).
    /// Never blocks: a full spool drops its oldest message, counted.
    pub fn offer(&mut self, line: &str, label: Option<&str>) {
        if self.sampler.take(label, Instant::now()) {
            self.shared
                .spool
                .push(Bytes::copy_from_slice(line.as_bytes()));
        }
    }

    pub fn shared(&self) -> &Arc<SinkShared> {
        &self.shared
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// Chooses the frames a sink publishes: every `every`th, then only a changed best class
/// (`on_change`), then at most `max_hz` a second.
pub struct Sampler {
    sampling: Sampling,
    seen: u64,
    last_sent: Option<Instant>,
    last_label: Option<Option<String>>,
}

impl Sampler {
    pub fn new(sampling: Sampling) -> Self {
        Self {
            sampling,
            seen: 0,
            last_sent: None,
            last_label: None,
        }
    }

    pub fn take(&mut self, label: Option<&str>, now: Instant) -> bool {
        let index = self.seen;
        self.seen += 1;
        if !index.is_multiple_of(u64::from(self.sampling.every.max(1))) {
            return false;
        }
        if self.sampling.on_change
            && self
                .last_label
                .as_ref()
                .is_some_and(|last| last.as_deref() == label)
        {
            return false;
        }
        if let (Some(hz), Some(last)) = (self.sampling.max_hz, self.last_sent)
            && now.saturating_duration_since(last) < Duration::from_secs_f64(1.0 / hz)
        {
            return false;
        }
        self.last_sent = Some(now);
        if self.sampling.on_change {
            self.last_label = Some(label.map(str::to_string));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(every: u32, max_hz: Option<f64>, on_change: bool) -> Sampler {
        Sampler::new(Sampling {
            every,
            max_hz,
            on_change,
        })
    }

    #[test]
    fn every_nth_frame() {
        let mut every = sampler(3, None, false);
        let now = Instant::now();
        let taken: Vec<bool> = (0..7).map(|_| every.take(None, now)).collect();
        assert_eq!(taken, [true, false, false, true, false, false, true]);
    }

    #[test]
    fn at_most_max_hz() {
        let mut limited = sampler(1, Some(10.0), false);
        let start = Instant::now();
        // 30 fps for one second: 10 a second at most.
        let taken = (0..30)
            .filter(|i| limited.take(None, start + Duration::from_millis(i * 1000 / 30)))
            .count();
        assert_eq!(taken, 10);
    }

    #[test]
    fn only_changes_of_the_best_class() {
        let mut changes = sampler(1, None, true);
        let now = Instant::now();
        let labels = ["cat", "cat", "dog", "dog", "cat"];
        let taken: Vec<bool> = labels
            .iter()
            .map(|label| changes.take(Some(label), now))
            .collect();
        assert_eq!(taken, [true, false, true, false, true]);
        // No class above the threshold is a change too.
        assert!(changes.take(None, now));
        assert!(!changes.take(None, now));
    }

    #[test]
    fn a_change_held_back_by_the_rate_goes_out_when_it_allows() {
        let mut both = sampler(1, Some(1.0), true);
        let start = Instant::now();
        assert!(both.take(Some("cat"), start));
        assert!(!both.take(Some("dog"), start + Duration::from_millis(100)));
        assert!(both.take(Some("dog"), start + Duration::from_millis(1100)));
    }
}
