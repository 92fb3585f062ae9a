//! A broker connection's outbox: what it has to send (the daemon's events, the spools of the
//! sinks that publish there) and what it reports (connected or not, why not, what it sent).
//! Shared between the frame path (which only pushes into spools) and the connection's task.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::link::Link;
use super::sink::{DropReason, SinkShared};
use super::spool::Spool;

/// Events queued for a broker at most; past it the oldest are dropped, and counted.
const EVENT_SPOOL: usize = 1000;

/// Where a broker's events go.
#[derive(Debug, Clone)]
pub enum EventRoute {
    /// `{prefix}/{pipeline}/state` (retained), `{prefix}/{pipeline}/events`,
    /// `{prefix}/{daemon}/availability` (retained; `offline` is the last will).
    Mqtt { prefix: String },
    /// One topic, keyed by pipeline (by daemon for availability).
    Kafka { topic: String },
}

/// An outbox reads as its link: `outbox.name`, `outbox.is_connected()`.
impl Deref for Outbox {
    type Target = Link;

    fn deref(&self) -> &Link {
        &self.link
    }
}

/// One event as a broker gets it.
#[derive(Debug, Clone)]
pub struct EventMessage {
    pub topic: Arc<str>,
    pub key: Arc<str>,
    pub payload: Bytes,
    pub retain: bool,
}

/// One message taken out of an outbox, until it is delivered or dropped.
#[derive(Clone)]
pub enum Outgoing {
    Result {
        sink: Arc<SinkShared>,
        payload: Bytes,
    },
    Event(EventMessage),
}

impl Outgoing {
    pub fn topic(&self) -> &str {
        match self {
            Self::Result { sink, .. } => &sink.topic,
            Self::Event(event) => &event.topic,
        }
    }

    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Result { sink, .. } => sink.key.as_deref(),
            Self::Event(event) => Some(&event.key),
        }
    }

    pub fn payload(&self) -> &Bytes {
        match self {
            Self::Result { payload, .. } => payload,
            Self::Event(event) => &event.payload,
        }
    }

    /// Events are sent at least once: a state change must not vanish.
    pub fn qos(&self) -> u8 {
        match self {
            Self::Result { sink, .. } => sink.qos,
            Self::Event(_) => 1,
        }
    }

    pub fn retain(&self) -> bool {
        match self {
            Self::Result { sink, .. } => sink.retain,
            Self::Event(event) => event.retain,
        }
    }

    /// The broker has it (acknowledged, or written for qos 0).
    pub fn delivered(&self, outbox: &Outbox) {
        outbox.in_flight.fetch_sub(1, Ordering::Relaxed);
        match self {
            Self::Result { sink, .. } => sink.delivered(),
            Self::Event(_) => {
                outbox.events_published.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// It will not be delivered, for `reason`.
    pub fn dropped(&self, outbox: &Outbox, reason: DropReason, error: Option<String>) {
        outbox.in_flight.fetch_sub(1, Ordering::Relaxed);
        match self {
            Self::Result { sink, .. } => sink.dropped(reason, 1, error),
            Self::Event(_) => {
                outbox.events_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

pub struct Outbox {
    /// Which broker, and whether it is connected (what its sinks and the API read).
    pub link: Arc<Link>,
    /// The daemon's name in availability topics and events.
    pub daemon: String,
    pub route: Option<EventRoute>,
    events: Spool<EventMessage>,
    sinks: Mutex<Vec<Arc<SinkShared>>>,
    cursor: AtomicUsize,
    /// Taken out and neither delivered nor dropped yet.
    in_flight: AtomicUsize,
    events_published: AtomicU64,
    events_dropped: AtomicU64,
    /// Each pipeline's latest state message, sent again at every connection: a broker that
    /// restarted without persistence has lost its retained messages.
    states: Mutex<BTreeMap<String, EventMessage>>,
    /// Set by [`Outbox::stop`]: the connection says goodbye and ends.
    stopping: AtomicBool,
}

impl Outbox {
    pub fn new(
        name: &str,
        kind: &'static str,
        address: String,
        daemon: &str,
        route: Option<EventRoute>,
    ) -> Self {
        let link = Arc::new(Link::new(name, kind, address));
        Self {
            events: Spool::new(EVENT_SPOOL, link.wake.clone()),
            link,
            daemon: daemon.to_string(),
            route,
            sinks: Mutex::new(Vec::new()),
            cursor: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            events_published: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            states: Mutex::new(BTreeMap::new()),
            stopping: AtomicBool::new(false),
        }
    }

    pub fn register(&self, sink: Arc<SinkShared>) {
        if let Ok(mut sinks) = self.sinks.lock() {
            sinks.push(sink);
        }
    }

    /// Queues an event; a pipeline's state is also kept to be sent again after a reconnect.
    pub fn push_event(&self, event: EventMessage, state_of: Option<&str>) {
        if let Some(pipeline) = state_of
            && let Ok(mut states) = self.states.lock()
        {
            states.insert(pipeline.to_string(), event.clone());
        }
        self.events.push(event);
    }

    /// An event the connection makes itself (availability, states sent again), counted in
    /// flight like one taken from the spools.
    pub fn adopt(&self, event: EventMessage) -> Outgoing {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Outgoing::Event(event)
    }

    /// Every pipeline's latest state, to send after (re)connecting.
    pub fn states(&self) -> Vec<EventMessage> {
        self.states
            .lock()
            .map(|states| states.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The next message to send: events first, then the sinks in turn, so that a busy
    /// pipeline cannot starve a quiet one. Sinks whose pipeline stopped and whose spool is
    /// empty are forgotten here.
    pub fn next(&self) -> Option<Outgoing> {
        let taken = self.events.pop().map(Outgoing::Event).or_else(|| {
            let mut sinks = self.sinks.lock().ok()?;
            sinks.retain(|sink| !(sink.is_closed() && sink.spool.is_empty()));
            let count = sinks.len();
            let start = self.cursor.load(Ordering::Relaxed);
            (0..count).find_map(|offset| {
                let sink = &sinks[(start + offset) % count];
                let payload = sink.spool.pop()?;
                self.cursor
                    .store((start + offset + 1) % count, Ordering::Relaxed);
                Some(Outgoing::Result {
                    sink: sink.clone(),
                    payload,
                })
            })
        });
        if taken.is_some() {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Nothing waits in any spool and nothing is on its way.
    pub fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self.events.is_empty()
            && self
                .sinks
                .lock()
                .map(|sinks| sinks.iter().all(|sink| sink.spool.is_empty()))
                .unwrap_or(true)
    }

    /// Drops everything still spooled, counted as lost at shutdown.
    pub fn abandon_spooled(&self) {
        let events = self.events.discard();
        self.events_dropped.fetch_add(events, Ordering::Relaxed);
        if let Ok(sinks) = self.sinks.lock() {
            for sink in sinks.iter() {
                let count = sink.spool.discard();
                if count > 0 {
                    sink.dropped(DropReason::Shutdown, count, None);
                }
            }
        }
    }

    pub fn events_published(&self) -> u64 {
        self.events_published.load(Ordering::Relaxed)
    }

    /// Events dropped: pushed out of a full spool, refused, or left at shutdown.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped.load(Ordering::Relaxed) + self.events.overflowed()
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The sinks publishing here (their pipelines may have stopped).
    pub fn sinks(&self) -> Vec<Arc<SinkShared>> {
        self.sinks.lock().map(|s| s.clone()).unwrap_or_default()
    }
}
