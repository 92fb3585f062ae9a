//! Per-pipeline counters, latency distribution and lifecycle state, shared between the
//! frame-path threads (writers) and the control plane and summaries (readers).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::media::snapshot::LatestFrame;

/// Where a pipeline is in its life, as the control plane reports it: serialized as
/// `{"state": "<name>", ...its fields}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineState {
    Starting,
    /// The source delivers frames.
    Playing,
    /// The source delivered no frame for its stall timeout without failing (a camera that
    /// stopped sending but keeps its connection open) and is being rebuilt; `since` is when
    /// its last frame came (or the pipeline started, if none ever did), `attempt` counts
    /// from 1.
    Stalled {
        since: Instant,
        attempt: u32,
    },
    /// The source failed or ended and is being rebuilt; `attempt` counts from 1.
    Reconnecting {
        attempt: u32,
        last_error: String,
    },
    /// Could not be built, or gave up reconnecting.
    Failed {
        error: String,
    },
    /// A finite source ended and everything it produced was written.
    Finished,
    /// The source plays but its served model's server cannot take requests (down, not ready,
    /// serving another model): frames are dropped until it can, which it is checked for on
    /// its own. Reported over `playing` and `starting`, never over the source's own troubles.
    Waiting {
        reason: String,
    },
}

impl PipelineState {
    /// Every state's name, as `name()` and the serialized `state` field spell it.
    pub const NAMES: [&'static str; 7] = [
        "starting",
        "playing",
        "stalled",
        "reconnecting",
        "failed",
        "finished",
        "waiting",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Self::Starting => Self::NAMES[0],
            Self::Playing => Self::NAMES[1],
            Self::Stalled { .. } => Self::NAMES[2],
            Self::Reconnecting { .. } => Self::NAMES[3],
            Self::Failed { .. } => Self::NAMES[4],
            Self::Finished => Self::NAMES[5],
            Self::Waiting { .. } => Self::NAMES[6],
        }
    }

    /// Whether the source is being rebuilt after it was lost (failed, ended or stalled): the
    /// attempts until it plays again are one outage.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Stalled { .. } | Self::Reconnecting { .. })
    }
}

impl serde::Serialize for PipelineState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("state", self.name())?;
        match self {
            Self::Stalled { since, attempt } => {
                let age = since.elapsed();
                let wall = SystemTime::now()
                    .checked_sub(age)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                map.serialize_entry("since", &humantime::format_rfc3339_millis(wall).to_string())?;
                map.serialize_entry("age_s", &seconds(age))?;
                map.serialize_entry("attempt", attempt)?;
            }
            Self::Reconnecting {
                attempt,
                last_error,
            } => {
                map.serialize_entry("attempt", attempt)?;
                map.serialize_entry("last_error", last_error)?;
            }
            Self::Failed { error } => map.serialize_entry("error", error)?,
            Self::Waiting { reason } => map.serialize_entry("reason", reason)?,
            Self::Starting | Self::Playing | Self::Finished => {}
        }
        map.end()
    }
}

/// Seconds to the millisecond, as the control plane shows durations.
pub fn seconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e3).round() / 1e3
}

impl std::fmt::Display for PipelineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Failed { error } => write!(f, "failed: {error}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Latencies in logarithmic buckets: fixed memory however long the daemon runs, and
/// percentiles good to the bucket width (about 5%). Bucket `i` holds latencies above the
/// upper edge of bucket `i - 1` and up to its own, [`LatencyHistogram::upper_edge`]`(i)`.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Vec<AtomicU64>,
    /// Running sum of every recorded latency, in nanoseconds (a Prometheus `_sum`; u64
    /// nanoseconds last centuries at any frame rate).
    sum_ns: AtomicU64,
}

const FIRST_BUCKET_US: f64 = 50.0;
const BUCKET_GROWTH: f64 = 1.05;
const BUCKETS: usize = 300; // 50 µs .. ~113 s

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// How many buckets there are.
    pub const BUCKETS: usize = BUCKETS;

    pub fn record(&self, latency: Duration) {
        let us = latency.as_secs_f64() * 1e6;
        let index = if us <= FIRST_BUCKET_US {
            0
        } else {
            ((us / FIRST_BUCKET_US).ln() / BUCKET_GROWTH.ln()).ceil() as usize
        };
        self.buckets[index.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The upper edge of bucket `index`. The last bucket also takes everything above it.
    pub fn upper_edge(index: usize) -> Duration {
        Duration::from_secs_f64(FIRST_BUCKET_US * BUCKET_GROWTH.powi(index as i32) / 1e6)
    }

    /// The bucket whose upper edge is nearest to `latency` (on the log scale).
    pub fn nearest_bucket(latency: Duration) -> usize {
        let us = latency.as_secs_f64() * 1e6;
        if us <= FIRST_BUCKET_US {
            return 0;
        }
        let index = ((us / FIRST_BUCKET_US).ln() / BUCKET_GROWTH.ln()).round() as usize;
        index.min(BUCKETS - 1)
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The sum of every recorded latency.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed))
    }

    /// The bucket counts and sum read once, so that everything computed from them agrees
    /// (the frame path keeps recording meanwhile; it is never locked).
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum(),
        }
    }

    /// The upper edge of the bucket holding quantile `q` (0..=1); `None` before any sample.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        self.snapshot().quantile(q)
    }
}

/// One reading of a [`LatencyHistogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Per-bucket (not cumulative) counts.
    pub counts: Vec<u64>,
    pub sum: Duration,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// How many samples are at most [`LatencyHistogram::upper_edge`]`(index)`.
    pub fn cumulative(&self, index: usize) -> u64 {
        self.counts.iter().take(index + 1).sum()
    }

    /// The upper edge of the bucket holding quantile `q` (0..=1); `None` before any sample.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(LatencyHistogram::upper_edge(index));
            }
        }
        None
    }
}

/// When the source last delivered a frame: what the stall watchdog, the control plane's
/// `last_frame_age_s` and `visiond_source_last_frame_age_seconds` read. Written by the
/// source's streaming thread, one atomic store per frame; times are nanoseconds after `epoch`
/// (the pipeline's start), 0 meaning never.
#[derive(Debug)]
pub struct SourceActivity {
    epoch: Instant,
    /// When the last frame arrived.
    last_frame_ns: AtomicU64,
    /// When the current session's first frame arrived.
    session_first_ns: AtomicU64,
    /// When the last frame was handed on: a `block` hop holds the source's thread while it is
    /// full, and a source that is held is not stalled.
    released_ns: AtomicU64,
    delivering: AtomicBool,
    /// The time between frames the source declares (its caps' frame rate, else the frame's
    /// duration), else the last gap seen; 0 before the second frame of one that declares none.
    interval_ns: AtomicU64,
}

impl Default for SourceActivity {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_frame_ns: AtomicU64::new(0),
            session_first_ns: AtomicU64::new(0),
            released_ns: AtomicU64::new(0),
            delivering: AtomicBool::new(false),
            interval_ns: AtomicU64::new(0),
        }
    }
}

impl SourceActivity {
    /// Now, in nanoseconds after the epoch (at least 1, so that 0 keeps meaning never).
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn instant(&self, ns: u64) -> Option<Instant> {
        (ns != 0).then(|| self.epoch + Duration::from_nanos(ns))
    }

    /// A new session of the source begins: its first frame is still to come.
    pub fn new_session(&self) {
        self.session_first_ns.store(0, Ordering::Relaxed);
    }

    /// A frame arrived and is being handed on; `declared` is the frame interval its caps or
    /// duration give, if any.
    pub fn arrived(&self, declared: Option<Duration>) {
        let now = self.now_ns();
        let previous = self.last_frame_ns.swap(now, Ordering::Relaxed);
        let _ =
            self.session_first_ns
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        let interval = match declared {
            Some(interval) => u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
            None if previous != 0 => now.saturating_sub(previous),
            None => 0,
        };
        self.interval_ns.store(interval, Ordering::Relaxed);
        self.delivering.store(true, Ordering::Relaxed);
    }

    /// The frame was handed on (the hop took it, or dropped it).
    pub fn released(&self) {
        self.released_ns.store(self.now_ns(), Ordering::Relaxed);
        self.delivering.store(false, Ordering::Relaxed);
    }

    /// When the last frame arrived, if one ever did.
    pub fn last_frame(&self) -> Option<Instant> {
        self.instant(self.last_frame_ns.load(Ordering::Relaxed))
    }

    /// When the last frame arrived, or when the pipeline started if none ever did.
    pub fn silent_since(&self) -> Instant {
        self.last_frame().unwrap_or(self.epoch)
    }

    /// Time since the last frame, or since the pipeline started while none has come.
    pub fn last_frame_age(&self) -> Duration {
        self.silent_since().elapsed()
    }

    /// When the current session's first frame arrived, if it has.
    pub fn session_first_frame(&self) -> Option<Instant> {
        self.instant(self.session_first_ns.load(Ordering::Relaxed))
    }

    /// How long the current session delivered frames: from its first frame to its last.
    pub fn session_span(&self) -> Duration {
        match (self.session_first_frame(), self.last_frame()) {
            (Some(first), Some(last)) => last.saturating_duration_since(first),
            _ => Duration::ZERO,
        }
    }

    /// How long the source has been silent, counting from `opened` (the session's start) at
    /// the earliest; zero while a frame is being handed on (the source is held, not silent).
    pub fn silence(&self, opened: Instant) -> Duration {
        if self.delivering.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let last = [
            self.last_frame(),
            self.instant(self.released_ns.load(Ordering::Relaxed)),
        ]
        .into_iter()
        .flatten()
        .fold(opened, Instant::max);
        last.elapsed()
    }

    /// The frame interval the source declares (or showed), if known.
    pub fn interval(&self) -> Option<Duration> {
        match self.interval_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }
}

/// What a pipeline's observer is told: its state changed, or an output went down or came back.
pub enum Observed<'a> {
    State(&'a PipelineState),
    Output(&'a OutputHealth),
}

/// Told of every change [`Observed`] names (the daemon's events on its brokers). Called on
/// the thread that made the change; it must not wait.
pub type Observer = Box<dyn Fn(&Observed<'_>) + Send + Sync>;

/// The observer, set once when the pipeline is built.
#[derive(Default)]
pub struct ObserverSlot(std::sync::OnceLock<Observer>);

impl std::fmt::Debug for ObserverSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "ObserverSlot(set)"
        } else {
            "ObserverSlot(unset)"
        })
    }
}

/// Everything counted for one pipeline.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Frames taken from the source's appsink.
    pub frames_in: AtomicU64,
    /// Frames written to the outputs (video and/or metadata).
    pub frames_out: AtomicU64,
    /// Source appsink → output appsrc, per frame.
    pub latency: LatencyHistogram,
    /// Reconnect attempts: every time the supervisor went to `reconnecting`.
    pub reconnects: AtomicU64,
    /// Outages: a source that had been playing (or starting) was lost; the attempts that
    /// follow until it plays again are one outage.
    pub outages: AtomicU64,
    /// Times the output pipeline failed and was rebuilt.
    pub output_restarts: AtomicU64,
    /// Recording segments deleted by their retention (`max_age`, `max_bytes`).
    pub segments_deleted: std::sync::Arc<AtomicU64>,
    state: Mutex<Option<PipelineState>>,
    /// When it reached an end state (finished or failed): a finished pipeline's rate is over
    /// its own life, not the daemon's.
    ended: Mutex<Option<std::time::Instant>>,
    /// Each output's health (the video output, each recording), in sink order.
    outputs: Mutex<Vec<OutputHealth>>,
    /// Output failures by reason (`disk full`, `write error`, ...).
    output_failures: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Frames the RTSP media's bounded queue dropped while its clients were paused or slow
    /// (per viewer: the pipeline lost nothing).
    pub rtsp_dropped: std::sync::Arc<crate::frames::DropCounter>,
    /// Frames lost to a failure rather than dropped by a queue's policy, by reason
    /// ([`Loss`]); an encoded frame that a recording missed counts here too.
    losses: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Warnings about how the pipeline ended (a truncated input), for the summary.
    notes: Mutex<Vec<String>>,
    /// Why its served model cannot take frames now, while it cannot (set by the model's
    /// worker): shown as the `waiting` state over `playing`/`starting`.
    model_waiting: Mutex<Option<String>>,
    /// The latest published frame, captured while the status page looks at it.
    pub latest_frame: std::sync::Arc<LatestFrame>,
    /// The encoded video its live viewers (browsers) get.
    pub live: std::sync::Arc<crate::media::live::LiveFeed>,
    /// When the source last delivered a frame.
    pub source: SourceActivity,
    observer: ObserverSlot,
}

/// Why a frame was lost, rather than dropped by a queue's `when_full` policy. A pipeline
/// that lost any frame does not end as a clean `finished`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// The video output was down, or refused the frame (it failed on it).
    OutputFailed,
    /// The model's result could not be copied back from its device.
    CopyBackFailed,
    /// The model failed on the frame.
    InferenceFailed,
    /// The model's worker stopped (it panicked) with the frame.
    WorkerStopped,
    /// The stage after a hop had already stopped.
    StageStopped,
    /// The drain after a stop took longer than the grace period.
    Abandoned,
    /// Its metadata line could not be written.
    MetadataFailed,
    /// A recording was down, or could not keep up, when the frame was encoded.
    RecordingMissed,
    /// A served model's request got no answer in time.
    RemoteTimeout,
    /// A served model's server was down or not ready.
    RemoteUnavailable,
    /// A served model's server refused the request or answered something unusable.
    RemoteError,
}

impl Loss {
    /// Every reason, as metrics label them.
    pub const ALL: [Loss; 11] = [
        Loss::OutputFailed,
        Loss::CopyBackFailed,
        Loss::InferenceFailed,
        Loss::WorkerStopped,
        Loss::StageStopped,
        Loss::Abandoned,
        Loss::MetadataFailed,
        Loss::RecordingMissed,
        Loss::RemoteTimeout,
        Loss::RemoteUnavailable,
        Loss::RemoteError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Loss::OutputFailed => "output failed",
            Loss::CopyBackFailed => "copy back failed",
            Loss::InferenceFailed => "inference failed",
            Loss::WorkerStopped => "model worker stopped",
            Loss::StageStopped => "stage stopped",
            Loss::Abandoned => "abandoned at shutdown",
            Loss::MetadataFailed => "metadata write failed",
            Loss::RecordingMissed => "recording missed",
            Loss::RemoteTimeout => "remote timeout",
            Loss::RemoteUnavailable => "remote unavailable",
            Loss::RemoteError => "remote error",
        }
    }
}

/// One output's health: the encoded video output as a whole (`video`), or one recording
/// (`file <path>`), which fails and is retried on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputHealth {
    pub output: String,
    pub up: bool,
    /// Why it is down, in a word or two (`disk full`), and the error itself.
    pub reason: Option<String>,
    pub error: Option<String>,
    /// Failures since it last ran steadily (what the retry delay doubles on).
    pub failures: u32,
    /// When it is tried again, while down.
    pub retry_at: Option<std::time::Instant>,
}

impl serde::Serialize for OutputHealth {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("output", &self.output)?;
        map.serialize_entry("state", if self.up { "up" } else { "down" })?;
        map.serialize_entry("failures", &self.failures)?;
        if let Some(reason) = &self.reason {
            map.serialize_entry("reason", reason)?;
        }
        if let Some(error) = &self.error {
            map.serialize_entry("error", error)?;
        }
        if let Some(at) = self.retry_at {
            let ms = at
                .saturating_duration_since(std::time::Instant::now())
                .as_millis();
            map.serialize_entry("retry_in_ms", &(ms as u64))?;
        }
        map.end()
    }
}

impl PipelineStats {
    pub fn state(&self) -> PipelineState {
        let state = self
            .state
            .lock()
            .map(|s| s.clone().unwrap_or(PipelineState::Starting))
            .unwrap_or(PipelineState::Starting);
        if matches!(state, PipelineState::Playing | PipelineState::Starting)
            && let Some(reason) = self.model_waiting.lock().ok().and_then(|w| w.clone())
        {
            return PipelineState::Waiting { reason };
        }
        state
    }

    /// Marks the pipeline as waiting for its served model (with why), or no longer.
    pub fn set_model_waiting(&self, reason: Option<String>) {
        if let Ok(mut waiting) = self.model_waiting.lock()
            && *waiting != reason
        {
            *waiting = reason;
        }
    }

    /// Sets who is told of state and output changes from now on (once).
    pub fn observe(&self, observer: Observer) {
        let _ = self.observer.0.set(observer);
    }

    fn notify(&self, observed: &Observed<'_>) {
        if let Some(observer) = self.observer.0.get() {
            observer(observed);
        }
    }

    pub fn set_state(&self, state: PipelineState) {
        let ended = matches!(
            state,
            PipelineState::Finished | PipelineState::Failed { .. }
        );
        if let Ok(mut at) = self.ended.lock() {
            *at = if ended {
                Some(at.unwrap_or_else(std::time::Instant::now))
            } else {
                None
            };
        }
        let changed = match self.state.lock() {
            Ok(mut current) => {
                let changed = current.as_ref() != Some(&state);
                *current = Some(state.clone());
                changed
            }
            Err(_) => false,
        };
        if changed {
            self.notify(&Observed::State(&state));
        }
    }

    /// When the pipeline finished or failed, if it has.
    pub fn ended_at(&self) -> Option<std::time::Instant> {
        self.ended.lock().ok().and_then(|at| *at)
    }

    pub fn frames_in(&self) -> u64 {
        self.frames_in.load(Ordering::Relaxed)
    }

    pub fn frames_out(&self) -> u64 {
        self.frames_out.load(Ordering::Relaxed)
    }

    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub fn output_restarts(&self) -> u64 {
        self.output_restarts.load(Ordering::Relaxed)
    }

    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    pub fn segments_deleted(&self) -> u64 {
        self.segments_deleted.load(Ordering::Relaxed)
    }

    /// Every output's health, in sink order.
    pub fn outputs(&self) -> Vec<OutputHealth> {
        self.outputs.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Sets the health of `health.output`, adding it the first time.
    /// The observer hears of an output going down (the first failure) and coming back.
    pub fn set_output(&self, health: OutputHealth) {
        let turned = match self.outputs.lock() {
            Ok(mut outputs) => {
                let turned = match outputs.iter().find(|o| o.output == health.output) {
                    Some(slot) => slot.up != health.up,
                    None => !health.up,
                };
                match outputs.iter_mut().find(|o| o.output == health.output) {
                    Some(slot) => *slot = health.clone(),
                    None => outputs.push(health.clone()),
                }
                turned
            }
            Err(_) => false,
        };
        if turned {
            self.notify(&Observed::Output(&health));
        }
    }

    /// Counts an output failure under `reason`.
    pub fn count_output_failure(&self, reason: &str) {
        if let Ok(mut failures) = self.output_failures.lock() {
            *failures.entry(reason.to_string()).or_default() += 1;
        }
    }

    /// Output failures so far, by reason.
    pub fn output_failures(&self) -> std::collections::BTreeMap<String, u64> {
        self.output_failures
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default()
    }

    /// Counts `frames` lost to `loss`.
    pub fn lose(&self, loss: Loss, frames: u64) {
        if frames == 0 {
            return;
        }
        if let Ok(mut losses) = self.losses.lock() {
            *losses.entry(loss.label()).or_default() += frames;
        }
    }

    /// Frames lost so far, by reason (only reasons that happened).
    pub fn losses(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.losses.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Every frame lost so far, whatever the reason.
    pub fn lost(&self) -> u64 {
        self.losses().values().sum()
    }

    /// The end state once the outputs are done: a pipeline that would finish but lost frames
    /// on the way failed, saying how many and why (it is not a clean `finished`).
    pub fn settle_losses(&self, state: PipelineState) -> PipelineState {
        if state != PipelineState::Finished {
            return state;
        }
        let losses = self.losses();
        if losses.is_empty() {
            return state;
        }
        let total: u64 = losses.values().sum();
        let reasons: Vec<String> = losses
            .iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        PipelineState::Failed {
            error: format!(
                "the source finished, but {total} frame(s) were lost on the way: {}",
                reasons.join(", ")
            ),
        }
    }

    /// Adds a warning about how the pipeline ended, for the summary.
    pub fn add_note(&self, note: String) {
        if let Ok(mut notes) = self.notes.lock() {
            notes.push(note);
        }
    }

    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_observer_hears_state_changes_and_outputs_going_down_and_up_once_each() {
        let stats = PipelineStats::default();
        let heard = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
        stats.observe(Box::new({
            let heard = heard.clone();
            move |observed| {
                let said = match observed {
                    Observed::State(state) => state.name().to_string(),
                    Observed::Output(health) => format!("{} up={}", health.output, health.up),
                };
                heard.lock().unwrap().push(said);
            }
        }));
        let video = |up: bool| OutputHealth {
            output: "video".into(),
            up,
            reason: (!up).then(|| "disk full".into()),
            error: None,
            failures: u32::from(!up),
            retry_at: None,
        };
        stats.set_state(PipelineState::Playing);
        stats.set_state(PipelineState::Playing);
        stats.set_output(video(true));
        stats.set_output(video(false));
        stats.set_output(video(false));
        stats.set_output(video(true));
        stats.set_state(PipelineState::Finished);
        assert_eq!(
            *heard.lock().unwrap(),
            ["playing", "video up=false", "video up=true", "finished"]
        );
    }

    #[test]
    fn quantiles_fall_within_one_bucket_of_the_truth() {
        let histogram = LatencyHistogram::default();
        for ms in 1..=100 {
            histogram.record(Duration::from_millis(ms));
        }
        let p50 = histogram.quantile(0.5).unwrap().as_secs_f64() * 1e3;
        let p99 = histogram.quantile(0.99).unwrap().as_secs_f64() * 1e3;
        assert!((50.0..=50.0 * BUCKET_GROWTH).contains(&p50), "{p50}");
        assert!((99.0..=99.0 * BUCKET_GROWTH).contains(&p99), "{p99}");
        assert_eq!(histogram.count(), 100);
    }

    #[test]
    fn samples_land_at_or_below_their_bucket_edge_and_sum_up() {
        let histogram = LatencyHistogram::default();
        let samples = [30u64, 999, 1_000, 1_001, 47_000, 2_000_000];
        for us in samples {
            histogram.record(Duration::from_micros(us));
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), samples.len() as u64);
        assert_eq!(snapshot.sum, Duration::from_micros(samples.iter().sum()));
        for index in [0, 10, 61, 62, 140, 200, BUCKETS - 1] {
            let edge = LatencyHistogram::upper_edge(index);
            let expected = samples
                .iter()
                .filter(|&&us| Duration::from_micros(us) <= edge)
                .count() as u64;
            assert_eq!(snapshot.cumulative(index), expected, "edge {edge:?}");
        }
        let one_ms = LatencyHistogram::nearest_bucket(Duration::from_millis(1));
        let edge = LatencyHistogram::upper_edge(one_ms).as_secs_f64();
        assert!((edge / 1e-3 - 1.0).abs() < 0.03, "{edge}");
    }

    #[test]
    fn every_state_has_its_serialized_name() {
        let states = [
            PipelineState::Starting,
            PipelineState::Playing,
            PipelineState::Stalled {
                since: Instant::now() - Duration::from_secs(7),
                attempt: 2,
            },
            PipelineState::Reconnecting {
                attempt: 1,
                last_error: "gone".into(),
            },
            PipelineState::Failed {
                error: "bad".into(),
            },
            PipelineState::Finished,
            PipelineState::Waiting {
                reason: "server down".into(),
            },
        ];
        for (state, name) in states.iter().zip(PipelineState::NAMES) {
            assert_eq!(state.name(), name);
            assert_eq!(serde_json::to_value(state).unwrap()["state"], name);
        }
        let stalled = serde_json::to_value(&states[2]).unwrap();
        assert_eq!(stalled["attempt"], 2);
        let age = stalled["age_s"].as_f64().unwrap();
        assert!((7.0..8.0).contains(&age), "{stalled}");
        let since = humantime::parse_rfc3339(stalled["since"].as_str().unwrap()).unwrap();
        let ago = std::time::SystemTime::now().duration_since(since).unwrap();
        assert!((7.0..8.0).contains(&ago.as_secs_f64()), "{stalled}");
        assert_eq!(
            serde_json::to_value(&states[3]).unwrap(),
            serde_json::json!({"state": "reconnecting", "attempt": 1, "last_error": "gone"})
        );
        assert_eq!(
            serde_json::to_value(&states[4]).unwrap(),
            serde_json::json!({"state": "failed", "error": "bad"})
        );
        assert_eq!(states[4].to_string(), "failed: bad");
        assert_eq!(states[5].to_string(), "finished");
        assert_eq!(
            serde_json::to_value(&states[6]).unwrap(),
            serde_json::json!({"state": "waiting", "reason": "server down"})
        );
        assert!(states[2].is_outage() && states[3].is_outage());
        assert!(!states[1].is_outage());
    }

    #[test]
    fn source_activity_tells_silence_from_a_held_source() {
        let activity = SourceActivity::default();
        let opened = Instant::now();
        assert_eq!(activity.last_frame(), None);
        std::thread::sleep(Duration::from_millis(20));
        assert!(activity.silence(opened) >= Duration::from_millis(20));
        activity.new_session();
        activity.arrived(Some(Duration::from_millis(40)));
        // Held by a full `block` hop: not silent however long it takes.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(activity.silence(opened), Duration::ZERO);
        activity.released();
        assert!(activity.silence(opened) < Duration::from_millis(20));
        assert_eq!(activity.interval(), Some(Duration::from_millis(40)));
        // A source that declares no rate: the gap it showed.
        std::thread::sleep(Duration::from_millis(30));
        activity.arrived(None);
        activity.released();
        assert!(activity.interval().unwrap() >= Duration::from_millis(30));
        assert!(activity.session_span() >= Duration::from_millis(30));
        // A new session has delivered nothing yet.
        activity.new_session();
        assert_eq!(activity.session_first_frame(), None);
        assert_eq!(activity.session_span(), Duration::ZERO);
        assert!(activity.last_frame().is_some());
    }

    #[test]
    fn a_waiting_model_shows_over_a_playing_source_only() {
        let stats = PipelineStats::default();
        stats.set_state(PipelineState::Playing);
        stats.set_model_waiting(Some("server down".into()));
        assert_eq!(
            stats.state(),
            PipelineState::Waiting {
                reason: "server down".into()
            }
        );
        // The source's own trouble says more.
        let reconnecting = PipelineState::Reconnecting {
            attempt: 1,
            last_error: "gone".into(),
        };
        stats.set_state(reconnecting.clone());
        assert_eq!(stats.state(), reconnecting);
        stats.set_state(PipelineState::Playing);
        stats.set_model_waiting(None);
        assert_eq!(stats.state(), PipelineState::Playing);
    }

    #[test]
    fn an_empty_histogram_has_no_quantiles() {
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
    }
}
