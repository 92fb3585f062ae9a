//! Per-pipeline counters, latency distribution and lifecycle state, shared between the
//! frame-path threads (writers) and the control plane and summaries (readers).

use std::sync::Mutex;

use crate::media::snapshot::LatestFrame;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where a pipeline is in its life, as the control plane reports it: serialized as
/// `{"state": "<name>", ...its fields}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineState {
    Starting,
    Playing,
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
}

impl PipelineState {
    /// Every state's name, as `name()` and the serialized `state` field spell it.
    pub const NAMES: [&'static str; 5] =
        ["starting", "playing", "reconnecting", "failed", "finished"];

    pub fn name(&self) -> &'static str {
        match self {
            Self::Starting => Self::NAMES[0],
            Self::Playing => Self::NAMES[1],
            Self::Reconnecting { .. } => Self::NAMES[2],
            Self::Failed { .. } => Self::NAMES[3],
            Self::Finished => Self::NAMES[4],
        }
    }
}

impl serde::Serialize for PipelineState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("state", self.name())?;
        match self {
            Self::Reconnecting {
                attempt,
                last_error,
            } => {
                map.serialize_entry("attempt", attempt)?;
                map.serialize_entry("last_error", last_error)?;
            }
            Self::Failed { error } => map.serialize_entry("error", error)?,
            Self::Starting | Self::Playing | Self::Finished => {}
        }
        map.end()
    }
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
    /// Warnings about how the pipeline ended (a truncated input), for the summary.
    notes: Mutex<Vec<String>>,
    /// The latest published frame, captured while the status page looks at it.
    pub latest_frame: std::sync::Arc<LatestFrame>,
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
        self.state
            .lock()
            .map(|s| s.clone().unwrap_or(PipelineState::Starting))
            .unwrap_or(PipelineState::Starting)
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
        if let Ok(mut current) = self.state.lock() {
            *current = Some(state);
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
    pub fn set_output(&self, health: OutputHealth) {
        if let Ok(mut outputs) = self.outputs.lock() {
            match outputs.iter_mut().find(|o| o.output == health.output) {
                Some(slot) => *slot = health,
                None => outputs.push(health),
            }
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
            PipelineState::Reconnecting {
                attempt: 1,
                last_error: "gone".into(),
            },
            PipelineState::Failed {
                error: "bad".into(),
            },
            PipelineState::Finished,
        ];
        for (state, name) in states.iter().zip(PipelineState::NAMES) {
            assert_eq!(state.name(), name);
            assert_eq!(serde_json::to_value(state).unwrap()["state"], name);
        }
        assert_eq!(
            serde_json::to_value(&states[2]).unwrap(),
            serde_json::json!({"state": "reconnecting", "attempt": 1, "last_error": "gone"})
        );
        assert_eq!(
            serde_json::to_value(&states[3]).unwrap(),
            serde_json::json!({"state": "failed", "error": "bad"})
        );
        assert_eq!(states[3].to_string(), "failed: bad");
        assert_eq!(states[4].to_string(), "finished");
    }

    #[test]
    fn an_empty_histogram_has_no_quantiles() {
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
    }
}
