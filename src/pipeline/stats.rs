//! Per-pipeline counters, latency distribution and lifecycle state, shared between the
//! frame-path threads (writers) and the control plane and summaries (readers).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where a pipeline is in its life, as the control plane reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
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

/// Latencies in logarithmic buckets: fixed memory however long the daemon runs, and
/// percentiles good to the bucket width (about 5%).
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Vec<AtomicU64>,
}

const FIRST_BUCKET_US: f64 = 50.0;
const BUCKET_GROWTH: f64 = 1.05;
const BUCKETS: usize = 300; // 50 µs .. ~113 s

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LatencyHistogram {
    pub fn record(&self, latency: Duration) {
        let us = latency.as_secs_f64() * 1e6;
        let index = if us <= FIRST_BUCKET_US {
            0
        } else {
            ((us / FIRST_BUCKET_US).ln() / BUCKET_GROWTH.ln()).ceil() as usize
        };
        self.buckets[index.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The upper edge of the bucket holding quantile `q` (0..=1); `None` before any sample.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let upper_us = FIRST_BUCKET_US * BUCKET_GROWTH.powi(index as i32);
                return Some(Duration::from_secs_f64(upper_us / 1e6));
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
    fn an_empty_histogram_has_no_quantiles() {
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
    }
}
