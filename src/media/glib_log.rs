//! GLib's own messages (`GStreamer-CRITICAL`, `GLib-WARNING`, ...), which GStreamer and its
//! plugins print straight to stderr, routed into the daemon's log with a cap: the same message
//! is logged its first few times, then only at 10, 100, 1000, ... occurrences with the count.
//! A plugin that complains per buffer (a broken element, a process out of file descriptors)
//! once wrote millions of lines in seconds; now it writes a handful.

use std::collections::HashMap;
use std::sync::{Mutex, Once};

use gstreamer::glib;

use crate::config::redact;

/// Occurrences of one message logged in full before only its counts are.
pub const LOGGED_IN_FULL: u64 = 5;
/// Distinct messages remembered; past that, new ones share one counter.
const REMEMBERED: usize = 1024;

/// Counts occurrences of each message and says which ones to log.
#[derive(Debug, Default)]
pub struct RepeatCap {
    seen: HashMap<String, u64>,
    suppressed: u64,
}

impl RepeatCap {
    /// Counts one occurrence of `key`; `Some(n)` when this one, the n-th, should be logged.
    pub fn occurrence(&mut self, key: &str) -> Option<u64> {
        let key = if self.seen.len() >= REMEMBERED && !self.seen.contains_key(key) {
            "(other messages)"
        } else {
            key
        };
        let count = self.seen.entry(key.to_string()).or_default();
        *count += 1;
        let n = *count;
        let logged = n <= LOGGED_IN_FULL || is_power_of_ten(n);
        if !logged {
            self.suppressed += 1;
        }
        logged.then_some(n)
    }

    /// Occurrences not logged so far.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

fn is_power_of_ten(mut n: u64) -> bool {
    while n >= 10 && n.is_multiple_of(10) {
        n /= 10;
    }
    n == 1
}

static CAP: Mutex<Option<RepeatCap>> = Mutex::new(None);

/// Routes GLib's messages into the log through the cap (once per process).
pub fn install() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        glib::log_set_default_handler(|domain, level, message| {
            let domain = domain.unwrap_or("GLib");
            // Plugins' warnings quote URIs and properties as they were set.
            let message = redact::text(message);
            let key = format!("{domain}: {message}");
            let occurrence = CAP
                .lock()
                .ok()
                .and_then(|mut cap| cap.get_or_insert_with(RepeatCap::default).occurrence(&key));
            let Some(n) = occurrence else {
                return;
            };
            let repeated = if n > LOGGED_IN_FULL {
                format!(" (seen {n} times; repeats are counted, not logged)")
            } else {
                String::new()
            };
            match level {
                glib::LogLevel::Error | glib::LogLevel::Critical => {
                    tracing::error!(target: "glib", "{domain}: {message}{repeated}")
                }
                glib::LogLevel::Warning => {
                    tracing::warn!(target: "glib", "{domain}: {message}{repeated}")
                }
                glib::LogLevel::Message | glib::LogLevel::Info => {
                    tracing::info!(target: "glib", "{domain}: {message}{repeated}")
                }
                glib::LogLevel::Debug => {
                    tracing::debug!(target: "glib", "{domain}: {message}{repeated}")
                }
            }
        });
    });
}

/// GLib messages not logged so far (repeats beyond the cap).
pub fn suppressed() -> u64 {
    CAP.lock()
        .ok()
        .and_then(|cap| cap.as_ref().map(RepeatCap::suppressed))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_logged_five_times_then_at_powers_of_ten() {
        let mut cap = RepeatCap::default();
        let logged: Vec<u64> = (0..100_000)
            .filter_map(|_| cap.occurrence("same"))
            .collect();
        assert_eq!(logged, [1, 2, 3, 4, 5, 10, 100, 1000, 10_000, 100_000]);
        assert_eq!(cap.suppressed(), 100_000 - 10);
        assert_eq!(cap.occurrence("other"), Some(1));
    }
}
