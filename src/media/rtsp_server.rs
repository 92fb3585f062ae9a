//! The daemon's one RTSP server: each pipeline with an `rtsp` sink gets a mount, and every
//! client of a mount shares one media fed with the pipeline's encoded H.264.

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

/// The running server. Dropping it without [`RtspServer::stop`] leaks nothing but keeps
/// clients connected until the process ends.
pub struct RtspServer {
    server: rtsp::RTSPServer,
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

    /// Adds `path` and returns the feed that publishes a pipeline's H.264 there.
    pub fn mount(&self, path: &str) -> Result<RtspFeed, MediaError> {
        self.mounts().mount(path)
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

    /// Adds (or replaces) `path` and returns the feed that publishes a pipeline's H.264 there.
    pub fn mount(&self, path: &str) -> Result<RtspFeed, MediaError> {
        let authenticated = self.authenticated;
        let mounts = self
            .server
            .mount_points()
            .ok_or_else(|| MediaError::Rtsp("the server has no mount points".into()))?;

        let factory = rtsp::RTSPMediaFactory::new();
        // One media shared by every client: the pipeline encodes once, whatever the audience.
        factory.set_shared(true);
        factory.set_launch(
            "( appsrc name=visiond_feed is-live=true format=time do-timestamp=true \
             ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )",
        );
        if authenticated {
            factory.add_role_from_structure(
                &gst::Structure::builder("viewer")
                    .field(rtsp::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                    .field(rtsp::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                    .build(),
            );
        }
        let feed = RtspFeed::default();
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
}

/// The publishing end of a mount; cheap to clone into an appsink callback.
#[derive(Clone, Default)]
pub struct RtspFeed {
    clients: Arc<Mutex<Vec<Client>>>,
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
        // The media has its own clock and timestamps on arrival (do-timestamp).
        let mut stamped = buffer.copy();
        {
            let stamped = stamped.make_mut();
            stamped.set_pts(gst::ClockTime::NONE);
            stamped.set_dts(gst::ClockTime::NONE);
        }
        clients.retain_mut(|client| {
            if client.waiting_for_keyframe {
                if !keyframe {
                    return true;
                }
                client.waiting_for_keyframe = false;
            }
            client.appsrc.push_buffer(stamped.clone()).is_ok()
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
}
