//! SIGINT/SIGTERM: the first starts a drain (bounded by `shutdown.grace_ms`), the second
//! exits at once. SIGHUP: re-read and apply the configuration (a reload).

use std::future::Future;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

use super::requests::{Request, Requests};
use super::systemd::Notifier;
use crate::pipeline::engine::ShutdownHandle;

/// Registers for SIGINT and SIGTERM now (so a signal that comes before the returned future is
/// first polled is not lost to the default action) and returns the future that acts on them.
/// Must be called within a tokio runtime.
/// `notifier` (under systemd) is told `STOPPING=1` when the drain starts; SIGHUP goes to
/// `requests` as a reload.
pub fn watch(
    shutdown: ShutdownHandle,
    notifier: Option<Arc<Notifier>>,
    requests: Requests,
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
                    requests.offer(Request::Reload { reply: None });
                }
            }
        }
        tracing::info!("shutdown requested; draining (a second signal exits at once)");
        if let Some(notifier) = &notifier {
            notifier.send("STOPPING=1\nSTATUS=draining");
        }
        shutdown.trigger();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::warn!("second signal; exiting without draining");
        std::process::exit(130);
    })
}
