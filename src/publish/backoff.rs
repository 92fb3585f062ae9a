//! How long a broker connection waits before trying again: doubling from `initial` up to
//! `max`, each delay varied by up to a fifth so that a site's daemons, cut off together, do not
//! all come back in the same instant.

use std::time::Duration;

/// The spread of each delay, as a fraction.
const JITTER: f64 = 0.2;

pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            failures: 0,
        }
    }

    /// Counts a failure; the delay before the next try.
    pub fn fail(&mut self) -> Duration {
        let doublings = self.failures.min(30) as i32;
        self.failures = self.failures.saturating_add(1);
        let base = (self.initial.as_secs_f64() * 2f64.powi(doublings)).min(self.max.as_secs_f64());
        let spread = 1.0 + JITTER * (fastrand::f64() * 2.0 - 1.0);
        Duration::from_secs_f64(base * spread).max(Duration::from_millis(1))
    }

    /// Connected: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_within_the_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_millis(3000));
        let delays: Vec<f64> = (0..6).map(|_| backoff.fail().as_secs_f64()).collect();
        for (delay, base) in delays.iter().zip([0.5, 1.0, 2.0, 3.0, 3.0, 3.0]) {
            assert!(
                (delay / base - 1.0).abs() <= JITTER + 1e-9,
                "{delay} for {base}"
            );
        }
        backoff.reset();
        assert!(backoff.fail() <= Duration::from_millis(600));
    }
}
