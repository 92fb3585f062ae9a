//! Asking a pipeline to stop: the whole daemon's shutdown, or this one pipeline's (a reload
//! removes or restarts it, or a stage that broke under it fails it). Either closes a channel;
//! whoever waits sees it at once.
//!
//! A stop starts a drain: what the stages hold is still written, for at most the grace period.
//! Past it the drain is abandoned: every stage that waits for room stops waiting and counts
//! what it lets go, so a stuck sink or model can never hold a pipeline (or the daemon) forever.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError};

/// Closes its channel from any thread (signal handler, test, control plane, reload, a model
/// worker that broke).
#[derive(Clone)]
pub struct StopHandle {
    sender: Arc<Mutex<Option<Sender<()>>>>,
    receiver: Receiver<()>,
    /// Why the pipeline was stopped when it was stopped because it failed.
    fault: Arc<Mutex<Option<String>>>,
}

impl Default for StopHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl StopHandle {
    pub fn new() -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(0);
        Self {
            sender: Arc::new(Mutex::new(Some(sender))),
            receiver,
            fault: Arc::new(Mutex::new(None)),
        }
    }

    pub fn trigger(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
    }

    /// Stops because something under the pipeline broke; the first reason given is the one
    /// the pipeline fails with.
    pub fn fail(&self, reason: String) {
        if let Ok(mut fault) = self.fault.lock() {
            fault.get_or_insert(reason);
        }
        self.trigger();
    }

    /// Why it was stopped, when it failed.
    pub fn fault(&self) -> Option<String> {
        self.fault.lock().ok().and_then(|fault| fault.clone())
    }

    pub fn is_triggered(&self) -> bool {
        self.sender.lock().map_or(true, |sender| sender.is_none())
    }

    /// What waits for this stop: closes when [`Self::trigger`] is called.
    pub fn receiver(&self) -> Receiver<()> {
        self.receiver.clone()
    }
}

/// What a pipeline's threads watch: the daemon's shutdown and the pipeline's own stop, and
/// how long a drain may take after either.
#[derive(Clone)]
pub struct StopSignal {
    daemon: Receiver<()>,
    own: StopHandle,
    grace: Duration,
    /// When a stop was first seen: the drain's grace period runs from here.
    stopped_at: Arc<OnceLock<Instant>>,
}

impl StopSignal {
    pub fn new(daemon: Receiver<()>, own: StopHandle, grace: Duration) -> Self {
        Self {
            daemon,
            own,
            grace,
            stopped_at: Arc::new(OnceLock::new()),
        }
    }

    pub fn is_set(&self) -> bool {
        let closed = |r: &Receiver<()>| matches!(r.try_recv(), Err(TryRecvError::Disconnected));
        let set = closed(&self.daemon) || closed(&self.own.receiver);
        if set {
            self.stopped_at.get_or_init(Instant::now);
        }
        set
    }

    /// Stopped for longer than the grace period: a drain still waiting on something has to
    /// let go.
    pub fn abandoned(&self) -> bool {
        self.is_set()
            && self
                .stopped_at
                .get()
                .is_some_and(|at| at.elapsed() >= self.grace)
    }

    /// Why the pipeline was stopped, when it was stopped because something under it failed.
    pub fn fault(&self) -> Option<String> {
        self.own.fault()
    }

    /// Sleeps `delay`, waking early when the stop comes; returns whether it came.
    pub fn wait(&self, delay: Duration) -> bool {
        let mut select = Select::new();
        select.recv(&self.daemon);
        select.recv(&self.own.receiver);
        // Nothing is ever sent on either channel; they only close, so ready means stopped.
        let stopped = select.ready_timeout(delay).is_ok();
        if stopped {
            self.stopped_at.get_or_init(Instant::now);
        }
        stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_is_abandoned_only_after_the_grace_period() {
        let daemon = StopHandle::new();
        let own = StopHandle::new();
        let signal = StopSignal::new(daemon.receiver(), own.clone(), Duration::from_millis(50));
        assert!(!signal.is_set() && !signal.abandoned());
        daemon.trigger();
        assert!(signal.is_set());
        assert!(!signal.abandoned(), "the grace period has only begun");
        std::thread::sleep(Duration::from_millis(60));
        assert!(signal.abandoned());
        assert_eq!(signal.fault(), None);
    }

    #[test]
    fn a_failure_stops_the_pipeline_with_its_first_reason() {
        let (daemon, own) = (StopHandle::new(), StopHandle::new());
        let signal = StopSignal::new(daemon.receiver(), own.clone(), Duration::ZERO);
        own.fail("the model worker stopped".into());
        own.fail("a later reason".into());
        assert!(signal.wait(Duration::from_secs(5)));
        assert_eq!(signal.fault().as_deref(), Some("the model worker stopped"));
    }
}
