//! Asking a pipeline to stop: the whole daemon's shutdown, or this one pipeline's (a reload
//! removes or restarts it). Either closes a channel; whoever waits sees it at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError};

/// Closes its channel from any thread (signal handler, test, control plane, reload).
#[derive(Clone)]
pub struct StopHandle(Arc<Mutex<Option<Sender<()>>>>);

impl StopHandle {
    pub fn new() -> (Self, Receiver<()>) {
        let (sender, receiver) = crossbeam_channel::bounded(0);
        (Self(Arc::new(Mutex::new(Some(sender)))), receiver)
    }

    pub fn trigger(&self) {
        if let Ok(mut sender) = self.0.lock() {
            sender.take();
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.0.lock().map_or(true, |sender| sender.is_none())
    }
}

/// What a pipeline's threads watch: the daemon's shutdown and the pipeline's own stop.
#[derive(Clone)]
pub struct StopSignal {
    daemon: Receiver<()>,
    own: Receiver<()>,
}

impl StopSignal {
    pub fn new(daemon: Receiver<()>, own: Receiver<()>) -> Self {
        Self { daemon, own }
    }

    pub fn is_set(&self) -> bool {
        let closed = |r: &Receiver<()>| matches!(r.try_recv(), Err(TryRecvError::Disconnected));
        closed(&self.daemon) || closed(&self.own)
    }

    /// Sleeps `delay`, waking early when the stop comes; returns whether it came.
    pub fn wait(&self, delay: Duration) -> bool {
        let mut select = Select::new();
        select.recv(&self.daemon);
        select.recv(&self.own);
        // Nothing is ever sent on either channel; they only close, so ready means stopped.
        select.ready_timeout(delay).is_ok()
    }
}
