//! The daemon's one RTSP server: each pipeline with an `rtsp` sink gets a mount, and every
//! client of a mount shares one media fed with the pipeline's encoded H.264.
//!
//! Nothing is queued for a media that is not playing (its client set it up and has not
//! started it, or paused it), and a playing media's queue is bounded and leaky: while its
//! clients are slow it keeps the newest [`MEDIA_QUEUE`] frames and counts the rest, instead of
//! growing for as long as they stay behind. Frames keep the timing the encoder gave them (the
//! source's), moved onto the media's clock, so clients see the camera's steady frame
//! intervals, not the bursts in which batches of frames leave the model.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;

use super::{MediaError, registry, secret};
use crate::config::RtspServerConfig;
use crate::frames::DropCounter;

/// Encoded frames one media holds for its clients (two seconds at 30 fps) before it drops the
/// oldest.
pub const MEDIA_QUEUE: u64 = 60;

/// How far ahead of the media's clock a frame may be stamped. The media's sinks send each frame
/// at its time: frames that leave the model in a burst are paced out at the camera's
/// intervals, never held longer than this (a camera clock running fast makes the mapping again).
const MAX_EARLY: gst::ClockTime = gst::ClockTime::from_mseconds(300);

/// How far behind the media's clock a frame may be stamped (sent at once) before the mapping
/// is made again: a camera clock running slow, a stream that fell behind.
const MAX_LATE: gst::ClockTime = gst::ClockTime::from_seconds(1);

/// The running server. Dropping it without [`RtspServer::stop`] leaks nothing but keeps
/// clients connected until the process ends.
pub struct RtspServer {
    server: rtsp::RTSPServer,
    stats: Arc<RtspServerStats>,
    context: glib::MainContext,
    main_loop: glib::MainLoop,
    source: Option<glib::SourceId>,
    thread: Option<JoinHandle<()>>,
    port: u16,
    authenticated: bool,
}

impl RtspServer {
    /// Binds and starts serving on its own GLib main loop thread. Port 0 picks a free port.
    pub fn start(config: &RtspServerConfig) -> Result<Self, MediaError> {
        registry::init()?;
        let server = rtsp::RTSPServer::new();
        server.set_address(&config.address.to_string());
        server.set_service(&config.port.to_string());
        if let Some(auth) = &config.auth {
            let password = secret(&auth.password_env, "rtsp.auth.password_env")?;
            let checker = rtsp::RTSPAuth::new();
            let token = rtsp::RTSPToken::builder()
                .field(rtsp::RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
                .build();
            checker.add_basic(
                rtsp::RTSPAuth::make_basic(&auth.username, &password).as_str(),
                &token,
            );
            server.set_auth(Some(&checker));
        }
        let context = glib::MainContext::new();
        let stats = Arc::new(RtspServerStats::default());
        bound_clients(&server, &context, config, &stats);
        let source = server.attach(Some(&context)).map_err(|e| {
            MediaError::Rtsp(format!(
                "cannot listen on {}:{}: {}",
                config.address,
                config.port,
                bind_failure(config).unwrap_or_else(|| e.to_string())
            ))
        })?;
        let port = u16::try_from(server.bound_port()).unwrap_or(config.port);
        let main_loop = glib::MainLoop::new(Some(&context), false);
        let thread = std::thread::Builder::new()
            .name("rtsp-server".into())
            .spawn({
                let main_loop = main_loop.clone();
                let context = context.clone();
                move || {
                    let _guard = context.acquire();
                    main_loop.run();
                }
            })
            .map_err(|e| MediaError::Thread {
                name: "rtsp-server".into(),
                reason: e.to_string(),
            })?;
        tracing::info!(address = %config.address, port, "RTSP server listening");
        Ok(Self {
            server,
            stats,
            context,
            main_loop,
            source: Some(source),
            thread: Some(thread),
            port,
            authenticated: config.auth.is_some(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its clients: connected now, and those it closed.
    pub fn stats(&self) -> Arc<RtspServerStats> {
        self.stats.clone()
    }

    /// Whether clients must authenticate (mounts then grant access to the `viewer` role).
    pub fn has_auth(&self) -> bool {
        self.authenticated
    }

    /// A handle that adds mounts, for outputs built (or rebuilt) later on other threads.
    pub fn mounts(&self) -> RtspMounts {
        RtspMounts {
            server: self.server.clone(),
            authenticated: self.authenticated,
        }
    }

    /// Adds `path` and returns the feed that publishes a pipeline's H.264 there; frames its
    /// media drops are counted in `drops`.
    pub fn mount(&self, path: &str, drops: Arc<DropCounter>) -> Result<RtspFeed, MediaError> {
        self.mounts().mount(path, drops)
    }

    /// Disconnects every client and stops the main loop thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // The server's socket source lives on our own context, where g_source_remove
        // (which searches the default context) would not find it.
        if let Some(source) = self
            .source
            .take()
            .and_then(|id| self.context.find_source_by_id(&id))
        {
            source.destroy();
        }
        self.server
            .client_filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
        self.main_loop.quit();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the server counts of its clients.
#[derive(Debug, Default)]
pub struct RtspServerStats {
    /// Connected now.
    pub clients: AtomicU64,
    /// Closed at once: `rtsp.max_clients` were connected already.
    pub refused: AtomicU64,
    /// Closed after `rtsp.setup_timeout_ms` without a session.
    pub idle_closed: AtomicU64,
}

/// Keeps the server's clients bounded: one past `rtsp.max_clients` is closed at once, and one
/// that has set up no session after `rtsp.setup_timeout_ms` is closed then. Every client holds
/// a descriptor; without this, idle connections can take them all, and then nothing else in
/// the process (a recording's next segment, a camera's reconnect) can open a file.
fn bound_clients(
    server: &rtsp::RTSPServer,
    context: &glib::MainContext,
    config: &RtspServerConfig,
    stats: &Arc<RtspServerStats>,
) {
    let (max, setup) = (
        config.max_clients as u64,
        std::time::Duration::from_millis(config.setup_timeout_ms),
    );
    let (context, stats) = (context.clone(), stats.clone());
    server.connect_client_connected(move |_, client| {
        let connected = stats.clients.fetch_add(1, Ordering::Relaxed) + 1;
        let weak = client.downgrade();
        if connected > max {
            // Never counted as connected: it is gone as soon as the server has attached it.
            stats.clients.fetch_sub(1, Ordering::Relaxed);
            stats.refused.fetch_add(1, Ordering::Relaxed);
            // Closed once the server has attached it (it does so after this signal).
            let source = glib::idle_source_new(
                Some("visiond-rtsp-refuse"),
                glib::Priority::DEFAULT,
                move || {
                    if let Some(client) = weak.upgrade() {
                        client.close();
                    }
                    glib::ControlFlow::Break
                },
            );
            source.attach(Some(&context));
            return;
        }
        let counted = stats.clone();
        client.connect_closed(move |_| {
            counted.clients.fetch_sub(1, Ordering::Relaxed);
        });
        let idle = stats.clone();
        let source = glib::timeout_source_new(
            setup,
            Some("visiond-rtsp-setup"),
            glib::Priority::DEFAULT,
            move || {
                if let Some(client) = weak.upgrade()
                    && client.session_filter(None).is_empty()
                {
                    idle.idle_closed.fetch_add(1, Ordering::Relaxed);
                    client.close();
                }
                glib::ControlFlow::Break
            },
        );
        source.attach(Some(&context));
    });
}

/// Why the server's address cannot be bound, in the system's words ("address in use"),
/// which GStreamer's own message ("failed to attach main context") does not say.
fn bind_failure(config: &RtspServerConfig) -> Option<String> {
    match std::net::TcpListener::bind((config.address, config.port)) {
        Ok(_) => None,
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => Some(format!(
            "address in use (another program, or another visiond, listens on port {})",
            config.port
        )),
        Err(error) => Some(error.to_string()),
    }
}

/// Adds mounts to the running server; cheap to clone.
#[derive(Clone)]
pub struct RtspMounts {
    server: rtsp::RTSPServer,
    authenticated: bool,
}

impl RtspMounts {
    /// Removes `path`: new clients get 404 (a reload removed its pipeline).
    pub fn unmount(&self, path: &str) {
        if let Some(mounts) = self.server.mount_points() {
            mounts.remove_factory(path);
        }
    }

    /// Adds (or replaces) `path` and returns the feed that publishes a pipeline's H.264 there;
    /// frames its media drops (clients paused or slow) are counted in `drops`.
    pub fn mount(&self, path: &str, drops: Arc<DropCounter>) -> Result<RtspFeed, MediaError> {
        let authenticated = self.authenticated;
        let mounts = self
            .server
            .mount_points()
            .ok_or_else(|| MediaError::Rtsp("the server has no mount points".into()))?;

        let factory = rtsp::RTSPMediaFactory::new();
        // One media shared by every client: the pipeline encodes once, whatever the audience.
        factory.set_shared(true);
        factory.set_launch(&format!(
            "( appsrc name=visiond_feed is-live=true format=time max-buffers={MEDIA_QUEUE} \
             max-bytes=0 max-time=0 leaky-type=downstream \
             ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        ));
        if authenticated {
            factory.add_role_from_structure(
                &gst::Structure::builder("viewer")
                    .field(rtsp::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                    .field(rtsp::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                    .build(),
            );
        }
        let feed = RtspFeed {
            clients: Arc::default(),
            drops,
        };
        let clients = feed.clients.clone();
        factory.connect_media_configure(move |_, media| {
            let Some(appsrc) = media
                .element()
                .downcast_ref::<gst::Bin>()
                .and_then(|bin| bin.by_name_recurse_up("visiond_feed"))
                .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            else {
                tracing::error!("RTSP media has no feed appsrc");
                return;
            };
            appsrc.set_caps(Some(
                &gst::Caps::builder("video/x-h264")
                    .field("stream-format", "byte-stream")
                    .field("alignment", "au")
                    .build(),
            ));
            if let Ok(mut clients) = clients.lock() {
                clients.push(Client {
                    appsrc,
                    waiting_for_keyframe: true,
                    timing: None,
                    last: None,
                });
            }
        });
        mounts.add_factory(path, factory);
        Ok(feed)
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Client {
    appsrc: gst_app::AppSrc,
    /// A client that joins mid-stream is sent nothing until the next keyframe, so its
    /// decoder never sees a delta frame without its reference.
    waiting_for_keyframe: bool,
    /// How the encoder's timestamps map onto this media's running time.
    timing: Option<Timing>,
    /// The decoding time of the last frame sent: a new mapping never goes back before it.
    last: Option<gst::ClockTime>,
}

/// A frame's time on the media's clock: `base` plus how far it is past `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timing {
    first: gst::ClockTime,
    base: gst::ClockTime,
}

impl Timing {
    fn map(&self, time: Option<gst::ClockTime>) -> Option<gst::ClockTime> {
        time.map(|t| self.base + t.saturating_sub(self.first))
    }
}

impl Client {
    /// `buffer` with its timestamps on the media's clock. The mapping is made at the first
    /// frame, and again whenever a frame's mapped time is more than [`MAX_EARLY`] ahead of the
    /// clock or [`MAX_LATE`] behind it (or went backwards): the intervals between frames are
    /// kept as they are.
    fn stamped(&mut self, buffer: &gst::Buffer) -> gst::Buffer {
        let reference = buffer.dts().or(buffer.pts());
        let now = self.appsrc.current_running_time();
        if let Some(reference) = reference {
            self.timing = Some(retime(self.timing, reference, now, self.last));
        }
        let mut stamped = buffer.copy();
        {
            let stamped = stamped.make_mut();
            let timing = self.timing;
            stamped.set_pts(timing.and_then(|t| t.map(buffer.pts())));
            stamped.set_dts(timing.and_then(|t| t.map(buffer.dts())));
            self.last = stamped.dts().or(stamped.pts()).or(self.last);
        }
        stamped
    }
}

/// The mapping for a frame at `reference` (the encoder's time) arriving when the media's
/// running time is `now`: `current`, unless there is none yet, the frame is before its start,
/// or it would put the frame more than [`MAX_EARLY`] ahead of `now` or [`MAX_LATE`] behind.
/// A new mapping starts at `now`, but never at or before `last`, the last frame sent: decoding
/// times only increase.
fn retime(
    current: Option<Timing>,
    reference: gst::ClockTime,
    now: Option<gst::ClockTime>,
    last: Option<gst::ClockTime>,
) -> Timing {
    let now = now.unwrap_or(gst::ClockTime::ZERO);
    let after_last = last.map(|last| last + gst::ClockTime::from_mseconds(1));
    let fresh = Timing {
        first: reference,
        base: after_last.map_or(now, |after| after.max(now)),
    };
    let Some(timing) = current else {
        return fresh;
    };
    if reference < timing.first {
        return fresh;
    }
    let mapped = timing.base + (reference - timing.first);
    let drift = if mapped > now {
        mapped - now
    } else {
        now - mapped
    };
    let too_far = if mapped > now {
        drift > MAX_EARLY
    } else {
        drift > MAX_LATE
    };
    if too_far { fresh } else { timing }
}

/// The publishing end of a mount; cheap to clone into an appsink callback.
#[derive(Clone)]
pub struct RtspFeed {
    clients: Arc<Mutex<Vec<Client>>>,
    /// Frames a media's full queue dropped (its clients paused or slow).
    drops: Arc<DropCounter>,
}

impl RtspFeed {
    /// Sends one encoded access unit to every client; clients that have gone are forgotten.
    pub fn push(&self, buffer: &gst::Buffer) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        if clients.is_empty() {
            return;
        }
        let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
        let drops = &self.drops;
        clients.retain_mut(|client| {
            // Its media was torn down (its last viewer left): the bin let go of the appsrc.
            if client.appsrc.parent().is_none() {
                return false;
            }
            // Not playing (set up and not started yet, or paused): nothing is held for it, as
            // what it would get later is stale; it starts again at a keyframe, on the clock
            // as it is then.
            if client.appsrc.current_state() != gst::State::Playing {
                client.waiting_for_keyframe = true;
                client.timing = None;
                return true;
            }
            if client.waiting_for_keyframe {
                if !keyframe {
                    return true;
                }
                client.waiting_for_keyframe = false;
            }
            // A full queue drops its oldest frame on this push (it is leaky): count it.
            if client.appsrc.property::<u64>("current-level-buffers") >= MEDIA_QUEUE {
                drops.add();
            }
            let stamped = client.stamped(buffer);
            client.appsrc.push_buffer(stamped).is_ok()
        });
    }

    /// Ends the stream for every client (the pipeline finished).
    pub fn end(&self) {
        if let Ok(clients) = self.clients.lock() {
            for client in clients.iter() {
                let _ = client.appsrc.end_of_stream();
            }
        }
    }

    pub fn client_count(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// The most frames any of its media holds now.
    pub fn deepest_queue(&self) -> u64 {
        self.clients
            .lock()
            .map(|clients| {
                clients
                    .iter()
                    .map(|c| c.appsrc.property::<u64>("current-level-buffers"))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }

    /// Frames its media dropped so far.
    pub fn dropped(&self) -> u64 {
        self.drops.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> gst::ClockTime = gst::ClockTime::from_mseconds;

    #[test]
    fn frames_keep_their_intervals_on_the_medias_clock() {
        // The first frame maps to the clock's time; the next ones keep their spacing whenever
        // they arrive (a batch of four arrives at once, 160 ms late).
        let first = retime(None, MS(1_000_000), Some(MS(500)), None);
        assert_eq!(first.map(Some(MS(1_000_000))), Some(MS(500)));
        let mut timing = first;
        for (n, arrival) in [(1u64, 700u64), (2, 700), (3, 700), (4, 700)] {
            timing = retime(
                Some(timing),
                MS(1_000_000 + 40 * n),
                Some(MS(arrival)),
                None,
            );
            assert_eq!(timing, first, "frame {n}");
            assert_eq!(
                timing.map(Some(MS(1_000_000 + 40 * n))),
                Some(MS(500 + 40 * n))
            );
        }
    }

    #[test]
    fn a_frame_too_early_or_too_late_maps_again_but_never_back_in_time() {
        let timing = retime(None, MS(10_000), Some(MS(0)), None);
        // An outage: the next frame is 60 s later in the encoder's time and on the clock
        // too: the mapping stays.
        assert_eq!(
            retime(Some(timing), MS(70_000), Some(MS(60_000)), Some(MS(40))),
            timing
        );
        // A camera clock running fast: this frame would be held 400 ms. Mapped again at the
        // clock, but after the last frame sent (390 ms), never before it.
        let fast = retime(Some(timing), MS(10_400), Some(MS(0)), Some(MS(390)));
        assert_eq!(fast.map(Some(MS(10_400))), Some(MS(391)));
        // Held up to 300 ms is kept: that is how a burst is paced out.
        assert_eq!(
            retime(Some(timing), MS(10_280), Some(MS(0)), Some(MS(240))),
            timing
        );
        // A stream 1.1 s behind: mapped again at the clock.
        let slow = retime(Some(timing), MS(10_100), Some(MS(1_200)), Some(MS(60)));
        assert_eq!(slow.map(Some(MS(10_100))), Some(MS(1_200)));
        // Timestamps that went back (an output rebuilt from an earlier point).
        let back = retime(Some(timing), MS(5_000), Some(MS(100)), Some(MS(200)));
        assert_eq!(back.map(Some(MS(5_000))), Some(MS(201)));
    }
}
