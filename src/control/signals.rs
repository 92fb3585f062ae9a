//! Signals. SIGINT/SIGTERM: the first starts a drain (bounded by `shutdown.grace_ms`), the
//! second exits at once, and if the drain has not ended the process by the grace period plus a
//! margin (something stuck: a sink blocked in a write, a deadlocked element), it exits anyway.
//! SIGHUP: re-read and apply the configuration (a reload).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use super::requests::{Request, Requests};
use super::systemd::Notifier;
use crate::pipeline::engine::ShutdownHandle;

/// How long past the grace period a drain may take before the process exits regardless.
pub const MARGIN: Duration = Duration::from_secs(5);

/// What a signal stops: the engine once it has started; before that, the start itself (the
/// engine is told as soon as it exists).
#[derive(Clone, Default)]
pub struct Stop {
    requested: Arc<AtomicBool>,
    engine: Arc<Mutex<Option<ShutdownHandle>>>,
}

impl Stop {
    /// The engine is running: a signal (also one that came while it started) shuts it down.
    pub fn attach(&self, handle: ShutdownHandle) {
        if let Ok(mut engine) = self.engine.lock() {
            if self.requested.load(Ordering::SeqCst) {
                handle.trigger();
            }
            *engine = Some(handle);
        }
    }

    fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Ok(engine) = self.engine.lock()
            && let Some(handle) = engine.as_ref()
        {
            handle.trigger();
        }
    }

    /// Whether a signal asked the daemon to stop.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// Who hears about signals besides the engine.
pub struct Listeners {
    /// Told `STOPPING=1` when the drain starts (under systemd).
    pub notifier: Option<Arc<Notifier>>,
    /// Where SIGHUP goes, as a reload.
    pub requests: Requests,
}

/// Registers for SIGINT, SIGTERM and SIGHUP now (so a signal that comes before the returned
/// future is first polled is not lost to the default action) and returns the future that acts
/// on them. Must be called within a tokio runtime.
pub fn watch(
    stop: Stop,
    grace: Duration,
    listeners: Listeners,
) -> std::io::Result<impl Future<Output = ()> + Send> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    listeners.requests.offer(Request::Reload { reply: None });
                }
            }
        }
        tracing::info!("shutdown requested; draining (a second signal exits at once)");
        if let Some(notifier) = &listeners.notifier {
            notifier.send("STOPPING=1\nSTATUS=draining");
        }
        exit_after(grace + MARGIN);
        stop.request();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::warn!("second signal; exiting without draining");
        exit_now(130);
    })
}

/// Ends the process at once with `code`, without running the destructors of static objects:
/// `std::process::exit` runs them (libtorch's among them) while the frame path's threads are
/// still inside a forward, which then fails on torn-down state or crashes the process. Files
/// need nothing from an orderly exit: recordings are written crash-safe.
pub fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stderr().flush();
    let _ = std::io::stdout().flush();
    // SAFETY: `_exit` takes no pointers and never returns; skipping atexit handlers and static
    // destructors is the point (see above), and the kernel closes every descriptor.
    unsafe { libc::_exit(code) }
}

/// Ends the process after `deadline`, drained or not. On an OS thread: the control plane's
/// runtime may be the thing that is stuck.
fn exit_after(deadline: Duration) {
    let _ = std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(deadline);
            tracing::error!(
                waited_ms = deadline.as_millis() as u64,
                "the drain did not end within the grace period and its margin; exiting without it"
            );
            exit_now(1);
        });
}
