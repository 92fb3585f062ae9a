//! Talking to systemd (`Type=notify`): `READY=1` once the pipelines are up, a one-line
//! `STATUS=`, `WATCHDOG=1` at half of `WATCHDOG_USEC` only while every model's worker makes
//! progress, `RELOADING=1` and `STOPPING=1`. Without `NOTIFY_SOCKET` (not under systemd) it
//! does nothing.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::pipeline::stats::PipelineState;
use crate::pipeline::view::{EngineView, SharedView};

/// The service manager's notification socket.
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl Notifier {
    /// The socket systemd names in `NOTIFY_SOCKET`; `None` when not run by systemd.
    pub fn from_env() -> Option<Self> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        let name = name.to_string_lossy();
        let address = match name.strip_prefix('@') {
            // An abstract socket: its name starts with a zero byte on the wire.
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes())
            }
            None => SocketAddr::from_pathname(name.as_ref()),
        };
        match address.and_then(Self::connect) {
            Ok(notifier) => Some(notifier),
            Err(error) => {
                tracing::warn!(socket = %name, %error, "cannot use NOTIFY_SOCKET");
                None
            }
        }
    }

    /// A notifier for the datagram socket at `path` (tests, and `from_env`).
    pub fn at(path: &Path) -> io::Result<Self> {
        Self::connect(SocketAddr::from_pathname(path)?)
    }

    fn connect(address: SocketAddr) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        // A service manager that stops reading must not stall the control plane's runtime:
        // a notification that does not fit is dropped (and logged), never waited for.
        socket.set_nonblocking(true)?;
        Ok(Self { socket, address })
    }

    /// Sends one notification (`KEY=value` lines).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.address)?;
        Ok(())
    }

    /// Sends, logging a failure instead of returning it: systemd going away must not stop
    /// the frame path.
    pub fn send(&self, state: &str) {
        if let Err(error) = self.notify(state) {
            tracing::warn!(%error, state, "cannot notify systemd");
        }
    }
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this process per
/// `WATCHDOG_PID`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// One line for `systemctl status`: pipelines by state and the frames going out.
pub fn status_line(view: &EngineView) -> String {
    let pipelines = view.pipelines();
    let mut counts: Vec<(&str, usize)> = PipelineState::NAMES.iter().map(|n| (*n, 0)).collect();
    for pipeline in pipelines {
        let name = pipeline.stats.state().name();
        if let Some(entry) = counts.iter_mut().find(|(n, _)| *n == name) {
            entry.1 += 1;
        }
    }
    let states: Vec<String> = counts
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(name, count)| format!("{count} {name}"))
        .collect();
    let frames: u64 = pipelines.iter().map(|p| p.stats.frames_out()).sum();
    let dropped: u64 = pipelines.iter().map(|p| p.dropped()).sum();
    format!(
        "{} pipeline(s){}{}; {frames} frames out, {dropped} dropped",
        pipelines.len(),
        if states.is_empty() { "" } else { ": " },
        states.join(", ")
    )
}

/// The models whose worker has been inside one batch for longer than `limit`: wedged.
pub fn wedged_workers(view: &EngineView, limit: Duration) -> Vec<String> {
    view.workers()
        .iter()
        .filter(|w| w.stats.busy_for().is_some_and(|busy| busy > limit))
        .map(|w| w.model.clone())
        .collect()
}

/// Pings the watchdog at half its interval while no worker is wedged, and keeps the status
/// line current. Runs until the task is dropped (the control plane's runtime ends).
pub async fn supervise(notifier: Arc<Notifier>, view: SharedView, watchdog: Option<Duration>) {
    let period = watchdog.map_or(STATUS_PERIOD, |interval| (interval / 2).min(STATUS_PERIOD));
    let mut reported_wedged = false;
    loop {
        let view = view.current();
        let mut message = format!("STATUS={}", status_line(&view));
        if let Some(interval) = watchdog {
            // A batch may legitimately take long; one longer than the whole watchdog interval
            // means the worker will not come back, and systemd should restart the service.
            let wedged = wedged_workers(&view, interval);
            if wedged.is_empty() {
                message.push_str("\nWATCHDOG=1");
                reported_wedged = false;
            } else if !reported_wedged {
                tracing::error!(models = ?wedged, "inference worker stuck; no longer pinging the watchdog");
                reported_wedged = true;
            }
        }
        notifier.send(&message);
        tokio::time::sleep(period).await;
    }
}

/// How often the status line is refreshed when there is no watchdog to ping.
const STATUS_PERIOD: Duration = Duration::from_secs(5);
