//! How long to wait before trying again: doubling from an initial delay up to a maximum, spread
//! by a random jitter. Sources use it to reconnect, outputs to rebuild.

use std::time::{Duration, Instant};

use crate::config::ReconnectConfig;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// Random spread of each delay, as a fraction (0.2 = ±20%), so that cameras behind one
    /// switch that rebooted together are not all retried in the same instant.
    jitter: f64,
    /// Failures since the last success.
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, jitter: f64) -> Self {
        Self {
            initial,
            max,
            jitter,
            failures: 0,
        }
    }

    /// A source's reconnect policy.
    pub fn reconnect(policy: &ReconnectConfig) -> Self {
        Self::new(
            Duration::from_millis(policy.initial_ms),
            Duration::from_millis(policy.max_ms),
            policy.jitter,
        )
    }

    /// Counts a failure and returns how long to wait before the next try.
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(30);
        let base =
            (self.initial.as_secs_f64() * 2f64.powi(doublings as i32)).min(self.max.as_secs_f64());
        let spread = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        Duration::from_secs_f64(base * spread).max(Duration::from_millis(1))
    }

    /// Counts the failure of something that had run for `ran` (a source session, from its
    /// first frame to its last). Having run steadily, for at least the longest delay, it was
    /// a success: the count starts again. Shorter, it keeps doubling, so a source that ends a
    /// moment after every start is not retried ever again at the initial delay.
    pub fn fail_after(&mut self, ran: Duration) -> Duration {
        if ran >= self.steady() {
            self.reset();
        }
        self.fail()
    }

    /// How long something must run to count as steady: the longest delay.
    pub fn steady(&self) -> Duration {
        self.max
    }

    /// A success: the next failure starts from the initial delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Something that fails and is retried (an output, a recording). Its failures keep counting,
/// and its delay keeps doubling, until it has run for `steady` without failing: an output that
/// is rebuilt and fails a moment later (a disk still full) is not retried ever faster.
#[derive(Debug, Clone)]
pub struct Retry {
    backoff: Backoff,
    steady: Duration,
    up_since: Option<Instant>,
}

impl Retry {
    /// Delays from `initial` doubling to `max`; running for `max` counts as steady.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            backoff: Backoff::new(initial, max, 0.0),
            steady: max,
            up_since: None,
        }
    }

    /// It (re)started now.
    pub fn up(&mut self) {
        self.up_since = Some(Instant::now());
    }

    /// It failed: how long to wait before the next try.
    pub fn fail(&mut self) -> Duration {
        if self
            .up_since
            .take()
            .is_some_and(|since| since.elapsed() >= self.steady)
        {
            self.backoff.reset();
        }
        self.backoff.fail()
    }

    /// Failures since it last ran steadily.
    pub fn failures(&self) -> u32 {
        self.backoff.failures()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum_within_jitter() {
        let policy = ReconnectConfig {
            initial_ms: 100,
            max_ms: 1000,
            jitter: 0.2,
            max_attempts: None,
        };
        let expected = |attempt: u32| match attempt {
            1 => 100.0,
            2 => 200.0,
            3 => 400.0,
            4 => 800.0,
            _ => 1000.0,
        };
        for _ in 0..50 {
            let mut backoff = Backoff::reconnect(&policy);
            for attempt in 1..=40 {
                let ms = backoff.fail().as_secs_f64() * 1e3;
                let base = expected(attempt);
                assert!(
                    (base * 0.8 - 1.0..=base * 1.2 + 1.0).contains(&ms),
                    "attempt {attempt}: {ms}"
                );
            }
            assert_eq!(backoff.failures(), 40);
            backoff.reset();
            let ms = backoff.fail().as_secs_f64() * 1e3;
            assert!((79.0..=121.0).contains(&ms), "after a reset: {ms}");
        }
    }

    #[test]
    fn only_a_steady_run_starts_the_count_again() {
        let policy = ReconnectConfig {
            initial_ms: 10,
            max_ms: 80,
            jitter: 0.0,
            max_attempts: None,
        };
        let mut backoff = Backoff::reconnect(&policy);
        let short = Duration::from_millis(79);
        let delays: Vec<u128> = (0..5)
            .map(|_| backoff.fail_after(short).as_millis())
            .collect();
        assert_eq!(delays, [10, 20, 40, 80, 80], "short runs keep doubling");
        assert_eq!(backoff.failures(), 5);
        assert_eq!(
            backoff.fail_after(Duration::from_millis(80)).as_millis(),
            10
        );
        assert_eq!(backoff.failures(), 1, "a steady run was a success");
    }

    #[test]
    fn a_retry_that_fails_at_once_keeps_doubling() {
        let mut retry = Retry::new(Duration::from_millis(10), Duration::from_millis(80));
        let mut delays = Vec::new();
        for _ in 0..5 {
            retry.up();
            delays.push(retry.fail().as_millis());
        }
        assert_eq!(delays, [10, 20, 40, 80, 80]);
        assert_eq!(retry.failures(), 5);
        retry.up();
        std::thread::sleep(Duration::from_millis(90));
        assert_eq!(
            retry.fail().as_millis(),
            10,
            "steady for max: counting starts again"
        );
    }
}
