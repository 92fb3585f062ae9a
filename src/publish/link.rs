//! A broker connection's state as the rest of the daemon sees it: which broker, whether it is
//! connected, and why not. Shared by the connection (which sets it), its sinks and the control
//! plane (which read it).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

pub struct Link {
    /// The broker's name in the daemon file.
    pub name: String,
    pub kind: &'static str,
    /// Where it connects, without credentials.
    pub address: String,
    /// Wakes the connection: a push into a spool, an acknowledgement, a stop.
    pub wake: Arc<Notify>,
    connected: AtomicBool,
    connects: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Link {
    pub fn new(name: &str, kind: &'static str, address: String) -> Self {
        Self {
            name: name.to_string(),
            kind,
            address,
            wake: Arc::new(Notify::new()),
            connected: AtomicBool::new(false),
            connects: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn set_connected(&self) {
        self.connected.store(true, Ordering::Relaxed);
        self.connects.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = None;
        }
    }

    pub fn set_disconnected(&self, error: String) {
        self.connected.store(false, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Why the connection is down (or the last attempt failed); `None` while connected.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Times it connected (1 plus its reconnections).
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }
}
