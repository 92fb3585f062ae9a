//! The control plane's connections, kept so that no client can starve it: at most
//! `http.max_connections` open at once, and each closed when a request's headers take longer
//! than `http.header_timeout_ms` from their first byte, or when nothing has moved on it for
//! `http.idle_timeout_ms` while none of its requests is being handled (a keep-alive connection
//! between requests, a client that connected and sent nothing, one that stopped reading).
//!
//! At the cap, a new connection takes the place of the one that has gone longest without a
//! request in a handler or a response byte written (idle, or sending its headers a byte at a
//! time; a live video streaming to a viewer is neither), so `/healthz` still
//! answers under a flood of idle or half-sent connections. A connection with a request in its
//! handler, one not yet read, or one opened or answered less than [`EVICTION_GRACE`] ago (its
//! client may be about to send) is never displaced: a burst of real requests beyond the cap
//! waits a moment for slots instead. Only when none frees within [`ADMIT_WAIT`] is the new
//! connection closed unanswered. So the
//! control plane holds a bounded number of file descriptors however many sockets clients
//! open, and every connection it closes or refuses is counted ([`ConnectionStats`], in
//! `/metrics`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use crate::config::HttpConfig;

/// How long a new connection at the cap waits for a slot (one displaced, or freed by a
/// request that ended) before it is closed unanswered. Nothing else is accepted meanwhile.
const ADMIT_WAIT: Duration = Duration::from_secs(1);

/// How often a new connection waiting at the cap looks again for one to displace.
const ADMIT_RETRY: Duration = Duration::from_millis(20);

/// How long a connection is left its chance to send a request after it opened or had its
/// last one answered, before it may be displaced at the cap.
const EVICTION_GRACE: Duration = Duration::from_millis(250);

/// The pause after a failed accept (out of file descriptors, say), so that the loop does not
/// spin while the cause lasts.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The bounds on connections, from `http`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    pub fn of(http: &HttpConfig) -> Self {
        Self {
            max_connections: http.max_connections.max(1),
            header_timeout: Duration::from_millis(http.header_timeout_ms),
            idle_timeout: Duration::from_millis(http.idle_timeout_ms),
        }
    }

    /// How long a connection's watch may sleep: a request's head can start at any moment, and
    /// its deadline must not be missed by more than this.
    fn check_interval(&self) -> Duration {
        self.header_timeout.min(self.idle_timeout)
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::of(&HttpConfig::default())
    }
}

/// Why the server closed a connection (rather than its client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    HeaderTimeout,
    IdleTimeout,
    /// It was the quietest when a new connection found the cap reached.
    Evicted,
}

impl Closed {
    pub const ALL: [Closed; 3] = [Self::HeaderTimeout, Self::IdleTimeout, Self::Evicted];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::Evicted => "evicted",
        }
    }
}

/// The control plane's connection counters, for `/metrics`.
#[derive(Debug)]
pub struct ConnectionStats {
    max: usize,
    open: AtomicU64,
    refused: AtomicU64,
    accept_errors: AtomicU64,
    closed: [AtomicU64; 3],
}

impl ConnectionStats {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            closed: Default::default(),
        }
    }

    /// The cap, `http.max_connections`.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed unanswered: the cap was reached and no slot freed in time.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Accepts that failed (the process out of file descriptors, say).
    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }

    /// Connections the server closed for `reason`.
    pub fn closed(&self, reason: Closed) -> u64 {
        self.closed[reason as usize].load(Ordering::Relaxed)
    }

    fn count_closed(&self, reason: Closed) {
        self.closed[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Accepts connections on `listener` and serves `router` on each, within `limits`, until
/// `shutdown` completes; then stops accepting, lets requests in flight finish, closes idle
/// connections, and returns once every connection has ended.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let open = Arc::new(OpenConnections::default());
    let (stop, stopping) = watch::channel(false);
    let mut failing = false;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                failing = false;
                stream
            }
            Err(error) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(%error, "cannot accept a control plane connection");
                    failing = true;
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                }
            }
        };
        let Some(slot) = admit(&slots, &open).await else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let connection = Connection::new(&open, &stats, limits, slot);
        tokio::spawn(connection.serve(stream, router.clone(), stopping.clone()));
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot until it ends.
    let _ = slots.acquire_many(limits.max_connections as u32).await;
}

/// A slot for a new connection: a free one, else one the quietest connection frees when it is
/// closed to make room, else one freed by a request that ends meanwhile. None when no slot
/// comes within [`ADMIT_WAIT`].
async fn admit(slots: &Arc<Semaphore>, open: &OpenConnections) -> Option<OwnedSemaphorePermit> {
    let deadline = tokio::time::Instant::now() + ADMIT_WAIT;
    loop {
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            return Some(slot);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return None;
        }
        // After a displacement the slot comes as soon as that connection's task has run;
        // otherwise look again shortly, as connections read their requests and finish.
        let wait = if open.evict_quietest() {
            deadline - now
        } else {
            ADMIT_RETRY.min(deadline - now)
        };
        if let Ok(Ok(slot)) = tokio::time::timeout(wait, slots.clone().acquire_owned()).await {
            return Some(slot);
        }
    }
}

/// The open connections' activity, for choosing which one makes room at the cap.
#[derive(Default)]
struct OpenConnections {
    next: AtomicU64,
    all: Mutex<HashMap<u64, Arc<Activity>>>,
}

impl OpenConnections {
    fn add(&self) -> Arc<Activity> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new(id));
        self.lock().insert(id, activity.clone());
        activity
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Tells the connection that has gone longest without a request in a handler (and is
    /// waiting for bytes, past its grace, not already told) to close; false when there is none.
    fn evict_quietest(&self) -> bool {
        let all = self.lock();
        let quietest = all
            .values()
            .filter(|a| !a.evicted.load(Ordering::Relaxed) && a.waiting.load(Ordering::Relaxed))
            .filter_map(|a| {
                let free = a.free_since()?.max(a.last_write.load(Ordering::Relaxed));
                let since = a.opened + Duration::from_millis(free);
                (since.elapsed() >= EVICTION_GRACE).then_some((since, a))
            })
            .min_by_key(|(since, _)| *since);
        match quietest {
            Some((_, activity)) => {
                activity.evicted.store(true, Ordering::Relaxed);
                activity.evict.notify_one();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        // The map stays whole whatever panicked while it was held.
        self.all
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What one connection is doing, as its watch and [`OpenConnections::evict_quietest`] see it.
/// Times are milliseconds since the connection opened.
struct Activity {
    id: u64,
    opened: Instant,
    /// When a byte last moved either way (or a request's handling ended).
    last_io: AtomicU64,
    /// When a byte of a response was last written: a response still streaming (a live
    /// video) keeps its connection from being the quietest, though its handler returned.
    last_write: AtomicU64,
    /// When it last had no request in a handler: opened, or its last request answered.
    free_since: AtomicU64,
    /// When the first byte of a request head not yet handed to a handler came, plus one;
    /// 0 when none is coming in.
    head_since: AtomicU64,
    /// The connection's requests in a handler now.
    handling: AtomicUsize,
    /// Whether its last read found nothing to read: a connection not yet read (its request
    /// may be waiting in the socket) is not quiet, whatever its clock says.
    waiting: AtomicBool,
    evicted: AtomicBool,
    evict: Notify,
}

impl Activity {
    fn new(id: u64) -> Self {
        Self {
            id,
            opened: Instant::now(),
            last_io: AtomicU64::new(0),
            last_write: AtomicU64::new(0),
            free_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            handling: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn read(&self, bytes: usize) {
        self.waiting.store(false, Ordering::Relaxed);
        if bytes == 0 {
            return;
        }
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        // Bytes outside a handler are a request's head (or the rest of a body nobody read).
        if self.handling.load(Ordering::Relaxed) == 0 {
            let _ =
                self.head_since
                    .compare_exchange(0, now + 1, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// A read found nothing waiting.
    fn read_nothing(&self) {
        self.waiting.store(true, Ordering::Relaxed);
    }

    fn wrote(&self, bytes: usize) {
        if bytes > 0 {
            let now = self.now();
            self.last_io.store(now, Ordering::Relaxed);
            self.last_write.store(now, Ordering::Relaxed);
        }
    }

    /// Marks a request as handed to its handler until the guard drops.
    fn handling(self: &Arc<Self>) -> Handling {
        self.handling.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        Handling(self.clone())
    }

    /// Since when it has had no request in a handler; None while it has one.
    fn free_since(&self) -> Option<u64> {
        (self.handling.load(Ordering::Relaxed) == 0)
            .then(|| self.free_since.load(Ordering::Relaxed))
    }

    /// Since when it has been quiet; None while a request of it is in a handler.
    fn quiet_since(&self) -> Option<u64> {
        (self.handling.load(Ordering::Relaxed) == 0).then(|| self.last_io.load(Ordering::Relaxed))
    }

    /// Why it must be closed now, or how long until it needs looking at again.
    fn verdict(&self, limits: &ConnectionLimits) -> Result<Duration, Closed> {
        let interval = limits.check_interval();
        let Some(quiet_since) = self.quiet_since() else {
            return Ok(interval);
        };
        let now = self.now();
        let ms = |duration: Duration| duration.as_millis() as u64;
        let mut wait = ms(interval);
        let head_since = self.head_since.load(Ordering::Relaxed);
        if head_since > 0 {
            let deadline = head_since - 1 + ms(limits.header_timeout);
            if now >= deadline {
                return Err(Closed::HeaderTimeout);
            }
            wait = wait.min(deadline - now);
        }
        let deadline = quiet_since + ms(limits.idle_timeout);
        if now >= deadline {
            return Err(Closed::IdleTimeout);
        }
        Ok(Duration::from_millis(wait.min(deadline - now)))
    }
}

/// A request in its handler; dropped when the handler has answered (or was cancelled).
struct Handling(Arc<Activity>);

impl Drop for Handling {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = activity.now();
        activity.last_io.store(now, Ordering::Relaxed);
        activity.free_since.store(now, Ordering::Relaxed);
        activity.head_since.store(0, Ordering::Relaxed);
        activity.handling.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One accepted connection, holding its slot until it ends.
struct Connection {
    activity: Arc<Activity>,
    open: Arc<OpenConnections>,
    stats: Arc<ConnectionStats>,
    limits: ConnectionLimits,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    fn new(
        open: &Arc<OpenConnections>,
        stats: &Arc<ConnectionStats>,
        limits: ConnectionLimits,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        Self {
            activity: open.add(),
            open: open.clone(),
            stats: stats.clone(),
            limits,
            _slot: slot,
        }
    }

    async fn serve(self, stream: TcpStream, router: Router, mut stopping: watch::Receiver<bool>) {
        let io = TokioIo::new(Watched {
            stream,
            activity: self.activity.clone(),
        });
        let routes = TowerToHyperService::new(router);
        let activity = self.activity.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let handling = activity.handling();
            let answer = routes.call(request);
            async move {
                let response = answer.await;
                drop(handling);
                response
            }
        });
        let connection = http1::Builder::new()
            // The watch below times headers from their first byte, not from the last request.
            .header_read_timeout(None)
            .serve_connection(io, service);
        tokio::pin!(connection);
        let mut draining = false;
        let closed = loop {
            let wait = match self.activity.verdict(&self.limits) {
                Ok(wait) => wait,
                Err(reason) => break Some(reason),
            };
            tokio::select! {
                result = &mut connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "control plane connection ended");
                    }
                    break None;
                }
                () = tokio::time::sleep(wait) => {}
                () = self.activity.evict.notified() => break Some(Closed::Evicted),
                _ = stopping.changed(), if !draining => {
                    connection.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        };
        if let Some(reason) = closed {
            tracing::debug!(reason = reason.as_str(), "control plane connection closed");
            self.stats.count_closed(reason);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open.remove(self.activity.id);
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's socket, noting every byte that moves on it.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        match result {
            Poll::Ready(Ok(())) => this.activity.read(buf.filled().len() - before),
            Poll::Pending => this.activity.read_nothing(),
            Poll::Ready(Err(_)) => {}
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = result {
            this.activity.wrote(written);
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = result {
            this.activity.wrote(written);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(header_ms: u64, idle_ms: u64) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 4,
            header_timeout: Duration::from_millis(header_ms),
            idle_timeout: Duration::from_millis(idle_ms),
        }
    }

    #[test]
    fn a_connection_is_judged_by_its_quiet_time_and_its_head_time() {
        let activity = Arc::new(Activity::new(0));
        // Quiet, no head coming: the idle timeout decides; a head's first byte starts its own.
        assert!(activity.verdict(&limits(10_000, 20_000)).is_ok());
        assert_eq!(
            activity.verdict(&limits(10_000, 0)),
            Err(Closed::IdleTimeout)
        );
        activity.read(1);
        assert_eq!(
            activity.verdict(&limits(0, 20_000)),
            Err(Closed::HeaderTimeout)
        );
        // While a request is in its handler, neither applies; afterwards the clock restarts.
        let handling = activity.handling();
        assert!(activity.verdict(&limits(0, 0)).is_ok());
        assert_eq!(activity.quiet_since(), None);
        activity.read(5);
        drop(handling);
        assert_eq!(activity.head_since.load(Ordering::Relaxed), 0);
        assert!(activity.verdict(&limits(0, 20_000)).is_ok());
        // A waiting connection looks again at least as often as the shorter timeout.
        assert!(activity.verdict(&limits(300, 20_000)).unwrap() <= Duration::from_millis(300));
    }

    #[test]
    fn the_quietest_idle_connection_makes_room() {
        let open = OpenConnections::default();
        let first = open.add();
        let second = open.add();
        let unread = open.add();
        // None is displaced within its grace after opening.
        first.read_nothing();
        assert!(!open.evict_quietest());
        std::thread::sleep(EVICTION_GRACE + Duration::from_millis(100));
        first.free_since.store(50, Ordering::Relaxed);
        second.free_since.store(10, Ordering::Relaxed);
        second.read_nothing();
        let _busy = second.handling();
        // The second is quieter but busy with a request, the third not read yet (its request
        // may be waiting): the first goes.
        assert!(open.evict_quietest());
        assert!(first.evicted.load(Ordering::Relaxed));
        assert!(!second.evicted.load(Ordering::Relaxed));
        // Nobody left to evict: the first is already told, the second is busy, the third
        // unread; once the third has found nothing to read, it can go.
        assert!(!open.evict_quietest());
        unread.read_nothing();
        assert!(open.evict_quietest());
        assert!(unread.evicted.load(Ordering::Relaxed));
        open.remove(first.id);
        assert!(!open.evict_quietest());
    }
}
