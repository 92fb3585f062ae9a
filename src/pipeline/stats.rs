//! Per-pipeline counters, latency distribution and lifecycle state, shared between the
//! frame-path threads (writers) and the control plane and summaries (readers).

use std::sync::Mutex;
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
    /// Times the supervisor went to `reconnecting` (each attempt counts).
    pub reconnects: AtomicU64,
    /// Times the output pipeline failed and was rebuilt.
    pub output_restarts: AtomicU64,
    state: Mutex<Option<PipelineState>>,
}

impl PipelineStats {
    pub fn state(&self) -> PipelineState {
        self.state
            .lock()
            .map(|s| s.clone().unwrap_or(PipelineState::Starting))
            .unwrap_or(PipelineState::Starting)
    }

    pub fn set_state(&self, state: PipelineState) {
        if let Ok(mut current) = self.state.lock() {
            *current = Some(state);
        }
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
