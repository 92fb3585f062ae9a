//! What a served model's client counts, for `/metrics`: requests, their latency, how many are
//! outstanding, failures by reason, and whether the server takes requests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::runtime::RemoteFailure;

/// Upper bounds (seconds) of the request latency histogram.
pub const LATENCY_BOUNDS_S: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default)]
pub struct RemoteStats {
    /// Requests sent (each carries one batch).
    pub requests: AtomicU64,
    /// Requests sent and not answered (or failed) yet.
    pub in_flight: AtomicU64,
    /// Whether the server takes requests now (checked ready, with the expected model).
    pub up: AtomicBool,
    failures: [AtomicU64; 3],
    /// Answered requests by latency: bucket `i` counts those at most `LATENCY_BOUNDS_S[i]`
    /// and above the bound before; the last bucket takes the rest.
    latency: [AtomicU64; LATENCY_BOUNDS_S.len() + 1],
    latency_sum_us: AtomicU64,
}

impl RemoteStats {
    pub fn failed(&self, failure: RemoteFailure) {
        self.failures[failure as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Failed requests for `failure`.
    pub fn failures(&self, failure: RemoteFailure) -> u64 {
        self.failures[failure as usize].load(Ordering::Relaxed)
    }

    /// A request answered (successfully or not) after `latency`.
    pub fn answered(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BOUNDS_S
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BOUNDS_S.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bound of [`LATENCY_BOUNDS_S`], then the total (`+Inf`).
    pub fn latency_cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        self.latency
            .iter()
            .map(|count| {
                total += count.load(Ordering::Relaxed);
                total
            })
            .collect()
    }

    pub fn latency_sum(&self) -> Duration {
        Duration::from_micros(self.latency_sum_us.load(Ordering::Relaxed))
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}
